"""Timing estimate of a configuration on one GPU: FLOP count x assumed throughput, beside the paper's K80 figures.

Command::

    a2dpipe estimate --config config/paper.yaml --out results-paper/timing/estimate.csv [--no-calibrate]

The networks of the configuration are built on PyTorch's ``meta`` device (shapes only: no weights, no compute) and
their convolutions and matrix products are counted by ``torch.utils.flop_counter.FlopCounterMode`` (2 FLOPs per
multiply-add). Per unit of work:

* train stage 1, per step: front-end + ASPP baseline on ``stage1.batch_size`` crops, forward + backward taken as
  3 x forward;
* train stage 2, per step: the frozen front-end forward on ``stage2.batch_size`` crops plus 3 x the region back-end
  on ``masks.max_regions`` regions per crop; with ``cache_features``, the back-end on whole frames plus the share of
  one step in the front-end's pass over every training frame and its mirror image;
* train mask models, per step (the generic model's from scratch unless COCO's is it, then the dataset model's
  fine-tuning; without a generic source only the dataset model's, from no start): backbone, RPN head, and Mask
  R-CNN's box head on the sampled RoIs and mask head on at most their positive share, or FCIS's score maps over the
  frame, 3 x forward, on ``masks.batch_size`` frames;
* flow, per frame: the configured FlowNet or RAFT network on a frame pair (DIS, a CPU method, has no row);
* region masks, per frame: inference (Mask R-CNN: box head on every RPN proposal, mask head on every kept region;
  FCIS: its score maps, then gathers);
* inference, per frame: front-end + ASPP (baseline) or + region back-end (ours) on a whole frame.

Counts use the A2D release's annotated frames (``A2D_FRAMES``) at its frame size (``A2D_FRAME_SIZE``), whatever the
dataset of the configuration. Time = FLOPs / (peak x utilisation) with the per-device constants of ``DEVICES``;
the CPU columns use the FLOP rate this machine achieves on a timed forward + backward of a tiny segmenter.

The CPU side: each stage's CPU work per unit (reading and cropping samples, region-mask cache writes and reads, a
flow job's frame reads, image encoding and cache writes) is measured on this machine, one thread, with the package's
own readers and writers on synthetic arrays of the configuration's shapes (:mod:`a2dpipe.evaluation.cpu_costs`), and
set against what does it: the loader's ``segmentation.loader_workers`` (training, mask models' too, prediction;
mask-model training without them: a read-ahead thread) and a flow job's readers and encoders beside the GPU, a
region-mask job's writer thread, else the job's one process, whose reads add to the GPU's time. Per device, ``wall
hours`` counts both and ``bound`` names the side that sets the pace (:func:`.cpu_costs.wall_ms`). The CPU is this
machine's. ``--no-calibrate`` leaves every measured column out: the table is then a pure function of the settings.
What FLOPs miss (memory-bound layers, RoI ops, region-to-pixel kernels) still makes the GPU side a lower bound.

Writes the CSV and a Markdown copy beside it (same name, ``.md``) whose caption states the assumptions.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
from torch.utils.flop_counter import FlopCounterMode

from a2dpipe.settings import add_config_arguments, read_settings
from a2dpipe.evaluation.cpu_costs import (cpu_caption, cpu_ms_per_unit, cpu_processes, measure_config_cpu_costs,
                                         wall_ms)
from a2dpipe.evaluation.paper_results import TIMING_DEVICE, TIMING_MS
from a2dpipe.devices import describe_device
from a2dpipe.io import atomic_path
from a2dpipe.variants import unavailable_sources

__all__ = ["A2D_FRAMES", "A2D_FRAME_SIZE", "BASIS", "DEVICES", "Device", "count_flops", "work_units", "estimate_table",
           "measure_cpu_flops", "configure_parser", "run"]

log = logging.getLogger(__name__)

BASIS = "estimate: FLOP count x assumed throughput"

# A2D release (videoset.csv, usage 0 / 1): annotated frames per split; 11,926 in all.
A2D_FRAMES = {"train": 9561, "test": 2365}
# clips320H: every frame is 320 px high; widths vary (568 for 55% of the annotated frames, 426 for 36%, ...): the
# mean width over the annotated frames, as FLOPs grow with the area.
A2D_FRAME_SIZE = (320, 510)


@dataclass(frozen=True)
class Device:
    """A GPU's published dense peak (FLOP/s) for fp32 and, where it has one, bf16; the assumed utilisation."""

    name: str
    fp32: float
    bf16: float | None
    utilisation: float
    source: str

    def throughput(self, amp: bool) -> float:
        """FLOP/s assumed: bf16 peak under ``amp`` where the device has bf16 units, else fp32 peak; x utilisation."""
        peak = self.bf16 if amp and self.bf16 is not None else self.fp32
        return peak * self.utilisation


