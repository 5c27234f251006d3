"""Inference: ``a2dpipe predict --kind K --input I [--train-source T] [--test-source S] --model M --frames ...
[--flow ...] [--masks ...] --out P.h5``.

Variants (parts and their values: :mod:`a2dpipe.variants`): ``baseline`` (stage-1 model, ASPP back-end), ``ours``
(stage-2 model trained on the train source's regions, region back-end on the test source's regions: ``--masks``
caches of that source) and ``maskvote``, the control the paper lacks: the stage-1 model's probabilities averaged
inside each test region (mask-weighted, within its box) stand in for the region head's scores, then go through the
same region-to-pixel layer as Ours (:func:`mask_vote`). It separates what Ours gains from making labels consistent
within masks from what its region classifier adds. ``--split val`` predicts the validation frames instead.

Frames go through the network in batches of one size (config ``segmentation.inference_batch``,
:func:`.loader.same_size_batches`); each frame's maps are then written on their own.

Output: a predictions file (Predictions contract), written by :class:`.predictions.PredictionWriter`, whose
module describes the layout: ``actor``, ``action`` and ``joint`` maps per test frame, ``seconds_per_frame``, and the
variant's display name (:func:`a2dpipe.variants.variant_name`).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import torch

from a2dpipe.progress import progress
from a2dpipe.segmentation.predictions import PREDICTED_SPLITS, PredictionWriter
from a2dpipe.segmentation.loader import (collate, loader_options, make_loader, network_threads, same_size_batches,
                                         to_device)
from a2dpipe.segmentation.samples import StoreSamples, View
from a2dpipe.checkpoint import load_model_file
from a2dpipe.accelerator import autocast, autocast_dtype
from a2dpipe.config import check_consistent, check_inputs, read_stamp, training_splits
from a2dpipe.settings import add_config_arguments, compared, read_settings, recorded
from a2dpipe.devices import describe_device, select_device
from a2dpipe.errors import A2DError
from a2dpipe.memory import fixed_mmap_threshold, release_free_memory
from a2dpipe.segmentation.models import build_segmenter, class_argmax, joint_prediction
from a2dpipe.segmentation.models.backends import NUM_ACTIONS, NUM_ACTORS, pixel_log_probs
from a2dpipe.segmentation.models.region_to_pixel import RegionToPixel, box_pixel_ranges
from a2dpipe.segmentation.train import flow_encoding_settings
from a2dpipe.variants import INPUTS, KINDS, NONE, TEST_SOURCES, TRAINED_SOURCES, Variant, check_variant, variant_name

__all__ = ["configure_parser", "run", "predict", "load_network", "log_probs", "label_maps", "mask_vote",
           "region_average", "vote_layer"]

log = logging.getLogger(__name__)


def configure_parser(parser) -> None:
    add_config_arguments(parser, "predict")
    parser.add_argument("--kind", required=True, choices=KINDS, help="network and head (a2dpipe.variants)")
    parser.add_argument("--input", required=True, choices=INPUTS)
    parser.add_argument("--train-source", default=NONE, choices=(NONE, *TRAINED_SOURCES),
                        help="mask source stage 2 trained on (ours)")
    parser.add_argument("--test-source", default=NONE, choices=(NONE, *TEST_SOURCES),
                        help="mask source of the test regions (maskvote, ours)")
    parser.add_argument("--model", required=True, help="stage-1 (baseline, maskvote) or stage-2 (ours) checkpoint")
    parser.add_argument("--frames", nargs="+", required=True)
    parser.add_argument("--flow", nargs="*", default=[])
    parser.add_argument("--masks", nargs="*", default=[], help="region-mask caches of the test source (ours)")
    parser.add_argument("--out", required=True)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--split", choices=PREDICTED_SPLITS, default="test", help="frames to predict")


def region_average(probs: torch.Tensor, masks: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """(N, K) per-region average of pixel probabilities ``probs`` (K, H, W), weighted by each soft mask (N, H, W)
    within its box (the pixels the region-to-pixel layer lets it cover). A region with no weight gets zeros."""
    h, w = probs.shape[-2:]
    weights = torch.zeros_like(masks, dtype=probs.dtype)
    for i, (r0, r1, c0, c1) in enumerate(box_pixel_ranges(boxes, h, w)):
        weights[i, r0:r1, c0:c1] = masks[i, r0:r1, c0:c1]
    total = weights.sum(dim=(1, 2))
    summed = torch.einsum("nhw,khw->nk", weights, probs)
    return summed / total.clamp_min(torch.finfo(probs.dtype).tiny)[:, None]


def mask_vote(to_pixel: RegionToPixel, outputs: dict[str, torch.Tensor],
              regions: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The mask-vote control: stage-1 log-probabilities ``outputs`` (actor, action: (B, K, H, W)) -> the same
    dict after each region's average stage-1 distribution replaces the region head's scores in the region-to-pixel
    layer ``to_pixel`` (built with Ours' uncovered-pixel score and pixel stride)."""
    probs = torch.cat([outputs["actor"].float().exp(), outputs["action"].float().exp()], dim=1)
    scores = [region_average(p, r["masks"].to(p.dtype), r["boxes"].float()) for p, r in zip(probs, regions)]
    return pixel_log_probs(to_pixel, scores, regions, tuple(probs.shape[-2:]))


