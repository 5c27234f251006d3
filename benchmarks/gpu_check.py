"""GPU check: one short run that verifies the paper preset's GPU paths and times each stage.

    python benchmarks/gpu_check.py [--config config/paper.yaml] [--device cuda] [--budget 270] [--out check.csv]
                                   [--frame 320 568] [--regions 50] [--steps 5] [--warmup 2] [--repeats 10]
                                   [--checks stage1 stage2 inference data fcis flownet2 cache devices resume]
                                   [--lr-scale 0.01] [--workers N]
    python benchmarks/gpu_check.py --tiny --device cpu    # the same checks on a tiny network, seconds on a CPU

The network and its training settings are the config's (by default the paper preset: two-stream dilated
ResNet-101, 320 x 320 crops, batch 10, SGD, bfloat16 autocast with ``amp: true``), built at random initial weights
(the ImageNet files the preset names are not needed: speed does not depend on the weights) and so trained at the
config's learning rates times ``--lr-scale`` (0.01): the paper's rates suit ImageNet weights, and from random ones
they make the loss climb (ResNet-101, 96 x 96 crops, batch 2: 8.1 to 252 in 8 steps). Inputs are random
frames made once and moved to the device once (``collate`` and ``to_device``, the loader's own functions): the
timings are the network's; the data path check times reading them. The checks, in order:

1. stage 1 -- training steps of front-end + ASPP baseline on random crops (config ``crop``) at the stage-1 batch,
   through the shared :class:`a2dpipe.trainer.Trainer` (autocast, loss sum, the finite-loss check, backward,
   optimiser and poly schedule of ``a2dpipe.segmentation.train``); ms per step and per frame after ``--warmup``
   steps, each step ``torch.cuda.synchronize``d; peak GPU memory (``torch.cuda.max_memory_allocated``);
2. stage 2 -- the same with the front-end frozen and the region back-end trained on ``--regions`` random boxes and
   soft masks per ``--frame`` (the regions ``benchmarks/backends.py`` times) at the stage-2 batch; checks that the
   boxes reach ``roi_align`` as float32 under autocast;
3. inference -- ms per frame of the Baseline and Ours forward passes of ``a2dpipe predict`` on one ``--frame``;
4. data path -- training batches through the real data path: a frames store and a wheel flow cache in the
   pipeline's layout (16 frames of ``--frame``), ``StoreSamples``, the loader with ``--workers`` worker processes
   (default: the config's ``loader_workers``), pinned and moved to the device; samples per second, and whether that
   keeps up with what the stage-1 step above consumes;
5. FCIS step -- training steps of the config's FCIS (random weights, float32) on ``masks.batch_size`` random frames
   of ``--frame`` with two instances each, through the shared Trainer;
6. FlowNet2 -- ms per frame pair of FlowNet2 (random weights) as the flow stage runs it (``TorchEstimator``);
7. region-mask cache write -- ms per frame of ``MaskCacheWriter.write`` with ``--regions`` soft masks of
   ``--frame`` (whatever the cache's format), read back equal; and ms per frame to quantise and crop those masks
   on the device (``a2dpipe.masks.device_crop.cropped_on_device``, what a region-mask job on a GPU does), equal
   byte for byte to the writer's own cropping;
8. two-job device assignment -- two processes pick their device at once as every stage does
   (``select_device('auto')``, :mod:`a2dpipe.accelerator`): distinct GPUs where the machine has several; without
   CUDA, torch is made to report two GPUs;
9. kill and resume -- a short stage-1 training (the real ``a2dpipe.segmentation.train.train``, resume checkpoint
   every 2 of 8 steps) run uninterrupted in one process; run again in another, run in 5 ms slices
   (SIGSTOP/SIGCONT) until its first checkpoint exists and then SIGKILLed; resumed in a third. The resumed process
   must say it resumed from the checkpoint and end with the uninterrupted run's weights: bitwise on the CPU. On
   CUDA two uninterrupted runs already differ in their last bits (bilinear upsampling's backward accumulates with
   atomics in no fixed order, cuDNN may pick such weight-gradient algorithms, and
   ``torch.use_deterministic_algorithms`` refuses bilinear upsampling's backward and CUDA's NLLLoss), so there the
   check passes when the weights are bitwise equal or their parameters differ by at most 2 % of how far training
   moved them (the norm of resumed - uninterrupted over the norm of uninterrupted - initial). A resume that loses
   the optimiser's momentum gives 0.30 on the tiny network, one that restarts the poly schedule 0.42 (measured on
   the CPU). Processes are started fresh (spawn) wherever CUDA exists (a forked child cannot use CUDA once its
   parent has); elsewhere they are forked, which skips re-importing torch (seconds) and is what the test runs
   (``--start-method``).

``--budget`` seconds (default 270) is a hard limit: a check still running then is stopped (SIGALRM; a training
child is killed) and the figures measured so far are printed. ``--tiny`` swaps in the tiny backbone, 48 x 64
crops and 48 x 88 frames (``TINY``) and runs the stages under bfloat16 autocast on the CPU too, so that the script's
every path runs here in seconds (tests/test_gpu_check.py); FCIS is the tiny one at the frame's size, FlowNet2 (which
has no tiny form) is timed once. Autocast on CUDA is the precision training picks for the GPU (bf16 from compute
capability 8.0, fp16 with loss scaling on 7.x, none below). Run it from the repository root with
``PYTHONPATH=.`` so that this checkout's package is the one imported.

Prints one markdown table (check, value, unit, ok, note) and writes it as CSV to ``--out``; exits non-zero when a
check fails. Progress goes to stderr as each check starts and ends. At exit, multiprocessing's resource tracker may
warn of a leaked semaphore: the lock of the progress bar in the training process the check killed.
"""

