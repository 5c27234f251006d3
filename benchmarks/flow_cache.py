"""Benchmark: CPU cost and size per frame of the flow cache, its layout before (schema 2) and now (schema 3), side by
side in one process, and the flow job's threaded writer.

    python benchmarks/flow_cache.py [--frames 12] [--height 320] [--width 568] [--crop 320 320] [--encoding wheel]
                                    [--wheel-max 0] [--threads 1 2] [--real-data ../shared/real-data]

Fields, each at ``--height`` x ``--width``:

- ``smooth``: coarse random noise bilinearly enlarged, +-6 px (the kind ``a2dpipe estimate`` measures);
- ``venus``: the ground-truth flow of the real Venus pair (``flow-venus/example.flo``), tiled to the frame size;
- ``venus-dis``: DIS (preset medium) on the real Venus frames, tiled: an estimator's output, with its noise.

Per frame, CPU milliseconds of this process (``time.process_time``, medians over ``--frames`` frames, one torch
thread) and bytes:

- ``store``: the three datasets (``flow`` float16, ``rgb``, ``rgb_mirror``) of one group written, Fletcher-32 on
  each; schema 2: lzf in 64 x 64-pixel chunks, as the writer did; schema 3: :meth:`FlowWriter.store` (one
  uncompressed chunk per dataset, its checksum computed by ``encode``);
- ``bytes``: the file's size per frame;
- ``crop``: a ``--crop`` window of ``rgb`` read back, as a stage-1 sample reads it (windows at random places);
- ``encode``: :meth:`FlowWriter.encode` (the image and its mirror image from the stored field, and the three
  checksums schema 3 stores; schema 2's were computed in ``store``);
- per ``--threads`` N: the flow job's writer with N encoder threads (``FlowWriter(threads=N)``; 0: the calling
  thread), wall and CPU milliseconds per frame of writing every frame and closing the file, and the calling
  thread's own CPU per frame (what the estimator's thread spends on the cache).

Both layouts are checked to read back the same arrays. Figures: docs/performance.md (flow cache).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import cv2
import h5py
import numpy as np
import torch

from a2dpipe.flow import FlowWriter, build_estimator, read_flo
from a2dpipe.stores import pixel_chunks

DATASETS = ("flow", "rgb", "rgb_mirror")


def smooth_field(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    coarse = rng.random((height // 32 + 2, width // 32 + 2, 2)).astype(np.float32)
    return (cv2.resize(coarse, (width, height), interpolation=cv2.INTER_LINEAR) - 0.5) * 12


def tiled(field: np.ndarray, height: int, width: int, shift: int) -> np.ndarray:
    """``field`` repeated (mirrored at every repeat, so that it stays continuous) to cover ``height`` x ``width``,
    starting ``shift`` columns in: each frame sees another part."""
    h, w = field.shape[:2]
    reps = (-(-height // h) + 1, -(-(width + shift) // w) + 1)
    big = np.pad(field, ((0, (reps[0] - 1) * h), (0, (reps[1] - 1) * w), (0, 0)), mode="symmetric")
    return np.ascontiguousarray(big[:height, shift:shift + width])


def fields(kind: str, count: int, height: int, width: int, real: Path) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    if kind == "smooth":
        return [smooth_field(rng, height, width) for _ in range(count)]
    venus = real / "flow-venus"
    if kind == "venus":
        base = read_flo(venus / "example.flo")
    else:
        frames = [cv2.cvtColor(cv2.imread(str(venus / f"frame{k}.png")), cv2.COLOR_BGR2RGB) for k in (1, 2)]
        base = build_estimator("dis", dis_preset="medium")(frames[0][None], frames[1][None])[0]
    base = np.where(np.abs(base) < 1e9, base, 0).astype(np.float32)  # .flo marks unknown flow as 1e10
    return [tiled(base, height, width, 37 * k) for k in range(count)]


def store_v2(file: h5py.File, key: str, field, image, mirror) -> None:
    """Schema 2's write: lzf in 64 x 64-pixel chunks, Fletcher-32."""
    group = file.create_group(key)
    for name, data in zip(DATASETS, (field, image, mirror)):
        group.create_dataset(name, data=data, compression="lzf", fletcher32=True, chunks=pixel_chunks(data.shape))


def cpu_ms(fn) -> float:
    start = time.process_time()
    fn()
    return 1000 * (time.process_time() - start)


