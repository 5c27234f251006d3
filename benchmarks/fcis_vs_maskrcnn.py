"""FCIS vs Mask R-CNN as the mask model, side by side on the same frames: mask AP, training time, ms per frame.

    python benchmarks/fcis_vs_maskrcnn.py --config config.yaml --frames results/frames/shard-*.h5 --work /tmp/x

For each model (``masks.model`` = maskrcnn, fcis) and trained source (dataset, generic) the model's own recipe trains
a mask model on the train split (``train_mask_model``: the pipeline's own code), the region cache of every shard is
written (``cache_regions``), and mask AP is measured on the validation split (``--split val``, the default: the
split where choices such as the recipes below are made; ``mask_quality``: the rows of ``results/masks/quality.csv``).
``--split test`` measures the test split instead, for reporting beside the tables only: the summary's ``split``
column says which, and test-split numbers are printed under a line saying they must not be used for choices.
The four trainings alternate model by model so that machine load hits both alike.
Recipes: each model's is the config's with its own learning rate and score threshold (``--fcis-lr``,
``--fcis-score-threshold``: 0.005 and 0.1; ``--maskrcnn-lr``, ``--maskrcnn-score-threshold``: 0.001 and 0.3; all
chosen on the validation split: docs/validation.md), since one learning rate does not suit both.

Speed: each trained ``dataset`` model re-run at ``--height`` x ``--width`` (test frames resized to it; the input
transform set to keep that size), one thread, median over ``--repeats`` forward passes interleaved model by model
after a warm-up. FCIS is timed with and without mask voting. Training speed: ``--steps`` steps of fresh models
interleaved step by step on the same batches (whole trainings run one after another see different machine load).
Writes ``--work``/summary.csv, speed.csv, step_speed.csv and prints them.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from pathlib import Path

import pandas as pd
import torch
import torch.nn.functional as F

from a2dpipe.config import load_config
from a2dpipe.masks.data import InstanceReader, list_frames
from a2dpipe.masks.model import build_mask_model, load_mask_model
from a2dpipe.masks.quality import mask_quality
from a2dpipe.masks.stage import cache_regions
from a2dpipe.masks.train import NUM_CLASSES, mask_model_recipe, model_arch, train_mask_model, training_batch

MODELS = ("maskrcnn", "fcis")
SOURCES = ("dataset", "generic")


def model_config(config: dict, model: str, recipes: dict) -> dict:
    """The config with ``masks.model`` set to ``model`` and that model's own ``masks`` keys (``recipes[model]``)."""
    cfg = copy.deepcopy(config)
    cfg["masks"].update(model=model, **recipes.get(model, {}))
    return cfg


def train_and_cache(config: dict, frames: list[str], work: Path, sources=SOURCES, models=MODELS, recipes=None):
    """Train the models of ``sources`` (alternating), cache regions; return training seconds and caches per
    (model, source). As in the pipeline, the generic model trains first and the dataset one is fine-tuned from it
    (from scratch for ``masks.iterations`` steps when ``--work`` holds no generic model of that kind)."""
    seconds, caches = {}, {}
    for source in sorted(sources, key=lambda s: s != "generic"):
        for model in models:
            cfg = model_config(config, model, recipes or {})
            out = work / model / source / "model.pt"
            out.parent.mkdir(parents=True, exist_ok=True)
            generic = work / model / "generic" / "model.pt"
            start = generic if source == "dataset" and generic.exists() else None
            started = time.perf_counter()
            train_mask_model(cfg, source, frames, out, start=start)
            seconds[model, source] = time.perf_counter() - started
            caches[model, source] = []
            for shard in frames:
                cache = out.parent / f"{Path(shard).stem}.h5"
                cache_regions(cfg, source, shard, cache, model_path=out)
                caches[model, source].append(cache)
            print(f"{model} {source}: trained in {seconds[model, source]:.0f} s", flush=True)
    return seconds, caches


