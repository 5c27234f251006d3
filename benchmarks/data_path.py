"""Benchmark: the segmentation data path alone against the network's training step, at the paper's batch.

    python benchmarks/data_path.py [--frames 40] [--height 320] [--width 568] [--crop 320 320] [--batch 10]
                                   [--workers 0 1 2] [--steps 10] [--encoding xym] [--threads 2]
                                   [--backbone tiny] [--width-channels 24] [--listing 11926]
                                   [--pixel-chunks 64 64] [--flow-compression none]

Writes, in a temporary folder, a frames shard and a flow cache of ``--frames`` A2D-sized synthetic frames in the
pipeline's own layout (frames: lzf + checksum, as ``extract-frames``, in 64 x 64-pixel chunks,
:func:`a2dpipe.stores.pixel_chunks`; flow: the flow stage's ``FlowWriter``, uncompressed). ``--pixel-chunks 0 0``
leaves the chunks to h5py (one channel each, the layout before) and ``--flow-compression lzf`` or ``gzip`` stores
the flow cache with lzf (schema 2) or gzip level 1 (before that) in those chunks, so that layouts can be compared;
then measures:

- data path: samples per second of the training loader (read the window, crop, mirror half the frames, their flow
  image read from ``rgb_mirror`` or, in another layout, re-encoded; collate; pinned when CUDA is present) for
  each ``--workers``, two streams, over ``--steps`` batches after a warm-up batch that starts the workers; the main process only takes the batches;
- model step: seconds per stage-1 training step (forward, backward, optimiser) of the two-stream network at the
  same batch and crop on this machine, with ``--threads`` torch threads (``--backbone tiny`` is the CPU default;
  ``resnet101`` the paper's, slow on a CPU);
- start-up: seconds to list a split of ``--listing`` frames spread over 64-video-sized shards (tiny frames: the
  listing reads group attributes and dataset shapes, never pixels), i.e. what a job does before its first step.

Measured on a quiet 2-core CPU machine, 320 x 320 crops of 320 x 568 frames, batch 10, ``--steps 20``, CPU time of
the reading process with ``--workers 0`` and samples per second of wall time with ``--workers 2``:

- with the lzf flow cache (schema 2) holding ``rgb_mirror``, 64 x 64-pixel chunks: xym 6.4-8.1 ms per sample,
  218-258 samples/s;
  wheel (the paper preset's encoding) 5.4-5.5 ms, 260-271 samples/s;
- before (automatic chunks, gzip flow cache, mirrored windows re-encoded from the field): xym 7.8-8.3 ms,
  212 samples/s; wheel 24.5 ms, 100 samples/s (re-encoding a 320 x 320 wheel image is ~8 ms of CPU, and on the
  wheel's per-frame scale it decoded the whole field first). The mirror images make the flow cache ~40 % larger.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from a2dpipe.dataset.frames import FrameWriter, masks_to_boxes
from a2dpipe.flow import FlowWriter
from a2dpipe.flow.encode import flow_to_rgb
from a2dpipe.segmentation.loader import StepBatches, collate, make_loader, to_device
from a2dpipe.segmentation.samples import StoreSamples, plan_view
from a2dpipe.stores import PIXEL_CHUNK

FRAME_FILTERS = {"compression": "lzf", "fletcher32": True}  # extract-frames' default filters
FLOW_FILTERS = {"gzip": {"compression": "gzip", "compression_opts": 1},  # the flow cache's, before
                "lzf": {"compression": "lzf"}, "none": {}}


def image_chunks(data: np.ndarray, pixels: tuple[int, int] | None) -> dict:
    """``chunks`` of an image dataset: ``pixels`` rows x cols with every channel, or h5py's automatic guess."""
    if pixels is None or data.ndim < 2 or data.shape[0] < 8 or min(pixels) <= 0:
        return {}
    if data.ndim == 3 and data.shape[2] in (2, 3):  # (H, W, C)
        return {"chunks": (min(pixels[0], data.shape[0]), min(pixels[1], data.shape[1]), data.shape[2])}
    if data.ndim == 2:
        return {"chunks": (min(pixels[0], data.shape[0]), min(pixels[1], data.shape[1]))}
    return {}


