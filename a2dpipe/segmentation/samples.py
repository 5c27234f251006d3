"""Training and inference samples for the segmentation network, as a ``torch.utils.data.Dataset``.

A *sample* is one annotated frame, or a window of it, as a dict of numpy arrays:

    rgb       (H, W, 3) uint8          the frame
    flow_rgb  (H, W, 3) uint8          optional: the flow as the motion stream sees it (config flow.encoding)
    label     (H, W) uint8             A2D id map
    boxes     (N, 4) float32           optional: region boxes x1, y1, x2, y2 in pixels of the sample (N may be 0)
    masks     (N, H, W) float32        optional: region soft masks in [0, 1]
    video, frame                       identity

A :class:`View` says which sample a step wants: frame ``index``, mirrored or not, and a crop window, or the whole
frame. ``samples[view]`` delivers it (:func:`load_view`), so a ``DataLoader`` whose batch sampler yields lists of
views (:mod:`.loader`) does the reading, cropping and mirroring in its workers, while every random choice is made
beforehand in the main process (:func:`plan_view`): the same seed gives the same batches whatever the number of
workers. A training crop: random window (frames smaller than the crop are padded at the bottom and right: label
IGNORE, image 0, masks 0), mirrored with probability 1/2 -- a mirror negates the flow's u, since a mirrored flow
image would otherwise say the motion goes the wrong way: its image is the flow cache's ``rgb_mirror`` (in memory, the
field re-encoded). Only the window's rows and columns are read; the result is the same
as mirroring the whole frame, padding it and cropping.

``StoreSamples`` reads the per-shard stores (frames, flow, region masks: files of one shard share their name, e.g.
``shard-003.h5``), lazily: it lists a split from group attributes, a frame's size from its dataset's shape (no
frame is decoded for either), and each process opens its own file handles on first use (handles are never pickled or shared with a
forked worker). Region sets are the mask cache's regions, plus the ground-truth instances when ``gt_regions`` is set
(the paper's "A2D + GT" training set), boxed by their masks' extent. ``ArraySamples`` holds samples in memory
(tests, benchmarks).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from a2dpipe.flow.encode import longest_vector
from a2dpipe.errors import A2DError
from a2dpipe.labels import IGNORE
from a2dpipe.segmentation.region_window import crop_regions, kept_in_view, mirrored_boxes

__all__ = ["Samples", "ArraySamples", "StoreSamples", "View", "plan_view", "load_view"]


@dataclass(frozen=True)
class View:
    """One sample as a step wants it: frame ``index``, mirrored left-right when ``flip``; ``crop`` (height, width)
    the window at (``top``, ``left``) of the mirrored frame, padded at the bottom and right where the frame is smaller,
    or None for the whole frame; ``flow`` False leaves the motion stream out."""

    index: int
    flip: bool = False
    top: int = 0
    left: int = 0
    crop: tuple[int, int] | None = None
    flow: bool = True


def plan_view(index: int, size: tuple[int, int], crop: tuple[int, int], rng: np.random.Generator, *,
              flip: bool = True, flow: bool = True) -> View:
    """A random training view of frame ``index`` of ``size`` (height, width): mirrored half the time (``flip``), a
    ``crop`` window anywhere in the frame padded to at least the crop. Draws, in order: mirror, top, left."""
    mirrored = bool(flip and rng.random() < 0.5)
    (h, w), (ch, cw) = size, crop
    top = int(rng.integers(0, max(h, ch) - ch + 1))
    left = int(rng.integers(0, max(w, cw) - cw + 1))
    return View(index, mirrored, top, left, (int(ch), int(cw)), flow)


class Samples(torch.utils.data.Dataset):
    """Annotated frames by index; ``samples[view]`` is the sample of a :class:`View` and ``load(i)`` the whole frame.

    Subclasses give ``len``, ``key(i)``, ``size(i)`` and ``read(i, rows, cols, ...)``, and set ``uses_flow``,
    ``uses_regions``, ``flow_encoding`` and ``wheel_max`` (how the stored flow images were encoded).
    """

    uses_flow = False
    uses_regions = False
    flow_encoding = "xym"
    wheel_max: float | None = None

    def __len__(self) -> int:
        raise NotImplementedError

    def keys(self) -> list[tuple[str, int]]:
        """(video, frame) of every sample, in index order."""
        return [self.key(i) for i in range(len(self))]

    def key(self, i: int) -> tuple[str, int]:
        raise NotImplementedError

    def size(self, i: int) -> tuple[int, int]:
        """(height, width) of frame ``i``, known without decoding it."""
        raise NotImplementedError

    def read(self, i: int, rows: slice, cols: slice, *, flow_field: bool, flow_peak: bool, flow: bool,
             keep=None, mirrored: bool = False) -> dict:
        """Frame ``i``'s arrays inside ``rows`` x ``cols``: ``rgb``, ``label``, and when present ``masks`` and
        full-frame ``boxes``; with ``flow``, the flow image ``flow_rgb``. ``flow_field``: the view is mirrored, so
        ``flow_rgb`` is the image of the field with u negated, or, where none is stored, the flow field ``flow``
        (float, as stored) is given to re-encode it from, with ``flow_peak`` (2,), the frame's longest vector, when
        asked. ``keep``: a function of the frame's (N, 4) full-frame boxes giving which regions to read (a
        boolean per region); every region without it. ``mirrored``: the view will be mirrored, so the masks may be
        laid out in memory for that (the values are the same)."""
        raise NotImplementedError

    def __getitem__(self, view: View) -> dict:
        return load_view(self, view)

    def load(self, i: int) -> dict:
        """The whole frame ``i`` as stored."""
        return self[View(i)]

    def close(self) -> None:
        """Close open files (a no-op for samples held in memory)."""


def _window(view: View, size: tuple[int, int]) -> tuple[slice, slice, tuple[int, int]]:
    """Rows and columns of the stored frame that ``view`` shows (before mirroring), and the view's shape."""
    h, w = size
    if view.crop is None:
        return slice(0, h), slice(0, w), (h, w)
    ch, cw = view.crop
    rows = slice(view.top, min(view.top + ch, h))
    if view.flip:  # columns left.. of the mirrored frame are the stored columns w - 1 - left down
        cols = slice(max(w - view.left - cw, 0), w - view.left)
    else:
        cols = slice(view.left, min(view.left + cw, w))
    return rows, cols, (ch, cw)