def layouts(folder: Path, field_list, args) -> dict:
    """Per layout: store ms, bytes per frame and crop-read ms (medians), and the arrays read back whole."""
    out = {}
    rng = np.random.default_rng(1)
    windows = [(int(rng.integers(0, args.height - args.crop[0] + 1)),
                int(rng.integers(0, args.width - args.crop[1] + 1))) for _ in field_list]
    for name in ("schema 2", "schema 3"):
        path = folder / f"{name.replace(' ', '')}.h5"
        times = {"store": [], "crop": [], "encode": []}
        with FlowWriter(path, method="bench", encoding=args.encoding, wheel_max=args.wheel_max or None) as writer:
            writer.seconds_per_frame = 0.0
            for k, flow in enumerate(field_list):
                encoded = []
                times["encode"].append(cpu_ms(lambda: encoded.append(writer.encode(flow))))
                if name == "schema 2":
                    arrays = [array for array, _ in encoded[0]]
                    times["store"].append(cpu_ms(lambda: store_v2(writer.file, f"v/{k + 1:05d}", *arrays)))
                else:
                    times["store"].append(cpu_ms(lambda: writer.store("v", k + 1, encoded[0])))
        with h5py.File(path) as file:
            for k, (top, left) in enumerate(windows):
                dataset = file[f"v/{k + 1:05d}/rgb"]
                times["crop"].append(cpu_ms(lambda: dataset[top:top + args.crop[0], left:left + args.crop[1]]))
            arrays = [[file[f"v/{k + 1:05d}/{d}"][()] for d in DATASETS] for k in range(len(field_list))]
        out[name] = {**{key: statistics.median(v) for key, v in times.items()},
                     "bytes": path.stat().st_size / len(field_list), "arrays": arrays}
    return out


def threaded(folder: Path, field_list, args, threads: int) -> dict:
    """Wall and CPU ms per frame of the job's writer with ``threads`` encoders, and the caller's own CPU."""
    path = folder / f"threads-{threads}.h5"
    wall, cpu, own = time.perf_counter(), time.process_time(), 0.0
    with FlowWriter(path, method="bench", encoding=args.encoding, wheel_max=args.wheel_max or None,
                    threads=threads) as writer:
        writer.seconds_per_frame = 0.0
        for k, flow in enumerate(field_list):
            start = time.thread_time()
            writer.write("v", k + 1, flow)
            own += time.thread_time() - start
    n = len(field_list)
    return {"wall": 1000 * (time.perf_counter() - wall) / n, "cpu": 1000 * (time.process_time() - cpu) / n,
            "caller": 1000 * own / n}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--frames", type=int, default=12)
    p.add_argument("--height", type=int, default=320)
    p.add_argument("--width", type=int, default=568)
    p.add_argument("--crop", type=int, nargs=2, default=[320, 320])
    p.add_argument("--encoding", default="wheel", choices=("wheel", "xym"))
    p.add_argument("--wheel-max", type=float, default=0.0, help="0: per-frame scale (the paper preset's)")
    p.add_argument("--threads", type=int, nargs="*", default=[0, 1, 2], help="encoder threads of the writer runs")
    p.add_argument("--real-data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "real-data")
    args = p.parse_args()
    torch.set_num_threads(1)
    kinds = ["smooth"] + (["venus", "venus-dis"] if (args.real_data / "flow-venus").is_dir() else [])
    print(f"{args.height} x {args.width} frames, {args.frames} per field, crop {args.crop}, {args.encoding}; CPU ms "
          "per frame (medians), MiB per frame")
    for kind in kinds:
        field_list = fields(kind, args.frames, args.height, args.width, args.real_data)
        with tempfile.TemporaryDirectory() as tmp:
            found = layouts(Path(tmp), field_list, args)
            for got, want in zip(found["schema 3"]["arrays"], found["schema 2"]["arrays"]):
                assert all(np.array_equal(a, b) for a, b in zip(got, want)), "the layouts read back different arrays"
            for name, row in found.items():
                print(f"{kind:9s} {name}: store {row['store']:6.2f}  encode {row['encode']:6.2f}  crop read "
                      f"{row['crop']:5.2f}  {row['bytes'] / 2 ** 20:.3f} MiB")
            for threads in args.threads:
                row = threaded(Path(tmp), field_list, args, threads)
                print(f"{kind:9s} writer, {threads} encoder thread(s): wall {row['wall']:6.2f}  cpu {row['cpu']:6.2f}  "
                      f"caller {row['caller']:5.2f}")


if __name__ == "__main__":
    main()
