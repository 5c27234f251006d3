"""Settings chosen by looking at results, compared on the validation split (never the test split), from a finished run.

    python benchmarks/validation_choices.py --results results --work /tmp/val \
        --try stage2.iterations=200 --try stage2.uncovered_background=0.5 \
        --try stage1.batch_size=16 --try masks.score_threshold=0.5

Each ``--try`` is one or more ``section.key=value`` (``stage1.``/``stage2.`` keys of ``segmentation``, or
``masks``), joined by commas; the config's own settings are the first row. For each, with the
pipeline's own code and the run's frames, flow and models (the first two rows score the run's own Ours and
Baseline models, retraining nothing):

- ``stage1.*``: stage 1 of ``--input`` is retrained and its Baseline predicts the validation frames;
- ``stage2.*``: stage 2 is retrained on the ``--source`` regions (from the run's stage-1 model) and Ours predicts
  the validation frames with the same source's regions;
- ``masks.score_threshold``: the run's ``--source`` mask model re-caches every shard's regions at that threshold,
  then stage 2 trains and predicts on them as above;
- any other ``masks.*`` key (``masks.finetune_iterations=100``): the ``--source`` mask model is retrained with it
  (the dataset one from the run's generic model, or from one retrained too when the key is one the generic model
  reads), re-caches every shard's regions, then stage 2 trains and predicts on them as above.

Prints one row per setting: which network was scored, training CPU seconds (mask model included), mean class accuracy
(actor, action, actor-action) and actor-action mean IoU on the validation split, in percent, and for rows that score
Ours, the class-agnostic mask AP of the regions it used on the validation frames. The validation split is small (10
videos on the embedded default): a point or two is noise. This catches a clearly worse setting; it is not a tuner.
"""

from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path

import pandas as pd
import torch
import yaml

from a2dpipe.config import load_config
from a2dpipe.evaluation.evaluate import evaluate
from a2dpipe.masks.quality import mask_quality
from a2dpipe.masks.stage import cache_regions
from a2dpipe.masks.train import train_mask_model
from a2dpipe.segmentation.predict import predict
from a2dpipe.segmentation.samples import StoreSamples
from a2dpipe.segmentation.train import flow_encoding_settings, train
from a2dpipe.variants import Variant

REPO = Path(__file__).resolve().parents[1]


def parse_try(text: str) -> dict[str, object]:
    """``"stage2.iterations=200,masks.model=fcis"`` -> ``{"stage2.iterations": 200, "masks.model": "fcis"}``: values
    read as YAML, as in the config file."""
    out = {}
    for item in text.split(","):
        key, _, value = item.partition("=")
        if key.split(".")[0] not in ("stage1", "stage2", "masks") or not value:
            raise SystemExit(f"--try {text!r}: expected stage1.KEY=VALUE, stage2.KEY=VALUE or masks.KEY=VALUE")
        out[key.strip()] = yaml.safe_load(value)
    return out


def apply(config: dict, over: dict) -> dict:
    config = copy.deepcopy(config)
    config["dataset"]["final_fit"] = "train"  # the models this script trains see the train split only
    for key, value in over.items():
        section, name = key.split(".", 1)
        target = config["masks"] if section == "masks" else config["segmentation"][section]
        target[name] = value
    return config