def smooth(rng: np.random.Generator, shape: tuple[int, ...], scale: int = 16) -> np.ndarray:
    """A smooth random field in [0, 1) of ``shape`` (H, W, C): coarse noise, bilinearly enlarged."""
    import cv2

    h, w, c = shape
    coarse = rng.random((h // scale + 2, w // scale + 2, c)).astype(np.float32)
    return cv2.resize(coarse, (w, h), interpolation=cv2.INTER_LINEAR).reshape(shape)


def write_frame(frames: FrameWriter, flows: FlowWriter, rng, video: str, size: tuple[int, int], encoding: str,
                pixel_chunks: tuple[int, int] | None = None, flow_compression: str = "none") -> None:
    """One annotated frame with two actor instances, its neighbour and its flow."""
    h, w = size
    rgb = np.clip(smooth(rng, (h, w, 3)) * 220 + rng.normal(0, 4, (h, w, 3)), 0, 255).astype(np.uint8)
    label = np.zeros((h, w), np.uint8)
    masks = np.zeros((2, h, w), np.uint8)
    for k, pid in enumerate((11, 34)):
        y, x = int(rng.integers(0, h // 2)), int(rng.integers(0, w // 2))
        masks[k, y:y + h // 3, x:x + w // 4] = 1
        label[masks[k] > 0] = pid
    group = frames.create_group(video, 1)
    group.attrs.update({"split": "train", "neighbour_frame": 2, "direction": "next"})
    for name, data in (("rgb", rgb), ("neighbour", rgb[:, ::-1]), ("label", label)):
        group.create_dataset(name, data=data, **FRAME_FILTERS, **image_chunks(data, pixel_chunks))
    for name, data in (("instance_masks", masks), ("instance_boxes", masks_to_boxes(masks)),
                       ("instance_ids", np.uint8([11, 34]))):
        group.create_dataset(name, data=data, **FRAME_FILTERS)
    flow = (smooth(rng, (h, w, 2), 32) - 0.5) * 12
    if pixel_chunks == (PIXEL_CHUNK, PIXEL_CHUNK) and flow_compression == "none":  # the pipeline's own writer
        flows.write(video, 1, flow, flow_to_rgb(flow, encoding))
        return
    group = flows.create_group(video, 1)  # FlowWriter.write's datasets, in the other layout or compression
    for name, data in (("flow", flow.astype(np.float16)), ("rgb", flow_to_rgb(flow, encoding))):
        group.create_dataset(name, data=data, **FLOW_FILTERS[flow_compression], **image_chunks(data, pixel_chunks))


def write_shard(folder: Path, count: int, size: tuple[int, int], encoding: str,
                pixel_chunks: tuple[int, int] | None = None, name: str = "shard-000.h5",
                flow_compression: str = "none") -> tuple[Path, Path]:
    rng = np.random.default_rng(0)
    frames_path, flow_path = folder / "frames" / name, folder / "flow" / name
    frames_path.parent.mkdir(parents=True, exist_ok=True)
    flow_path.parent.mkdir(parents=True, exist_ok=True)
    with FrameWriter(frames_path) as frames, FlowWriter(flow_path, method="bench", encoding=encoding) as flows:
        flows.seconds_per_frame = 0.0
        for k in range(count):
            write_frame(frames, flows, rng, f"v{k:05d}", size, encoding, pixel_chunks, flow_compression)
    return frames_path, flow_path


def samples_per_second(samples, *, workers: int, steps: int, batch: int, crop, device) -> tuple[float, float]:
    """Training batches as stage 1 draws them (two streams, random crop, mirror), timed after a warm-up batch:
    samples per second of wall time, and of this process's CPU time (with workers: the main process's share)."""

    def views(step):
        rng = np.random.default_rng([0, 1, step, 1])
        chosen = np.random.default_rng([0, step]).integers(0, len(samples), batch)
        return [plan_view(int(i), samples.size(int(i)), crop, rng) for i in chosen]

    loader = make_loader(samples, StepBatches(views, 0, steps + 1), collate_fn=collate, device=device,
                         workers=workers, prefetch=2)
    batches = iter(loader)
    next(batches)
    started, cpu = time.perf_counter(), time.process_time()
    for _ in range(steps):
        next(batches)
    return steps * batch / (time.perf_counter() - started), steps * batch / (time.process_time() - cpu)


def step_seconds(args, device, steps: int = 3) -> float:
    """Seconds per stage-1 training step of the two-stream network at the benchmark's batch and crop."""
    from a2dpipe.segmentation.models import build_segmenter, segmentation_loss

    torch.manual_seed(0)
    model = build_segmenter(input="rgbflow", backbone=args.backbone, width=args.width_channels,
                            aspp_rates=[6, 12, 18, 24]).to(device).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
    ch, cw = args.crop
    labels = torch.zeros(args.batch, ch, cw, dtype=torch.uint8)
    labels[:, ch // 4:ch // 2, cw // 4:cw // 2] = 11
    batch = to_device({"keys": [], "rgb": torch.randint(0, 255, (args.batch, ch, cw, 3), dtype=torch.uint8),
                       "flow": torch.randint(0, 255, (args.batch, ch, cw, 3), dtype=torch.uint8), "label": labels,
                       "regions": None}, device)
    times = []
    for _ in range(steps + 1):  # the first step warms up
        started = time.perf_counter()
        losses = segmentation_loss(model.forward_baseline(batch["rgb"], batch["flow"]), batch["actor"],
                                   batch["action"])
        optimizer.zero_grad()
        sum(losses.values()).backward()
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - started)
    return float(np.median(times[1:]))


def listing_seconds(folder: Path, count: int, per_shard: int = 200) -> tuple[float, float]:
    """Seconds to construct StoreSamples over ``count`` frames in shards of ``per_shard`` (what a job does first)."""
    paths = []
    for shard in range(0, count, per_shard):
        name = f"shard-{shard // per_shard:03d}.h5"
        with FrameWriter(folder / name) as frames:
            for k in range(shard, min(shard + per_shard, count)):
                group = frames.create_group(f"v{k:05d}", 1)
                group.attrs.update({"split": "train" if k % 4 else "test", "neighbour_frame": 2, "direction": "next"})
                group.create_dataset("label", data=np.zeros((4, 6), np.uint8), **FRAME_FILTERS)
        paths.append(folder / name)
    started, cpu = time.perf_counter(), time.process_time()
    samples = StoreSamples(paths, split="train")
    seconds = time.perf_counter() - started, time.process_time() - cpu
    assert len(samples) == sum(1 for k in range(count) if k % 4)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=40, help="frames in the benchmark shard")
    parser.add_argument("--height", type=int, default=320)
    parser.add_argument("--width", type=int, default=568)
    parser.add_argument("--crop", type=int, nargs=2, default=[320, 320])
    parser.add_argument("--batch", type=int, default=10)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=10, help="timed batches per worker count")
    parser.add_argument("--encoding", choices=("xym", "wheel"), default="xym")
    parser.add_argument("--threads", type=int, default=2, help="torch threads of the model step")
    parser.add_argument("--backbone", default="tiny")
    parser.add_argument("--width-channels", type=int, default=24, help="tiny backbone's first-stage channels")
    parser.add_argument("--listing", type=int, default=11926, help="frames of the start-up (listing) measurement")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--pixel-chunks", type=int, nargs=2, default=[PIXEL_CHUNK, PIXEL_CHUNK],
                        help="store images in chunks of ROWS COLS pixels holding every channel (0 0: h5py's "
                             "automatic chunks, the layout before)")
    parser.add_argument("--flow-compression", choices=tuple(FLOW_FILTERS), default="none",
                        help="filter of the flow cache's datasets (the flow stage writes none; lzf and gzip before)")
    parser.add_argument("--no-step", action="store_true", help="skip the model step")
    args = parser.parse_args()
    device = torch.device(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        started = time.perf_counter()
        chunks = tuple(args.pixel_chunks) if min(args.pixel_chunks) > 0 else None
        frames, flow = write_shard(tmp, args.frames, (args.height, args.width), args.encoding, chunks,
                                   flow_compression=args.flow_compression)
        print(f"wrote {args.frames} frames {args.height} x {args.width} in {time.perf_counter() - started:.1f} s "
              f"(frames {frames.stat().st_size / 2**20:.1f} MiB, flow {flow.stat().st_size / 2**20:.1f} MiB)")
        samples = StoreSamples([frames], split="train", flow=[flow], flow_encoding=args.encoding)
        crop = tuple(args.crop)
        print(f"data path, two streams, crop {crop[0]} x {crop[1]}, batch {args.batch}, encoding {args.encoding}, "
              f"pinned: {device.type == 'cuda'}, image chunks: {chunks or 'automatic (one channel each)'}, "
              f"flow cache {args.flow_compression}")
        for workers in args.workers:
            rate, cpu_rate = samples_per_second(samples, workers=workers, steps=args.steps, batch=args.batch,
                                                crop=crop, device=device)
            print(f"  workers {workers}: {rate:7.1f} samples/s  ({1000 * args.batch / rate:7.1f} ms per batch); "
                  f"main process CPU {1000 / cpu_rate:6.2f} ms per sample")
        samples.close()
        torch.set_num_threads(args.threads)
        seconds = float("nan") if args.no_step else step_seconds(args, device)
        print(f"model step, stage 1 two-stream {args.backbone}, batch {args.batch}, {args.threads} threads, "
              f"{device}: {1000 * seconds:.0f} ms ({args.batch / seconds:.1f} samples/s)")
        if args.listing:
            (tmp / "listing").mkdir()
            wall, cpu = listing_seconds(tmp / "listing", args.listing)
            print(f"start-up: listing the train split of {args.listing} frames: {wall:.2f} s ({cpu:.2f} s CPU)")


if __name__ == "__main__":
    main()
