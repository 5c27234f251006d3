"""Flow methods side by side: end-point error on real pairs with ground truth, and frame pairs per second.

    python benchmarks/flow_methods.py                                       # every method; DIS in every preset
    python benchmarks/flow_methods.py --methods dis raft --weights raft=raft_small.pth --out flow-bench.csv

It prints one row per method (DIS: per preset) with
- the mean end-point error on the real Venus pair (``../shared/real-data/flow-venus``, Middlebury ground truth)
  and on scikit-image's ``stereo_motorcycle`` pair (Middlebury 2014; flow left -> right is u = -disparity, v = 0,
  unknown where the disparity is infinite), downscaled by ``--motorcycle-scale``;
- frame pairs per second at A2D resolution (320 x 568, the Venus pair resized) on one CPU thread, per second of
  the process's CPU time (what one free core delivers, robust to other jobs on the machine) and of wall time,
  and on the GPU with batches of ``--gpu-batch`` when CUDA is present.
Neural methods without ``--weights`` run with random initialisation: their speed is real, their error is not
reported (the table says "random init").
"""

from __future__ import annotations

import argparse
import csv
import logging
import time
from pathlib import Path

import numpy as np

from a2dpipe.errors import A2DError

log = logging.getLogger("flow_methods")

A2D_SIZE = (320, 568)  # height, width of A2D's clips
DEFAULT_REAL_DATA = Path("..") / "shared" / "real-data"


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="+", default=None, help="methods to run (default: all)")
    parser.add_argument("--presets", nargs="+", default=None, help="DIS presets (default: all)")
    parser.add_argument("--weights", nargs="*", default=[], metavar="METHOD=PATH", help="checkpoints of neural methods")
    parser.add_argument("--raft-variant", default="small", choices=("small", "large"))
    parser.add_argument("--real-data", default=str(DEFAULT_REAL_DATA), help="folder holding flow-venus/")
    parser.add_argument("--motorcycle-scale", type=float, default=0.5, help="downscale of the stereo pair")
    parser.add_argument("--dis-repeat", type=int, default=30, help="timed pairs per DIS preset")
    parser.add_argument("--neural-repeat", type=int, default=1, help="timed CPU pairs per neural method")
    parser.add_argument("--gpu-batch", type=int, default=8, help="pairs per batch in GPU timing")
    parser.add_argument("--out", help="also write the table as CSV")
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    weights = {}
    for item in args.weights:
        method, sep, path = item.partition("=")
        if not sep:
            raise A2DError(f"--weights {item!r}: expected METHOD=PATH")
        weights[method] = path
    rows = bench_flow(
        methods=args.methods, presets=args.presets, weights=weights, raft_variant=args.raft_variant,
        real_data=Path(args.real_data), motorcycle_scale=args.motorcycle_scale, dis_repeat=args.dis_repeat,
        neural_repeat=args.neural_repeat, gpu_batch=args.gpu_batch,
    )
    print(format_table(rows))
    if args.out:
        with open(args.out, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)


def _venus(real_data: Path):
    import cv2

    from a2dpipe.flow.flo import read_flo

    folder = real_data / "flow-venus"
    if not folder.is_dir():
        raise A2DError(f"{folder}: real-data folder not found (give --real-data)")
    read = lambda name: cv2.cvtColor(cv2.imread(str(folder / name)), cv2.COLOR_BGR2RGB)  # noqa: E731
    return read("frame1.png"), read("frame2.png"), read_flo(folder / "example.flo")


def _motorcycle(scale: float):
    """Left, right image and flow left -> right (u = -disparity, v = 0; NaN where unknown), downscaled."""
    import cv2
    from skimage.data import stereo_motorcycle

    left, right, disparity = stereo_motorcycle()
    size = (round(left.shape[1] * scale), round(left.shape[0] * scale))
    left, right = (cv2.resize(im, size, interpolation=cv2.INTER_AREA) for im in (left, right))
    disparity = cv2.resize(disparity, size, interpolation=cv2.INTER_NEAREST) * scale
    truth = np.stack([-disparity, np.zeros_like(disparity)], axis=-1).astype(np.float32)
    truth[~np.isfinite(disparity)] = np.nan
    return left, right, truth