# Peaks from NVIDIA's data sheets; utilisations are assumptions in line with published ResNet-50 training rates
# (about 50 images/s on one K80 GPU in fp32, i.e. ~30% of its peak; convolutions keep Hopper's bf16 tensor cores
# far below their peak, a few thousand images/s, i.e. ~10%).
DEVICES: dict[str, Device] = {
    "K80": Device("Nvidia K80 (one GK210 GPU of the board)", 4.37e12, None, 0.30,
                  "K80 data sheet: 8.73 TFLOPS fp32 with GPU Boost for the board's two GPUs"),
    "V100": Device("Nvidia V100 SXM2", 15.7e12, None, 0.40,
                   "V100 data sheet: 15.7 TFLOPS fp32; no bf16 units (autocast bf16 runs at fp32 rate or worse)"),
    "H200": Device("Nvidia H200 SXM", 67e12, 989e12, 0.12,
                   "H200 data sheet: 67 TFLOPS fp32, 1,979 TFLOPS bf16 tensor core with sparsity (989 dense)"),
}

# forward + backward ~ 3 x forward (the backward computes gradients of inputs and weights); an upper bound where
# layers are frozen (the fine-tuned mask model's first stages)
TRAIN_FACTOR = 3.0


def count_flops(fn, *args) -> int:
    """FLOPs of ``fn(*args)`` as ``FlopCounterMode`` counts them (convolutions and matrix products)."""
    return _counted(fn, *args)[0]


def _counted(fn, *args):
    with FlopCounterMode(display=False) as counter:
        out = fn(*args)
    return int(counter.get_total_flops()), out


