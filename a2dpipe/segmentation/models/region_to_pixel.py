"""Region-to-pixel layer (paper eq. 2-3): region class scores to pixel class scores through soft masks.

For one image with N regions (box b_i, soft mask m_i at frame size, class scores s_i) and K classes:

    y_jk = max over regions i that *cover* pixel j of m_ij * s_ik

Conventions (the contract ``region_to_pixel`` and ``region_to_pixel_reference`` share):

- **Box membership**: pixel (row r, column c) lies in box (x1, y1, x2, y2) iff ``x1 <= c <= x2`` and
  ``y1 <= r <= y2`` (closed box, pixel indices). This holds every mask pixel whether a box's x2 is the last mask
  column (``torchvision.ops.masks_to_boxes``) or one past it; boxes partly or wholly outside the frame are clipped.
- **Coverage**: region i covers pixel j iff j lies in box i and ``m_ij > 0``. A pixel covered by no region (no box
  holds it, or every mask is exactly 0 there) gets the fixed vector ``uncovered`` (e.g. background 1, others 0)
  and passes no gradient. With N = 0 every pixel is uncovered.
- **Gradient**: at a covered pixel and class, the whole gradient goes to the winning region: d y_jk / d s_ik =
  m_ij and d y_jk / d m_ij = s_ik for the winner i, 0 for the others. **Ties** (equal m_ij * s_ik, e.g. duplicated
  instances with equal boxes, hence equal scores) go entirely to the lowest region index among the covering ones.
- Scores should be non-negative (per-region softmax probabilities): raw logits are a trap, since negative values
  lose to the 0 of an in-box pixel outside the mask and to ``uncovered`` after normalisation.

Implementation: each region touches only its box. The forward pass keeps a running maximum over (K, h, w) crops
of the output, one fused multiply and one in-place maximum per region (the work is sum of box areas x K, not
N x K x H x W); the backward pass replays the crops in region order and hands each (pixel, class) gradient to
the first region whose product equals the forward maximum. The loop is over regions, each step vectorised over
its box and all classes: gathering (pixel, region) pairs and reducing them with ``scatter_reduce``/``index_reduce``
was 2-5x slower on CPU at 50 regions, 320 x 568, 44 classes (``benchmarks/region_to_pixel.py --alternatives``),
because the gathered (pairs, K) tensor costs more memory traffic than in-place crops. Memory: forward, the
(K, H, W) output, an (H, W) coverage map and a K x ``chunk_pixels`` buffer; backward adds one (K, H, W) copy of the
incoming gradient, the (N, H, W) mask gradient and three crop-sized buffers. Never an N x K x H x W tensor.

A second formulation, :func:`.region_to_pixel_dense.region_to_pixel_dense`, computes the same contract for a batch
of frames at once with a fixed number of operator calls (~20 forward, ~15 backward), whatever the number of regions
or frames: all products as one (B, N, K, H, W) tensor with -inf where a region does not cover a pixel, a max over
regions that returns the winner's index, and a backward that scatters each (pixel, class) gradient to that winner
(torch's ``max`` returns the first of tied maxima: ties go to the lowest index, as in the loop). It does N x K x H x
W work and holds that many values at once (430 MB at 55 regions, 19 channels, 320 x 320): the right trade on a GPU,
where the loop would launch ~15 kernels per region and copy every box to the host, and the wrong one on a CPU, where
the loop's box-sized crops do a fraction of the work. :class:`RegionToPixel` takes the dense formulation for tensors
on CUDA and the loop elsewhere (``path`` forces either; tests compare both).

>>> s = torch.tensor([[0.2, 0.8], [0.9, 0.1]]); m = torch.ones(2, 1, 3)
>>> b = torch.tensor([[0.0, 0.0, 1.0, 0.0], [1.0, 0.0, 2.0, 0.0]])
>>> region_to_pixel(s, m, b, torch.tensor([1.0, 0.0]))[:, 0]
tensor([[0.2000, 0.9000, 0.9000],
        [0.8000, 0.8000, 0.1000]])
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from a2dpipe.segmentation.models.region_to_pixel_dense import pad_regions, region_to_pixel_dense

__all__ = ["RegionToPixel", "region_to_pixel", "region_to_pixel_reference", "region_log_probs", "box_pixel_ranges",
           "count_kernel_calls", "PATHS"]

DEFAULT_CHUNK_PIXELS = 1 << 18  # 262,144 pixels: a whole 320 x 568 box in one step, 46 MB of temporary at K = 44
PATHS = ("auto", "loop", "dense")  # RegionToPixel.path: auto = dense on CUDA, the loop elsewhere


def region_to_pixel(scores: torch.Tensor, masks: torch.Tensor, boxes: torch.Tensor, uncovered: torch.Tensor, *,
                    chunk_pixels: int = DEFAULT_CHUNK_PIXELS) -> torch.Tensor:
    """Pixel scores (K, H, W) of one image, before normalisation (see the module docstring for the contract).

    Args:
        scores: (N, K) non-negative region class scores (per-region softmax probabilities).
        masks: (N, H, W) soft masks in [0, 1] at frame size.
        boxes: (N, 4) x1, y1, x2, y2 in frame pixels (float; only the pixels the box holds count).
        uncovered: (K,) the scores of a pixel covered by no region.
        chunk_pixels: most pixels of one box processed in one step (at least one box row); bounds the
            temporary to K x max(chunk_pixels, W) values.

    Differentiable w.r.t. ``scores`` and ``masks`` (not ``boxes`` or ``uncovered``). Inputs are computed in
    the promoted floating dtype of ``scores`` and ``masks``.
    """
    _check(scores, masks, boxes, uncovered, chunk_pixels)
    dtype = torch.promote_types(scores.dtype, masks.dtype)
    return _RegionToPixel.apply(scores.to(dtype), masks.to(dtype), boxes, uncovered.to(scores.device, dtype),
                                chunk_pixels)


def region_log_probs(pixel_scores: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Log of the pixel scores normalised over classes (dim -3): ``log((y + eps) / sum_k (y + eps))``.

    ``pixel_scores`` is (K, H, W) or (B, K, H, W), non-negative. ``eps > 0`` keeps the log finite where a score is
    0 and makes an all-zero vector uniform; the caller's loss is then the NLL of the result.
    """
    if eps <= 0:
        raise ValueError(f"eps must be positive, not {eps}")
    shifted = pixel_scores + eps
    return torch.log(shifted) - torch.log(shifted.sum(dim=-3, keepdim=True))


