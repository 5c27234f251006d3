"""Back-ends: the DeepLab ASPP baseline (Fig. 2b) and the region back-end (Fig. 2c, paper 3.3).

Both take the fused front-end features (B, C, h, w) at output stride 8 and return

    {"actor": (B, 8, H, W), "action": (B, 10, H, W)}

log-probabilities at frame size (H, W), so that one loss (eq. 1: NLL of each head) trains either.

Region back-end, per frame with N candidate regions (boxes in frame pixels, soft masks at frame size), built
from parts as torchvision's ``RoIHeads`` is (``build_region_back_end`` assembles them from the config's keys):

1. (``RoIPooler``) RoI align of the fused features in every box (``spatial_scale=1/8``, all frames of the batch in one call),
   optionally after a 1x1 convolution that narrows the features (``roi_channels``: with two ResNet-101 streams
   the first FC layer would otherwise see 4096 x 7 x 7 inputs per region and dominate the back-end's cost);
2. (``TwoMLPHead``, ``RegionPredictor``) two FC layers, then an actor head (8) and an action head (10): region scores;
3. **per-region softmax**: each region's scores become probabilities, so they are non-negative and the max of
   eq. 2-3 compares like with like (raw logits would be clipped at zero by ``m * s`` and the max);
4. (``RegionToPixel``) the region-to-pixel layer (``a2dpipe.segmentation.models.region_to_pixel``): per pixel, the max over regions whose box
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
from torchvision.models.detection.faster_rcnn import TwoMLPHead
from torchvision.ops import roi_align, roi_pool

from a2dpipe.labels import NUM_CLASSES
from a2dpipe.segmentation.models.frontend import OUTPUT_STRIDE
from a2dpipe.segmentation.models.region_to_pixel import RegionToPixel

__all__ = ["ASPPHead", "ASPPBaseline", "RoIPooler", "TwoMLPHead", "RegionPredictor", "RegionBackEnd",
           "build_region_back_end", "pixel_log_probs", "NUM_ACTORS", "NUM_ACTIONS"]

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


class RoIPooler(nn.Module):
    """RoI pooling of one feature map (the ``box_roi_pool`` part): ``forward(features, boxes) -> (sum N, C, s, s)``.

    ``boxes`` is a list (one per frame of the batch) of (N, 4) x1, y1, x2, y2 in frame pixels; ``spatial_scale``
    maps them onto the features (1/8 at output stride 8). Boxes and features are pooled in float32 whatever the
    autocast dtype: in bfloat16 a coordinate above 256 moves by up to 2 px, and torchvision's autocast kernels
    pool in float32 anyway.
    """

    def __init__(self, output_size: int, spatial_scale: float, *, kind: str = "align", sampling_ratio: int = 2):
        super().__init__()
        if kind not in ("align", "max"):
            raise ValueError(f"pool must be 'align' or 'max', not {kind!r}")
        self.output_size = output_size
        self.spatial_scale = spatial_scale
        self.kind = kind
        self.sampling_ratio = sampling_ratio

    def forward(self, features: torch.Tensor, boxes: list[torch.Tensor]) -> torch.Tensor:
        features = features.float()
        rois = [b.float() for b in boxes]
        if self.kind == "align":
            return roi_align(features, rois, self.output_size, spatial_scale=self.spatial_scale,
                             sampling_ratio=self.sampling_ratio, aligned=True)
        return roi_pool(features, rois, self.output_size, spatial_scale=self.spatial_scale)


class RegionPredictor(nn.Module):
    """Region class scores (the ``box_predictor`` part): ``forward(x (N, fc_dim)) -> (N, 18)`` probabilities,
    a softmax over the 8 actors then one over the 10 actions (per region, so the region-to-pixel max compares
    like with like)."""

    def __init__(self, in_features: int):
        super().__init__()
        self.actor = nn.Linear(in_features, NUM_ACTORS)
        self.action = nn.Linear(in_features, NUM_ACTIONS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([F.softmax(self.actor(x).float(), 1), F.softmax(self.action(x).float(), 1)], dim=1)


class RegionBackEnd(nn.Module):
    """Region back-end (see the module docstring), assembled from parts as torchvision's ``RoIHeads`` is.

    Args:
        box_roi_pool: :class:`RoIPooler` (spatial scale of the features given to it).
        box_head: torchvision's ``TwoMLPHead`` (``fc6``, ``fc7``) on the flattened pooled features.
        box_predictor: :class:`RegionPredictor`, per-region probabilities (N, 18).
        region_to_pixel: :class:`RegionToPixel`, per-frame region scores to pixel log-probabilities.
        reduce: optional 1x1 convolution (+ ReLU) narrowing the features before pooling.

    ``forward(features, regions, size)``: ``regions`` is a list (one per frame of the batch) of dicts with
    ``boxes`` (N, 4) float x1, y1, x2, y2 in frame pixels and ``masks`` (N, H, W) float in [0, 1]; N may be 0.
    Returns the module docstring's dict plus ``"region_scores"``: list of (N, 18) per-region probabilities
    (actor 8 then action 10). :func:`pixel_log_probs` runs steps 4-5 alone on given region probabilities (the
    mask-vote control feeds it averaged stage-1 probabilities instead of the heads').
    """

    def __init__(self, box_roi_pool: RoIPooler, box_head: nn.Module, box_predictor: RegionPredictor,
                 region_to_pixel: RegionToPixel, *, reduce: nn.Module | None = None):
        super().__init__()
        self.reduce = reduce
        self.box_roi_pool = box_roi_pool
        self.box_head = box_head
        self.box_predictor = box_predictor
        self.region_to_pixel = region_to_pixel

    def region_scores(self, features: torch.Tensor, boxes: list[torch.Tensor]) -> torch.Tensor:
        """(sum N, 18) per-region probabilities (actor softmax, then action softmax) for all frames' boxes."""
        return self.box_predictor(self.box_head(self._pool(features, boxes)))

    def _pool(self, features: torch.Tensor, boxes: list[torch.Tensor]) -> torch.Tensor:
        if self.reduce is not None:
            features = F.relu(self.reduce(features))
        return self.box_roi_pool(features, boxes)

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
        return {**pixel_log_probs(self.region_to_pixel, list(scores), regions, size), "region_scores": list(scores)}

    def forward_each(self, features: list[torch.Tensor], regions: list[dict[str, torch.Tensor]],
                     sizes: list[tuple[int, int]]) -> list[dict[str, torch.Tensor]]:
        """``forward`` for frames of different sizes, one (1, C, h, w) feature map, region dict and (H, W) each;
        returns one ``forward`` dict per frame. The FC layers run once on every frame's regions together: one
        matrix product per layer and step instead of one per frame (stage 2 on cached whole frames)."""
        boxes = [r["boxes"].float() for r in regions]
        counts = [len(b) for b in boxes]
        if sum(counts):
            pooled = torch.cat([self._pool(f, [b]) for f, b in zip(features, boxes) if len(b)])
            scores = self.box_predictor(self.box_head(pooled)).split(counts)
        else:
            scores = [features[0].new_zeros((0, NUM_ACTORS + NUM_ACTIONS), dtype=torch.float32)] * len(boxes)
        if not self.region_to_pixel.dense_on(features[0].device):  # the CPU's loop: frame by frame
            return [{**pixel_log_probs(self.region_to_pixel, [s], [r], size), "region_scores": [s]}
                    for s, r, size in zip(scores, regions, sizes)]
        # dense (CUDA): one call per frame size, each frame's slice of it (a frame's values do not depend on the
        # frames padded beside it)
        out: list[dict | None] = [None] * len(regions)
        by_size: dict[tuple[int, int], list[int]] = {}
        for i, size in enumerate(sizes):
            by_size.setdefault(tuple(size), []).append(i)
        for size, members in by_size.items():
            logp = pixel_log_probs(self.region_to_pixel, [scores[i] for i in members], [regions[i] for i in members],
                                   size)
            for j, i in enumerate(members):
                out[i] = {"actor": logp["actor"][j:j + 1], "action": logp["action"][j:j + 1],
                          "region_scores": [scores[i]]}
        return out


def pixel_log_probs(region_to_pixel: RegionToPixel, scores: list[torch.Tensor],
                    regions: list[dict[str, torch.Tensor]], size: tuple[int, int]) -> dict[str, torch.Tensor]:
    """Region-to-pixel and normalisation: per frame (N, 18) region probabilities -> ``{"actor", "action"}``
    (B, K, H, W) log-probabilities."""
    logp = region_to_pixel.forward_batch(list(scores), [r["masks"] for r in regions],
                                         [r["boxes"].float() for r in regions], size)
    return {"actor": logp[:, :NUM_ACTORS].contiguous(), "action": logp[:, NUM_ACTORS:].contiguous()}


def build_region_back_end(in_channels: int, *, roi_size: int = 7, fc_dim: int = 256,
                          uncovered_background: float = 1.0, pool: str = "align", pixel_stride: int = 1,
                          roi_channels: int | None = None) -> RegionBackEnd:
    """The region back-end of the config's ``segmentation.stage2`` keys.

    Args:
        in_channels: fused feature channels.
        roi_size: RoI pooling output is roi_size x roi_size.
        fc_dim: width of the two FC layers.
        uncovered_background: background score of a pixel covered by no region (other classes get 0).
        pool: ``"align"`` (``torchvision.ops.roi_align``) or ``"max"`` (``roi_pool``, Fast R-CNN's).
        pixel_stride: resolution of the region-to-pixel layer, 1 = frame size.
        roi_channels: if set, a 1x1 convolution (+ ReLU) narrows the features to this many channels before RoI
            pooling; ``None`` pools the fused features as they are.
    """
    # the build order decides which of the seed's draws initialise each part: reordering changes every stage-2 result
    pooler = RoIPooler(roi_size, 1 / OUTPUT_STRIDE, kind=pool)
    to_pixel = RegionToPixel(NUM_ACTORS, NUM_ACTIONS, uncovered_background=uncovered_background,
                             pixel_stride=pixel_stride)
    reduce = None if roi_channels is None else nn.Conv2d(in_channels, roi_channels, kernel_size=1)
    box_head = TwoMLPHead((roi_channels or in_channels) * roi_size * roi_size, fc_dim)
    return RegionBackEnd(pooler, box_head, RegionPredictor(fc_dim), to_pixel, reduce=reduce)
