"""``a2dpipe region-masks``: the candidate regions of every annotated frame of one shard, cached to HDF5.

Sources (``--source``):

- ``dataset`` / ``generic``: the mask model ``--model`` (from ``train-mask-model``) on each frame; regions scoring
  below ``masks.score_threshold`` are dropped and at most ``masks.max_regions`` kept, best first. ``generic``
  regions are labelled 0 (actor unknown): that model has no actor classes.
- ``gt``: the frame's ground-truth actor instances (score 1, label = actor, binary masks); no model.

Every annotated frame of the shard (train and test splits: stage 2 trains on regions too) gets a group, possibly
with zero regions. The cache format is documented in :mod:`a2dpipe.masks.cache`; ``seconds_per_frame`` is the
model's forward time per frame (including resizing and mask pasting, and on a GPU quantising and cropping the
masks, excluding HDF5 I/O).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np

from a2dpipe.config import check_consistent, check_inputs, read_stamp
from a2dpipe.settings import add_config_arguments, read_settings
from a2dpipe.devices import describe_device, select_device
from a2dpipe.errors import A2DError
from a2dpipe.memory import fixed_mmap_threshold
from a2dpipe.masks.cache import CroppedMasks, MaskCacheWriter, Regions, model_provenance
from a2dpipe.masks.data import InstanceReader, list_frames, masks_to_boxes
from a2dpipe.progress import progress

__all__ = ["configure_parser", "run", "cache_regions", "gt_regions", "load_region_model", "predict_regions"]

log = logging.getLogger("a2dpipe.masks")


def configure_parser(parser) -> None:
    add_config_arguments(parser, "region-masks")
    parser.add_argument("--source", required=True, choices=("dataset", "generic", "gt"), help="mask source")
    parser.add_argument("--frames", required=True, help="frames store of the shard")
    parser.add_argument("--model", nargs="?", help="mask model checkpoint (dataset and generic sources)")
    parser.add_argument("--out", required=True, help="region-mask cache to write")


def run(args) -> None:
    settings = read_settings(args, "region-masks")
    if args.source != "gt" and not args.model:
        raise A2DError(f"--model is required for the {args.source} mask source")
    check_inputs(settings, {"frames shard": [args.frames]})
    # 32 MB: a frame's masks at A2D size (50 x 320 x 568) are freed and made again every frame, and a job reads one
    # shard, so its memory is bounded without a trim. On a 212-frame A2D-shaped shard, one thread:
    # 1 MB 430 ms per frame (182 of them in the kernel, faulting fresh pages in), peak 1.17 GB; 32 MB 269 ms,
    # 1.55 GB; glibc's own sliding threshold 265 ms, 1.62 GB
    fixed_mmap_threshold(32 << 20)
    cache_regions(settings, args.source, args.frames, args.out, model_path=args.model)


def cache_regions(config: dict, source: str, frames: str | Path, out: str | Path, model_path=None) -> float:
    """Write the region cache of one shard; return seconds per frame. ``gt`` reads no setting of ``config``."""
    refs = list_frames([frames])
    with InstanceReader([frames]) as reader, MaskCacheWriter(
        out, source=source, model=model_provenance(model_path), config=config.get("masks", {}), settings=config
    ) as writer:
        if source == "gt":
            seconds = _write_gt(reader, refs, writer)
        else:
            seconds = _write_predicted(reader, refs, writer, config, source, model_path)
        writer.seconds_per_frame = seconds / max(1, len(refs))
    log.info("%s: %d frames, %.4f s per frame (%s)", out, len(refs), seconds / max(1, len(refs)), source)
    return seconds / max(1, len(refs))


def gt_regions(masks: np.ndarray, labels: np.ndarray) -> Regions:
    """Ground-truth instances as regions: tight boxes, score 1, actor labels, binary masks."""
    return Regions(masks_to_boxes(masks), np.ones(len(masks)), labels, masks.astype(np.float32))


def _write_gt(reader, refs, writer) -> float:
    seconds = 0.0
    for ref in progress(refs, desc="region masks gt"):
        _, masks, labels = reader.read(ref, "dataset")
        started = time.perf_counter()
        regions = gt_regions(masks, labels)
        seconds += time.perf_counter() - started
        writer.write(ref.video, ref.frame, regions)
    return seconds


def _write_predicted(reader, refs, writer, config, source, model_path) -> float:
    import torch  # here, so that the gt source starts without torch

    cfg = config["masks"]
    device = select_device(config["device"])
    model, agnostic = load_region_model(model_path, config, source, device)
    seconds = 0.0
    bar = progress(total=len(refs), desc=f"region masks {source}")
    for chunk, rgbs in _same_size_batches(reader, refs, max(1, cfg["batch_size"])):
        started = time.perf_counter()
        # on a GPU the masks are quantised and cropped there; on the CPU the writer's thread does it
        regions = predict_regions(model, rgbs, cfg, agnostic, device, cropped=device.type != "cpu")
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds += time.perf_counter() - started
        for ref, frame_regions in zip(chunk, regions):
            writer.write(ref.video, ref.frame, frame_regions)
        bar.update(len(chunk))
    bar.close()
    writer.set_attrs(device=describe_device(device))  # the timing table's device column
    return seconds


def load_region_model(model_path, config: dict, source: str, device):
    """(mask model in eval mode on ``device``, whether it is class-agnostic) of mask source ``source``, keeping the
    regions ``config``'s ``masks.score_threshold`` and ``masks.max_regions`` let through; A2DError when the model
    was made with other settings than ``config`` or for another source."""
    from a2dpipe.masks.model import load_mask_model

    cfg = config["masks"]
    model, checkpoint = load_mask_model(model_path, device)
    check_consistent({"this job": config, str(model_path): read_stamp(checkpoint["provenance"])})
    if checkpoint["source"] != source:
        raise A2DError(f"{model_path}: a {checkpoint['source']} mask model, but --source is {source}")
    model.roi_heads.detections_per_img = cfg["max_regions"]
    model.roi_heads.score_thresh = cfg["score_threshold"]  # the config decides, not torchvision's 0.05
    return model, bool(checkpoint["class_agnostic"])


def predict_regions(model, rgbs, cfg: dict, agnostic: bool, device, *, cropped: bool = False) -> list:
    """The regions kept (config ``masks`` section ``cfg``) of each (H, W, 3) uint8 RGB frame of ``rgbs``, one
    forward pass of ``model`` (:func:`load_region_model`) over them all: give frames of one size (see
    :func:`_same_size_batches`). :class:`Regions`, or with ``cropped`` :class:`CroppedMasks` quantised and cropped
    on ``device`` (:func:`~a2dpipe.masks.device_crop.cropped_on_device`: on a GPU, ~0.8 MB of levels come to the
    host instead of up to 36 MB of float32 masks a frame)."""
    import torch

    images = [torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1).float().div(255).to(device)
              for rgb in rgbs]
    with torch.inference_mode():
        outputs = model(images)
        return [_to_regions(o, image.shape[1:], cfg, agnostic, cropped) for o, image in zip(outputs, images)]


def _same_size_batches(reader, refs, batch_size: int):
    """(refs, rgb images) in groups of at most ``batch_size`` frames of one size, in order.

    A batch is padded to its largest frame, and padding changes the features near a frame's edges: batching only
    equal sizes makes a frame's regions independent of which frames share its shard or its batch.
    """
    chunk, rgbs = [], []
    for ref in refs:
        rgb = reader.rgb(ref)
        if chunk and (len(chunk) == batch_size or rgbs[0].shape != rgb.shape):
            yield chunk, rgbs
            chunk, rgbs = [], []
        chunk.append(ref)
        rgbs.append(rgb)
    if chunk:
        yield chunk, rgbs


def _to_regions(output: dict, size, cfg: dict, agnostic: bool, cropped: bool = False) -> Regions | CroppedMasks:
    """Mask R-CNN detections -> the regions kept: score >= threshold, best ``max_regions``; with ``cropped``, their
    masks quantised and cropped where they are (:func:`~a2dpipe.masks.device_crop.cropped_on_device`)."""
    scores = output["scores"]
    order = scores.argsort(descending=True)
    order = order[scores[order] >= cfg["score_threshold"]][: cfg["max_regions"]]
    if len(order) == 0:
        empty = Regions.empty(*size)
        return CroppedMasks.from_regions(empty) if cropped else empty
    labels = order.new_zeros(len(order)) if agnostic else output["labels"][order]
    # the models return detections best first: then the masks are a view, not a copy of up to 36 MB per A2D frame
    best_first = order.tolist() == list(range(len(order)))
    masks = output["masks"][: len(order), 0] if best_first else output["masks"][order, 0]
    if cropped:
        from a2dpipe.masks.device_crop import cropped_on_device

        return cropped_on_device(output["boxes"][order], scores[order], labels, masks)
    return Regions(
        boxes=output["boxes"][order].cpu().numpy(),
        scores=scores[order].cpu().numpy(),
        labels=labels.cpu().numpy(),
        masks=masks.cpu().numpy(),
    )