class RegionToPixel(nn.Module):
    """One frame's region scores to pixel log-probabilities: the layer above plus the share of uncovered pixels.

    ``forward(scores (N, K), masks (N, H, W), boxes (N, 4), size) -> (K, H, W)`` log-probabilities, normalised
    (``region_log_probs``) within each group of ``groups`` channels (the actor and action heads, one pass over
    the masks for both). A pixel's scores are ``m * s + (1 - c) * uncovered``, c the largest covering mask value
    and ``uncovered`` ``uncovered_background`` on each group's first (background) class: a pixel covered by no
    region is background, a soft mask's weak pixel mostly so. With ``pixel_stride > 1`` the layer runs at
    1/pixel_stride of the frame (masks area-downsampled, boxes scaled) and is upsampled bilinearly to ``size``.
    :meth:`forward_batch` does the same for a batch of frames of one size: on CUDA (``path`` "auto") in one pass
    of :func:`region_to_pixel_dense`, whose operator count grows with neither regions nor frames; elsewhere frame
    by frame through the loop, the faster on a CPU. ``path`` "loop" or "dense" forces one (the results agree).
    """

    def __init__(self, *groups: int, uncovered_background: float = 1.0, pixel_stride: int = 1, path: str = "auto"):
        super().__init__()
        if pixel_stride < 1:
            raise ValueError("pixel_stride must be at least 1")
        self.groups = groups
        self.pixel_stride = pixel_stride
        self.path = path
        uncovered = torch.zeros(sum(groups))
        uncovered[[sum(groups[:i]) for i in range(len(groups))]] = uncovered_background
        self.register_buffer("uncovered", uncovered, persistent=False)

    @property
    def path(self) -> str:
        return self._path

    @path.setter
    def path(self, value: str) -> None:
        if value not in PATHS:
            raise ValueError(f"path must be one of {PATHS}, not {value!r}")
        self._path = value

    def dense_on(self, device: torch.device) -> bool:
        """Whether :meth:`forward_batch` takes the dense formulation for tensors on ``device``."""
        return self.path == "dense" or (self.path == "auto" and torch.device(device).type == "cuda")

    def forward(self, scores: torch.Tensor, masks: torch.Tensor, boxes: torch.Tensor,
                size: tuple[int, int]) -> torch.Tensor:
        pixel = self.pixel_scores(scores, masks, boxes, size)
        return self._log_probs(pixel)

    def forward_batch(self, scores: list[torch.Tensor], masks: list[torch.Tensor], boxes: list[torch.Tensor],
                      size: tuple[int, int]) -> torch.Tensor:
        """(B, K, H, W) log-probabilities of B frames of one ``size`` from per-frame (N_b, K), (N_b, H, W),
        (N_b, 4): frame by frame through :meth:`forward`, or (dense) all at once."""
        if not scores:
            raise ValueError("forward_batch needs at least one frame")
        if not self.dense_on(scores[0].device):
            return torch.stack([self(s, m, b, size) for s, m, b in zip(scores, masks, boxes)])
        scores, masks, boxes = pad_regions(scores, [m.to(scores[0].dtype) for m in masks], boxes)
        return self._log_probs(self._pixel_scores_dense(scores, masks, boxes, size))

    def _log_probs(self, pixel: torch.Tensor) -> torch.Tensor:
        """Log-probabilities normalised within each group of channels (dim -3) of (K, H, W) or (B, K, H, W)."""
        return torch.cat([region_log_probs(group) for group in pixel.split(self.groups, dim=-3)], dim=-3)

    def pixel_scores(self, scores: torch.Tensor, masks: torch.Tensor, boxes: torch.Tensor,
                     size: tuple[int, int]) -> torch.Tensor:
        """(K, H, W) pixel scores of one frame, computed at 1/pixel_stride of the frame and upsampled if needed."""
        masks = masks.to(scores.dtype)
        if self.pixel_stride == 1:
            return self._soft_coverage(scores, masks, boxes)
        small = (-(-size[0] // self.pixel_stride), -(-size[1] // self.pixel_stride))
        if len(masks):
            masks = F.adaptive_avg_pool2d(masks[:, None], small)[:, 0]
        else:
            masks = masks.new_zeros((0, *small))
        pixel = self._soft_coverage(scores, masks, boxes / self.pixel_stride)
        return F.interpolate(pixel[None], size=size, mode="bilinear", align_corners=False)[0]

    def _pixel_scores_dense(self, scores: torch.Tensor, masks: torch.Tensor, boxes: torch.Tensor,
                            size: tuple[int, int]) -> torch.Tensor:
        """(B, K, H, W) pixel scores of padded (B, N, ...) regions: :meth:`pixel_scores` for a batch, in one pass."""
        if self.pixel_stride == 1:
            return self._soft_coverage_dense(scores, masks, boxes)
        b, n = masks.shape[:2]
        small = (-(-size[0] // self.pixel_stride), -(-size[1] // self.pixel_stride))
        if n:
            masks = F.adaptive_avg_pool2d(masks.flatten(0, 1)[:, None], small)[:, 0].view(b, n, *small)
        else:
            masks = masks.new_zeros((b, 0, *small))
        pixel = self._soft_coverage_dense(scores, masks, boxes / self.pixel_stride)
        return F.interpolate(pixel, size=size, mode="bilinear", align_corners=False)

    def _soft_coverage(self, scores: torch.Tensor, masks: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        """Region-to-pixel scores plus ``(1 - c) * uncovered``, c = the largest covering mask value at the pixel.

        Soft masks (Mask R-CNN's, > 0 over nearly all of their box) would otherwise make every in-box pixel fully
        "covered": after normalisation ``m * s`` is ``s`` whatever ``m``, so a whole box took its region's class
        and the mask's shape was lost. With the uncovered share a pixel's distribution is the mixture
        ``m * s + (1 - m) * uncovered`` (one region), which equals ``s`` for a binary mask's pixel and
        ``uncovered`` outside every region.
        """
        # One pass of the layer: a constant score of 1 appended to every region yields c as the last channel.
        with_coverage = torch.cat([scores, scores.new_ones((len(scores), 1))], dim=1)
        pixel = region_to_pixel(with_coverage, masks, boxes, scores.new_zeros(with_coverage.shape[1]))
        pixel, coverage = pixel[:-1], pixel[-1:]
        return pixel + (1 - coverage) * self.uncovered.to(scores.dtype)[:, None, None]

    def _soft_coverage_dense(self, scores: torch.Tensor, masks: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        """:meth:`_soft_coverage` of padded (B, N, ...) regions, (B, K, H, W)."""
        with_coverage = torch.cat([scores, scores.new_ones((*scores.shape[:2], 1))], dim=2)
        pixel = region_to_pixel_dense(with_coverage, masks, boxes, scores.new_zeros(with_coverage.shape[2]))
        pixel, coverage = pixel[:, :-1], pixel[:, -1:]
        return pixel + (1 - coverage) * self.uncovered.to(scores.dtype)[None, :, None, None]


# aten operators that only make a view, an alias or an uninitialised tensor: no kernel runs on a device for them
_NO_KERNEL = frozenset({
    "aten::view", "aten::_reshape_alias", "aten::reshape", "aten::as_strided", "aten::empty", "aten::empty_strided",
    "aten::empty_like", "aten::select", "aten::slice", "aten::narrow", "aten::expand", "aten::expand_as",
    "aten::t", "aten::transpose", "aten::permute", "aten::unsqueeze", "aten::squeeze", "aten::detach",
    "aten::alias", "aten::lift_fresh", "aten::resolve_conj", "aten::resolve_neg", "aten::split",
    "aten::split_with_sizes", "aten::unbind", "aten::flatten", "aten::unflatten", "aten::view_as", "aten::to",
    "aten::_to_copy_noop", "aten::result_type", "aten::size", "aten::stride", "aten::is_nonzero",
    "aten::set_", "aten::chunk", "aten::contiguous", "aten::numpy_T", "aten::unsafe_split", "aten::_unsafe_view",
    "aten::as_strided_", "aten::detach_", "aten::resize_", "aten::promote_types",
})


def count_kernel_calls(fn) -> int:
    """How many operator calls running ``fn()`` makes that would each launch a kernel on a GPU, counted on any
    device with ``torch.profiler``: aten operators with no operator inside them, views and allocations aside."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    events = [e for e in prof.events() if e.name.startswith("aten::")]
    parents = {id(e.cpu_parent) for e in events if e.cpu_parent is not None}
    return sum(1 for e in events if id(e) not in parents and e.name not in _NO_KERNEL)


def box_pixel_ranges(boxes: torch.Tensor, height: int, width: int) -> list[tuple[int, int, int, int]]:
    """Per box, the half-open pixel ranges (row0, row1, col0, col1) it holds, clipped to the frame (maybe empty)."""
    b = boxes.detach().to("cpu", torch.float64)
    col0 = b[:, 0].ceil().clamp(0, width)
    row0 = b[:, 1].ceil().clamp(0, height)
    col1 = (b[:, 2].floor() + 1).clamp(0, width)
    row1 = (b[:, 3].floor() + 1).clamp(0, height)
    return [tuple(r) for r in torch.stack([row0, row1, col0, col1], 1).long().tolist()]


def region_to_pixel_reference(scores: torch.Tensor, masks: torch.Tensor, boxes: torch.Tensor,
                              uncovered: torch.Tensor) -> torch.Tensor:
    """The obviously correct loop: every region over the whole frame, running maximum, autograd for gradients.

    Same contract as ``region_to_pixel``; costs N x K x H x W work. Kept for tests and the benchmark. Ties split
    the gradient as ``torch.maximum`` does (half to each side), unlike ``region_to_pixel``.
    """
    _check(scores, masks, boxes, uncovered, 1)
    n, height, width = masks.shape
    rows = torch.arange(height, dtype=boxes.dtype, device=boxes.device)
    cols = torch.arange(width, dtype=boxes.dtype, device=boxes.device)
    out = scores.new_zeros((scores.shape[1], height, width))
    covered = torch.zeros((height, width), dtype=torch.bool, device=masks.device)
    for i in range(n):
        x1, y1, x2, y2 = boxes[i]
        in_box = ((rows >= y1) & (rows <= y2))[:, None] & ((cols >= x1) & (cols <= x2))[None, :]
        contribution = masks[i] * in_box
        out = torch.maximum(out, contribution[None] * scores[i][:, None, None])
        covered |= contribution > 0
    return torch.where(covered, out, uncovered.to(out)[:, None, None])


def _check(scores, masks, boxes, uncovered, chunk_pixels) -> None:
    if masks.dim() != 3:
        raise ValueError(f"masks must be (N, H, W), got shape {tuple(masks.shape)}")
    n = masks.shape[0]
    if scores.dim() != 2 or scores.shape[0] != n:
        raise ValueError(f"scores must be (N={n}, K), got shape {tuple(scores.shape)}")
    if boxes.shape != (n, 4):
        raise ValueError(f"boxes must be (N={n}, 4), got shape {tuple(boxes.shape)}")
    if uncovered.shape != (scores.shape[1],):
        raise ValueError(f"uncovered must be (K={scores.shape[1]},), got shape {tuple(uncovered.shape)}")
    if n and not torch.isfinite(boxes).all():
        raise ValueError("boxes must be finite")
    if chunk_pixels < 1:
        raise ValueError(f"chunk_pixels must be at least 1, not {chunk_pixels}")


def _steps(ranges, chunk_pixels):
    """(region, row0, row1, col0, col1) steps: each non-empty box, split into row bands of <= chunk_pixels pixels."""
    for i, (r0, r1, c0, c1) in enumerate(ranges):
        if r0 >= r1 or c0 >= c1:
            continue
        band = max(1, chunk_pixels // (c1 - c0))
        for start in range(r0, r1, band):
            yield i, start, min(start + band, r1), c0, c1


class _RegionToPixel(torch.autograd.Function):
    @staticmethod
    def forward(ctx, scores, masks, boxes, uncovered, chunk_pixels):
        n, height, width = masks.shape
        k = scores.shape[1]
        ranges = box_pixel_ranges(boxes, height, width) if n else []
        out = scores.new_zeros((k, height, width))
        covered = torch.zeros((height, width), dtype=torch.bool, device=masks.device)
        buffer = scores.new_empty(k * min(max(chunk_pixels, width), height * width))  # a band is >= 1 row
        for i, r0, r1, c0, c1 in _steps(ranges, chunk_pixels):
            crop = masks[i, r0:r1, c0:c1]
            product = buffer[: k * crop.numel()].view(k, r1 - r0, c1 - c0)
            torch.mul(crop[None], scores[i][:, None, None], out=product)
            view = out[:, r0:r1, c0:c1]
            torch.maximum(view, product, out=view)
            covered[r0:r1, c0:c1] |= crop > 0
        # In place, no second frame-sized tensor: an uncovered pixel still holds 0 in every class, so only classes
        # with a non-zero uncovered score are filled (a masked fill per class is ~10x faster than boolean indexing)
        uncovered_pixels = ~covered
        for c, value in enumerate(uncovered.tolist()):
            if value:
                out[c].masked_fill_(uncovered_pixels, value)
        ctx.save_for_backward(scores, masks, out, covered)
        ctx.ranges, ctx.chunk_pixels = ranges, chunk_pixels
        return out

    @staticmethod
    def backward(ctx, grad):
        scores, masks, out, covered = ctx.saved_tensors
        if not (ctx.needs_input_grad[0] or ctx.needs_input_grad[1]):
            return None, None, None, None, None
        grad_scores = torch.zeros_like(scores)
        grad_masks = torch.zeros_like(masks)
        # Our own copy, zeroed where uncovered (a constant there) and wherever a region has claimed the gradient:
        # regions are replayed in index order, so an exact tie goes to the lowest covering index.
        remaining = grad * covered
        k, height, width = out.shape
        size = k * min(max(ctx.chunk_pixels, width), height * width)
        product_buffer, g_buffer = out.new_empty(size), out.new_empty(size)
        wins_buffer = torch.empty(size, dtype=torch.bool, device=out.device)
        for i, r0, r1, c0, c1 in _steps(ctx.ranges, ctx.chunk_pixels):
            crop = masks[i, r0:r1, c0:c1]
            shape = (k, r1 - r0, c1 - c0)
            n = k * crop.numel()
            # -inf where the mask is 0: a region that does not cover a pixel never matches its (finite) maximum
            covering = crop.masked_fill(crop == 0, float("-inf"))
            product = torch.mul(covering[None], scores[i][:, None, None], out=product_buffer[:n].view(shape))
            wins = torch.eq(product, out[:, r0:r1, c0:c1], out=wins_buffer[:n].view(shape))
            left = remaining[:, r0:r1, c0:c1]
            g = torch.mul(left, wins, out=g_buffer[:n].view(shape)).view(k, -1)  # (K, crop pixels)
            left.masked_fill_(wins, 0)
            grad_scores[i] += g @ crop.reshape(-1)
            grad_masks[i, r0:r1, c0:c1] += (scores[i] @ g).view(r1 - r0, c1 - c0)
        return grad_scores, grad_masks, None, None, None
