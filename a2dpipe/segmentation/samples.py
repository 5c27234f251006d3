"""Training and inference samples for the segmentation network.

A *sample* is one annotated frame at full size, as a dict of numpy arrays:

    rgb       (H, W, 3) uint8          the frame
    flow      (H, W, 2) float32        optional: flow field in pixels (kept so a flip can re-encode it)
    flow_rgb  (H, W, 3) uint8          optional: the flow as the motion stream sees it (config flow.encoding)
    label     (H, W) uint8             A2D id map
    boxes     (N, 4) float32           optional: region boxes x1, y1, x2, y2 in frame pixels (N may be 0)
    masks     (N, H, W) float32        optional: region soft masks in [0, 1]
    video, frame                       identity

``StoreSamples`` reads them from the per-shard stores (frames, flow, region masks: files of one shard share their
name, e.g. ``shard-003.h5``); region sets are the mask cache's regions, plus the ground-truth instances when
``gt_regions`` is set (the paper's "A2D + GT" training set), boxed by their masks' extent. ``ArraySamples``
holds samples in memory (tests, benchmarks).

``augment`` makes a training crop: pad to the crop size (label IGNORE, image 0, masks 0), random offset,
horizontal flip with probability 1/2 -- a flip negates the flow's u and re-encodes it, since a mirrored flow image
would otherwise say the motion goes the wrong way. All randomness comes from the generator passed in, which the
trainer derives from (seed, step), so a resumed run sees the same crops.

``to_tensors`` turns samples into network inputs: ImageNet-normalised (B, 3, H, W) float images (the flow stream
starts from RGB ImageNet weights too), actor / action class maps (B, H, W) int64, and region lists.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from a2dpipe.io import A2DError
from a2dpipe.labels import IGNORE, to_setting

__all__ = ["ArraySamples", "StoreSamples", "augment", "flip_sample", "to_tensors", "MEAN", "STD"]

MEAN = np.array([0.485, 0.456, 0.406], np.float32) * 255
STD = np.array([0.229, 0.224, 0.225], np.float32) * 255


class ArraySamples:
    """Samples held in memory: ``ArraySamples(list_of_sample_dicts)``; same interface as ``StoreSamples``."""

    def __init__(self, samples: list[dict], *, flow_encoding: str = "xym", wheel_max: float | None = None):
        self.samples = list(samples)
        self.flow_encoding = flow_encoding
        self.wheel_max = wheel_max

    def __len__(self) -> int:
        return len(self.samples)

    def load(self, i: int) -> dict:
        return dict(self.samples[i])

    def keys(self) -> list[tuple[str, int]]:
        return [(s["video"], int(s["frame"])) for s in self.samples]


def _by_shard(paths, what: str) -> dict[str, Path]:
    out = {}
    for p in map(Path, paths or []):
        if p.name in out:
            raise A2DError(f"{p}: two {what} files named {p.name}; give one per shard")
        out[p.name] = p
    return out


class StoreSamples:
    """Annotated frames of one split, read lazily from frames stores (+ flow stores, + region-mask caches).

    Args:
        frames: frames store paths (``shard-NNN.h5``).
        split: ``"train"``, ``"val"`` or ``"test"`` (trainers take ``"train"`` only).
        flow: flow stores of the same shards (required when the network takes flow).
        masks: region-mask caches of the same shards (the region back-end's regions).
        gt_regions: add the frame's ground-truth instances to its regions.
        flow_encoding, wheel_max: how the flow store encoded flow (used to re-encode a flipped flow).
    """

    def __init__(self, frames, *, split: str, flow=None, masks=None, gt_regions: bool = False,
                 flow_encoding: str = "xym", wheel_max: float | None = None):
        from a2dpipe.dataset.frames import FrameStore

        self.frame_paths = [Path(p) for p in frames]
        self.flow_paths = _by_shard(flow, "flow")
        self.mask_paths = _by_shard(masks, "mask cache")
        for name, kind in [(n, "flow") for n in self.flow_paths] + [(n, "mask cache") for n in self.mask_paths]:
            if name not in {p.name for p in self.frame_paths}:
                raise A2DError(f"{name}: {kind} file has no frames store of the same shard")
        self.uses_flow = bool(self.flow_paths)
        self.uses_regions = bool(self.mask_paths) or gt_regions
        self.gt_regions = gt_regions
        self.flow_encoding = flow_encoding
        self.wheel_max = wheel_max
        self._index: list[tuple[Path, str, int]] = []
        for path in self.frame_paths:
            with FrameStore(path) as store:
                self._index += [(path, video, frame) for video, frame in store.keys(split)]
            if self.uses_flow and path.name not in self.flow_paths:
                raise A2DError(f"{path}: no flow store for this shard")
            if self.mask_paths and path.name not in self.mask_paths:
                raise A2DError(f"{path}: no region-mask cache for this shard")
        self._open: dict[Path, object] = {}

    def __len__(self) -> int:
        return len(self._index)

    def keys(self) -> list[tuple[str, int]]:
        return [(video, frame) for _, video, frame in self._index]

    def _store(self, path: Path, kind: str):
        if path not in self._open:
            if kind == "frames":
                from a2dpipe.dataset.frames import FrameStore as cls
            elif kind == "flow":
                from a2dpipe.flow import FlowStore as cls
            else:
                from a2dpipe.masks import MaskCache as cls
            self._open[path] = cls(path)
        return self._open[path]

    def load(self, i: int) -> dict:
        path, video, frame = self._index[i]
        record = self._store(path, "frames").read(video, frame)
        sample = {"video": video, "frame": frame, "rgb": np.asarray(record.rgb), "label": np.asarray(record.label)}
        if self.uses_flow:
            flow, flow_rgb = self._store(self.flow_paths[path.name], "flow").read(video, frame)
            sample["flow"] = np.asarray(flow, np.float32)
            sample["flow_rgb"] = np.asarray(flow_rgb)
        if self.uses_regions:
            from a2dpipe.dataset.frames import masks_to_boxes

            h, w = sample["label"].shape
            boxes, masks = [np.zeros((0, 4), np.float32)], [np.zeros((0, h, w), np.float32)]
            if self.mask_paths:
                regions = self._store(self.mask_paths[path.name], "masks").read(video, frame)
                boxes.append(regions.boxes)
                masks.append(regions.masks)
            if self.gt_regions and len(record.instance_masks):
                # boxes from the masks, as the `gt` mask source gives them at test time, not as annotated
                boxes.append(masks_to_boxes(record.instance_masks))
                masks.append(np.asarray(record.instance_masks, np.float32))
            sample["boxes"] = np.concatenate(boxes).astype(np.float32)
            sample["masks"] = np.concatenate(masks).astype(np.float32)
        return sample

    def close(self) -> None:
        for store in self._open.values():
            store.close()
        self._open.clear()


def flip_sample(sample: dict, encoding: str = "xym", wheel_max: float | None = None) -> dict:
    """Mirror a sample left-right: images, label, masks, boxes; the flow's u changes sign and is re-encoded."""
    out = dict(sample)
    w = sample["rgb"].shape[1]
    for key in ("rgb", "label", "flow_rgb"):
        if key in sample:
            out[key] = np.ascontiguousarray(sample[key][:, ::-1])
    if "flow" in sample:
        from a2dpipe.flow.encode import flow_to_rgb

        flow = np.ascontiguousarray(sample["flow"][:, ::-1])
        flow[..., 0] *= -1
        out["flow"] = flow
        out["flow_rgb"] = flow_to_rgb(flow, encoding, wheel_max)
    if "masks" in sample:
        out["masks"] = np.ascontiguousarray(sample["masks"][:, :, ::-1])
        boxes = sample["boxes"].copy()
        boxes[:, [0, 2]] = w - sample["boxes"][:, [2, 0]]
        out["boxes"] = boxes
    return out


def augment(sample: dict, crop: tuple[int, int], rng: np.random.Generator, *, flip: bool = True,
            encoding: str = "xym", wheel_max: float | None = None) -> dict:
    """Random ``crop`` (height, width) of a sample, padded where the frame is smaller, flipped half the time.

    Regions whose box leaves the crop entirely are dropped; the others have their boxes clipped to it.
    """
    if flip and rng.random() < 0.5:
        sample = flip_sample(sample, encoding, wheel_max)
    ch, cw = crop
    h, w = sample["label"].shape
    ph, pw = max(ch - h, 0), max(cw - w, 0)
    top = int(rng.integers(0, h + ph - ch + 1))
    left = int(rng.integers(0, w + pw - cw + 1))
    fills = {"rgb": 0, "flow_rgb": 0, "flow": 0.0, "label": IGNORE}
    out = {k: v for k, v in sample.items() if k not in (*fills, "masks", "boxes")}
    for key, fill in fills.items():
        if key in sample:
            arr = sample[key]
            pad = [(0, ph), (0, pw)] + [(0, 0)] * (arr.ndim - 2)
            out[key] = np.pad(arr, pad, constant_values=fill)[top:top + ch, left:left + cw]
    if "masks" in sample:
        masks = np.pad(sample["masks"], [(0, 0), (0, ph), (0, pw)])[:, top:top + ch, left:left + cw]
        boxes = sample["boxes"] - np.array([left, top, left, top], np.float32)
        boxes = np.clip(boxes, 0, [cw, ch, cw, ch]).astype(np.float32)
        keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        out["masks"], out["boxes"] = np.ascontiguousarray(masks[keep]), boxes[keep]
    return out


def _image(arrays: list[np.ndarray]) -> torch.Tensor:
    x = (np.stack(arrays).astype(np.float32) - MEAN) / STD
    return torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()


def to_tensors(samples: list[dict], device: torch.device | str = "cpu", *, with_flow: bool = True) -> dict:
    """Batch same-size samples: ``rgb``, ``flow`` (or None) (B, 3, H, W); ``actor``, ``action`` (B, H, W) int64;
    ``regions`` (list of {"boxes", "masks"} tensors, or None when the samples carry none). ``with_flow=False``
    leaves the flow out (an RGB-only network) even when the samples carry it."""
    labels = np.stack([s["label"] for s in samples])
    batch = {
        "rgb": _image([s["rgb"] for s in samples]).to(device),
        "flow": _image([s["flow_rgb"] for s in samples]).to(device) if with_flow and "flow_rgb" in samples[0] else None,
        "actor": torch.from_numpy(to_setting(labels, "actor").astype(np.int64)).to(device),
        "action": torch.from_numpy(to_setting(labels, "action").astype(np.int64)).to(device),
        "regions": None,
    }
    if "boxes" in samples[0]:
        batch["regions"] = [
            {"boxes": torch.from_numpy(s["boxes"]).to(device), "masks": torch.from_numpy(s["masks"]).to(device)}
            for s in samples
        ]
    return batch