from __future__ import annotations

import argparse
import copy
import csv
import logging
import math
import multiprocessing
import os
import re
import signal
import statistics
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from a2dpipe.accelerator import autocast_dtype
from a2dpipe.config import load_config, resolve
from a2dpipe.flow.encode import flow_to_rgb
from a2dpipe.devices import describe_device, select_device
from a2dpipe.errors import A2DError
from a2dpipe.io import atomic_path
from a2dpipe.labels import VALID_PAIRS
from a2dpipe.segmentation.loader import collate, to_device
from a2dpipe.segmentation.models import backends as model_backends
from a2dpipe.segmentation.models import build_segmenter, segmentation_loss, segmenter_arguments
from a2dpipe.segmentation.predict import label_maps, log_probs  # the prediction command's own forward pass
from a2dpipe.segmentation.samples import ArraySamples
from a2dpipe.segmentation.train import load_checkpoint, stage_recipe, train
from a2dpipe.trainer import Trainer
from a2dpipe.variants import Variant

from backends import random_regions, seconds_of  # the regions benchmarks/backends.py times, and its timer

REPO = Path(__file__).resolve().parents[1]
COLUMNS = ("check", "value", "unit", "ok", "note")
CHECKS = {"stage1": "stage 1", "stage2": "stage 2", "inference": "inference", "data": "data path",  # --checks
          "fcis": "FCIS step", "flownet2": "FlowNet2", "cache": "region-mask cache write",
          "devices": "two-job device assignment", "resume": "kill and resume"}
DATA_FRAMES = 16  # frames of the data path's shard (cycled through by the batches)
# --tiny: config overrides and shapes under which every check runs on a CPU in seconds
TINY = {"backbone": "tiny", "width": 8, "aspp_rates": [1, 2], "crop": [48, 64],
        "stage2": {"fc_dim": 16, "roi_channels": 16}}
TINY_FRAME = (48, 88)
# learning rates times this: the paper's rates are set for ImageNet weights; from random ones they make the loss
# climb (ResNet-101, 96 x 96 crops, batch 2: 8.1 -> 252 in 8 steps)
LR_SCALE = 0.01
RESUME_STEPS, RESUME_EVERY = 8, 2
# largest norm(resumed - uninterrupted) / norm(uninterrupted - initial) of the parameters accepted on CUDA (module
# docstring: a broken resume gives 0.30-0.42)
CUDA_RESUME_TOLERANCE = 0.02


class OutOfBudget(Exception):
    """Raised by the budget's alarm inside whichever check is running."""


def row(check: str, value: float, unit: str, ok: bool | None = None, note: str = "") -> dict:
    return {"check": check, "value": float(value), "unit": unit, "ok": ok, "note": note}


# -- settings and inputs -------------------------------------------------------------------------------------------


def check_config(path: str | Path, device: torch.device, tiny: bool, lr_scale: float = LR_SCALE) -> dict:
    """The config to check: ``path`` validated, on ``device``, no pretrained files, learning rates times
    ``lr_scale``; the tiny shapes if asked."""
    config = load_config(path)
    config["device"] = str(device)
    seg = config["segmentation"]
    seg.update(rgb_weights=None, flow_weights=None, loader_workers=0)  # random weights; inputs are in memory
    for opts, keys in ((seg["stage1"], ("lr_front", "lr_back")), (seg["stage2"], ("lr",))):
        opts.update({key: opts[key] * lr_scale for key in keys})
    if tiny:
        seg.update({k: v for k, v in TINY.items() if k != "stage2"})
        seg["stage2"].update(TINY["stage2"])
    return resolve(config, f"{path} with the check's overrides")


def random_samples(count: int, size: tuple[int, int], seed: int = 0) -> ArraySamples:
    """``count`` frames of random pixels, flow and labels (background and valid actor-action ids)."""
    rng = np.random.default_rng(seed)
    h, w = size
    ids = np.array([0, *VALID_PAIRS], np.uint8)
    samples = []
    for k in range(count):
        flow = rng.normal(0, 3, (h, w, 2)).astype(np.float32)
        samples.append({"video": f"v{k:03d}", "frame": 1, "rgb": rng.integers(0, 256, (h, w, 3), dtype=np.uint8),
                        "label": ids[rng.integers(0, len(ids), (h, w))], "flow": flow,
                        "flow_rgb": flow_to_rgb(flow, "xym")})
    return ArraySamples(samples)