def run(args) -> None:
    config = read_settings(args, "predict")
    if args.threads:
        torch.set_num_threads(network_threads(args.threads, config["segmentation"]["loader_workers"]))
    v = check_variant(Variant(args.kind, args.input, args.train_source, args.test_source))
    if v.input == "rgbflow" and not args.flow:
        raise A2DError(f"variant {variant_name(v)} needs --flow stores")
    if v.kind != "baseline" and not args.masks:
        raise A2DError(f"variant {variant_name(v)} needs --masks caches of the {v.test_source} source")
    check_inputs(config, {"frames shard": args.frames, "flow cache": args.flow, "region-mask cache": args.masks})
    # Full-frame maps of a batch are freed and made again every batch: under a 32 MB mmap threshold they come from
    # the heap rather than fresh pages faulted in each time, and a trim after each batch returns what its holes keep
    # (docs/performance.md, rehearsal)
    fixed_mmap_threshold(32 << 20)
    samples = StoreSamples(args.frames, split=args.split, flow=args.flow if v.input == "rgbflow" else None,
                           masks=args.masks if v.kind != "baseline" else None,
                           **flow_encoding_settings(config, v.input))
    predict(config, variant=v, model=args.model, samples=samples, out=args.out, split=args.split)


def load_network(config: dict, variant: Variant, model: str | Path, device, split: str = "test"):
    """The variant's trained network from ``model`` on ``device`` in eval mode, and the model file
    (:func:`a2dpipe.checkpoint.load_model_file`: its metadata say how it was trained, ``amp`` among them);
    A2DError when the file is not the stage and input the variant needs, or trained on the ``split`` to predict."""
    v, name = variant, variant_name(variant)
    want_stage = 2 if v.kind == "ours" else 1
    ckpt = load_model_file(model, f"stage-{want_stage} model")  # on the CPU; load_state_dict moves it
    trained_with = read_stamp(ckpt["provenance"])
    check_consistent({"this job": compared("predict", config, variant._asdict()), str(model): trained_with})
    if split == "val" and "val" in training_splits(trained_with):
        raise A2DError(f"{model}: trained on train + val (dataset.final_fit: train+val), so the validation split "
                       "cannot score it; choose settings with dataset.final_fit: train, then fit on train + val")
    if ckpt["input"] != v.input:
        raise A2DError(f"{model}: a stage-{ckpt['stage']} {ckpt['input']} model, but variant {name} needs a "
                       f"stage-{want_stage} {v.input} model")
    # the architecture is the one the file was trained with, whatever the current config says
    net = build_segmenter(**ckpt["builder"])
    net = net.to(device).eval()
    net.load_state_dict(ckpt["model"])
    return net, ckpt


