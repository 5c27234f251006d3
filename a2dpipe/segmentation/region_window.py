"""Which regions a sample's window keeps: region boxes mirrored with the frame and moved into a crop, and the
regions a crop drops decided from the boxes alone, before any mask is read. ``view`` is a
:class:`.samples.View` (its ``flip``, ``top``, ``left`` and ``crop``)."""

from __future__ import annotations

import numpy as np

__all__ = ["mirrored_boxes", "crop_regions", "kept_in_view"]


def mirrored_boxes(boxes: np.ndarray, width: int) -> np.ndarray:
    """(N, 4) boxes x1, y1, x2, y2 of a frame ``width`` pixels wide, mirrored left-right with it."""
    mirrored = boxes.copy()
    mirrored[:, [0, 2]] = width - boxes[:, [2, 0]]
    return mirrored


def crop_regions(boxes: np.ndarray, masks: np.ndarray, view) -> tuple[np.ndarray, np.ndarray]:
    """Boxes of the mirrored frame moved into the crop and clipped to it; regions that leave it are dropped (none
    where the samples read only the regions :func:`kept_in_view` keeps)."""
    boxes, keep = _boxes_in_crop(boxes, view)
    if keep.all():
        return boxes, masks
    return boxes[keep], masks[keep]


def _boxes_in_crop(boxes: np.ndarray, view) -> tuple[np.ndarray, np.ndarray]:
    ch, cw = view.crop
    boxes = boxes - np.array([view.left, view.top, view.left, view.top], np.float32)
    boxes = np.clip(boxes, 0, [cw, ch, cw, ch]).astype(np.float32)
    return boxes, (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])


def kept_in_view(view, width: int):
    """For a cropped view, a function of the frame's full-frame boxes giving which regions the view keeps: the
    test of :func:`crop_regions` on the boxes as the view mirrors them, so that no mask of a region the crop drops
    is read, pasted or copied; None for a whole frame."""

    def keep(boxes: np.ndarray) -> np.ndarray:
        return _boxes_in_crop(mirrored_boxes(boxes, width) if view.flip else boxes, view)[1]

    return keep if view.crop else None