def random_batch(count: int, size: tuple[int, int], device, regions: int = 0, seed: int = 0) -> dict:
    """Network inputs of ``count`` random frames on ``device``, with ``regions`` random regions each if asked."""
    samples = random_samples(count, size, seed)
    batch = collate([samples.samples[i] for i in range(count)])
    if regions:
        gen = torch.Generator().manual_seed(seed)
        batch["regions"] = [random_regions(regions, *size, gen) for _ in range(count)]
    return to_device(batch, device)


# -- timing --------------------------------------------------------------------------------------------------------


def timed(fn, device, warmup: int, count: int) -> list[float]:
    """Seconds of each of ``count`` calls of ``fn`` after ``warmup`` untimed ones, synchronised; fewer when the
    budget runs out after at least one timed call."""
    times = []
    try:
        for k in range(warmup + count):
            seconds = seconds_of(fn, device)
            if k >= warmup:
                times.append(seconds)
    except OutOfBudget:
        if not times:
            raise
    return times


def timed_steps(trainer: Trainer, device, warmup: int, steps: int) -> list[float]:
    """:func:`timed` optimiser steps of ``trainer``."""
    return timed(lambda: trainer.train(max_steps=trainer.step + 1), device, warmup, steps)  # one step a call


def reset_peak_memory(model, device) -> None:
    """Before a check: the last check's gradients freed, the peak-memory counter reset."""
    model.zero_grad(set_to_none=True)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_rows(name: str, device) -> list[dict]:
    if device.type != "cuda":
        return []  # no comparable figure on the CPU
    return [row(f"{name} peak memory", torch.cuda.max_memory_allocated(device) / 2**30, "GiB")]


def budget_note(times: list[float], wanted: int) -> str:
    return " (then the budget was spent)" if len(times) < wanted else ""


def step_rows(name: str, trainer: Trainer, times: list[float], batch: int, note: str, args) -> list[dict]:
    losses = [r["loss"] for r in trainer.history]
    finite = bool(losses) and all(map(math.isfinite, losses))
    note = f"{note}; {len(times)} timed steps{budget_note(times, args.steps)}, loss {losses[0]:.3f} -> {losses[-1]:.3f}"
    step = statistics.median(times)
    return [row(f"{name} step", 1000 * step, "ms", finite, note),
            row(f"{name} per frame", 1000 * step / batch, "ms", finite)]


def _trainer(model, stage: int, config: dict, step_fn, device, amp: torch.dtype | None) -> Trainer:
    """The training loop of ``a2dpipe train --stage S``: its parameter groups, optimiser, poly schedule, autocast
    and (float16) loss scaling."""
    opts = config["segmentation"][f"stage{stage}"]
    optimizer, scheduler = stage_recipe(model, stage, opts)
    return Trainer(model, optimizer, scheduler, step_fn, iterations=opts["iterations"],
                   amp_device=device.type if amp else None, amp_dtype=amp or torch.bfloat16)


def stage1_rows(model, config: dict, device, amp: torch.dtype | None, args) -> list[dict]:
    seg = config["segmentation"]
    batch_size, crop = seg["stage1"]["batch_size"], tuple(seg["crop"])
    batch = random_batch(batch_size, crop, device)
    model.train()

    def step_fn(step):  # CropStep's stage-1 losses, on the fixed batch
        return segmentation_loss(model.forward_baseline(batch["rgb"], batch["flow"]), batch["actor"],
                                 batch["action"])

    reset_peak_memory(model, device)
    trainer = _trainer(model, 1, config, step_fn, device, amp)
    times = timed_steps(trainer, device, args.warmup, args.steps)
    note = f"batch {batch_size}, crop {crop[0]}x{crop[1]}, {seg['backbone']} two-stream"
    return step_rows("stage 1", trainer, times, batch_size, note, args) + peak_memory_rows("stage 1", device)


@contextmanager
def roi_align_dtypes():
    """Records the dtype of every box tensor the region back-end hands to ``roi_align``."""
    seen, original = [], model_backends.roi_align

    def spy(features, rois, *rest, **kwargs):
        seen.extend(r.dtype for r in rois)
        return original(features, rois, *rest, **kwargs)

    model_backends.roi_align = spy
    try:
        yield seen
    finally:
        model_backends.roi_align = original


