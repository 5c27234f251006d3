"""Benchmark: CPU cost per A2D-sized frame of the region-mask cache (write, read for a stage-2 sample) and of the
flow images (encoding + mirror image), the formats and encoders before and now, side by side in one process.

    python benchmarks/cache_io.py [--frames 20] [--regions 50] [--height 320] [--width 568] [--crop 320 320]
                                  [--max-side 0.5] [--threads 1] [--check]

Regions imitate an instance segmenter's candidates (``benchmarks/region_to_pixel.py``'s ``make_regions``: soft
elliptical masks fading to exactly 0 around their boxes, some crossing the frame edge), a fresh set per frame.
Every figure is CPU seconds of this process (``time.process_time``: the writer thread included, other processes on
the machine not) per frame, the median over ``--frames`` frames, at ``--threads`` torch threads:

- write, before: schema 1 (every mask quantised at full frame, gzip level 4, one chunk per mask), schema 2
  (cropped levels as they are, 64 KiB lzf chunks, rectangles from full-frame row and column maxima) and schema 3
  (the cropped levels' differences, lzf, one chunk; given masks cropped on the GPU), as the writer did them;
  now: schema 4 (:class:`a2dpipe.masks.MaskCacheWriter`, masks cropped to their rectangles, uncompressed, one
  chunk per dataset written as stored, Fletcher-32), in the calling thread (``threaded=False``, to time it
  alone) and, as the stage runs it, on its threads (the CPU time of every thread, the file closed; and the
  calling thread's own CPU time in ``write``, what the model's thread spends on the cache); and the host's share
  where a GPU job quantises and crops the masks on the GPU (:func:`a2dpipe.masks.device_crop.cropped_on_device`,
  run here by torch on the CPU, untimed): the writer given the cropped masks, all of it and its two parts, the
  pool's (``MaskCacheWriter.encode``: the checksums) and the writer thread's (``MaskCacheWriter.store``: the
  HDF5 calls, the part that holds HDF5's lock);
- read for a stage-2 sample: the regions of one frame inside a ``--crop`` window, as float32 masks, as the
  training loader needs them: before, the whole frame decoded, dequantised and cropped (schema 1), or the
  differences decompressed and summed back (schema 3); now :meth:`MaskCache.read_cropped` +
  :meth:`CroppedMasks.window`;
- flow images: the flow cache's ``rgb`` and ``rgb_mirror`` of one field (the writer's work besides compression),
  before through torchvision's ``flow_to_image`` twice (the wheel) or ``flow_to_rgb`` of the negated field (xym),
  now :func:`a2dpipe.flow.encode.flow_images`.

``--check`` also asserts that the two formats read back the same masks pixel for pixel (the torch crop: the numpy
path's bytes, and the same masks read back) and the two encoders the same bytes (the script fails otherwise).
Measured on the project's shared 2-core CPU machine, one thread, 320 x 568 frames, 50 regions, crop 320 x 320 (see
docs/performance.md for the figures).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from region_to_pixel import make_regions  # noqa: E402

from a2dpipe.flow.encode import flow_images, flow_to_rgb  # noqa: E402
from a2dpipe.masks import CroppedMasks, MaskCache, MaskCacheWriter, Regions  # noqa: E402
from a2dpipe.masks.cache import REGION_RECORD  # noqa: E402
from a2dpipe.masks.cropped import NONZERO_LEVEL  # noqa: E402
from a2dpipe.masks.device_crop import cropped_on_device  # noqa: E402


def frame_regions(seed: int, n: int, height: int, width: int, max_side: float) -> Regions:
    _, masks, boxes, _ = make_regions(n, 2, height, width, max_side, seed=seed)
    boxes = boxes.numpy().clip(0, [width, height, width, height])
    rng = np.random.default_rng(seed)
    return Regions(boxes, rng.uniform(0.3, 1, n), rng.integers(1, 8, n), masks.numpy())


# --- schema 1, as it was written and read ---------------------------------------------------------------------


def _quantise_full(masks: np.ndarray) -> np.ndarray:
    scaled = np.multiply(masks, np.float32(255.0), dtype=np.float32)
    np.clip(scaled, 0.0, 255.0, out=scaled)
    np.rint(scaled, out=scaled)
    return scaled.astype(np.uint8)


def write_v1(file: h5py.File, key: str, regions: Regions) -> None:
    group = file.create_group(key)
    height, width = regions.size
    group.attrs.update(height=height, width=width)
    group.create_dataset("boxes", data=regions.boxes)
    group.create_dataset("scores", data=regions.scores)
    group.create_dataset("labels", data=regions.labels.astype(np.uint8))
    group.create_dataset("masks", data=_quantise_full(regions.masks), chunks=(1, height, width), compression="gzip",
                         compression_opts=4, shuffle=True)


def read_v1_window(file: h5py.File, key: str, rows: slice, cols: slice) -> np.ndarray:
    group = file[key]
    arrays = {name: group[name][()] for name in ("boxes", "scores", "labels", "masks")}
    masks = arrays["masks"].astype(np.float32) * np.float32(1.0 / 255.0)
    return np.ascontiguousarray(masks[:, rows, cols])


# --- schema 2, as it was written --------------------------------------------------------------------------------


def _extents_v2(masks: np.ndarray) -> np.ndarray:
    n, height, width = masks.shape
    rows, cols = masks.max(axis=2) >= NONZERO_LEVEL, masks.max(axis=1) >= NONZERO_LEVEL
    top, left = rows.argmax(axis=1), cols.argmax(axis=1)
    bottom, right = height - rows[:, ::-1].argmax(axis=1), width - cols[:, ::-1].argmax(axis=1)
    extents = np.stack([top, left, bottom - top, right - left], axis=1)
    extents[~rows.any(axis=1)] = 0
    return extents


def write_v2(file: h5py.File, key: str, regions: Regions) -> None:
    """Cropped levels as they are (no differences), the rectangles from full-frame row and column maxima, 64 KiB
    chunks."""
    extents = _extents_v2(regions.masks)
    levels = [_quantise_full(mask[None, top:top + h, left:left + w]).reshape(-1)
              for mask, (top, left, h, w) in zip(regions.masks, extents.tolist())]
    cropped = CroppedMasks(regions.boxes, regions.scores, regions.labels, extents,
                           np.concatenate(levels) if levels else np.zeros(0, np.uint8), regions.size)
    group = file.create_group(key)
    group.attrs.update(height=regions.size[0], width=regions.size[1])
    for name, data in (("boxes", regions.boxes), ("scores", regions.scores), ("labels", regions.labels.astype(
            np.uint8)), ("extents", cropped.extents.astype(np.int32))):
        group.create_dataset(name, data=data, fletcher32=True)
    group.create_dataset("masks", data=cropped.data, chunks=(max(1, min(1 << 16, cropped.data.size)),),
                         maxshape=(None,), compression="lzf", fletcher32=True)


# --- schema 3, as it was written and read ----------------------------------------------------------------------


def write_v3(file: h5py.File, key: str, cropped: CroppedMasks) -> None:
    """The regions in one record dataset, the cropped levels' differences lzf-compressed in one chunk."""
    group = file.create_group(key)
    group.attrs.update(height=cropped.size[0], width=cropped.size[1])
    records = np.empty(len(cropped.boxes), REGION_RECORD)
    records["box"], records["score"] = cropped.boxes, cropped.scores
    records["label"], records["extent"] = cropped.labels, cropped.extents
    group.create_dataset("regions", data=records, fletcher32=True)
    levels = cropped.data
    stored = np.empty_like(levels)
    stored[:1] = levels[:1]
    np.subtract(levels[1:], levels[:-1], out=stored[1:])
    group.create_dataset("masks", data=stored, chunks=(max(1, levels.size),), maxshape=(None,), compression="lzf",
                         fletcher32=True)


