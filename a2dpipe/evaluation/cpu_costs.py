"""CPU-side cost per unit of work, measured on this machine with the package's own readers and writers.

The GPU does the networks; the CPU reads frames, crops and mirrors them, encodes flow images and writes and reads
region-mask caches. :func:`measure_cpu_costs` times those steps, in CPU milliseconds of one thread, on synthetic
arrays of the configuration's shapes: A2D-sized frames, the training crop, ``masks.max_regions`` soft masks per
frame, the flow encoding. It writes a few frames through the pipeline's writers into a temporary folder
(``FrameWriter`` with extract-frames' filters, ``FlowWriter``, ``MaskCacheWriter``) and reads them back through
``StoreSamples`` and ``load_view``, the training and prediction loader's path, so that a change to any of them
(a faster cache format, another compression) shows here without a change to this module.

Per unit (milliseconds of CPU):

* ``sample_crop[input]``: one training sample: a crop window of the frame (and its flow image for ``rgbflow``),
  half of them mirrored;
* ``sample_crop_regions[input]``: the same with the frame's region masks read from the cache and cropped (stage 2);
* ``sample_frame[input]``, ``sample_frame_regions[input]``: one whole frame, as prediction reads it;
* ``mask_frame``: one frame of a mask model's training step, as its loader workers (or read-ahead thread) read it:
  image and instance masks, half of them mirrored, boxes (:func:`a2dpipe.masks.train.training_frames`);
* ``mask_write``: one frame's ``max_regions`` soft masks written to a region-mask cache (the writer's threads
  included), from full-frame float32 masks: rectangles, quantising, checksums, HDF5 (a job on the CPU);
* ``mask_encode``, ``mask_store``: the same frame's masks written already quantised and cropped, as a job on a GPU
  hands them to the writer (:func:`a2dpipe.masks.device_crop.cropped_on_device` did the rest on the GPU), in its
  two parts: the stored chunks' checksums (``MaskCacheWriter.encode``, its thread pool's work) and the HDF5 calls
  (``MaskCacheWriter.store``, its writer thread's, one frame at a time under HDF5's lock);
* ``flow_read``, ``flow_encode``, ``flow_store``: what a flow job adds per frame to the network's work: the frame
  pair read from the frames store (:func:`a2dpipe.flow.stage.read_pair`), the flow image and its mirror image
  encoded from the stored field and the checksums computed (``FlowWriter.encode``, its thread pool's work), the
  three datasets stored (``FlowWriter.store``, its writer thread's work, one frame at a time).

Region masks are blobs inside their boxes, zero outside (as a mask model's are), images smooth noise: compressors
see data of the kind they get in a run, not white noise.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np

__all__ = ["measure_cpu_costs", "measure_config_cpu_costs", "synthetic_regions", "write_synthetic_frames",
           "cpu_ms_per_unit", "cpu_processes", "wall_ms", "cpu_caption"]

FRAMES = 4  # frames written and read back: enough for stable medians, a few seconds in all


def _smooth(rng: np.random.Generator, shape: tuple[int, int, int], scale: int = 16) -> np.ndarray:
    """A smooth random field in [0, 1) of ``shape`` (H, W, C): coarse noise, bilinearly enlarged."""
    import cv2

    h, w, c = shape
    coarse = rng.random((h // scale + 2, w // scale + 2, c)).astype(np.float32)
    return cv2.resize(coarse, (w, h), interpolation=cv2.INTER_LINEAR).reshape(shape)


def synthetic_regions(rng: np.random.Generator, size: tuple[int, int], count: int):
    """``count`` soft masks: a smooth blob inside a random box covering 10-40 % of each side (as
    benchmarks/backends.py draws boxes), zero outside, as a mask model pastes them."""
    from a2dpipe.masks.cache import Regions

    h, w = size
    boxes = np.zeros((count, 4), np.float32)
    masks = np.zeros((count, h, w), np.float32)
    for k in range(count):
        bh, bw = max(int(rng.uniform(0.1, 0.4) * h), 1), max(int(rng.uniform(0.1, 0.4) * w), 1)
        y, x = int(rng.integers(0, h - bh)), int(rng.integers(0, w - bw))
        rows = ((np.arange(bh) + 0.5) / bh - 0.5)[:, None]
        cols = ((np.arange(bw) + 0.5) / bw - 0.5)[None, :]
        masks[k, y:y + bh, x:x + bw] = np.exp(-8 * (rows ** 2 + cols ** 2))
        boxes[k] = (x, y, x + bw - 1, y + bh - 1)
    return Regions(boxes, rng.random(count), rng.integers(1, 8, count), masks)


def write_synthetic_frames(path: Path, videos: list[str], size: tuple[int, int], rng: np.random.Generator) -> Path:
    """A frames store at ``path`` holding one annotated train frame per video (extract-frames' layout)."""
    from a2dpipe.dataset.frames import FrameWriter

    with FrameWriter(path) as frames:
        for video in videos:
            _write_frame(frames, rng, video, size)
    return path


def _write_frame(frames, rng, video: str, size: tuple[int, int]) -> None:
    """One annotated frame in extract-frames' layout: image, neighbour, labels, two actor instances."""
    from a2dpipe.stores import pixel_chunks

    h, w = size
    filters = {"compression": "lzf", "fletcher32": True}  # extract-frames' default (config frames.compression)
    rgb = (_smooth(rng, (h, w, 3)) * 255).astype(np.uint8)
    label = np.zeros((h, w), np.uint8)
    instances = np.zeros((2, h, w), np.uint8)
    for k, pair in enumerate((11, 34)):
        y, x = int(rng.integers(0, h // 2)), int(rng.integers(0, w // 2))
        instances[k, y:y + h // 3, x:x + w // 4] = 1
        label[instances[k] > 0] = pair
    group = frames.create_group(video, 1)
    group.set_attrs(split="train", neighbour_frame=2, direction="next")
    for name, data in (("rgb", rgb), ("neighbour", rgb[:, ::-1]), ("label", label)):
        group.create_dataset(name, data=data, chunks=pixel_chunks(data.shape), **filters)
    boxes = np.float32([[0, 0, w // 4, h // 3]] * 2)
    for name, data in (("instance_masks", instances), ("instance_boxes", boxes), ("instance_ids", np.uint8([11, 34]))):
        group.create_dataset(name, data=data, **filters)


def _cpu_ms(fn, items) -> float:
    """Median CPU milliseconds (this process, every thread) of ``fn(item)`` over ``items``."""
    times = []
    for item in items:
        start = time.process_time()
        fn(item)
        times.append(1000 * (time.process_time() - start))
    return float(np.median(times))


def measure_cpu_costs(*, frame_size: tuple[int, int], crop: tuple[int, int], regions: int, encoding: str,
                      wheel_max: float | None = None, seed: int = 0) -> dict:
    """CPU milliseconds per unit of work (module docstring) at these shapes; one thread of this machine, as a
    loader worker runs (torch's DataLoader workers run torch on one thread)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _measure(frame_size, crop, regions, encoding, wheel_max, seed)
    finally:
        torch.set_num_threads(threads)


def _measure(frame_size, crop, regions, encoding, wheel_max, seed) -> dict:
    from a2dpipe.flow.encode import flow_to_rgb
    from a2dpipe.masks.cache import MaskCacheWriter
    from a2dpipe.segmentation.samples import StoreSamples, View, load_view, plan_view

    rng = np.random.default_rng(seed)
    videos = [f"v{k:03d}" for k in range(FRAMES)]
    fields = [(_smooth(rng, (*frame_size, 2), 32) - 0.5) * 12 for _ in videos]
    masks = [synthetic_regions(rng, frame_size, regions) for _ in videos]
    costs: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        paths = {kind: folder / kind / "shard-000.h5" for kind in ("frames", "flow", "masks")}
        for path in paths.values():
            path.parent.mkdir()
        write_synthetic_frames(paths["frames"], videos, frame_size, rng)
        flow_to_rgb(fields[0], encoding, wheel_max)  # warm-up: the wheel's first call imports torchvision
        costs.update(_flow_costs(paths, videos, fields, encoding, wheel_max))
        start = time.process_time()  # the writer's thread does the work after write() returns: time the whole file
        with MaskCacheWriter(paths["masks"], source="dataset") as cache:
            cache.seconds_per_frame = 0.0
            for video, regions in zip(videos, masks):
                cache.write(video, 1, regions)
        costs["mask_write"] = 1000 * (time.process_time() - start) / FRAMES
        costs.update(_mask_store_costs(folder / "masks" / "cropped.h5", videos, masks))
        costs["mask_frame"] = _mask_frame_ms(paths["frames"])

        views = [View(k) for k in range(FRAMES)]
        for name in ("sample_crop", "sample_crop_regions", "sample_frame", "sample_frame_regions"):
            costs[name] = {}
        for input in ("rgb", "rgbflow"):
            flow = [paths["flow"]] if input == "rgbflow" else None
            for with_regions in (False, True):
                samples = StoreSamples([paths["frames"]], split="train", flow=flow, flow_encoding=encoding,
                                       wheel_max=wheel_max, masks=[paths["masks"]] if with_regions else None,
                                       gt_regions=with_regions)
                load_view(samples, View(0, flow=flow is not None))  # opens the files: not per sample
                suffix = "_regions" if with_regions else ""
                crops = [plan_view(v.index, samples.size(v.index), crop, rng) for v in views]
                costs[f"sample_crop{suffix}"][input] = _cpu_ms(lambda v: load_view(samples, v), crops)
                whole = [View(v.index, flow=flow is not None) for v in views]
                costs[f"sample_frame{suffix}"][input] = _cpu_ms(lambda v: load_view(samples, v), whole)
                samples.close()
    return costs


def _flow_costs(paths: dict, videos: list[str], fields: list, encoding: str, wheel_max) -> dict:
    """A flow job's CPU milliseconds per frame (module docstring), each part timed alone in this thread."""
    from a2dpipe.dataset.frames import FrameStore
    from a2dpipe.flow import FlowWriter
    from a2dpipe.flow.stage import read_pair

    costs = {}
    with FrameStore(paths["frames"]) as frames:
        costs["flow_read"] = _cpu_ms(lambda video: read_pair(frames, video, 1), videos)
    # the writer encodes both images from the field, as the flow stage has it
    with FlowWriter(paths["flow"], method="estimate", encoding=encoding, wheel_max=wheel_max) as flows:
        costs["flow_encode"], costs["flow_store"] = _writer_parts(flows, videos, fields)
    return costs


def _writer_parts(writer, videos: list[str], items: list) -> tuple[float, float]:
    """CPU milliseconds per frame of a :class:`~a2dpipe.chunks.PipelinedWriter`'s two parts, each timed alone in
    this thread: ``encode`` (its pool's work) of each of ``items``, then ``store`` (its writer thread's) of each
    as frame 1 of ``videos``."""
    writer.seconds_per_frame = 0.0
    encoded = []
    encode_ms = _cpu_ms(lambda item: encoded.append(writer.encode(item)), items)
    store_ms = _cpu_ms(lambda k: writer.store(videos[k], 1, encoded[k]), range(len(items)))
    return encode_ms, store_ms


def _mask_frame_ms(path: Path) -> float:
    """CPU milliseconds of one frame of a mask model's training step, read from the frames store at ``path``."""
    from a2dpipe.masks.data import InstanceReader, list_frames
    from a2dpipe.masks.train import training_frames

    refs = list_frames([path])
    with InstanceReader([path]) as reader:
        training_frames(reader, refs, "dataset", 0, 0, 1)  # opens the file: not per frame
        return _cpu_ms(lambda step: training_frames(reader, refs, "dataset", 0, step, 1), range(1, FRAMES + 1))


def _mask_store_costs(path: Path, videos: list[str], masks: list) -> dict:
    """CPU milliseconds per frame of the cache writer's two parts (module docstring) given masks already quantised
    and cropped, each part timed alone in this thread."""
    from a2dpipe.masks.cache import CroppedMasks, MaskCacheWriter

    cropped = [CroppedMasks.from_regions(regions) for regions in masks]  # the GPU's share: not timed
    with MaskCacheWriter(path, source="dataset", threaded=False) as cache:
        encode_ms, store_ms = _writer_parts(cache, videos, cropped)
    return {"mask_encode": encode_ms, "mask_store": store_ms}


def measure_config_cpu_costs(config: dict, frame_size: tuple[int, int]) -> dict:
    """:func:`measure_cpu_costs` at the configuration's shapes: frames of ``frame_size``, the training crop,
    ``masks.max_regions`` regions, the flow encoding."""
    seg, flow = config["segmentation"], config["flow"]
    wheel_max = flow["wheel_max"] if flow["encoding"] == "wheel" else None
    return measure_cpu_costs(frame_size=frame_size, crop=tuple(seg["crop"]),
                             regions=int(config["masks"]["max_regions"]), encoding=flow["encoding"],
                             wheel_max=wheel_max)


def cpu_ms_per_unit(unit: dict, costs: dict, key: str = "cpu") -> float:
    """CPU milliseconds of one unit of a stage (one thread) from measured ``costs`` (:func:`measure_cpu_costs`);
    ``unit`` a row of :func:`a2dpipe.evaluation.estimate.work_units`. ``key``: ``cpu`` (all of it) or
    ``beside_gpu`` (the share a job's writer thread does while the GPU runs) or ``serial`` (one thread's share) or
    ``pool`` (the share a job's own thread does beside everything)."""
    return sum(count * (costs[kind][inp] if inp else costs[kind]) for kind, inp, count in unit.get(key, ()))


def cpu_processes(unit: dict, workers: int) -> int:
    """Processes that do a stage's CPU work: the loader's ``workers`` (0: the job's own process), or as many
    processes and threads of a flow job (``fed_by`` ``pool``: its CPUs but the one running the network), else one
    (the job's process, or its read-ahead thread)."""
    return max(workers, 1) if unit["fed_by"] in ("loader", "pool") else 1


def wall_ms(unit: dict, gpu_ms: float, cpu_ms: float, workers: int, serial_ms: float = 0.0,
            beside_ms: float = 0.0, pool_ms: float = 0.0) -> tuple[float, str]:
    """Milliseconds of one unit with the CPU side, and the stage's bound (``GPU`` or ``CPU``).

    Loader workers, a job's read-ahead thread (``fed_by`` ``thread``) or a flow job's readers and encoder pool
    (``pool``) prepare the next units while the GPU runs: the slower of the two sets the pace, and the CPU side is
    at least ``serial_ms``, the part one thread does for every unit (the flow cache's writer). Without workers (and
    in the stages whose one process reads and writes between the GPU's passes) the two add up, but for
    ``beside_ms`` of the CPU's work, a writer thread's, which runs while the GPU does (not while the job reads:
    HDF5 takes one lock per process): the reads, then the slower of the GPU and the writer. ``pool_ms`` of the CPU's
    work (a region-mask writer's checksums) runs on a thread of the job's own beside all of that, holding no lock:
    it sets the pace only where it is the slowest."""
    own = max((cpu_ms - pool_ms) / cpu_processes(unit, workers), serial_ms)
    cpu_share = max(own, pool_ms)
    bound = "CPU" if cpu_share > gpu_ms else "GPU"
    overlapped = (unit["fed_by"] == "loader" and workers > 0) or unit["fed_by"] in ("thread", "pool")
    return (max(gpu_ms, cpu_share) if overlapped else max(own - beside_ms + max(gpu_ms, beside_ms), pool_ms)), bound


def cpu_caption(table, devices: list[str], workers: int) -> str:
    """The estimate caption's paragraph on the CPU side, with each device's hours in all with and without it."""
    totals = ", ".join(f"{key} {table[f'{key} wall hours'].sum():.1f} h "
                       f"(FLOPs alone {table[f'{key} hours'].sum():.1f} h)" for key in devices)
    return ("cpu ms_per_unit: the CPU side of a unit, measured on this machine on one thread with the package's "
            "readers and writers on synthetic A2D-sized arrays (a2dpipe/evaluation/cpu_costs.py): reading and "
            "cropping samples, region-mask cache writes and reads, flow jobs' frame reads, image encoding and "
            f"cache writes. cpu processes: the loader's {workers} worker(s) (segmentation.loader_workers) where "
            "they feed the stage, as many frame readers and encoder threads in a flow job (its writer thread's "
            "share a floor), else the job's one process (or its read-ahead thread). wall hours: the GPU's and the "
            "CPU's time per unit overlapped where workers or a thread run beside the GPU, a region-mask job's "
            "writer thread included, added where one process "
            "does both; "
            "bound: the side that sets the pace. Stages in all, "
            f"with the CPU side: {totals}.")