def stage2_rows(model, config: dict, device, amp: torch.dtype | None, args) -> list[dict]:
    seg = config["segmentation"]
    batch_size, size = seg["stage2"]["batch_size"], tuple(args.frame)
    batch = random_batch(batch_size, size, device, regions=args.regions)

    def step_fn(step):  # CropStep's stage-2 losses: frozen front-end, region back-end
        with torch.no_grad():
            features = model.front_end(batch["rgb"], batch["flow"])
        outputs = model.region_heads(features, size, batch["regions"])
        return segmentation_loss(outputs, batch["actor"], batch["action"])

    reset_peak_memory(model, device)
    trainer = _trainer(model, 2, config, step_fn, device, amp)
    model.train()
    model.front_end.eval()  # frozen parts keep their batch-norm statistics, as in training
    model.baseline.eval()
    with roi_align_dtypes() as dtypes:
        times = timed_steps(trainer, device, args.warmup, args.steps)
    float32 = bool(dtypes) and set(dtypes) == {torch.float32}
    note = (f"batch {batch_size}, frame {size[0]}x{size[1]}, {args.regions} regions per frame, boxes at roi_align: "
            f"{', '.join(sorted({str(d).removeprefix('torch.') for d in dtypes})) or 'none'}")
    rows = step_rows("stage 2", trainer, times, batch_size, note, args)
    for r in rows:
        r["ok"] = r["ok"] and float32
    return rows + peak_memory_rows("stage 2", device)


def inference_rows(model, device, amp: torch.dtype | None, args) -> list[dict]:
    size = tuple(args.frame)
    batch = random_batch(1, size, device, regions=args.regions)
    model.eval()
    reset_peak_memory(model, device)
    rows = []
    for name, variant in (("baseline", Variant("baseline", "rgbflow")),
                          ("ours", Variant("ours", "rgbflow", "dataset", "dataset"))):
        maps = {}
        times = timed(lambda v=variant: maps.update(label_maps(log_probs(model, v, batch, None, amp))), device,
                      args.warmup, args.repeats)
        ok = maps["joint"].shape == (1, *size)
        note = f"frame {size[0]}x{size[1]}" + (f", {args.regions} regions" if name == "ours" else "")
        rows.append(row(f"{name} inference per frame", 1000 * statistics.median(times), "ms", ok,
                        f"{note}; {len(times)} timed passes{budget_note(times, args.repeats)}"))
        if len(times) < args.repeats:
            break
    return rows + peak_memory_rows("inference", device)


# -- the CPU side and the other GPU stages ----------------------------------------------------------------------


def data_rows(config: dict, device, args, folder: Path, rows: list[dict]) -> list[dict]:
    """Training batches through the real data path: a frames store and a flow cache in the pipeline's layout
    (a2dpipe.evaluation.cpu_costs' writers), ``StoreSamples``, the loader with ``--workers`` worker processes,
    pinned and moved to the device; samples per second against what the stage-1 step measured above consumes."""
    from a2dpipe.evaluation.cpu_costs import write_synthetic_frames
    from a2dpipe.flow import FlowWriter
    from a2dpipe.segmentation.loader import StepBatches, make_loader
    from a2dpipe.segmentation.samples import StoreSamples, plan_view

    seg = config["segmentation"]
    batch_size, crop, size = seg["stage1"]["batch_size"], tuple(seg["crop"]), tuple(args.frame)
    rng = np.random.default_rng(0)
    videos = [f"v{k:03d}" for k in range(DATA_FRAMES)]
    for kind in ("frames", "flow"):
        (folder / kind).mkdir(parents=True)
    frames = write_synthetic_frames(folder / "frames" / "shard-000.h5", videos, size, rng)
    with FlowWriter(folder / "flow" / "shard-000.h5", method="check", encoding="wheel") as flows:
        flows.seconds_per_frame = 0.0
        for video in videos:
            field = rng.normal(0, 3, (*size, 2)).astype(np.float32)
            flows.write(video, 1, field, flow_to_rgb(field, "wheel"))
    samples = StoreSamples([frames], split="train", flow=[folder / "flow" / "shard-000.h5"], flow_encoding="wheel")

    def views(step):
        step_rng = np.random.default_rng([0, step])
        return [plan_view(int(i), size, crop, step_rng) for i in step_rng.integers(0, len(samples), batch_size)]

    steps = args.steps + 1
    loader = make_loader(samples, StepBatches(views, 0, steps + 1), collate_fn=collate, device=device,
                         workers=args.workers, prefetch=2)
    batches = iter(loader)
    to_device(next(batches), device)  # starts the workers
    start = time.perf_counter()
    for _ in range(steps):
        to_device(next(batches), device)
    if device.type == "cuda":
        torch.cuda.synchronize()
    supply = steps * batch_size / (time.perf_counter() - start)
    samples.close()
    stage1 = next((r for r in rows if r["check"] == "stage 1 per frame" and math.isfinite(r["value"])), None)
    demand = 1000 / stage1["value"] if stage1 else None
    note = (f"{args.workers} loader worker(s), batch {batch_size}, crop {crop[0]}x{crop[1]} of {size[0]}x{size[1]} "
            f"frames and their wheel flow images, half mirrored; {steps} batches")
    if demand is not None:
        note += f"; the stage-1 step consumes {demand:.0f} samples/s: the data path keeps up: " + \
            ("yes" if supply >= demand else "NO")
    return [row("data path", supply, "samples/s", supply > 0 and (demand is None or supply >= demand), note)]