def _padded(size: tuple[int, int], multiple: int = 32) -> tuple[int, int]:
    return tuple(-(-s // multiple) * multiple for s in size)


def _segmenter_flops(config: dict, inputs: list[str]) -> dict[str, dict[str, int]]:
    """Per input, FLOPs of one crop's and one frame's pass through each part of the segmenter (meta device).

    Streams are identical networks, so one stream is counted and multiplied; the back-ends are counted on fused
    features of the input's width, built as :func:`build_segmenter` builds them.
    """
    from a2dpipe.segmentation.models.backends import ASPPBaseline, build_region_back_end
    from a2dpipe.segmentation.models.frontend import build_front_end

    seg = config["segmentation"]
    s2 = seg["stage2"]
    regions = int(config["masks"]["max_regions"])
    out = {inp: {} for inp in inputs}
    with torch.device("meta"):
        stream = build_front_end(backbone=seg["backbone"], width=seg["width"], streams=("rgb",))
        for name, size in (("crop", tuple(seg["crop"])), ("frame", A2D_FRAME_SIZE)):
            flops, features = _counted(stream, torch.empty(1, 3, *size))
            for inp in inputs:
                k = 2 if inp == "rgbflow" else 1
                fused = torch.empty(1, k * features.shape[1], *features.shape[2:])
                baseline = ASPPBaseline(fused.shape[1], seg["aspp_rates"])
                region = build_region_back_end(fused.shape[1], roi_size=s2["roi_size"], fc_dim=s2["fc_dim"],
                                               pool=s2["pool"], roi_channels=s2["roi_channels"])
                classes = region.box_predictor.actor.out_features + region.box_predictor.action.out_features
                # region-to-pixel: a max over regions of score x mask per pixel and class (not a counted operator)
                to_pixel = 2 * regions * size[0] * size[1] * classes
                out[inp][f"front_{name}"] = k * flops
                out[inp][f"aspp_{name}"] = count_flops(baseline, fused, size)
                out[inp][f"region_{name}"] = count_flops(region.region_scores, fused, [torch.empty(regions, 4)]) \
                    + to_pixel
    return out


def _mask_flops(config: dict) -> dict[str, int]:
    """FLOPs of one frame through the mask model's parts, training (sampled RoIs) and inference (all proposals)."""
    from a2dpipe.masks.model import build_mask_model, mask_model_options
    from a2dpipe.masks.train import NUM_CLASSES

    cfg = config["masks"]
    options = mask_model_options(cfg)
    if cfg["model"] == "fcis":
        options["imagenet_weights"] = None  # shapes only: a weights file would be read for nothing
    with torch.device("meta"):
        net = build_mask_model(**options, backbone=cfg["backbone"], num_classes=NUM_CLASSES["dataset"],
                               min_size=cfg["min_size"], max_size=cfg["max_size"],
                               box_detections_per_img=cfg["max_regions"])
        scale = min(cfg["min_size"] / A2D_FRAME_SIZE[0], cfg["max_size"] / A2D_FRAME_SIZE[1])
        size = _padded((round(A2D_FRAME_SIZE[0] * scale), round(A2D_FRAME_SIZE[1] * scale)))
        x = torch.empty(1, 3, *size)
        out = {"backbone": count_flops(net.backbone, x)}
        if cfg["model"] == "fcis":
            return {**out, **_fcis_head_flops(net, x)}
        features = list(net.backbone(x).values())
        out["rpn"] = count_flops(net.rpn.head, features)
        heads = net.roi_heads
        sampled = heads.fg_bg_sampler.batch_size_per_image
        counts = {"train": (sampled, int(sampled * heads.fg_bg_sampler.positive_fraction)),
                  "test": (net.rpn._post_nms_top_n["testing"], heads.detections_per_img)}
        channels = net.backbone.out_channels
        for phase, (boxes, masks) in counts.items():
            pooled = torch.empty(boxes, channels, *heads.box_roi_pool.output_size)
            box = count_flops(lambda p: heads.box_predictor(heads.box_head(p)), pooled)
            pooled = torch.empty(masks, channels, *heads.mask_roi_pool.output_size)
            mask = count_flops(lambda p: heads.mask_predictor(heads.mask_head(p)), pooled)
            out[f"heads_{phase}"] = box + mask
    return out


def _fcis_head_flops(net, x: torch.Tensor) -> dict[str, int]:
    """FCIS's RPN and score maps. Its heads are convolutions over the whole frame, the same in training and
    inference; per RoI it only gathers (assembling, pooling): no FLOPs."""
    rpn_features, head_features = net.backbone(x)
    heads = net.roi_heads
    maps = count_flops(lambda f: (heads.inside_outside(h := heads.reduce(f)), heads.box_maps(h)), head_features)
    return {"rpn": count_flops(net.rpn.head, [rpn_features]), "heads_train": maps, "heads_test": maps}


def _flow_flops(config: dict) -> int | None:
    """FLOPs of one frame pair through the configured neural flow network (``None`` for DIS, a CPU method).

    FlowNet frames are resized to multiples of 64 px, RAFT's padded to multiples of 8, as the flow stage does. The
    FlowNetC correlation is counted as this package computes it (band matrix products, a few times the FLOPs of
    the CUDA layer, ~2% of FlowNet2's count).
    """
    method = config["flow"]["method"]
    if method == "dis":
        return None
    with torch.device("meta"):
        if method == "raft":
            from torchvision.models.optical_flow import raft_large, raft_small

            net, multiple = (raft_small if config["flow"]["raft_variant"] == "small" else raft_large)(), 8
        else:
            from a2dpipe.flow.flownet import flownet2, flownetc, flownets, flownetsd
            from a2dpipe.flow.flownet_layers import SIZE_MULTIPLE

            builders = {"flownet2": flownet2, "flownetc": flownetc, "flownets": flownets, "flownetsd": flownetsd}
            net, multiple = builders[method](), SIZE_MULTIPLE
        x = torch.empty(1, 3, *_padded(A2D_FRAME_SIZE, multiple))
        return count_flops(net, x, x)


def _inputs(config: dict) -> tuple[list[str], list[str]]:
    """Inputs of the stage-1 networks and of the stage-2 (region) networks of the configuration's experiments."""
    exp = config["experiments"]
    return sorted(set(exp["inputs"])), sorted({run[0] for run in exp["regions"]})


def work_units(config: dict) -> list[dict]:
    """One dict per stage: ``stage``, ``unit`` (step or frame), ``units`` (how many), ``flops`` per unit, ``cpu``
    (the CPU work per unit: (kind of :func:`.cpu_costs.measure_cpu_costs`, input, count) triples), ``fed_by``
    (``loader``: the frame loader's workers do it beside the GPU; ``pool``: a flow job's readers and encoders;
    ``thread``: one thread reads the next unit's frames beside it; ``job``: the job's process, between the GPU's
    passes) and, optional, the triples of ``cpu`` one thread does unit after unit (``serial``) or a writer thread
    does while the GPU runs (``beside_gpu``), or a thread of the job's does beside both (``pool``). Long because
    it lists every stage, one row each."""
    seg = config["segmentation"]
    s1, s2, masks = seg["stage1"], seg["stage2"], config["masks"]
    stage1_inputs, stage2_inputs = _inputs(config)
    train, test = A2D_FRAMES["train"], A2D_FRAMES["test"]
    rows = []
    counts = _segmenter_flops(config, sorted({*stage1_inputs, *stage2_inputs}))
    for inp in stage1_inputs:
        c = counts[inp]
        step = TRAIN_FACTOR * s1["batch_size"] * (c["front_crop"] + c["aspp_crop"])
        rows.append({"stage": f"train stage 1 ({inp})", "unit": "step", "units": s1["iterations"], "flops": step,
                     "cpu": [("sample_crop", inp, s1["batch_size"])], "fed_by": "loader"})
    for inp in stage2_inputs:
        c = counts[inp]
        if s2["cache_features"]:  # the front-end runs once per training frame and its mirror image, not per step
            back = TRAIN_FACTOR * s2["batch_size"] * c["region_frame"] + 2 * train * c["front_frame"] / s2["iterations"]
            # steps read whole frames' labels and regions (features come from the cache); the cache's pass reads
            # every frame twice
            cpu = [("sample_frame_regions", "rgb", s2["batch_size"]),
                   ("sample_frame", inp, 2 * train / s2["iterations"])]
        else:
            back = TRAIN_FACTOR * s2["batch_size"] * c["region_crop"] + s2["batch_size"] * c["front_crop"]
            cpu = [("sample_crop_regions", inp, s2["batch_size"])]
        rows.append({"stage": f"train stage 2 ({inp})", "unit": "step", "units": s2["iterations"], "flops": back,
                     "cpu": cpu, "fed_by": "loader"})
    flow = _flow_flops(config) if "rgbflow" in {*stage1_inputs, *stage2_inputs} else None
    if flow is not None:  # every annotated frame's flow, train and test
        rows.append({"stage": f"flow ({config['flow']['method']})", "unit": "frame", "units": train + test,
                     "flops": flow, "cpu": [("flow_read", None, 1), ("flow_encode", None, 1), ("flow_store", None, 1)],
                     "serial": [("flow_store", None, 1)], "fed_by": "pool"})
    m = _mask_flops(config)
    step = TRAIN_FACTOR * masks["batch_size"] * (m["backbone"] + m["rpn"] + m["heads_train"])
    # the dataset model alone without a generic source (a2dpipe.variants); else its fine-tuning after the generic
    # model's training from scratch, unless COCO's model is the generic one
    generic_steps = 0 if masks["coco_checkpoint"] else masks["iterations"]
    steps = masks["iterations"] if unavailable_sources(config) else masks["finetune_iterations"] + generic_steps
    rows.append({"stage": "train mask models", "unit": "step", "units": steps, "flops": step,
                 "cpu": [("mask_frame", None, masks["batch_size"])],  # no loader workers: a read-ahead thread
                 "fed_by": "loader" if seg["loader_workers"] else "thread"})
    # on a GPU the masks are quantised and cropped there (a2dpipe.masks.device_crop): the writer's pool checksums
    store, encode = ("mask_store", None, 1), ("mask_encode", None, 1)  # them and its thread stores them
    rows.append({"stage": "region masks", "unit": "frame", "units": train + test, "pool": [encode],
                 "flops": m["backbone"] + m["rpn"] + m["heads_test"],
                 "cpu": [("sample_frame", "rgb", 1), encode, store], "beside_gpu": [store], "fed_by": "job"})
    for inp in stage1_inputs:
        c = counts[inp]
        rows.append({"stage": f"inference baseline ({inp})", "unit": "frame", "units": test,
                     "flops": c["front_frame"] + c["aspp_frame"], "cpu": [("sample_frame", inp, 1)],
                     "fed_by": "loader"})
    for inp in stage2_inputs:
        c = counts[inp]
        rows.append({"stage": f"inference ours ({inp})", "unit": "frame", "units": test,
                     "flops": c["front_frame"] + c["region_frame"], "cpu": [("sample_frame_regions", inp, 1)],
                     "fed_by": "loader"})
    return rows


def _paper_ms(stage: str) -> float | None:
    """The paper's K80 milliseconds per frame for the stages it timed (RGB + flow networks)."""
    if stage.startswith("flow ("):
        return TIMING_MS["flow"]
    return {
        "region masks": TIMING_MS["masks"],
        "inference ours (rgbflow)": TIMING_MS["region"],
        "inference baseline (rgbflow)": TIMING_MS["baseline_total"] - TIMING_MS["flow"],
    }.get(stage)


def estimate_table(units: list[dict], amp: bool, cpu_flops_per_s: float | None = None,
                   cpu_costs: dict | None = None, workers: int = 0) -> pd.DataFrame:
    """Per stage: GFLOP per unit, then per device ms per unit and hours in all; the paper's K80 ms per frame.
    With measured ``cpu_costs``: the CPU milliseconds per unit, the processes doing them (``workers`` of the
    loader), and per device the hours with the CPU side and the stage's bound (:func:`.cpu_costs.wall_ms`)."""
    rows = []
    for u in units:
        row = {"stage": u["stage"], "unit": u["unit"], "units": u["units"], "gflop_per_unit": u["flops"] / 1e9}
        rates = {key: dev.throughput(amp) for key, dev in DEVICES.items()}
        if cpu_flops_per_s is not None:
            rates["this CPU"] = cpu_flops_per_s
        for key, rate in rates.items():
            seconds = u["flops"] / rate
            row[f"{key} ms_per_unit"] = 1000.0 * seconds
            row[f"{key} hours"] = seconds * u["units"] / 3600.0
        if cpu_costs is not None:
            cpu = cpu_ms_per_unit(u, cpu_costs)
            row["cpu ms_per_unit"] = cpu
            row["cpu processes"] = cpu_processes(u, workers)
            serial, beside, pool = (cpu_ms_per_unit(u, cpu_costs, k) for k in ("serial", "beside_gpu", "pool"))
            for key in DEVICES:
                ms, bound = wall_ms(u, row[f"{key} ms_per_unit"], cpu, workers, serial, beside, pool)
                row[f"{key} wall hours"] = ms * u["units"] / 3.6e6
                row[f"{key} bound"] = bound
        row["paper K80 ms_per_unit"] = _paper_ms(u["stage"])
        row["basis"] = BASIS
        rows.append(row)
    return pd.DataFrame(rows)


def measure_cpu_flops(repeats: int = 3) -> float:
    """FLOP/s this CPU achieves on a forward + backward of a tiny two-stream segmenter (best of ``repeats``)."""
    from a2dpipe.segmentation.models.segmenter import build_segmenter

    torch.manual_seed(0)
    net = build_segmenter(input="rgbflow", backbone="tiny", width=16, aspp_rates=[1, 2, 3, 4])
    x = torch.randn(2, 3, 96, 96)

    def step():
        out = net(x, x)
        (out["actor"].sum() + out["action"].sum()).backward()

    flops = count_flops(step)  # also the warm-up
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        best = min(best, time.perf_counter() - start)
    return flops / best


def _caption(amp: bool, cpu_flops_per_s: float | None, table: pd.DataFrame | None = None,
             workers: int = 0) -> str:
    lines = [
        f"**{BASIS}** (not a measurement). FLOPs counted by torch's FlopCounterMode on the meta device; training "
        f"steps as {TRAIN_FACTOR:g} x forward; A2D frames: {A2D_FRAMES['train']:,} train / {A2D_FRAMES['test']:,} "
        f"test at {A2D_FRAME_SIZE[0]} x {A2D_FRAME_SIZE[1]} px. Time = FLOPs / (peak x utilisation); FLOPs miss "
        "memory-bound layers and data loading, so real wall time is longer.",
    ]
    for key, dev in DEVICES.items():
        precision = "bf16" if amp and dev.bf16 is not None else "fp32"
        lines.append(f"{key}: {dev.name}, {precision} peak {dev.throughput(amp) / dev.utilisation / 1e12:g} TFLOP/s "
                     f"x assumed utilisation {dev.utilisation:g} ({dev.source}).")
    if cpu_flops_per_s is not None:
        lines.append(f"this CPU: {describe_device()}, measured {cpu_flops_per_s / 1e9:.1f} GFLOP/s "
                     f"(timed forward + backward of a tiny segmenter, {torch.get_num_threads()} thread(s)).")
    if table is not None and "cpu ms_per_unit" in table:
        lines.append(cpu_caption(table, list(DEVICES), workers))
    lines.append(f"paper K80: the paper's measured ms per frame ({TIMING_DEVICE}).")
    return "\n\n".join(lines)


def configure_parser(parser) -> None:
    add_config_arguments(parser, "estimate")
    parser.add_argument("--no-calibrate", action="store_true",
                        help="leave out the measured columns (this CPU's FLOP rate, the CPU side of each stage): "
                             "the table then depends on the settings only")
    parser.add_argument("--out", required=True, help="CSV to write; a Markdown copy goes beside it")


def run(args) -> None:
    from a2dpipe.evaluation.writers import markdown_table

    config = read_settings(args, "estimate")
    seg = config["segmentation"]
    amp, workers = bool(seg["amp"]), int(seg["loader_workers"])
    cpu = None if args.no_calibrate else measure_cpu_flops()
    costs = None if args.no_calibrate else measure_config_cpu_costs(config, A2D_FRAME_SIZE)
    table = estimate_table(work_units(config), amp, cpu, costs, workers)
    out = Path(args.out)
    with atomic_path(out.with_suffix(".md")) as tmp:
        Path(tmp).write_text(markdown_table(table, digits=1, caption=_caption(amp, cpu, table, workers)))
    with atomic_path(out) as tmp:
        table.to_csv(tmp, index=False, float_format="%.4g")
    log.info("estimate:\n%s", table.drop(columns="basis").to_string(index=False))