def recache(config: dict, frames: list[str], work: Path, recipes: dict) -> dict:
    """Region caches of the trained models at each model's (overridden) score threshold, beside the models."""
    caches = {}
    for model in MODELS:
        cfg = model_config(config, model, recipes)
        threshold = cfg["masks"]["score_threshold"]
        for source in SOURCES:
            folder = work / model / source / f"threshold-{threshold}"
            folder.mkdir(exist_ok=True)
            caches[model, source] = []
            for shard in frames:
                cache = folder / f"{Path(shard).stem}.h5"
                cache.unlink(missing_ok=True)
                cache_regions(cfg, source, shard, cache, model_path=work / model / source / "model.pt")
                caches[model, source].append(cache)
    return caches


def speed(work: Path, frames: list[str], config: dict, height: int, width: int, repeats: int,
          recipes: dict) -> dict[str, float]:
    """Median ms per frame of each trained dataset model at height x width (FCIS with and without voting)."""
    refs = list_frames(frames, split="test")[:repeats]
    with InstanceReader(frames) as reader:
        images = [F.interpolate(torch.from_numpy(reader.rgb(r)).permute(2, 0, 1)[None].float().div(255),
                                size=(height, width), mode="bilinear", align_corners=False)[0] for r in refs]
    runs = {}
    for model in MODELS:
        net, _ = load_mask_model(work / model / "dataset" / "model.pt")
        net.transform.min_size, net.transform.max_size = (height,), width
        net.roi_heads.score_thresh = model_config(config, model, recipes)["masks"]["score_threshold"]
        runs[model] = net
    runs["fcis (no voting)"] = copy.deepcopy(runs["fcis"])
    runs["fcis (no voting)"].roi_heads.mask_voting = False
    times = {name: [] for name in runs}
    with torch.inference_mode():
        for net in runs.values():
            net([images[0]])  # warm-up
        for image in images:
            for name, net in runs.items():
                started = time.perf_counter()
                net([image])
                times[name].append(time.perf_counter() - started)
    return {name: 1000 * statistics.median(t) for name, t in times.items()}


