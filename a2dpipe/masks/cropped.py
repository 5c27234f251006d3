"""Region masks in memory: :class:`Regions` (a frame's candidates, full-frame soft masks) and
:class:`CroppedMasks` (the same masks quantised to uint8 and cropped to the rectangles of their non-zero levels,
as the region-mask cache stores them; :mod:`a2dpipe.masks.cache`).

Quantisation is ``rint(clip(mask, 0, 1) * 255)``; a pixel whose level is 0 lies outside every stored rectangle.
Everything here is numpy and OpenCV (the ground-truth source runs without importing torch).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

__all__ = ["Regions", "CroppedMasks", "NONZERO_LEVEL"]

_QUANT = 255.0  # soft masks are stored as uint8 probability * 255 (error below 0.002, ~4x smaller than float32)
_DEQUANT = np.float32(1.0 / _QUANT)


def _first_nonzero_level() -> np.float32:
    """The smallest float32 mask value whose quantised level is not 0 (``rint(value * 255)`` >= 1 in float32):
    a pixel is stored iff its value is at least this, which one comparison finds without quantising the frame."""
    value = np.float32(0.5 / _QUANT)
    step = lambda x, to: np.nextafter(x, np.float32(to), dtype=np.float32)  # noqa: E731
    while np.rint(value * np.float32(_QUANT)) >= 1:
        value = step(value, 0)
    while np.rint(value * np.float32(_QUANT)) < 1:
        value = step(value, 1)
    return value


# a pixel is stored iff its value is at least this (see _first_nonzero_level)
NONZERO_LEVEL = _first_nonzero_level()


@dataclass
class Regions:
    """Candidate regions of one frame.

    Attributes:
        boxes: (N, 4) float32, x1, y1, x2, y2 in frame pixels.
        scores: (N,) float32 in [0, 1].
        labels: (N,) int64, actor 1..7, or 0 when the source does not know the actor.
        masks: (N, H, W) float32 in [0, 1], full frame.
    """

    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray
    masks: np.ndarray

    def __post_init__(self):
        self.boxes = np.asarray(self.boxes, dtype=np.float32).reshape(-1, 4)
        self.scores = np.asarray(self.scores, dtype=np.float32).reshape(-1)
        self.labels = np.asarray(self.labels, dtype=np.int64).reshape(-1)
        self.masks = np.asarray(self.masks, dtype=np.float32)
        n = len(self.boxes)
        if self.masks.ndim != 3 or not (len(self.scores) == len(self.labels) == len(self.masks) == n):
            raise ValueError(
                f"regions disagree: boxes {self.boxes.shape}, scores {self.scores.shape}, "
                f"labels {self.labels.shape}, masks {self.masks.shape} (want N, N, N, (N, H, W))"
            )

    def __len__(self) -> int:
        return len(self.boxes)

    @property
    def size(self) -> tuple[int, int]:
        """Frame (height, width)."""
        return int(self.masks.shape[1]), int(self.masks.shape[2])

    @classmethod
    def empty(cls, height: int, width: int) -> "Regions":
        """No regions on a ``height`` x ``width`` frame (a normal outcome, stored as such)."""
        return cls(np.zeros((0, 4)), np.zeros(0), np.zeros(0), np.zeros((0, height, width)))


@dataclass
class CroppedMasks:
    """A frame's regions as stored: quantised masks cropped to their rectangles (see the module docstring).

    :meth:`paste` puts a window of them into an array, so a reader builds only the pixels it needs.
    """

    boxes: np.ndarray  # (N, 4) float32
    scores: np.ndarray  # (N,) float32
    labels: np.ndarray  # (N,) int64
    extents: np.ndarray  # (N, 4) int64: top, left, height, width
    data: np.ndarray  # (P,) uint8
    size: tuple[int, int]  # frame (height, width)

    def __len__(self) -> int:
        return len(self.boxes)

    @classmethod
    def from_regions(cls, regions: Regions) -> "CroppedMasks":
        """Crop and quantise full-frame soft masks (values clipped to [0, 1], rounded to the nearest 1/255). One
        mask at a time: its rectangle (:func:`_extent`) and its levels are found while it is in the CPU's cache
        (a 320 x 568 float32 mask is 0.7 MB), so the 36 MB of 50 masks are read from memory once."""
        extents = np.zeros((len(regions), 4), np.int64)
        levels = []
        for i, mask in enumerate(regions.masks):
            extent = _extent(mask)
            if extent is None:
                continue
            top, left, h, w = extents[i] = extent
            levels.append(np.empty(h * w, np.uint8))
            _quantise(mask[top:top + h, left:left + w], levels[-1].reshape(h, w))
        data = np.concatenate(levels) if levels else np.zeros(0, np.uint8)
        return cls(regions.boxes, regions.scores, regions.labels, extents, data, regions.size)

    def paste(self, out: np.ndarray, rows: slice | None = None, cols: slice | None = None,
              which: list[int] | None = None) -> np.ndarray:
        """Write the masks (dequantised to float32) inside ``rows`` x ``cols`` of the frame into ``out``
        (N, rows, cols), which must hold zeros; returns ``out``. ``which``: only these regions, in this order
        (``out`` then holds one mask per index)."""
        height, width = self.size
        r0, r1, _ = (rows or slice(0, height)).indices(height)
        c0, c1, _ = (cols or slice(0, width)).indices(width)
        offsets = np.concatenate([[0], np.cumsum(self.extents[:, 2] * self.extents[:, 3])]).tolist()
        extents = self.extents.tolist()
        for j, i in enumerate(range(len(self)) if which is None else which):
            top, left, h, w = extents[i]
            top_in, bottom_in = max(top, r0), min(top + h, r1)
            left_in, right_in = max(left, c0), min(left + w, c1)
            if top_in >= bottom_in or left_in >= right_in:
                continue
            crop = self.data[offsets[i]:offsets[i + 1]].reshape(h, w)
            np.multiply(crop[top_in - top:bottom_in - top, left_in - left:right_in - left], _DEQUANT,
                        out=out[j, top_in - r0:bottom_in - r0, left_in - c0:right_in - c0])
        return out

    def window(self, rows: slice | None = None, cols: slice | None = None) -> np.ndarray:
        """(N, rows, cols) float32 masks inside ``rows`` x ``cols`` (the whole frame by default)."""
        height, width = self.size
        r0, r1, _ = (rows or slice(0, height)).indices(height)
        c0, c1, _ = (cols or slice(0, width)).indices(width)
        return self.paste(np.zeros((len(self), r1 - r0, c1 - c0), np.float32), rows, cols)

    def regions(self) -> Regions:
        """The full-frame :class:`Regions`."""
        return Regions(self.boxes, self.scores, self.labels, self.window())


def _extent(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """Top, left, height, width of the smallest rectangle holding a (H, W) mask's non-zero quantised pixels (None
    for a mask with none), each value compared with the first non-zero level: the row maxima of the whole mask,
    the column maxima of only the rows it occupies. No torch (the ground-truth source runs without importing it)."""
    height, width = mask.shape
    rows = mask.max(axis=1) >= NONZERO_LEVEL
    if not rows.any():
        return None
    top, bottom = int(rows.argmax()), height - int(rows[::-1].argmax())
    cols = mask[top:bottom].max(axis=0) >= NONZERO_LEVEL
    left, right = int(cols.argmax()), width - int(cols[::-1].argmax())
    return top, left, bottom - top, right - left


def _quantise(masks: np.ndarray, out: np.ndarray) -> None:
    """Soft masks in [0, 1] (clipped) -> uint8 ``rint(mask * _QUANT)`` into ``out`` (of their shape). In one pass
    by OpenCV (the float32 product saturated to 0..255 and rounded half to even: numpy's multiply, clip and rint to
    the byte, tested at and beside every half level; ~3 times faster), but for a few pixels (OpenCV takes an array
    of at most 4 as a scalar), and by numpy wherever OpenCV did not write ``out`` itself."""
    if masks.size >= 64:
        if masks.strides[-1] != masks.itemsize:  # OpenCV takes rows of adjacent pixels
            masks = np.ascontiguousarray(masks)
        result = cv2.multiply(masks, _QUANT, dst=out, dtype=cv2.CV_8U)
        if result.shape == out.shape and np.shares_memory(result, out):
            return
    np.rint(np.clip(np.multiply(masks, np.float32(_QUANT), dtype=np.float32), 0.0, _QUANT), out=out, casting="unsafe")
