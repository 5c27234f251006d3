"""Back-ends: the DeepLab ASPP baseline (Fig. 2b) and the region back-end (Fig. 2c, paper 3.3).

Both take the fused front-end features (B, C, h, w) at output stride 8 and return

    {"actor": (B, 8, H, W), "action": (B, 10, H, W)}

log-probabilities at frame size (H, W), so that one loss (eq. 1: NLL of each head) trains either.

Region back-end, per frame with N candidate regions (boxes in frame pixels, soft masks at frame size):

1. RoI align of the fused features in every box (``spatial_scale=1/8``, all frames of the batch in one call),
   optionally after a 1x1 convolution that narrows the features (``roi_channels``: with two ResNet-101 streams
   the first FC layer would otherwise see 4096 x 7 x 7 inputs per region and dominate the back-end's cost);
2. two FC layers, then an actor head (8) and an action head (10): region scores;
3. **per-region softmax**: each region's scores become probabilities, so they are non-negative and the max of
   eq. 2-3 compares like with like (raw logits would be clipped at zero by ``m * s`` and the max);
4. the region-to-pixel layer (``a2dpipe.segmentation.models.region_to_pixel``): per pixel, the max over regions whose box
   holds it of ``mask * probability``, plus ``(1 - c) * uncovered`` where c is the largest mask value of a
   covering region and ``uncovered = (uncovered_background, 0, ..., 0)``: a pixel covered by no region is
   "background" (better than falling back on the stage-1 prediction), a soft mask's weak pixel mostly so;
5. ``region_log_probs`` normalises the pixel scores into log-probabilities.

Actor and action scores go through the region-to-pixel layer together (18 channels, one pass over the masks).
With ``pixel_stride > 1`` step 4 runs at 1/pixel_stride of the frame (masks area-downsampled, boxes scaled) and
the pixel scores are upsampled bilinearly to frame size: cheaper on large frames, at the cost of mask detail.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import roi_align, roi_pool

from a2dpipe.labels import NUM_CLASSES
from a2dpipe.segmentation.models.frontend import OUTPUT_STRIDE
from a2dpipe.segmentation.models.region_to_pixel import region_log_probs, region_to_pixel

__all__ = ["ASPPHead", "ASPPBaseline", "RegionBackEnd", "NUM_ACTORS", "NUM_ACTIONS"]

NUM_ACTORS = NUM_CLASSES["actor"]  # background + 7
NUM_ACTIONS = NUM_CLASSES["action"]  # background + 9


class ASPPHead(nn.Module):
    """DeepLab-v2 ASPP classifier: parallel 3x3 convolutions with different dilation rates, outputs summed."""

    def __init__(self, in_channels: int, num_classes: int, rates: Sequence[int]):
        super().__init__()
        self.branches = nn.ModuleList(
            nn.Conv2d(in_channels, num_classes, kernel_size=3, padding=r, dilation=r) for r in rates
        )
        for conv in self.branches:
            nn.init.normal_(conv.weight, std=0.01)
            nn.init.zeros_(conv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([branch(x) for branch in self.branches]).sum(0)


class ASPPBaseline(nn.Module):
    """Baseline back-end: one ASPP head for actors, one for actions.

    ``forward(features, size)``: features (B, C, h, w); returns the module docstring's dict at ``size`` (H, W).
    Logits are upsampled bilinearly before the log-softmax.
    """

    def __init__(self, in_channels: int, rates: Sequence[int] = (6, 12, 18, 24)):
        super().__init__()
        self.actor = ASPPHead(in_channels, NUM_ACTORS, rates)
        self.action = ASPPHead(in_channels, NUM_ACTIONS, rates)

    def forward(self, features: torch.Tensor, size: tuple[int, int]) -> dict[str, torch.Tensor]:
        out = {}
        for name, head in (("actor", self.actor), ("action", self.action)):
            logits = F.interpolate(head(features), size=size, mode="bilinear", align_corners=False)
            out[name] = F.log_softmax(logits.float(), dim=1)
        return out


class RegionBackEnd(nn.Module):
    """Region back-end (see the module docstring).

    Args:
        in_channels: fused feature channels.
        roi_size: RoI pooling output is roi_size x roi_size.
        fc_dim: width of the two FC layers.
        roi_channels: if set, a 1x1 convolution (+ ReLU) narrows the features to this many channels before RoI
            pooling; ``None`` pools the fused features as they are.
        uncovered_background: background score of a pixel covered by no region (other classes get 0).
        pool: ``"align"`` (``torchvision.ops.roi_align``) or ``"max"`` (``roi_pool``, Fast R-CNN's).
        pixel_stride: resolution of the region-to-pixel layer, 1 = frame size.

    ``forward(features, regions, size)``: ``regions`` is a list (one per frame of the batch) of dicts with
    ``boxes`` (N, 4) float x1, y1, x2, y2 in frame pixels and ``masks`` (N, H, W) float in [0, 1]; N may be 0.
    Returns the module docstring's dict plus ``"region_scores"``: list of (N, 18) per-region probabilities
    (actor 8 then action 10). ``pixel_log_probs(scores, regions, size)`` runs steps 4-5 alone on given region
    probabilities (the mask-vote control feeds it averaged stage-1 probabilities instead of the heads').
    """

    def __init__(self, in_channels: int, *, roi_size: int = 7, fc_dim: int = 256, uncovered_background: float = 1.0,
                 pool: str = "align", pixel_stride: int = 1, roi_channels: int | None = None):
        super().__init__()
        if pool not in ("align", "max"):
            raise ValueError(f"pool must be 'align' or 'max', not {pool!r}")
        if pixel_stride < 1:
            raise ValueError("pixel_stride must be at least 1")
        self.roi_size = roi_size
        self.pool = pool
        self.pixel_stride = pixel_stride
        self.reduce = None if roi_channels is None else nn.Conv2d(in_channels, roi_channels, kernel_size=1)
        self.fc6 = nn.Linear((roi_channels or in_channels) * roi_size * roi_size, fc_dim)
        self.fc7 = nn.Linear(fc_dim, fc_dim)
        self.actor = nn.Linear(fc_dim, NUM_ACTORS)
        self.action = nn.Linear(fc_dim, NUM_ACTIONS)
        uncovered = torch.zeros(NUM_ACTORS + NUM_ACTIONS)
        uncovered[0] = uncovered[NUM_ACTORS] = uncovered_background
        self.register_buffer("uncovered", uncovered, persistent=False)

    def region_scores(self, features: torch.Tensor, boxes: list[torch.Tensor]) -> torch.Tensor:
        """(sum N, 18) per-region probabilities (actor softmax, then action softmax) for all frames' boxes."""
        rois = [b.to(features.dtype) for b in boxes]
        if self.reduce is not None:
            features = F.relu(self.reduce(features))
        if self.pool == "align":
            pooled = roi_align(features, rois, self.roi_size, spatial_scale=1 / OUTPUT_STRIDE, sampling_ratio=2,
                               aligned=True)
        else:
            pooled = roi_pool(features, rois, self.roi_size, spatial_scale=1 / OUTPUT_STRIDE)
        x = F.relu(self.fc6(pooled.flatten(1)))
        x = F.relu(self.fc7(x))
        return torch.cat([F.softmax(self.actor(x).float(), 1), F.softmax(self.action(x).float(), 1)], dim=1)

    def forward(self, features: torch.Tensor, regions: list[dict[str, torch.Tensor]],
                size: tuple[int, int]) -> dict[str, torch.Tensor]:
        if len(regions) != features.shape[0]:
            raise ValueError(f"{len(regions)} region sets for a batch of {features.shape[0]} frames")
        boxes = [r["boxes"].float() for r in regions]
        counts = [len(b) for b in boxes]
        if sum(counts):
            scores = self.region_scores(features, boxes).split(counts)
        else:  # no region in the whole batch: every pixel is uncovered
            scores = [features.new_zeros((0, NUM_ACTORS + NUM_ACTIONS), dtype=torch.float32)] * len(boxes)
        return {**self.pixel_log_probs(list(scores), regions, size), "region_scores": list(scores)}

    def pixel_log_probs(self, scores: list[torch.Tensor], regions: list[dict[str, torch.Tensor]],
                        size: tuple[int, int]) -> dict[str, torch.Tensor]:
        """Region-to-pixel and normalisation: per frame (N, 18) region probabilities -> ``{"actor", "action"}``
        (B, K, H, W) log-probabilities."""
        actor, action = [], []
        for s, r in zip(scores, regions):
            pixel = self._to_pixels(s, r["masks"], r["boxes"].float(), size)
            actor.append(region_log_probs(pixel[:NUM_ACTORS]))
            action.append(region_log_probs(pixel[NUM_ACTORS:]))
        return {"actor": torch.stack(actor), "action": torch.stack(action)}

    def _to_pixels(self, scores: torch.Tensor, masks: torch.Tensor, boxes: torch.Tensor,
                   size: tuple[int, int]) -> torch.Tensor:
        """(18, H, W) pixel scores of one frame, computed at 1/pixel_stride of the frame and upsampled if needed."""
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

    def _soft_coverage(self, scores: torch.Tensor, masks: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        """Region-to-pixel scores plus ``(1 - c) * uncovered``, c = the largest covering mask value at the pixel.

        Soft masks (Mask R-CNN's, > 0 over nearly all of their box) would otherwise make every in-box pixel fully
        "covered": after normalisation ``m * s`` is ``s`` whatever ``m``, so a whole box took its region's class
        and the mask's shape was lost. With the uncovered share a pixel's distribution is the mixture
        ``m * s + (1 - m) * uncovered`` (one region), which equals ``s`` for a binary mask's pixel and
        ``uncovered`` outside every region, exactly as before.
        """
        # One pass of the layer: a constant score of 1 appended to every region yields c as the last channel.
        with_coverage = torch.cat([scores, scores.new_ones((len(scores), 1))], dim=1)
        pixel = region_to_pixel(with_coverage, masks, boxes, scores.new_zeros(with_coverage.shape[1]))
        pixel, coverage = pixel[:-1], pixel[-1:]
        return pixel + (1 - coverage) * self.uncovered.to(scores.dtype)[:, None, None]