def score(config: dict, over: dict, args, work: Path, kind: str = "ours") -> dict:
    """Validation metrics of one setting; ``over`` empty scores the run's own ``kind`` model, retraining nothing."""
    config = apply(config, over)
    results = Path(args.results)
    name = ",".join(f"{k}={v}" for k, v in over.items()) or "config"
    out = work / name.replace("=", "-").replace(",", "_")
    frames = sorted(str(p) for p in (results / "frames").glob("shard-*.h5"))
    flow = sorted(str(p) for p in (results / "flow" / config["flow"]["method"]).glob("shard-*.h5"))
    flow = flow if args.input == "rgbflow" else None
    encoding = flow_encoding_settings(config, args.input)
    masks = sorted(str(p) for p in (results / "masks" / args.source).glob("shard-*.h5"))
    stage1 = results / "models" / "stage1" / args.input / "model.pt"
    model = results / "models" / "stage2" / f"{args.input}-{args.source}" / "model.pt"
    started = time.process_time()
    if any(k.startswith("stage1.") for k in over) or kind == "baseline":
        kind, masks = "baseline", None
        if over:
            train(config, stage=1, input=args.input, out=out / "stage1.pt",
                  samples=StoreSamples(frames, split="train", flow=flow, **encoding))
            stage1 = out / "stage1.pt"
        model = stage1
    elif over:
        mask_keys = {k for k in over if k.startswith("masks.")}
        if mask_keys:  # regions cached anew: by the run's mask model at another score, or by one retrained
            model_file = results / "masks" / "models" / args.source / "model.pt"
            if mask_keys - {"masks.score_threshold"}:
                model_file = out / "mask_model.pt"
                start = _mask_start(config, args.source, mask_keys, frames, results, out)
                train_mask_model(config, args.source, frames, model_file, start=start)
            masks = [str(out / "masks" / Path(m).name) for m in masks]
            for shard, cache in zip(frames, masks):
                cache_regions(config, args.source, shard, cache, model_path=model_file)
        model = out / "model.pt"
        train(config, stage=2, input=args.input, out=model, mask_source=args.source, stage1=stage1,
              samples=StoreSamples(frames, split="train", flow=flow, masks=masks, gt_regions=True, **encoding))
    cpu = time.process_time() - started
    variant = Variant(kind, args.input, *((args.source, args.source) if kind == "ours" else ()))
    val = StoreSamples(frames, split="val", flow=flow, masks=masks, **encoding)
    predict(config, variant=variant, model=model, samples=val, out=out / f"{kind}-val.h5", split="val")
    section = config["evaluation"]
    m = evaluate(out / f"{kind}-val.h5", frames, boundary_width=int(section["boundary_width"]),
                 settings_from=section["settings_from"], split="val")["metrics"]["whole"]
    row = {"setting": name, "scored": kind, "training CPU s": round(cpu, 1)}
    for setting in ("actor", "action", "actor_action"):
        row[f"{setting} mca"] = round(100 * m[setting]["mean_class_accuracy"], 1)
    row["actor_action mIoU"] = round(100 * m["actor_action"]["mean_iou"], 1)
    if kind == "ours":
        ap = mask_quality(frames, {args.source: masks}, split="val")
        row["val mask AP"] = float(ap.loc[ap["categories"] == "agnostic", "AP"].iloc[0])
    return row


def _mask_start(config: dict, source: str, keys: set[str], frames: list[str], results: Path,
                out: Path) -> Path | None:
    """The model a retrained mask model starts from, as in the pipeline: the dataset one from the generic one (the
    run's, or one retrained here when a changed key is one the generic model reads), the generic one from none."""
    if source != "dataset":
        return None
    if not keys - {"masks.score_threshold", "masks.finetune_iterations"}:
        return results / "masks" / "models" / "generic" / "model.pt"
    start = out / "generic_model.pt"
    train_mask_model(config, "generic", frames, start)
    return start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(REPO / "config.yaml"), help="the run's config")
    parser.add_argument("--results", default="results", help="results folder of a finished run")
    parser.add_argument("--work", required=True, help="folder for the models, regions and predictions made here")
    parser.add_argument("--input", default="rgbflow", choices=("rgb", "rgbflow"))
    parser.add_argument("--source", default="dataset", choices=("dataset", "generic"))
    parser.add_argument("--try", dest="tries", action="append", default=[], help="section.key=value[,...]")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    config = load_config(args.config)
    work = Path(args.work)
    rows = [score(config, {}, args, work, "ours"), score(config, {}, args, work, "baseline")]
    rows += [score(config, parse_try(text), args, work) for text in args.tries]
    print(pd.DataFrame(rows).to_string(index=False))


if __name__ == "__main__":
    main()
