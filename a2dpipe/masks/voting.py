"""FCIS's mask voting at test time, as the official code (msracver/FCIS ``lib/mask/mask_transform.py``:
``cpu_mask_voting`` / ``mask_aggregation``, with the defaults of its COCO configuration) does it.

For each kept detection (box b, class c): every RoI of the image (both passes, whatever its class or score) whose
box overlaps b at box IoU >= 0.5 votes, weighted by its probability of class c (weights normalised to sum to 1).
A voter's mask is its own mask (that of the class it scores highest, background included; option: that of class c),
resized to its box in image pixels and
binarised at 0.4; the weighted votes add up in an image canvas. The detection's box becomes the tight box of the
canvas pixels >= 0.4, and its mask the canvas over that box, resized to M x M and cut at 0.4 (FCIS cuts the
pasted mask there; this returns it binary so that any later cut in (0, 1) keeps the same pixels). A detection
whose canvas has no pixel >= 0.4, or only one row or column of them, is dropped (FCIS's GPU voting drops it).

Pixel convention: a box (x1, y1, x2, y2) covers the pixels round(x1) .. round(x2) - 1 (at least one), and a
refitted box is (first column, first row, last column + 1, last row + 1): torchvision's continuous boxes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torchvision.ops import box_iou

__all__ = ["mask_voting"]


def mask_voting(kept_boxes: torch.Tensor, kept_labels: torch.Tensor, boxes: torch.Tensor, class_probs: torch.Tensor,
                masks: torch.Tensor, *, own_class: bool = True, iou_thresh: float = 0.5, binary_thresh: float = 0.4):
    """Vote the masks of the detections ``kept_boxes`` (N, 4) of classes ``kept_labels`` (N,) from every RoI:
    ``boxes`` (R, 4), ``class_probs`` (R, C + 1), ``masks`` (R, C + 1, M, M) in [0, 1], each class's mask.
    ``own_class``: a voter gives the mask of the class it scores highest, background included (FCIS); otherwise
    that of the detection's class.

    Returns ``(boxes (N', 4), masks (N', 1, M, M) in {0, 1}, kept (N',))``: the refitted boxes and voted masks of the
    detections that keep a mask, and their indices in the input.
    """
    size = masks.shape[-1]
    own = masks[torch.arange(len(masks), device=masks.device), class_probs.argmax(1)] if own_class else None
    out_boxes, out_masks, kept = [], [], []
    if len(kept_boxes) and len(boxes):
        overlaps = box_iou(kept_boxes, boxes) >= iou_thresh
        for i in range(len(kept_boxes)):
            voters = torch.where(overlaps[i])[0]
            if len(voters) == 0:
                continue
            weights = class_probs[voters, kept_labels[i]]
            weights = weights / weights.sum().clamp(min=1e-12)
            voter_masks = own[voters] if own_class else masks[voters, kept_labels[i]]
            voted = _vote(boxes[voters], voter_masks, weights, size, binary_thresh)
            if voted is not None:
                out_boxes.append(voted[0]), out_masks.append(voted[1]), kept.append(i)
    if not kept:
        empty = kept_boxes.new_zeros
        return empty(0, 4), masks.new_zeros(0, 1, size, size), torch.zeros(0, dtype=torch.int64,
                                                                             device=kept_boxes.device)
    return torch.stack(out_boxes), torch.stack(out_masks), torch.tensor(kept, device=kept_boxes.device)


def _vote(boxes: torch.Tensor, masks: torch.Tensor, weights: torch.Tensor, size: int, binary_thresh: float):
    """One detection's voters -> (refitted box (4,), voted mask (1, M, M)), or None when nothing is left."""
    x0, y0, x1, y1 = _pixel_boxes(boxes).unbind(1)
    left, top = int(x0.min()), int(y0.min())
    canvas_w, canvas_h = int(x1.max()) - left, int(y1.max()) - top
    cols = torch.arange(canvas_w, dtype=masks.dtype, device=masks.device) + left
    rows = torch.arange(canvas_h, dtype=masks.dtype, device=masks.device) + top
    # each voter's mask resized to its pixel box (bilinear, half-pixel centres: cv2.resize's rule) on the canvas
    gx = 2 * (cols[None] + 0.5 - x0[:, None]) / (x1 - x0)[:, None] - 1  # (P, W)
    gy = 2 * (rows[None] + 0.5 - y0[:, None]) / (y1 - y0)[:, None] - 1  # (P, H)
    grid = torch.stack(torch.broadcast_tensors(gx[:, None, :], gy[:, :, None]), -1)
    resized = F.grid_sample(masks[:, None], grid, mode="bilinear", padding_mode="border", align_corners=False)[:, 0]
    inside = (gy.abs() <= 1)[:, :, None] & (gx.abs() <= 1)[:, None, :]
    votes = ((resized >= binary_thresh) & inside).to(masks.dtype)
    canvas = (votes * weights[:, None, None]).sum(0)
    on_rows, on_cols = torch.where(canvas >= binary_thresh)
    if len(on_rows) == 0:
        return None
    r0, r1, c0, c1 = int(on_rows.min()), int(on_rows.max()), int(on_cols.min()), int(on_cols.max())
    if r1 == r0 or c1 == c0:
        return None
    crop = canvas[r0:r1 + 1, c0:c1 + 1]
    mask = F.interpolate(crop[None, None], size=(size, size), mode="bilinear", align_corners=False)[0]
    box = torch.tensor([c0 + left, r0 + top, c1 + 1 + left, r1 + 1 + top], dtype=boxes.dtype, device=boxes.device)
    return box, (mask >= binary_thresh).to(masks.dtype)


def _pixel_boxes(boxes: torch.Tensor) -> torch.Tensor:
    """Boxes as pixel ranges [round(x1), round(x2)), at least one pixel wide and high."""
    rounded = boxes.round()
    x0, y0 = rounded[:, 0], rounded[:, 1]
    return torch.stack([x0, y0, torch.maximum(rounded[:, 2], x0 + 1), torch.maximum(rounded[:, 3], y0 + 1)], 1)