def step_speed(frames: list[str], config: dict, steps: int, recipes: dict) -> dict[str, float]:
    """Median seconds per training step (forward, backward, update) of fresh dataset models, interleaved step by
    step on the same batches: a ratio the machine's load hits alike, unlike whole trainings run one after another."""
    cfg = config["masks"]
    refs = list_frames(frames, split="train")
    runs = {}
    for model in MODELS:
        torch.manual_seed(0)
        own = model_config(config, model, recipes)["masks"]
        net = build_mask_model(**model_arch(own, "dataset", NUM_CLASSES["dataset"])).train()
        runs[model] = net, mask_model_recipe(net, own, steps + 1)[0]  # the trainer's optimiser
    times = {name: [] for name in runs}
    with InstanceReader(frames) as reader:
        for step in range(steps + 1):
            images, targets = training_batch(reader, refs, "dataset", 0, step, cfg["batch_size"],
                                             torch.device("cpu"))  # the trainer's batches
            for name, (net, optimizer) in runs.items():
                started = time.perf_counter()
                loss = sum(net(images, targets).values())
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                if step:  # the first step warms up
                    times[name].append(time.perf_counter() - started)
    return {name: statistics.median(t) for name, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="config.yaml")
    parser.add_argument("--frames", nargs="+", required=True, help="frames stores (every shard)")
    parser.add_argument("--work", required=True, help="folder for the models, caches and summary.csv")
    parser.add_argument("--height", type=int, default=320)
    parser.add_argument("--width", type=int, default=568)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--steps", type=int, default=10, help="interleaved training steps timed per model")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--sources", nargs="+", default=list(SOURCES), choices=SOURCES,
                        help="sources to train (one per process lets two shares of a busy machine work at once)")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS, help="models to train")
    parser.add_argument("--maskrcnn-lr", type=float, default=0.001, help="Mask R-CNN's masks.lr")
    parser.add_argument("--maskrcnn-score-threshold", type=float, default=0.3,
                        help="Mask R-CNN's masks.score_threshold")
    parser.add_argument("--fcis-lr", type=float, default=0.005, help="FCIS's masks.lr")
    parser.add_argument("--fcis-score-threshold", type=float, default=0.1, help="FCIS's masks.score_threshold")
    parser.add_argument("--train-only", action="store_true", help="stop after training and caching")
    parser.add_argument("--score-threshold", type=float,
                        help="with --skip-training: re-cache Mask R-CNN's regions at this masks.score_threshold"
                        " (FCIS's at --fcis-score-threshold)")
    parser.add_argument("--split", default="val", choices=("val", "test"),
                        help="frames mask AP is measured on: val (choices are made there) or test (reporting only)")
    parser.add_argument("--no-speed", action="store_true", help="mask AP and training times only")
    parser.add_argument("--skip-training", action="store_true", help="reuse the models and caches in --work")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    config = load_config(args.config)
    config["device"] = "cpu"
    config["dataset"]["final_fit"] = "train"  # the mask models train on the train split, never on what scores them
    work = Path(args.work)
    recipes = {"fcis": {"lr": args.fcis_lr, "score_threshold": args.fcis_score_threshold},
               "maskrcnn": {"lr": args.maskrcnn_lr, "score_threshold": args.maskrcnn_score_threshold}}
    if args.skip_training:
        seconds = {tuple(name.split()): t for f in work.glob("train_seconds-*.csv")
                   for name, t in pd.read_csv(f, index_col=0)["train_s"].items()}
        caches = {(m, s): sorted((work / m / s).glob("*.h5")) for m in MODELS for s in SOURCES}
        if args.score_threshold is not None:
            recipes["maskrcnn"]["score_threshold"] = args.score_threshold
            caches = recache(config, args.frames, work, recipes)
    else:
        seconds, caches = train_and_cache(config, args.frames, work, args.sources, args.models, recipes)
        pd.Series({f"{m} {s}": t for (m, s), t in seconds.items()}, name="train_s").to_csv(
            work / f"train_seconds-{'-'.join(args.models + args.sources)}.csv")
        if args.train_only:
            return
    rows = []
    for model in MODELS:
        table = mask_quality(args.frames, {s: caches[model, s] for s in SOURCES}, split=args.split)
        for row in table.to_dict("records"):
            rows.append({"model": model, "split": args.split, **row,
                         "train_s": seconds.get((model, row["source"]), float("nan"))})
    summary = pd.DataFrame(rows)
    if args.split == "test":
        print("test-split mask AP: for reporting beside the tables only, not to choose settings by (use --split val)")
    print(summary.to_string(index=False, float_format="%.2f"))
    summary.to_csv(work / "summary.csv", index=False, float_format="%.3f")
    if args.no_speed:
        return
    ms = speed(work, args.frames, config, args.height, args.width, args.repeats, recipes)
    print(f"ms per frame at {args.height} x {args.width}, {torch.get_num_threads()} thread(s): "
          + ", ".join(f"{k} {v:.1f}" for k, v in ms.items())
          + f"; fcis / maskrcnn {ms['fcis'] / ms['maskrcnn']:.2f}")
    pd.Series(ms, name="ms_per_frame").to_csv(work / "speed.csv")
    step = step_speed(args.frames, config, args.steps, recipes)
    print(f"training step ({args.steps} interleaved, {torch.get_num_threads()} thread(s)): "
          + ", ".join(f"{k} {v:.2f} s" for k, v in step.items())
          + f"; fcis / maskrcnn {step['fcis'] / step['maskrcnn']:.2f}")
    pd.Series(step, name="s_per_training_step").to_csv(work / "step_speed.csv")


if __name__ == "__main__":
    main()