def read_v3_window(file: h5py.File, key: str, rows: slice, cols: slice) -> np.ndarray:
    group = file[key]
    records, stored = group["regions"][()], group["masks"][()]
    levels = torch.cumsum(torch.from_numpy(stored), 0, dtype=torch.uint8).numpy()
    cropped = CroppedMasks(records["box"], records["score"], records["label"].astype(np.int64),
                           records["extent"].astype(np.int64), levels,
                           (int(group.attrs["height"]), int(group.attrs["width"])))
    return cropped.window(rows, cols)


# --- flow images before ---------------------------------------------------------------------------------------


def flow_images_before(flow: np.ndarray, encoding: str) -> tuple[np.ndarray, np.ndarray]:
    if encoding == "xym":
        return flow_to_rgb(flow, "xym"), flow_to_rgb(flow * np.float32([-1, 1]), "xym")
    from torchvision.utils import flow_to_image

    def wheel(field):
        return flow_to_image(torch.from_numpy(np.ascontiguousarray(field)).permute(2, 0, 1)).permute(1, 2, 0).numpy()

    return wheel(flow), wheel(flow * np.float32([-1, 1]))


# --- the GPU's share of a write, here on the CPU ---------------------------------------------------------------


def on_device(regions: Regions) -> CroppedMasks:
    return cropped_on_device(*(torch.from_numpy(x) for x in (regions.boxes, regions.scores, regions.labels,
                                                             regions.masks)))


