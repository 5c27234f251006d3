"""FCIS vs Mask R-CNN as the mask model, side by side on the same frames: mask AP, training time, ms per frame.

    python benchmarks/fcis_vs_maskrcnn.py --config config.yaml --frames results/frames/shard-*.h5 --work /tmp/x

For each model (``masks.model`` = maskrcnn, fcis) and trained source (dataset, generic) the config's recipe trains a
mask model on the train split (``train_mask_model``: the pipeline's own code), the region cache of every shard is
written (``cache_regions``), and mask AP is measured on the test split (``mask_quality``: the rows of
``results/masks/quality.csv``). The four trainings alternate model by model so that machine load hits both alike.

Speed: each trained ``dataset`` model re-run at ``--height`` x ``--width`` (test frames resized to it; the input
transform set to keep that size), one thread, median over ``--repeats`` forward passes interleaved model by model
after a warm-up. FCIS is timed with and without mask voting. Writes ``--work``/summary.csv and prints it.
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

from a2dpipe.io import load_config
from a2dpipe.masks.data import InstanceReader, list_frames
from a2dpipe.masks.model import load_mask_model
from a2dpipe.masks.quality import mask_quality
from a2dpipe.masks.stage import cache_regions
from a2dpipe.masks.train import train_mask_model

MODELS = ("maskrcnn", "fcis")
SOURCES = ("dataset", "generic")


def train_and_cache(config: dict, frames: list[str], work: Path, sources=SOURCES) -> tuple[dict, dict]:
    """Train the models of ``sources`` (alternating), cache regions; return training seconds and caches per
    (model, source)."""
    seconds, caches = {}, {}
    for source in sources:
        for model in MODELS:
            cfg = copy.deepcopy(config)
            cfg["masks"]["model"] = model
            out = work / model / source / "model.pt"
            out.parent.mkdir(parents=True, exist_ok=True)
            started = time.perf_counter()
            train_mask_model(cfg, source, frames, out)
            seconds[model, source] = time.perf_counter() - started
            caches[model, source] = []
            for shard in frames:
                cache = out.parent / f"{Path(shard).stem}.h5"
                cache_regions(cfg, source, shard, cache, model_path=out)
                caches[model, source].append(cache)
            print(f"{model} {source}: trained in {seconds[model, source]:.0f} s", flush=True)
    return seconds, caches


def speed(work: Path, frames: list[str], config: dict, height: int, width: int, repeats: int) -> dict[str, float]:
    """Median ms per frame of each trained dataset model at height x width (FCIS with and without voting)."""
    refs = list_frames(frames, split="test")[:repeats]
    with InstanceReader(frames) as reader:
        images = [F.interpolate(torch.from_numpy(reader.rgb(r)).permute(2, 0, 1)[None].float().div(255),
                                size=(height, width), mode="bilinear", align_corners=False)[0] for r in refs]
    runs = {}
    for model in MODELS:
        net, _ = load_mask_model(work / model / "dataset" / "model.pt")
        net.transform.min_size, net.transform.max_size = (height,), width
        net.roi_heads.score_thresh = config["masks"]["score_threshold"]
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="config.yaml")
    parser.add_argument("--frames", nargs="+", required=True, help="frames stores (every shard)")
    parser.add_argument("--work", required=True, help="folder for the models, caches and summary.csv")
    parser.add_argument("--height", type=int, default=320)
    parser.add_argument("--width", type=int, default=568)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--sources", nargs="+", default=list(SOURCES), choices=SOURCES,
                        help="sources to train (one per process lets two shares of a busy machine work at once)")
    parser.add_argument("--train-only", action="store_true", help="stop after training and caching")
    parser.add_argument("--skip-training", action="store_true", help="reuse the models and caches in --work")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    config = load_config(args.config)
    config["device"] = "cpu"
    work = Path(args.work)
    if args.skip_training:
        seconds = {tuple(name.split()): t for f in work.glob("train_seconds-*.csv")
                   for name, t in pd.read_csv(f, index_col=0)["train_s"].items()}
        caches = {(m, s): sorted((work / m / s).glob("*.h5")) for m in MODELS for s in SOURCES}
    else:
        seconds, caches = train_and_cache(config, args.frames, work, args.sources)
        pd.Series({f"{m} {s}": t for (m, s), t in seconds.items()}, name="train_s").to_csv(
            work / f"train_seconds-{'-'.join(args.sources)}.csv")
        if args.train_only:
            return
    rows = []
    for model in MODELS:
        table = mask_quality(args.frames, {s: caches[model, s] for s in SOURCES})
        for row in table.to_dict("records"):
            rows.append({"model": model, **row, "train_s": seconds.get((model, row["source"]), float("nan"))})
    summary = pd.DataFrame(rows)
    ms = speed(work, args.frames, config, args.height, args.width, args.repeats)
    print(summary.to_string(index=False, float_format="%.2f"))
    print(f"ms per frame at {args.height} x {args.width}, {torch.get_num_threads()} thread(s): "
          + ", ".join(f"{k} {v:.1f}" for k, v in ms.items())
          + f"; fcis / maskrcnn {ms['fcis'] / ms['maskrcnn']:.2f}")
    summary.to_csv(work / "summary.csv", index=False, float_format="%.3f")
    pd.Series(ms, name="ms_per_frame").to_csv(work / "speed.csv")


if __name__ == "__main__":
    main()