def _pairs_per_second(estimator, frame1, frame2, repeat: int, synchronize=None) -> tuple[float, float]:
    """(pairs per second of wall time, pairs per second of this process's CPU time).

    With one thread the CPU-time figure is what one free core delivers, even on a machine shared with other jobs.
    """
    estimator(frame1, frame2)  # warm-up: allocations, cuDNN choices
    if synchronize:
        synchronize()
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(repeat):
        estimator(frame1, frame2)
    if synchronize:
        synchronize()
    pairs = repeat * len(frame1)
    return pairs / (time.perf_counter() - wall), pairs / (time.process_time() - cpu)


def bench_flow(*, methods=None, presets=None, weights=None, raft_variant="small", real_data=DEFAULT_REAL_DATA,
               motorcycle_scale=0.5, dis_repeat=30, neural_repeat=1, gpu_batch=8) -> list[dict]:
    """One dict per method/preset: method, weights, epe_venus, epe_motorcycle, wall_pairs_per_s and
    cpu_pairs_per_s (one CPU thread), gpu_pairs_per_s (None without CUDA)."""
    import cv2
    import torch

    from a2dpipe.flow.estimators import DIS_PRESETS, METHODS, NEURAL_METHODS, build_estimator
    from a2dpipe.flow.flo import endpoint_error

    methods = list(methods or METHODS)
    unknown = set(methods) - set(METHODS)
    if unknown:
        raise A2DError(f"unknown flow methods {sorted(unknown)}; expected some of {METHODS}")
    weights = weights or {}
    venus = _venus(Path(real_data))
    motorcycle = _motorcycle(motorcycle_scale)
    height, width = A2D_SIZE
    timing_pair = [cv2.resize(f, (width, height), interpolation=cv2.INTER_LINEAR)[None] for f in venus[:2]]
    cv2.setNumThreads(1)
    torch.set_num_threads(1)
    cuda = torch.cuda.is_available()

    runs = [("dis", p) for p in (presets or DIS_PRESETS) if "dis" in methods]
    runs += [(m, None) for m in methods if m in NEURAL_METHODS]
    rows = []
    for method, preset in runs:
        label = f"dis-{preset}" if method == "dis" else (f"raft-{raft_variant}" if method == "raft" else method)
        path = weights.get(method)
        cfg = dict(dis_preset=preset or "medium", weights=path, raft_variant=raft_variant,
                   random_init=path is None, device="cpu", batch_size=gpu_batch)
        torch.manual_seed(0)
        estimator = build_estimator(method, **cfg)
        trained = method == "dis" or path is not None
        row = {"method": label, "weights": "none needed" if method == "dis" else (path or "random init")}
        for name, (frame1, frame2, truth) in (("venus", venus), ("motorcycle", motorcycle)):
            row[f"epe_{name}"] = endpoint_error(estimator(frame1, frame2)[0], truth) if trained else None
        repeat = dis_repeat if method == "dis" else neural_repeat
        row["wall_pairs_per_s"], row["cpu_pairs_per_s"] = _pairs_per_second(estimator, *timing_pair, repeat)
        row["gpu_pairs_per_s"] = None
        if cuda and method in NEURAL_METHODS:
            gpu = build_estimator(method, **{**cfg, "device": "cuda"})
            batch = [np.repeat(f, gpu_batch, axis=0) for f in timing_pair]
            row["gpu_pairs_per_s"] = _pairs_per_second(gpu, *batch, 5, torch.cuda.synchronize)[0]
            del gpu
        log.info("%s", row)
        rows.append(row)
    return rows


def format_table(rows: list[dict]) -> str:
    """Markdown table of ``bench_flow`` rows."""
    fmt = lambda v, spec: "-" if v is None else format(v, spec)  # noqa: E731
    lines = [
        f"| method | weights | EPE Venus (px) | EPE motorcycle (px) | pairs/s 1 core, {A2D_SIZE[0]}x{A2D_SIZE[1]}: "
        "CPU time (wall) | pairs/s GPU |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['method']} | {r['weights']} | {fmt(r['epe_venus'], '.3f')} | {fmt(r['epe_motorcycle'], '.3f')} "
            f"| {fmt(r['cpu_pairs_per_s'], '.2f')} ({fmt(r['wall_pairs_per_s'], '.2f')}) "
            f"| {fmt(r['gpu_pairs_per_s'], '.1f')} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    main()