def fcis_rows(config: dict, device, amp: torch.dtype | None, args) -> list[dict]:
    """Training steps of the config's FCIS (random weights) on ``masks.batch_size`` random frames with random
    instances, through the shared Trainer (as ``a2dpipe train-mask-model``)."""
    from a2dpipe.masks.model import build_mask_model

    cfg = config["masks"]
    size = tuple(args.frame)
    torch.manual_seed(0)
    # --tiny: frames at their own size (the config's min_size would enlarge them to 320 px)
    min_size, max_size = (min(size), max(size)) if args.tiny else (cfg["min_size"], cfg["max_size"])
    model = build_mask_model(model="fcis", backbone="tiny" if args.tiny else cfg["backbone"], num_classes=8,
                             min_size=min_size, max_size=max_size, k=cfg["fcis_k"],
                             mask_voting=cfg["fcis_mask_voting"], imagenet_weights=None,
                             tiny_stride=cfg["fcis_tiny_stride"]).to(device).train()
    gen = torch.Generator().manual_seed(0)
    images = [torch.rand(3, *size, generator=gen).to(device) for _ in range(cfg["batch_size"])]
    targets = []
    for _ in images:
        masks = torch.zeros(2, *size, dtype=torch.uint8)
        masks[0, : size[0] // 2, : size[1] // 3] = 1
        masks[1, size[0] // 3:, size[1] // 2:] = 1
        boxes = torch.tensor([[0, 0, size[1] // 3 - 1, size[0] // 2 - 1],
                              [size[1] // 2, size[0] // 3, size[1] - 1, size[0] - 1]], dtype=torch.float32)
        targets.append({"boxes": boxes.to(device), "labels": torch.tensor([1, 3]).to(device),
                        "masks": masks.to(device)})
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=cfg["lr"] * args.lr_scale,
                                momentum=0.9)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    trainer = Trainer(model, optimizer, scheduler, lambda step: model(images, targets), iterations=10 ** 6)
    times = timed_steps(trainer, device, args.warmup, args.steps)
    note = (f"FCIS {'tiny' if args.tiny else cfg['backbone']}, k {cfg['fcis_k']}, batch {cfg['batch_size']} frames "
            f"of {size[0]}x{size[1]}, float32 (mask training does not autocast)")
    return step_rows("FCIS", trainer, times, cfg["batch_size"], note, args)


def flownet2_rows(device, args) -> list[dict]:
    """Milliseconds per frame pair of FlowNet2 (random weights) as the flow stage runs it (TorchEstimator:
    resized to multiples of 64, batch 1), on a ``--frame`` pair."""
    from a2dpipe.flow.estimators import TorchEstimator
    from a2dpipe.flow.flownet import flownet2

    torch.manual_seed(0)
    estimator = TorchEstimator(flownet2(), kind="flownet", device=device, batch_size=1)
    rng = np.random.default_rng(0)
    pair = [rng.integers(0, 256, (1, *args.frame, 3), dtype=np.uint8) for _ in range(2)]
    flows = []
    # FlowNet2 has no tiny form: --tiny times one pass (seconds on a CPU)
    warmup, repeats = (0, 1) if args.tiny else (args.warmup, args.repeats)
    times = timed(lambda: flows.append(estimator(*pair)), device, warmup, repeats)
    ok = flows[-1].shape == (1, *args.frame, 2) and bool(np.isfinite(flows[-1]).all())
    return [row("FlowNet2 per frame", 1000 * statistics.median(times), "ms", ok,
                f"frame pair {args.frame[0]}x{args.frame[1]}; {len(times)} timed passes"
                f"{budget_note(times, repeats)}")]


def cache_rows(args, folder: Path, device) -> list[dict]:
    """Milliseconds of the main process per frame to write ``--regions`` soft masks to a region-mask cache
    (``MaskCacheWriter.write``, whatever its format), wall time of the call; and to quantise and crop them on
    ``device`` as a region-mask job there does (``cropped_on_device``, synchronised), byte for byte the writer's own
    cropping of the full-frame masks."""
    from a2dpipe.evaluation.cpu_costs import synthetic_regions
    from a2dpipe.masks.cache import CroppedMasks, MaskCache, MaskCacheWriter
    from a2dpipe.masks.device_crop import cropped_on_device

    rng = np.random.default_rng(0)
    frames = [synthetic_regions(rng, tuple(args.frame), args.regions) for _ in range(max(args.repeats, 1) + 1)]
    path = folder / "masks.h5"
    times = []
    with MaskCacheWriter(path, source="dataset") as writer:
        writer.seconds_per_frame = 0.0
        for k, regions in enumerate(frames):
            start = time.perf_counter()
            writer.write(f"v{k:03d}", 1, regions)
            times.append(time.perf_counter() - start)
    with MaskCache(path) as cache:
        back = cache.read("v000", 1)
    ok = back.boxes.shape == frames[0].boxes.shape and np.allclose(back.masks, frames[0].masks, atol=1 / 255)
    on_device = [torch.from_numpy(x).to(device) for x in (frames[0].boxes, frames[0].scores, frames[0].labels,
                                                          frames[0].masks)]
    crop_times = timed(lambda: cropped_on_device(*on_device), device, args.warmup, args.repeats)
    got, want = cropped_on_device(*on_device), CroppedMasks.from_regions(frames[0])
    same = all(np.array_equal(getattr(got, f), getattr(want, f)) for f in ("extents", "data", "boxes", "scores"))
    return [row("region-mask cache write per frame", 1000 * statistics.median(times[1:]), "ms", ok,
                f"{args.regions} regions of {args.frame[0]}x{args.frame[1]}; read back equal: "
                f"{'yes' if ok else 'NO'}"),
            row("region masks cropped on the device per frame", 1000 * statistics.median(crop_times), "ms", same,
                f"{got.data.size / 2**20:.2f} MiB of levels to the host instead of "
                f"{frames[0].masks.nbytes / 2**20:.1f} MiB of float32; the writer's bytes: {'yes' if same else 'NO'}")]


def claim_child(folder: str, fake_gpus: int, ready, report) -> None:
    """A job of the device check: picks its device as every stage does (``select_device('auto')``), reports it,
    and holds it until the other job has picked too. ``fake_gpus``: torch.cuda made to report that many GPUs
    (the CPU's stand-in for a multi-GPU machine)."""
    os.environ["A2DPIPE_GPU_LOCKS"] = folder
    if fake_gpus:
        from types import SimpleNamespace

        torch.cuda.is_available = lambda: True
        torch.cuda.device_count = lambda: fake_gpus
        torch.cuda.get_device_properties = lambda i: SimpleNamespace(uuid=f"fake-{i}")
        torch.cuda.set_device = lambda device: None
    report.put(str(select_device("auto")))
    ready.wait(60)


def devices_rows(device, args, folder: Path) -> list[dict]:
    """Two jobs started at once on this machine: distinct GPUs where it has several (a lock file per GPU,
    a2dpipe.accelerator); on a machine without CUDA, torch made to report two."""
    count = torch.cuda.device_count() if device.type == "cuda" else 0
    fake = 0 if count else 2
    context = multiprocessing.get_context(args.start_method)
    ready, report = context.Event(), context.Queue()
    procs = [context.Process(target=claim_child, args=(str(folder / "locks"), fake, ready, report), daemon=True)
             for _ in range(2)]
    try:
        for proc in procs:
            proc.start()
        picked = sorted(report.get(timeout=120) for _ in procs)
        ready.set()
        for proc in procs:
            proc.join(60)
    finally:
        for proc in procs:
            if proc.is_alive():
                proc.kill()
    gpus = count or fake
    distinct = len(set(picked)) == len(picked)
    ok = distinct if gpus >= 2 else picked == ["cuda:0", "cuda:0"]
    note = (f"{gpus} GPU(s) visible{' (torch.cuda faked: no CUDA here)' if fake else ''}; the jobs ran on "
            f"{' and '.join(picked)}")
    return [row("two-job device assignment", len(set(picked)), "distinct devices", ok, note)]


# -- kill and resume -----------------------------------------------------------------------------------------------


def resume_config(config: dict) -> dict:
    """``config`` with a stage-1 schedule short enough to run three times and long enough to be killed midway."""
    out = copy.deepcopy(config)
    out["segmentation"]["stage1"].update(iterations=RESUME_STEPS, checkpoint_every=RESUME_EVERY)
    return out


def train_child(folder: str, name: str, config: dict, frame: tuple[int, int]) -> None:
    """A training process of the resume check: ``train`` stage 1 into ``folder/name/model.pt``; its log (stderr
    and logging) in ``folder/name.log``."""
    log_file = open(Path(folder) / f"{name}.log", "a", buffering=1)  # noqa: SIM115 - open until the process ends
    os.dup2(log_file.fileno(), 2)  # native code's messages too
    sys.stdout = sys.stderr = log_file  # a forked child inherits whatever the parent's streams were (a test's capture)
    logging.basicConfig(level=logging.INFO, stream=log_file, force=True)
    torch.set_num_threads(1)  # one thread in every child, so the CPU runs sum in the same order
    count = config["segmentation"]["stage1"]["batch_size"]
    train(config, stage=1, input="rgbflow", samples=random_samples(count, frame), out=Path(folder) / name / "model.pt")


def _start(context, folder: Path, name: str, config: dict, frame) -> multiprocessing.Process:
    proc = context.Process(target=train_child, args=(str(folder), name, config, tuple(frame)), daemon=True)
    proc.start()
    return proc


def _finish(proc, folder: Path, name: str) -> None:
    proc.join()
    if proc.exitcode != 0:
        lines = (folder / f"{name}.log").read_text().strip().splitlines() or ["(empty log)"]
        raise RuntimeError(f"the {name} training process exited {proc.exitcode}: {lines[-1][:300]}")


def kill_after_first_checkpoint(proc, checkpoint: Path) -> None:
    """Run ``proc`` in 5 ms slices until ``checkpoint`` exists, then SIGKILL it (it cannot run far past that
    moment); returns at once if ``proc`` ends by itself first."""
    while not checkpoint.is_file():
        if not proc.is_alive():
            return
        os.kill(proc.pid, signal.SIGCONT)
        time.sleep(0.005)
        os.kill(proc.pid, signal.SIGSTOP)
    os.kill(proc.pid, signal.SIGKILL)
    proc.join()


def weight_differences(resumed: dict, straight: dict, initial: dict, keys: list[str]) -> tuple[bool, float, float]:
    """(state dicts bitwise equal, max |resumed - straight|, norm(resumed - straight) / norm(straight - initial)),
    the last two over the trained parameters ``keys`` (batch-norm statistics would swamp the ratio: they move far
    from their initial values whatever the optimiser does)."""
    equal = set(resumed) == set(straight) and all(torch.equal(resumed[k], straight[k]) for k in straight)
    diff = [(resumed[k].double() - straight[k].double()) for k in keys]
    moved = [(straight[k].double() - initial[k].double()) for k in keys]
    largest = max(float(d.abs().max()) for d in diff)
    norm = math.sqrt(sum(float((d * d).sum()) for d in diff))
    travel = math.sqrt(sum(float((m * m).sum()) for m in moved))
    return equal, largest, norm / travel if travel else math.inf


def resume_rows(config: dict, device, args, folder: Path) -> list[dict]:
    config = resume_config(config)
    context = multiprocessing.get_context(args.start_method)
    frame = tuple(args.frame)
    procs = []
    try:
        procs.append(_start(context, folder, "straight", config, frame))
        _finish(procs[-1], folder, "straight")
        killed = folder / "resumed" / "model.pt"
        procs.append(_start(context, folder, "resumed", config, frame))
        kill_after_first_checkpoint(procs[-1], killed.with_name("checkpoint.pt"))
        if procs[-1].exitcode != -signal.SIGKILL:
            _finish(procs[-1], folder, "resumed")  # says why it failed, if it did
            raise RuntimeError("the training process finished before it could be killed after a checkpoint")
        procs.append(_start(context, folder, "resumed", config, frame))
        _finish(procs[-1], folder, "resumed")
    finally:
        for proc in procs:
            if proc.is_alive():
                proc.kill()
                proc.join()
    log = (folder / "resumed.log").read_text()
    found = re.findall(r"resuming from \S+checkpoint(?:\.prev)?\.pt at step (\d+)", log)
    step = int(found[-1]) if found else 0
    straight, resumed = load_checkpoint(folder / "straight" / "model.pt", 1), load_checkpoint(killed, 1)
    torch.manual_seed(int(config["seed"]))  # train's initial weights, for how far training moved them
    network = build_segmenter(**segmenter_arguments(config["segmentation"], input="rgbflow", regions=False))
    parameters = [name for name, _ in network.named_parameters()]
    equal, largest, relative = weight_differences(resumed["model"], straight["model"], network.state_dict(),
                                                  parameters)
    same_curve = resumed["curve"] == straight["curve"]
    resumed_midway = RESUME_EVERY <= step < RESUME_STEPS
    if device.type == "cpu":
        ok = resumed_midway and equal and same_curve
    else:
        ok = resumed_midway and (equal or relative <= CUDA_RESUME_TOLERANCE)
    note = (f"SIGKILL after the checkpoint of step {step or '?'} of {RESUME_STEPS}, resumed there in a new "
            f"{args.start_method}ed process: {'yes' if resumed_midway else 'NO'}; bitwise equal weights: "
            f"{'yes' if equal else 'no'}, loss curves {'equal' if same_curve else 'differ'}; norm of (resumed - "
            f"uninterrupted) over norm of (uninterrupted - initial) {relative:.2e}"
            + ("" if device.type == "cpu" else f", CUDA tolerance {CUDA_RESUME_TOLERANCE}"))
    return [row("kill and resume", largest, "max abs weight difference", ok, note)]


# -- the run -------------------------------------------------------------------------------------------------------


def _on_alarm(signum, frame):
    raise OutOfBudget("budget spent")


def uses_autocast(config: dict, device: torch.device, tiny: bool) -> torch.dtype | None:
    """The autocast precision training would use (``amp`` on CUDA: bf16 or fp16 by the GPU's compute capability,
    :func:`a2dpipe.accelerator.autocast_dtype`), and bfloat16 on the CPU with ``--tiny``; None: float32."""
    amp = bool(config["segmentation"]["amp"])
    if device.type == "cpu" and tiny and amp:
        return torch.bfloat16
    return autocast_dtype(device, amp)


def run_checks(args, config: dict, device: torch.device, started: float, rows: list[dict]) -> None:
    """Every check in order, its rows appended to ``rows``; a check that fails or runs out of budget gives a row
    saying so, and the rest go on (or say they were not run)."""
    amp = uses_autocast(config, device, args.tiny)
    torch.manual_seed(int(config["seed"]))
    model = build_segmenter(**segmenter_arguments(config["segmentation"], input="rgbflow", pretrained=False))
    model = model.to(device)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        checks = {"stage1": lambda: stage1_rows(model, config, device, amp, args),
                  "stage2": lambda: stage2_rows(model, config, device, amp, args),
                  "inference": lambda: inference_rows(model, device, amp, args),
                  "data": lambda: data_rows(config, device, args, folder / "data", rows),
                  "fcis": lambda: fcis_rows(config, device, amp, args),
                  "flownet2": lambda: flownet2_rows(device, args),
                  "cache": lambda: cache_rows(args, folder, device),
                  "devices": lambda: devices_rows(device, args, folder),
                  "resume": lambda: resume_rows(config, device, args, folder)}
        for key, name in CHECKS.items():
            if key not in args.checks:
                continue
            if time.perf_counter() - started >= args.budget:
                rows.append(row(name, math.nan, "", False, "not run: budget spent"))
                continue
            print(f"{name} ...", file=sys.stderr, flush=True)  # what ran, should the whole command be killed
            try:
                rows.extend(checks[key]())
            except Exception as err:  # noqa: BLE001 - a failed check is reported, and the next one still runs
                rows.append(row(name, math.nan, "", False, f"{type(err).__name__}: {str(err)[:300]}"))
            print(f"{name}: done at {time.perf_counter() - started:.1f} s", file=sys.stderr, flush=True)


def markdown(rows: list[dict]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for r in rows:
        ok = "" if r["ok"] is None else ("yes" if r["ok"] else "NO")
        value = f"{r['value']:.0f}" if abs(r["value"]) >= 1e4 else f"{r['value']:.4g}"  # no exponent for ms
        lines.append(f"| {r['check']} | {value} | {r['unit']} | {ok} | {r['note']} |")
    return "\n".join(lines)


def write_csv(path: str | Path, rows: list[dict]) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(REPO / "config" / "paper.yaml"), help="network and training settings")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--tiny", action="store_true", help="tiny backbone and shapes: every check in seconds on a CPU")
    parser.add_argument("--budget", type=float, default=270.0, help="hard limit in seconds")
    parser.add_argument("--frame", type=int, nargs=2, default=None, help="frame of stage 2 and inference "
                        "(default 320 568; --tiny 48 88)")
    parser.add_argument("--regions", type=int, default=50, help="regions per frame (stage 2, Ours)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps or passes before the timed ones")
    parser.add_argument("--steps", type=int, default=5, help="timed training steps per stage")
    parser.add_argument("--repeats", type=int, default=10, help="timed inference passes per variant")
    parser.add_argument("--lr-scale", type=float, default=LR_SCALE,
                        help="learning rates of the config times this (the network starts from random weights)")
    parser.add_argument("--checks", nargs="+", choices=CHECKS, default=list(CHECKS), help="the checks to run")
    parser.add_argument("--start-method", choices=("spawn", "fork"), default=None,
                        help="how the resume check starts its training processes (default: spawn where CUDA "
                             "exists, fork elsewhere)")
    parser.add_argument("--workers", type=int, default=None,
                        help="loader workers of the data path check (default: the config's loader_workers; 2 with "
                             "--tiny)")
    parser.add_argument("--out", help="CSV of the table")
    args = parser.parse_args(argv)
    if args.workers is None:
        args.workers = 2 if args.tiny else int(load_config(args.config)["segmentation"]["loader_workers"])
    if args.start_method is None:
        args.start_method = "spawn" if torch.cuda.is_available() else "fork"
    if args.frame is None:
        args.frame = list(TINY_FRAME) if args.tiny else [320, 568]
    return args


def main(argv=None) -> list[dict]:
    """Run the checks of ``argv`` (the command line's when None), print the table, write ``--out``; the rows."""
    args = parse_args(argv)
    device = select_device(args.device)  # A2DError when CUDA is asked for and absent
    config = check_config(args.config, device, args.tiny, args.lr_scale)
    started = time.perf_counter()
    rows: list[dict] = []
    previous = signal.signal(signal.SIGALRM, _on_alarm)
    signal.setitimer(signal.ITIMER_REAL, max(args.budget, 1e-3))  # one shot: at most one OutOfBudget
    try:
        run_checks(args, config, device, started, rows)
    except OutOfBudget:  # spent outside a check (building the network, cleaning up): the rows say what ran
        rows.append(row("budget", math.nan, "", False, "spent outside a check"))
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    elapsed = time.perf_counter() - started
    rows.append(row("elapsed", elapsed, "s", elapsed <= args.budget + 1, f"budget {args.budget:g} s"))
    dtype = uses_autocast(config, device, args.tiny)
    autocast = str(dtype).removeprefix("torch.") if dtype is not None else "off"
    print(f"{describe_device(device)}, torch {torch.__version__}, config {args.config}"
          f"{' (tiny)' if args.tiny else ''}, autocast {autocast}, learning rates x {args.lr_scale:g}")
    print(markdown(rows))
    if args.out:
        write_csv(args.out, rows)
    return rows


if __name__ == "__main__":
    try:
        sys.exit(0 if all(r["ok"] is not False for r in main()) else 1)
    except A2DError as err:  # a config or device that cannot be checked: the reason, no traceback
        sys.exit(f"gpu_check: {err}")