def _encode_flow(flow: np.ndarray, encoding: str, wheel_max: float | None, peak: np.ndarray | None) -> np.ndarray:
    """Flow-as-RGB of a window. The wheel scaled by the frame's maximum gets the frame's longest vector as an extra
    row, so that the window is coloured exactly as in the image of the whole frame."""
    from a2dpipe.flow.encode import flow_to_rgb

    if peak is None:
        return flow_to_rgb(flow, encoding, wheel_max)
    pinned = np.zeros((flow.shape[0] + 1, flow.shape[1], 2), np.float32)
    pinned[:-1], pinned[-1, 0] = flow, peak
    return flow_to_rgb(pinned, encoding, wheel_max)[:-1]


def _mirrored(image: np.ndarray) -> np.ndarray:
    """``image`` mirrored left-right: (H, W) as a view; (H, W, C) as a new array made channel by channel (numpy
    copies a reversed interleaved image pixel by pixel, ~6x slower at 320 x 320 x 3)."""
    if image.ndim == 2:
        return image[:, ::-1]
    return np.stack([image[:, ::-1, c] for c in range(image.shape[2])], axis=-1)


def _mirror(data: dict, width: int, encoding: str, wheel_max: float | None) -> dict:
    """Mirror a window's arrays left-right; boxes (full-frame pixels) by the frame ``width``; the flow's u changes
    sign and the flow image is re-encoded."""
    out = dict(data)
    for key in ("rgb", "label", "flow_rgb"):
        if key in data:
            out[key] = _mirrored(data[key])
    if "flow" in data:
        flow = data["flow"].astype(np.float32)[:, ::-1]  # a copy whatever the stored precision; cast first: 2x faster
        flow[..., 0] *= -1
        peak = data.get("flow_peak")
        out["flow_rgb"] = _encode_flow(flow, encoding, wheel_max, None if peak is None else peak * np.float32([-1, 1]))
    if "masks" in data:
        out["masks"] = data["masks"][:, :, ::-1]
        out["boxes"] = mirrored_boxes(data["boxes"], width)
    return out


def _pad(array: np.ndarray, shape: tuple[int, int], fill, axis: int = 0) -> np.ndarray:
    """``array`` padded with ``fill`` at the bottom and right to ``shape`` (axes ``axis``, ``axis + 1``)."""
    if array.shape[axis:axis + 2] == tuple(shape):
        return np.ascontiguousarray(array)
    pad = [(0, 0)] * array.ndim
    pad[axis] = (0, shape[0] - array.shape[axis])
    pad[axis + 1] = (0, shape[1] - array.shape[axis + 1])
    return np.ascontiguousarray(np.pad(array, pad, constant_values=fill))


