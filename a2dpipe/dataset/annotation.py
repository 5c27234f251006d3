"""Annotations of the A2D release: MATLAB v7.3 ``.mat`` files read into (and written from) :class:`Annotation`.

One file per annotated frame, ``Annotations/mat/<video>/<frame:05d>.mat`` (:func:`.a2d.annotation_path`). h5py
reads them as HDF5; the variables are stored transposed (MATLAB is column-major). Defects of the real release
are repaired and logged; anything else that is wrong raises :class:`A2DError` naming the file.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from a2dpipe.errors import A2DError
from a2dpipe.io import atomic_path
from a2dpipe.labels import VALID_PAIRS

log = logging.getLogger(__name__)

# How far (pixels, any side) a stored box may lie from its mask's extent before it is logged: conventions differ
# by a pixel (MATLAB's 1-based inclusive corners against 0-based exclusive ones), real mistakes by more.
BOX_MASK_TOLERANCE = 3
MATLAB_HEADER = "MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: Thu Jan  1 00:00:00 1970 HDF5 schema 1.00 ."
USERBLOCK_SIZE = 512


@dataclass
class Annotation:
    """Ground truth of one annotated frame.

    Attributes:
        id_map: (H, W) uint8 A2D ids (actor * 10 + action, 0 background).
        masks: (N, H, W) float32 in [0, 1], one (soft or binary) mask per instance.
        boxes: (N, 4) float32 x1, y1, x2, y2 in pixels, as stored in the file but clipped to the frame.
        ids: (N,) uint8 A2D id of each instance.
    """

    id_map: np.ndarray
    masks: np.ndarray
    boxes: np.ndarray
    ids: np.ndarray

    def __post_init__(self) -> None:
        n = len(self.ids)
        if self.masks.shape != (n, *self.id_map.shape) or self.boxes.shape != (n, 4):
            raise ValueError(
                f"inconsistent annotation: id_map {self.id_map.shape}, masks {self.masks.shape}, "
                f"boxes {self.boxes.shape}, ids {self.ids.shape}"
            )

    @property
    def height(self) -> int:
        return int(self.id_map.shape[0])

    @property
    def width(self) -> int:
        return int(self.id_map.shape[1])


def _matlab_array(f, name: str, path: Path) -> np.ndarray | None:
    """A MATLAB variable as h5py stores it (still transposed); ``None`` when absent, empty array when MATLAB_empty."""
    if name not in f:
        return None
    obj = f[name]
    if not isinstance(obj, h5py.Dataset):
        raise A2DError(f"{path}: {name!r} is a {type(obj).__name__}, expected a numeric array")
    if obj.attrs.get("MATLAB_empty", 0):
        return np.zeros((0,), dtype=np.float64)
    data = obj[()]
    if not np.issubdtype(np.asarray(data).dtype, np.number) and np.asarray(data).dtype != bool:
        raise A2DError(f"{path}: {name!r} holds {np.asarray(data).dtype} values, expected numbers")
    return np.asarray(data)


def _as_ids(values: np.ndarray, what: str, path: Path) -> np.ndarray:
    """Check that values are whole numbers in 0..255 and return them as uint8."""
    values = np.asarray(values)
    if values.size and (not np.all(np.isfinite(values)) or np.any(values != np.round(values))):
        raise A2DError(f"{path}: {what} holds non-integer values")
    if values.size and (values.min() < 0 or values.max() > 255):
        raise A2DError(f"{path}: {what} holds values outside 0..255 ({values.min()}..{values.max()})")
    return values.astype(np.uint8)


def read_annotation(path: str | Path) -> Annotation:
    """Read one A2D annotation ``.mat`` (MATLAB v7.3) into an :class:`Annotation`.

    h5py sees MATLAB arrays transposed: ``reS_id`` is (W, H); ``reMask`` is (N, W, H), or (W, H) for a single
    instance; ``reBBox`` is (4, N); ``id`` is (1, N) float64. Defects of the real release are repaired and logged:
    duplicated instances (same id and mask) are dropped; when there are more masks (or boxes) than ids, the first
    ``len(ids)`` are kept. Boxes are clipped to the frame; instances left with an empty box or an empty mask
    are dropped and logged, and a box far from its mask's extent is logged (:func:`_usable_instances`). An instance
    id outside the 43 valid pairs, a NaN or infinite mask or box value (the message names the instance), or anything
    else that is wrong, raises :class:`A2DError` naming the file.
    """
    path = Path(path)
    try:
        f = h5py.File(path, "r")
    except FileNotFoundError:
        raise A2DError(f"{path}: annotation file not found") from None
    except OSError as err:
        raise A2DError(f"{path}: not a MATLAB v7.3 (HDF5) file: {err}") from None
    with f:
        fields = {name: _matlab_array(f, name, path) for name in ("reS_id", "reMask", "reBBox", "id")}
    missing = [name for name, value in fields.items() if value is None]
    if missing:
        raise A2DError(f"{path}: missing field(s) {', '.join(missing)}")

    seg = fields["reS_id"]
    if seg.ndim != 2:
        raise A2DError(f"{path}: reS_id has shape {seg.shape}, expected (W, H)")
    id_map = _as_ids(seg.T, "reS_id", path)
    height, width = id_map.shape

    ids = _as_ids(fields["id"].reshape(-1), "id", path)
    n = len(ids)
    invalid = sorted(set(ids.tolist()) - set(VALID_PAIRS))
    if invalid:  # an instance must be an actor doing something; pixels with such ids are only ignored
        raise A2DError(f"{path}: instance id(s) {invalid} are not among the 43 valid actor-action pairs")

    mask = _instance_masks(fields["reMask"], (height, width), ids, path)
    box = _instance_boxes(fields["reBBox"], ids, path)

    for name, arr in (("reMask", mask), ("reBBox", box)):
        if len(arr) < n:
            raise A2DError(f"{path}: {len(arr)} instance(s) in {name} but {n} id(s)")
    if len(mask) > n or len(box) > n:
        log.warning("%s: %d mask(s), %d box(es) for %d id(s); keeping the first %d", path, len(mask), len(box), n, n)
        mask, box = mask[:n], box[:n]

    keep = _unique_instances(ids, mask)
    if len(keep) < n:
        log.warning("%s: dropped %d duplicated instance(s)", path, n - len(keep))
        ids, mask, box = ids[keep], mask[keep], box[keep]
    # before clipping: a box wholly outside the frame would clip to a one-pixel line on its border
    outside = (box[:, 2] < 0) | (box[:, 3] < 0) | (box[:, 0] >= width) | (box[:, 1] >= height)
    box = np.clip(box, 0, [width, height, width, height]).astype(np.float32)
    keep = _usable_instances(ids, mask, box, path, outside)
    ids, mask, box = ids[keep], mask[keep], box[keep]
    return Annotation(id_map=id_map, masks=np.ascontiguousarray(mask), boxes=box, ids=ids)


def _instance_masks(stored: np.ndarray, size: tuple[int, int], ids: np.ndarray, path: Path) -> np.ndarray:
    """``reMask`` as read by h5py -> (N, H, W) float32 masks in [0, 1]; A2DError naming the file otherwise."""
    height, width = size
    mask = stored
    if mask.size == 0:
        mask = np.zeros((0, height, width), dtype=np.float32)
    elif mask.ndim == 2:  # a single instance has no instance axis
        mask = mask.T[None]
    elif mask.ndim == 3:
        mask = mask.transpose(0, 2, 1)
    else:
        raise A2DError(f"{path}: reMask has shape {stored.shape}, expected (N, W, H) or (W, H)")
    if mask.shape[1:] != (height, width):
        raise A2DError(f"{path}: reMask is {mask.shape[2]}x{mask.shape[1]} (WxH) but reS_id is {width}x{height}")
    mask = mask.astype(np.float32)
    _check_finite(mask.reshape(len(mask), height * width), "reMask", ids, path)
    if mask.size and (mask.min() < 0 or mask.max() > 1):
        raise A2DError(f"{path}: reMask values lie outside [0, 1] ({mask.min()}..{mask.max()})")
    return mask


def _instance_boxes(stored: np.ndarray, ids: np.ndarray, path: Path) -> np.ndarray:
    """``reBBox`` as read by h5py -> (N, 4) float32 boxes (not yet clipped); A2DError naming the file otherwise."""
    if stored.size == 0:
        box = np.zeros((0, 4), dtype=np.float32)
    elif stored.ndim == 2 and stored.shape[0] == 4:
        box = stored.T.astype(np.float32)
    elif stored.size == 4 and len(ids) == 1:  # one box saved as a vector: orientation carries no information
        box = stored.reshape(1, 4).astype(np.float32)
    else:
        raise A2DError(f"{path}: reBBox has shape {stored.shape}, expected (4, N)")
    _check_finite(box, "reBBox", ids, path)
    return box


def _check_finite(values: np.ndarray, name: str, ids: np.ndarray, path: Path) -> None:
    """:class:`A2DError` naming the first instance (1-based, with its id) whose ``values`` row is NaN or inf."""
    bad = ~np.isfinite(values).all(axis=1) if values.size else np.zeros(len(values), bool)
    if bad.any():
        i = int(bad.argmax())
        which = f"instance {i + 1}" + (f" (id {ids[i]})" if i < len(ids) else "")
        raise A2DError(f"{path}: {name} of {which} holds NaN or infinite values")


def _usable_instances(ids: np.ndarray, masks: np.ndarray, boxes: np.ndarray, path: Path,
                      outside: np.ndarray | None = None) -> np.ndarray:
    """Indices of the instances worth keeping; the others are logged.

    ``boxes`` are already clipped to the frame; ``outside`` flags those that lay wholly outside it before. An
    instance whose box lay outside the frame or is inverted (x2 < x1 or y2 < y1), or whose mask is empty (no value
    reaches 0.5), is dropped. A box of one pixel's width or height (x1 == x2: MATLAB's corners are inclusive) is
    kept: later stages box instances by their masks. A box that differs from its mask's tight box by more than
    ``BOX_MASK_TOLERANCE`` pixels on some side is kept but logged.
    """
    tight = masks_to_boxes(masks >= 0.5)
    empty_box = (boxes[:, 2] < boxes[:, 0]) | (boxes[:, 3] < boxes[:, 1])
    if outside is not None:
        empty_box |= outside
    empty_mask = ~(masks >= 0.5).any(axis=(1, 2))
    for i in np.flatnonzero(empty_box | empty_mask):
        problem = "its box lies outside the frame or is inverted" if empty_box[i] else "its mask is empty"
        log.warning("%s: dropped instance %d (id %d): %s (box %s)", path, i + 1, ids[i], problem, boxes[i].tolist())
    keep = ~(empty_box | empty_mask)
    off = np.abs(boxes - tight).max(axis=1) > BOX_MASK_TOLERANCE
    for i in np.flatnonzero(off & keep):
        log.warning(
            "%s: instance %d (id %d): box %s differs from its mask's extent %s by more than %d pixels",
            path, i + 1, ids[i], boxes[i].tolist(), tight[i].tolist(), BOX_MASK_TOLERANCE,
        )
    return np.flatnonzero(keep)


def masks_to_boxes(masks: np.ndarray) -> np.ndarray:
    """(N, H, W) binary masks -> (N, 4) float32 tight boxes x1, y1, x2, y2 (x2, y2 one past the last pixel).

    Empty masks give (0, 0, 0, 0).
    """
    masks = np.asarray(masks, dtype=bool)
    if len(masks) == 0:
        return np.zeros((0, 4), np.float32)
    rows, cols = masks.any(axis=2), masks.any(axis=1)  # (N, H), (N, W)
    height, width = masks.shape[1:]
    y1 = rows.argmax(axis=1)
    y2 = height - rows[:, ::-1].argmax(axis=1)
    x1 = cols.argmax(axis=1)
    x2 = width - cols[:, ::-1].argmax(axis=1)
    boxes = np.stack([x1, y1, x2, y2], axis=1).astype(np.float32)
    boxes[~rows.any(axis=1)] = 0
    return boxes


def _unique_instances(ids: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """Indices of the first occurrence of each (id, mask) pair, in order."""
    flat = masks.reshape(len(masks), masks[0].size if len(masks) else 0)
    seen: dict[tuple[int, bytes], int] = {}
    for i in range(len(ids)):  # instances, not pixels: a handful per frame
        seen.setdefault((int(ids[i]), flat[i].tobytes()), i)
    return np.array(sorted(seen.values()), dtype=np.int64)


def _write_matlab(f, name: str, array: np.ndarray, matlab_class: str) -> None:
    """Store ``array``, indexed as in MATLAB, as MATLAB does: transposed (column-major), with ``MATLAB_class``."""
    if array.size == 0:
        # MATLAB writes an empty array as its dimensions (uint64) flagged MATLAB_empty.
        dims = np.array(array.shape if array.ndim >= 2 else (0, 0), dtype=np.uint64)
        ds = f.create_dataset(name, data=dims, track_times=False)
        ds.attrs["MATLAB_empty"] = np.uint8(1)
    else:
        ds = f.create_dataset(name, data=np.ascontiguousarray(array.T), track_times=False)
    ds.attrs["MATLAB_class"] = np.bytes_(matlab_class)
    if matlab_class == "logical":
        ds.attrs["MATLAB_int_decode"] = np.int32(1)


def write_annotation(path: str | Path, annotation: Annotation) -> None:
    """Write ``annotation`` as a genuine MATLAB v7.3 ``.mat`` (atomically).

    The file is HDF5 with a 512-byte user block holding the MATLAB header text, each variable carries its
    ``MATLAB_class`` attribute and is stored transposed (MATLAB is column-major): ``reS_id`` (H, W) uint8,
    ``reMask`` (H, W, N) logical if binary else double (a single instance is a plain (H, W) matrix),
    ``reBBox`` (N, 4) double and ``id`` (N, 1) double (h5py reads these as (4, N) and (1, N)).
    """
    a = annotation
    binary = bool(np.all((a.masks == 0) | (a.masks == 1)))
    masks = a.masks.transpose(1, 2, 0)  # MATLAB's (H, W, N); h5py reads it back as (N, W, H)
    masks = masks[:, :, 0] if len(a.ids) == 1 else masks  # MATLAB drops a trailing singleton dimension
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w", userblock_size=USERBLOCK_SIZE, libver="earliest") as f:
            _write_matlab(f, "reS_id", a.id_map.astype(np.uint8), "uint8")
            _write_matlab(
                f, "reMask", masks.astype(np.uint8 if binary else np.float64), "logical" if binary else "double"
            )
            _write_matlab(f, "reBBox", a.boxes.astype(np.float64), "double")  # h5py reads (4, N)
            _write_matlab(f, "id", a.ids.astype(np.float64)[:, None], "double")  # h5py reads (1, N)
        _write_matlab_header(tmp)


def _write_matlab_header(path: Path) -> None:
    # 116 bytes of text, 8 bytes subsystem offset, version 0x0200 and the 'IM' endian mark (little-endian).
    header = MATLAB_HEADER.ljust(116).encode("ascii") + b"\x00" * 8 + b"\x00\x02IM"
    with open(path, "r+b") as f:
        f.write(header)