def assert_same_cropped(got: CroppedMasks, want: CroppedMasks) -> None:
    for field in ("boxes", "scores", "labels", "extents", "data"):
        x, y = getattr(got, field), getattr(want, field)
        assert x.dtype == y.dtype and np.array_equal(x, y), f"cropped on the device: {field} differs"


# --- timing ---------------------------------------------------------------------------------------------------


def cpu_ms(fn) -> float:
    start = time.process_time()
    fn()
    return 1000 * (time.process_time() - start)


def median(values) -> str:
    return f"{statistics.median(values):7.1f} ms"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--frames", type=int, default=20)
    p.add_argument("--regions", type=int, default=50)
    p.add_argument("--height", type=int, default=320)
    p.add_argument("--width", type=int, default=568)
    p.add_argument("--crop", type=int, nargs=2, default=(320, 320))
    p.add_argument("--max-side", type=float, default=0.5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--check", action="store_true", help="also assert equal masks and equal flow images")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    frames = [frame_regions(seed, a.regions, a.height, a.width, a.max_side) for seed in range(a.frames)]
    rng = np.random.default_rng(0)
    windows = []
    for _ in frames:
        top = int(rng.integers(0, max(a.height - a.crop[0], 0) + 1))
        left = int(rng.integers(0, max(a.width - a.crop[1], 0) + 1))
        windows.append((slice(top, min(top + a.crop[0], a.height)), slice(left, min(left + a.crop[1], a.width))))
    times: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as folder:
        v1, v2, v2_thread, old, device, v3, parts = (
            Path(folder) / name for name in ("v1.h5", "v2.h5", "v2-thread.h5", "old.h5", "device.h5", "v3.h5",
                                             "parts.h5"))
        with (h5py.File(v1, "w") as f1, h5py.File(old, "w") as f_old, h5py.File(v3, "w", libver=("v110", "latest"))
              as f3, MaskCacheWriter(v2, source="dataset", threaded=False) as w2,
              MaskCacheWriter(device, source="dataset", threaded=False) as w3,
              MaskCacheWriter(parts, source="dataset", threaded=False) as w4):
            w2.write("warm/up", 0, frames[0])
            w3.write("warm/up", 0, on_device(frames[0]))
            write_v1(f1, "warm/00000", frames[0])
            write_v2(f_old, "warm/00000", frames[0])
            write_v3(f3, "warm/00000", on_device(frames[0]))
            for k, regions in enumerate(frames, start=1):
                times.setdefault("write  before (schema 1)", []).append(
                    cpu_ms(lambda: write_v1(f1, f"v/{k:05d}", regions)))
                times.setdefault("write  schema 2", []).append(cpu_ms(lambda: write_v2(f_old, f"v/{k:05d}", regions)))
                times.setdefault("write  now, calling thread", []).append(
                    cpu_ms(lambda: w2.write("v", k, regions)))
                cropped = on_device(regions)  # the GPU's share (here torch on the CPU): not timed
                if a.check:
                    assert_same_cropped(cropped, CroppedMasks.from_regions(regions))
                times.setdefault("write  schema 3, cropped on the GPU: the host's share", []).append(
                    cpu_ms(lambda: write_v3(f3, f"v/{k:05d}", cropped)))
                times.setdefault("write  now, cropped on the GPU: the host's share", []).append(
                    cpu_ms(lambda: w3.write("v", k, cropped)))
                encoded = []
                times.setdefault("write  now, cropped on the GPU: pool (checksums)", []).append(
                    cpu_ms(lambda: encoded.append(w4.encode(cropped))))
                times.setdefault("write  now, cropped on the GPU: writer thread (HDF5)", []).append(
                    cpu_ms(lambda: w4.store("v", k, encoded[0])))
        start = time.process_time()
        with MaskCacheWriter(v2_thread, source="dataset") as writer:
            calling = []
            for k, regions in enumerate(frames, start=1):
                thread_start = time.thread_time()
                writer.write("v", k, regions)
                calling.append(1000 * (time.thread_time() - thread_start))
        times["write  now, writer threads (every thread's CPU)"] = [1000 * (time.process_time() - start) / len(frames)]
        times["write  now, writer threads: the caller's CPU"] = calling
        with (h5py.File(v1, "r") as f1, h5py.File(v3, "r") as f3, MaskCache(v2) as cache,
              MaskCache(device) as from_device):
            read_v1_window(f1, "v/00001", *windows[0])
            read_v3_window(f3, "v/00001", *windows[0])
            cache.read_cropped("v", 1)
            for k, (rows, cols) in enumerate(windows, start=1):
                times.setdefault("read   before: decode frame, crop", []).append(
                    cpu_ms(lambda: read_v1_window(f1, f"v/{k:05d}", rows, cols)))
                times.setdefault("read   schema 3: differences, lzf, running sum", []).append(
                    cpu_ms(lambda: read_v3_window(f3, f"v/{k:05d}", rows, cols)))
                times.setdefault("read   now: cropped masks, paste window", []).append(
                    cpu_ms(lambda: cache.read_cropped("v", k).window(rows, cols)))
                if a.check:
                    want = read_v1_window(f1, f"v/{k:05d}", rows, cols)
                    assert np.array_equal(cache.read_cropped("v", k).window(rows, cols), want), f"frame {k} differs"
                    assert np.array_equal(read_v3_window(f3, f"v/{k:05d}", rows, cols), want), f"frame {k} differs"
                    whole = read_v1_window(f1, f"v/{k:05d}", slice(None), slice(None))
                    assert np.array_equal(cache.read("v", k).masks, whole), k
                    assert np.array_equal(from_device.read("v", k).masks, whole), k
        sizes = {name: path.stat().st_size / len(frames) / 2**20
                 for name, path in (("before", v1), ("schema 2", old), ("schema 3", v3), ("now", v2))}
    for encoding in ("xym", "wheel"):
        flows = [(np.random.default_rng(s).standard_normal((a.height, a.width, 2)) * 3).astype(np.float16)
                 .astype(np.float32) for s in range(min(a.frames, 10))]
        flow_images_before(flows[0], encoding), flow_images(flows[0], encoding)
        for flow in flows:
            times.setdefault(f"flow {encoding:5s} image + mirror, before", []).append(
                cpu_ms(lambda: flow_images_before(flow, encoding)))
            times.setdefault(f"flow {encoding:5s} image + mirror, now", []).append(
                cpu_ms(lambda: flow_images(flow, encoding)))
            if a.check:
                for got, want in zip(flow_images(flow, encoding), flow_images_before(flow, encoding)):
                    assert np.array_equal(got, want), f"{encoding} images differ"
    print(f"{a.frames} frames of {a.height} x {a.width}, {a.regions} regions, "
          f"crop {a.crop[0]} x {a.crop[1]}, {torch.get_num_threads()} torch thread(s); CPU ms per frame, median")
    for name, values in times.items():
        print(f"  {name:54s} {median(values)}")
    print("  file size per frame: " + ", ".join(f"{name} {size:.2f} MiB" for name, size in sizes.items()))
    if a.check:
        print("  checked: masks equal pixel for pixel, flow images equal byte for byte")


if __name__ == "__main__":
    main()
