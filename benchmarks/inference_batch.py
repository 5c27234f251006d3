"""Inference batch: prediction and stage 2's feature cache with ``segmentation.inference_batch`` 1 against larger.

    python benchmarks/inference_batch.py --results results --out inference-batch [--batches 1 8] [--rounds 3]

On a finished run's artifacts (``--results``: frames, flow, region masks, stage-1 and stage-2 models; read only),
for each round and each batch size, back to back so that machine load hits every size alike:

- ``predict`` of each ``--variants`` on the test frames: the network's seconds per frame that the predictions file
  records (per-frame throughput at that batch), and the call's wall time (reading frames included);
- :func:`a2dpipe.segmentation.train.cache_features` with the stage-1 rgbflow front-end on the training frames and
  their mirrors, as ``train_stage2`` runs it (regions of the ``dataset`` source plus ground truth are read too).

Prints the median and the minimum of each over the rounds (on a loaded machine the minimum is the least disturbed)
and their ratios to the first batch size. Predictions go under ``--out``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from a2dpipe.config import load_config
from a2dpipe.segmentation.loader import loader_options
from a2dpipe.segmentation.models import build_segmenter
from a2dpipe.segmentation.predict import predict
from a2dpipe.segmentation.samples import StoreSamples
from a2dpipe.segmentation.train import cache_features, flow_encoding_settings, load_checkpoint
from a2dpipe.variants import Variant, variant_name, variant_of

VARIANTS = {variant_name(v): v for v in (variant_of(kind, "rgbflow") for kind in ("baseline", "ours", "maskvote"))}


def _with_batch(config: dict, batch: int) -> dict:
    return {**config, "segmentation": {**config["segmentation"], "inference_batch": batch}}


def _variant_model(results: Path, v: Variant) -> Path:
    if v.kind == "ours":
        return results / "models" / "stage2" / f"{v.input}-{v.train_source}" / "model.pt"
    return results / "models" / "stage1" / v.input / "model.pt"


def time_predict(config: dict, results: Path, v: Variant, out: Path) -> tuple[float, float]:
    """(network seconds per frame, wall seconds per frame) of one ``predict`` call on the test frames."""
    masks = sorted((results / "masks" / v.test_source).glob("shard-*.h5")) if v.kind != "baseline" else None
    samples = StoreSamples(sorted((results / "frames").glob("shard-*.h5")), split="test",
                           flow=sorted((results / "flow").glob("*/shard-*.h5")), masks=masks,
                           **flow_encoding_settings(config, v.input))
    start = time.perf_counter()
    network = predict(config, variant=v, model=_variant_model(results, v), samples=samples, out=out)
    wall = (time.perf_counter() - start) / len(samples)
    samples.close()
    return network, wall


def time_cache(config: dict, results: Path, batch: int) -> float:
    """Wall seconds per view of :func:`cache_features` (stage-1 rgbflow front-end, training frames and mirrors)."""
    ckpt = load_checkpoint(results / "models" / "stage1" / "rgbflow" / "model.pt", 1)
    model = build_segmenter(**ckpt["builder"])
    model.load_state_dict(ckpt["model"])
    model.eval()
    samples = StoreSamples(sorted((results / "frames").glob("shard-*.h5")), split="train",
                           flow=sorted((results / "flow").glob("*/shard-*.h5")),
                           masks=sorted((results / "masks" / "dataset").glob("shard-*.h5")), gt_regions=True,
                           **flow_encoding_settings(config, "rgbflow"))
    start = time.perf_counter()
    cache = cache_features(model, samples, torch.device("cpu"), False, loader_options(config["segmentation"]),
                           batch_size=batch)
    seconds = (time.perf_counter() - start) / len(cache)
    samples.close()
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, required=True, help="results folder of a finished run (read only)")
    parser.add_argument("--config", default="config.yaml", help="the configuration that run was made with")
    parser.add_argument("--out", type=Path, required=True, help="folder for the predictions this writes")
    parser.add_argument("--variants", nargs="*", choices=sorted(VARIANTS),
                        default=list(VARIANTS)[:2])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--no-cache", action="store_true", help="time prediction only")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    config = load_config(args.config)
    args.out.mkdir(parents=True, exist_ok=True)
    times: dict[tuple[str, int], list[float]] = {}
    for _ in range(args.rounds):
        for batch in args.batches:
            cfg = _with_batch(config, batch)
            for name in args.variants:
                v = VARIANTS[name]
                network, wall = time_predict(cfg, args.results, v, args.out / f"{variant_name(v)}-{batch}.h5")
                times.setdefault((f"predict {name} (network)", batch), []).append(network)
                times.setdefault((f"predict {name} (wall)", batch), []).append(wall)
            if not args.no_cache:
                times.setdefault(("stage-2 feature cache (wall, per view)", batch), []).append(
                    time_cache(cfg, args.results, batch))
    print(f"{'what (ms per frame)':<52} {'batch':>5} {'median':>7} {'ratio':>6} {'min':>7} {'ratio':>6}   rounds")
    for what in dict.fromkeys(what for what, _ in times):
        first = times[(what, args.batches[0])]
        for batch in args.batches:
            values = times[(what, batch)]
            median, least = statistics.median(values), min(values)
            rounds = " ".join(f"{1000 * x:.1f}" for x in values)
            print(f"{what:<52} {batch:>5} {1000 * median:>7.1f} {median / statistics.median(first):>6.2f} "
                  f"{1000 * least:>7.1f} {least / min(first):>6.2f}   {rounds}")


if __name__ == "__main__":
    main()