def vote_layer(config: dict, variant: Variant, device) -> RegionToPixel | None:
    """The mask vote's region-to-pixel layer: Ours' (config ``segmentation.stage2``'s ``uncovered_background`` and
    ``pixel_stride``) on ``device``; None for the other kinds."""
    if variant.kind != "maskvote":
        return None
    stage2 = config["segmentation"]["stage2"]
    return RegionToPixel(NUM_ACTORS, NUM_ACTIONS, uncovered_background=stage2["uncovered_background"],
                         pixel_stride=stage2["pixel_stride"]).to(device)


def log_probs(net, variant: Variant, batch: dict, vote_to_pixel, amp: torch.dtype | None) -> dict[str, torch.Tensor]:
    """``actor`` and ``action`` float32 log-probabilities (B, K, H, W) of one batch of network inputs
    (:func:`.loader.to_device`), under autocast to ``amp`` (None: float32); ``vote_to_pixel`` is the mask vote's
    region-to-pixel layer (None otherwise)."""
    with torch.no_grad(), autocast(batch["rgb"].device.type, amp):
        if variant.kind == "ours":
            outputs = net.forward_regions(batch["rgb"], batch["flow"], batch["regions"])
        else:
            outputs = net.forward_baseline(batch["rgb"], batch["flow"])
        if variant.kind == "maskvote":
            outputs = mask_vote(vote_to_pixel, outputs, batch["regions"])
        return {"actor": outputs["actor"].float(), "action": outputs["action"].float()}


def label_maps(outputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``actor``, ``action`` and ``joint`` label maps (B, H, W) of :func:`log_probs`' ``outputs``."""
    actor, action = outputs["actor"], outputs["action"]
    with torch.no_grad():
        return {"actor": class_argmax(actor), "action": class_argmax(action), "joint": joint_prediction(actor, action)}


def predict(config: dict, *, variant: Variant, model: str | Path, samples, out: str | Path,
            split: str = "test") -> float:
    """Write the predictions of every sample (frames of ``split``) to ``out`` under the variant's display name; A2DError
    for a model that trained on that split (:func:`load_network`). Returns seconds per
    frame: the network's time over all batches divided by the number of frames, i.e. the per-frame throughput at
    the configured ``segmentation.inference_batch`` (reading frames, in loader workers when configured, is not
    counted)."""
    name = variant_name(variant)
    device = select_device(config["device"])
    net, trained = load_network(config, variant, model, device, split)
    amp = autocast_dtype(device, bool(trained["amp"]))  # bf16, fp16 or None (float32) for this GPU
    vote_to_pixel = vote_layer(config, variant, device)
    views = [View(i, flow=net.uses_flow) for i in range(len(samples))]
    batches = same_size_batches(samples, views, config["segmentation"]["inference_batch"])
    frames = make_loader(samples, batches, collate_fn=collate, device=device,
                         **loader_options(config["segmentation"]))
    seconds = 0.0
    with (PredictionWriter(out, variant=name, model=Path(model).name, device=describe_device(device),
                           settings=recorded("predict", config, variant._asdict())) as writer,
          progress(total=len(samples), desc=f"predict {name}") as bar):
        for loaded in frames:
            batch = to_device(loaded, device, with_flow=net.uses_flow)
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            maps = label_maps(log_probs(net, variant, batch, vote_to_pixel, amp))
            if device.type == "cuda":
                torch.cuda.synchronize()
            seconds += time.perf_counter() - start
            maps = {k: value.to(torch.uint8).cpu().numpy() for k, value in maps.items()}
            for j, (video, frame) in enumerate(batch["keys"]):
                writer.write(video, frame, {k: value[j] for k, value in maps.items()})
            bar.update(len(batch["keys"]))
            release_free_memory()
        per_frame = seconds / max(len(samples), 1)
        writer.seconds_per_frame = per_frame
    log.info("%s: %d frames in %d batches, %.4f s per frame", name, len(samples), len(batches), per_frame)
    return per_frame