def load_view(samples: Samples, view: View) -> dict:
    """The sample ``view`` asks for (module docstring); reads only the window's rows and columns."""
    size = samples.size(view.index)
    rows, cols, shape = _window(view, size)
    flow = view.flow and samples.uses_flow
    field = flow and view.flip  # a mirrored view's flow image: of the field with u negated
    peak = field and samples.flow_encoding == "wheel" and samples.wheel_max is None
    data = samples.read(view.index, rows, cols, flow_field=field, flow_peak=peak, flow=flow,
                        keep=kept_in_view(view, size[1]), mirrored=view.flip)
    if view.flip:
        data = _mirror(data, size[1], samples.flow_encoding, samples.wheel_max)
    video, frame = samples.key(view.index)
    out = {"video": video, "frame": frame, "rgb": _pad(data["rgb"], shape, 0),
           "label": _pad(data["label"], shape, IGNORE)}
    if flow:
        out["flow_rgb"] = _pad(data["flow_rgb"], shape, 0)
    if "masks" in data:
        boxes, masks = data["boxes"].astype(np.float32), data["masks"]
        if view.crop:
            boxes, masks = crop_regions(boxes, masks, view)
        out["boxes"], out["masks"] = boxes, _pad(masks, shape, 0.0, axis=1)
    return out


class ArraySamples(Samples):
    """Samples held in memory: ``ArraySamples(list_of_sample_dicts)`` with the keys of the module docstring, plus
    ``flow`` (H, W, 2) float32 pixels beside ``flow_rgb`` (a mirror re-encodes it)."""

    def __init__(self, samples: list[dict], *, flow_encoding: str = "xym", wheel_max: float | None = None):
        self.samples = list(samples)
        self.flow_encoding = flow_encoding
        self.wheel_max = wheel_max
        self.uses_flow = bool(self.samples) and "flow_rgb" in self.samples[0]
        self.uses_regions = bool(self.samples) and "boxes" in self.samples[0]

    def __len__(self) -> int:
        return len(self.samples)

    def key(self, i: int) -> tuple[str, int]:
        return self.samples[i]["video"], int(self.samples[i]["frame"])

    def size(self, i: int) -> tuple[int, int]:
        return self.samples[i]["label"].shape

    def read(self, i, rows, cols, *, flow_field, flow_peak, flow, keep=None, mirrored=False) -> dict:
        s = self.samples[i]
        out = {"rgb": s["rgb"][rows, cols], "label": s["label"][rows, cols]}
        if flow and not flow_field:
            out["flow_rgb"] = s["flow_rgb"][rows, cols]
        if flow_field:
            out["flow"] = s["flow"][rows, cols]
        if flow_peak:
            out["flow_peak"] = longest_vector(s["flow"])
        if self.uses_regions:
            kept = slice(None) if keep is None else keep(s["boxes"])
            out["boxes"], out["masks"] = s["boxes"][kept], s["masks"][kept, rows, cols]
        return out


def _by_shard(paths, what: str) -> dict[str, Path]:
    out = {}
    for p in map(Path, paths or []):
        if p.name in out:
            raise A2DError(f"{p}: two {what} files named {p.name}; give one per shard")
        out[p.name] = p
    return out


def _frame_size(store, video: str, frame: int) -> tuple[int, int]:
    """(height, width) of a stored frame, from its label's shape: nothing is decoded."""
    from a2dpipe.stores import group_key

    group = store.group(video, frame)
    if "label" not in group:
        raise A2DError(f"{store.path}: frame {group_key(video, frame)} lacks dataset(s) ['label'] "
                       f"({store.FORMAT.what} layout)")
    with store.reading(f"frame {group_key(video, frame)}"):
        height, width = group["label"].shape
    return int(height), int(width)


