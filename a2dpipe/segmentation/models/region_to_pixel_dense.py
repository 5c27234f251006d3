"""Region-to-pixel for a padded batch of frames in one pass: the formulation a GPU runs.

:func:`region_to_pixel` (module :mod:`.region_to_pixel`) loops over regions, which is fastest on a CPU but launches
kernels in proportion to the regions; here every region of every frame is compared at once, so the number of
operator calls depends on neither the regions nor the frames, at the cost of a (B, N, K, H, W) temporary.
"""

from __future__ import annotations

import torch

__all__ = ["region_to_pixel_dense", "pad_regions"]


def region_to_pixel_dense(scores: torch.Tensor, masks: torch.Tensor, boxes: torch.Tensor,
                          uncovered: torch.Tensor) -> torch.Tensor:
    """Pixel scores (B, K, H, W) of a batch of frames in one pass (module docstring): the contract of
    :func:`region_to_pixel` for each frame, with a number of operator calls that depends on neither N nor B.

    Args:
        scores: (B, N, K) non-negative region class scores; frames with fewer regions are padded
            (:func:`pad_regions`: boxes that hold no pixel, zero masks).
        masks: (B, N, H, W) soft masks in [0, 1].
        boxes: (B, N, 4) x1, y1, x2, y2 in frame pixels; a box holding no pixel (e.g. all -1) is padding.
        uncovered: (K,) the scores of a pixel covered by no region.

    Differentiable w.r.t. ``scores`` and ``masks``. Nothing is copied to the host: the boxes are compared with
    pixel coordinates on the device (a non-finite coordinate holds no pixel instead of being refused).
    """
    batch_regions = masks.shape[:2]
    if masks.dim() != 4 or scores.dim() != 3 or scores.shape[:2] != batch_regions or boxes.shape != (*batch_regions, 4):
        raise ValueError(f"want scores (B, N, K), masks (B, N, H, W), boxes (B, N, 4); got {tuple(scores.shape)}, "
                         f"{tuple(masks.shape)}, {tuple(boxes.shape)}")
    if uncovered.shape != (scores.shape[2],):
        raise ValueError(f"uncovered must be (K={scores.shape[2]},), got shape {tuple(uncovered.shape)}")
    dtype = torch.promote_types(scores.dtype, masks.dtype)
    uncovered = uncovered.to(scores.device, dtype)
    if masks.shape[1] == 0:  # no region in any frame: every pixel uncovered (a max over no region is undefined)
        b, _, height, width = masks.shape
        return uncovered[None, :, None, None].expand(b, -1, height, width).clone()
    return _DenseRegionToPixel.apply(scores.to(dtype), masks.to(dtype), boxes, uncovered)


def pad_regions(scores: list[torch.Tensor], masks: list[torch.Tensor],
                boxes: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-frame (N_b, K), (N_b, H, W), (N_b, 4) -> (B, N, K), (B, N, H, W), (B, N, 4), N = max N_b: padded with
    zero scores, zero masks and boxes at -1 (holding no pixel), so a padded region covers nothing."""
    from torch.nn.utils.rnn import pad_sequence

    return (pad_sequence(scores, batch_first=True), pad_sequence(masks, batch_first=True),
            pad_sequence(boxes, batch_first=True, padding_value=-1.0))


def _covering(masks: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """(B, N, H, W) bool: the region's box holds the pixel (closed box, pixel indices) and its mask is > 0."""
    height, width = masks.shape[-2:]
    rows = torch.arange(height, device=masks.device, dtype=boxes.dtype)
    cols = torch.arange(width, device=masks.device, dtype=boxes.dtype)
    x1, y1, x2, y2 = (boxes[..., i, None] for i in range(4))  # (B, N, 1) each
    in_rows = (rows >= y1) & (rows <= y2)  # (B, N, H)
    in_cols = (cols >= x1) & (cols <= x2)  # (B, N, W)
    return (in_rows[..., :, None] & in_cols[..., None, :]) & (masks > 0)


class _DenseRegionToPixel(torch.autograd.Function):
    @staticmethod
    def forward(ctx, scores, masks, boxes, uncovered):
        covering = _covering(masks, boxes)  # (B, N, H, W)
        product = masks[:, :, None] * scores[:, :, :, None, None]  # (B, N, K, H, W)
        product.masked_fill_(~covering[:, :, None], float("-inf"))
        best, winner = product.max(dim=1)  # (B, K, H, W): the first of tied maxima
        del product
        covered = covering.any(dim=1)[:, None]  # (B, 1, H, W)
        # an in-box pixel outside a mask counts as 0 in the loop: negative products lose to it there
        out = torch.where(covered, best.clamp_min(0), uncovered[None, :, None, None])
        ctx.save_for_backward(scores, masks, winner, covered & (best >= 0))
        return out

    @staticmethod
    def backward(ctx, grad):
        scores, masks, winner, claimed = ctx.saved_tensors
        if not (ctx.needs_input_grad[0] or ctx.needs_input_grad[1]):
            return None, None, None, None
        b, n, k = scores.shape
        g = (grad * claimed).flatten(2)  # (B, K, HW): the gradient each winner gets
        index = winner.flatten(2)  # (B, K, HW)
        grad_scores = grad_masks = None
        if ctx.needs_input_grad[0]:  # d/ds[i, k] = sum over pixels won by i in class k of g * m_i
            won_mask = masks.flatten(2).gather(1, index)  # (B, K, HW): m of the winner
            classes = torch.arange(k, device=scores.device)[None, :, None]
            grad_scores = scores.new_zeros((b, n * k)).scatter_add_(1, (index * k + classes).flatten(1),
                                                                   (g * won_mask).flatten(1)).view(b, n, k)
        if ctx.needs_input_grad[1]:  # d/dm[i, j] = sum over classes won by i at pixel j of g * s_i
            won_score = scores.transpose(1, 2).gather(2, index)  # (B, K, HW): s of the winner
            grad_masks = masks.new_zeros(masks.flatten(2).shape).scatter_add_(1, index, g * won_score)
            grad_masks = grad_masks.view_as(masks)
        return grad_scores, grad_masks, None, None