class StoreSamples(Samples):
    """Annotated frames of one split, read lazily from frames stores (+ flow stores, + region-mask caches).

    Args:
        frames: frames store paths (``shard-NNN.h5``).
        split: ``"train"``, ``"val"`` or ``"test"``, or several of them (trainers take ``"train"``, or ``"train"``
            and ``"val"`` for a final fit: config ``dataset.final_fit``).
        flow: flow stores of the same shards (required when the network takes flow).
        masks: region-mask caches of the same shards (the region back-end's regions).
        gt_regions: add the frame's ground-truth instances to its regions.
        flow_encoding, wheel_max: how the flow store encoded flow (used to re-encode a mirrored flow).

    Construction lists the split from group attributes; frame sizes come from dataset shapes when first asked
    for, and frames are read when asked for, through file handles each process opens for itself.
    """

    def __init__(self, frames, *, split: str | tuple[str, ...], flow=None, masks=None, gt_regions: bool = False,
                 flow_encoding: str = "xym", wheel_max: float | None = None):
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
        self._index = self._list(split)
        self._sizes: dict[int, tuple[int, int]] = {}
        self._open: dict[Path, object] = {}
        self._pid = os.getpid()

    def _list(self, split: str | tuple[str, ...]) -> list[tuple[Path, str, int]]:
        from a2dpipe.dataset.frames import FrameStore

        splits = (split,) if isinstance(split, str) else tuple(split)
        index = []
        for path in self.frame_paths:
            if self.uses_flow and path.name not in self.flow_paths:
                raise A2DError(f"{path}: no flow store for this shard")
            if self.mask_paths and path.name not in self.mask_paths:
                raise A2DError(f"{path}: no region-mask cache for this shard")
            with FrameStore(path) as store:
                keys = sorted(key for one in splits for key in store.keys(one))
                index += [(path, video, frame) for video, frame in keys]
        return index

    def __len__(self) -> int:
        return len(self._index)

    def key(self, i: int) -> tuple[str, int]:
        _, video, frame = self._index[i]
        return video, frame

    def size(self, i: int) -> tuple[int, int]:
        if i not in self._sizes:  # looked up when first needed: a job's start lists the split only
            path, video, frame = self._index[i]
            self._sizes[i] = _frame_size(self._store(path, "frames"), video, frame)
        return self._sizes[i]

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_open": {}}  # open HDF5 handles do not travel to worker processes

    def _store(self, path: Path, kind: str):
        if self._pid != os.getpid():  # a forked worker: the parent's handles are not this process's to use
            self._open, self._pid = {}, os.getpid()
        if path not in self._open:
            if kind == "frames":
                from a2dpipe.dataset.frames import FrameStore as cls
            elif kind == "flow":
                from a2dpipe.flow import FlowStore as cls
            else:
                from a2dpipe.masks import MaskCache as cls
            self._open[path] = cls(path)
        return self._open[path]

    def read(self, i, rows, cols, *, flow_field, flow_peak, flow, keep=None, mirrored=False) -> dict:
        path, video, frame = self._index[i]
        out = self._store(path, "frames").read_window(video, frame, ("rgb", "label"), rows, cols)
        if flow:
            store = self._store(self.flow_paths[path.name], "flow")
            name = "rgb_mirror" if flow_field else "rgb"  # a mirrored window: the stored image of the mirrored field
            out["flow_rgb"] = store.read_window(video, frame, (name,), rows, cols)[name]
        if self.uses_regions:
            out.update(self._regions(path, video, frame, rows, cols, keep, mirrored))
        return out

    def _regions(self, path: Path, video: str, frame: int, rows: slice, cols: slice, keep=None,
                 mirrored: bool = False) -> dict:
        """Full-frame boxes and windowed masks of the frame's regions that ``keep`` keeps (all without it): the
        mask cache's, then the ground truth's, pasted into one zeroed array (the cache stores each mask cropped:
        only the window's part is dequantised). ``mirrored``: pasted into the array's columns right to left, so
        that the mirrored view's masks are the array itself, not a reversed copy of (N, window) floats."""
        from a2dpipe.dataset.frames import masks_to_boxes

        cached = instances = None
        if self.mask_paths:
            cached = self._store(self.mask_paths[path.name], "masks").read_cropped(video, frame)
        if self.gt_regions:
            instances = self._store(path, "frames").read_arrays(video, frame, ("instance_masks",))["instance_masks"]
        n_cached = len(cached) if cached is not None else 0
        n_truth = len(instances) if instances is not None else 0
        boxes = np.zeros((n_cached + n_truth, 4), np.float32)
        if n_cached:
            boxes[:n_cached] = cached.boxes
        if n_truth:  # boxes from the whole masks, as the `gt` mask source gives them at test time, not as annotated
            boxes[n_cached:] = masks_to_boxes(instances)
        kept = np.arange(len(boxes)) if keep is None else np.flatnonzero(keep(boxes))
        from_cache, from_truth = kept[kept < n_cached], kept[kept >= n_cached] - n_cached
        masks = np.zeros((len(kept), rows.stop - rows.start, cols.stop - cols.start), np.float32)
        masks = masks[:, :, ::-1] if mirrored else masks
        if len(from_cache):
            cached.paste(masks[:len(from_cache)], rows, cols, which=from_cache.tolist())
        if len(from_truth):
            masks[len(from_cache):] = instances[from_truth, rows, cols]
        return {"boxes": boxes[kept], "masks": masks}

    def close(self) -> None:
        for store in self._open.values():
            store.close()
        self._open.clear()
