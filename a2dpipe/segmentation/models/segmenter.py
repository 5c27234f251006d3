"""The assembled actor-action segmenter: front-end, baseline back-end, region back-end; loss; joint prediction.

One method per stage, each returning ``{"actor": (B, 8, H, W), "action": (B, 10, H, W)}`` log-probabilities at
the input size: ``forward_baseline(rgb, flow)`` (stage 1: front-end and ASPP baseline; also ``forward``) and
``forward_regions(rgb, flow, regions)`` (stage 2: front-end and region back-end). ``baseline_heads`` and
``region_heads`` run only the back-end on given front-end features (stage 2 on cached features).

Joint prediction (paper 3.3): p(actor, action) = p(actor) * p(action), evaluated only for background (both heads'
background) and the 43 valid pairs, so an invalid pair can never be predicted:

    >>> import torch
    >>> actor = torch.log_softmax(torch.randn(1, 8, 2, 2), 1); action = torch.log_softmax(torch.randn(1, 10, 2, 2), 1)
    >>> ids = joint_prediction(actor, action)
    >>> bool(torch.isin(ids, torch.tensor([0, *VALID_PAIRS], dtype=torch.uint8)).all())
    True
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from a2dpipe.labels import IGNORE, VALID_PAIRS, actor_of, action_of
from a2dpipe.segmentation.models.backends import ASPPBaseline, RegionBackEnd, build_region_back_end
from a2dpipe.segmentation.models.frontend import FrontEnd, build_front_end

__all__ = [
    "Segmenter",
    "build_segmenter",
    "segmenter_arguments",
    "segmentation_loss",
    "class_argmax",
    "joint_prediction",
    "VALID_PAIRS",
]


class Segmenter(nn.Module):
    """Front-end plus both back-ends. Stage 1 trains ``front_end`` + ``baseline``; stage 2 ``region`` only.

    ``region`` is None for a stage-1 network (its region back-end does not exist yet; stage 2 adds it).
    """

    def __init__(self, front_end: FrontEnd, baseline: ASPPBaseline, region: RegionBackEnd | None):
        super().__init__()
        self.front_end = front_end
        self.baseline = baseline
        self.region = region

    @property
    def uses_flow(self) -> bool:
        return self.front_end.uses_flow

    def baseline_heads(self, features: torch.Tensor, size: tuple[int, int]) -> dict[str, torch.Tensor]:
        """ASPP baseline back-end on front-end features, log-probabilities at ``size``."""
        return self.baseline(features, size)

    def region_heads(self, features: torch.Tensor, size: tuple[int, int],
                     regions: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        """Region back-end on front-end features and each frame's regions (``RegionBackEnd``'s contract)."""
        return self._region_back_end()(features, regions, size)

    def region_heads_each(self, features: list[torch.Tensor], sizes: list[tuple[int, int]],
                          regions: list[dict[str, torch.Tensor]]) -> list[dict[str, torch.Tensor]]:
        """Region back-end on frames of different sizes (``RegionBackEnd.forward_each``)."""
        return self._region_back_end().forward_each(features, regions, sizes)

    def _region_back_end(self):
        if self.region is None:
            raise ValueError("a stage-1 network has no region back-end: build it with regions=True")
        return self.region

    def forward_baseline(self, rgb: torch.Tensor, flow: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Stage-1 network: front-end and baseline back-end."""
        return self.baseline_heads(self.front_end(rgb, flow), tuple(rgb.shape[-2:]))

    def forward_regions(self, rgb: torch.Tensor, flow: torch.Tensor | None,
                        regions: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        """Stage-2 network: front-end and region back-end on each frame's regions."""
        return self.region_heads(self.front_end(rgb, flow), tuple(rgb.shape[-2:]), regions)

    def forward(self, rgb: torch.Tensor, flow: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """The stage-1 network (``forward_baseline``); stage 2 is ``forward_regions``."""
        return self.forward_baseline(rgb, flow)


# build_region_back_end's arguments, as config segmentation.stage2 names them
REGION_KEYS = ("roi_size", "fc_dim", "uncovered_background", "pool", "pixel_stride", "roi_channels")


def build_segmenter(*, input: str = "rgb", backbone: str, width: int, aspp_rates: Sequence[int],
                    rgb_weights: str | None = None, flow_weights: str | None = None,
                    stage2: Mapping | None = None) -> Segmenter:
    """Segmenter for input ``rgb`` or ``rgbflow``: front-end of ``backbone`` (ImageNet-initialised from
    ``rgb_weights`` and ``flow_weights`` when given), ASPP baseline of ``aspp_rates``, and the region back-end of
    ``stage2`` (:func:`.backends.build_region_back_end`'s keyword arguments, :data:`REGION_KEYS`); ``stage2=None``
    leaves it out (stage 1), so that neither the network nor its initialisation depends on the stage-2 settings.
    :func:`segmenter_arguments` gives these arguments from a config's ``segmentation`` section.
    """
    if input not in ("rgb", "rgbflow"):
        raise ValueError(f"input must be 'rgb' or 'rgbflow', not {input!r}")
    front_end = build_front_end(backbone=backbone, width=width,
                                streams=("rgb", "flow") if input == "rgbflow" else ("rgb",),
                                rgb_weights=rgb_weights, flow_weights=flow_weights)
    if stage2 is None:
        return Segmenter(front_end, ASPPBaseline(front_end.out_channels, aspp_rates), None)
    # built before the baseline: the order decides which of the seed's draws give the region back-end its initial
    # weights, so reordering would change every stage-2 result
    region = build_region_back_end(front_end.out_channels, **stage2)
    return Segmenter(front_end, ASPPBaseline(front_end.out_channels, aspp_rates), region)


def segmenter_arguments(segmentation: Mapping, *, input: str, pretrained: bool = True,
                        regions: bool = True) -> dict:
    """:func:`build_segmenter`'s arguments from a config's ``segmentation`` section (its keys backbone, width,
    aspp_rates, rgb_weights and flow_weights when ``pretrained``, and stage2's :data:`REGION_KEYS` with
    ``regions``). ``pretrained=False`` skips the ImageNet checkpoints (a trained model is loaded right after);
    ``regions=False`` builds a stage-1 network."""
    seg = segmentation
    return dict(input=input, backbone=seg["backbone"], width=seg["width"], aspp_rates=list(seg["aspp_rates"]),
                rgb_weights=seg["rgb_weights"] if pretrained else None,
                flow_weights=seg["flow_weights"] if pretrained else None,
                stage2={k: seg["stage2"][k] for k in REGION_KEYS} if regions else None)


def segmentation_loss(outputs: dict[str, torch.Tensor], actor: torch.Tensor,
                      action: torch.Tensor) -> dict[str, torch.Tensor]:
    """Eq. 1: mean per-pixel NLL of each head; targets (B, H, W) int64 class maps with ``IGNORE`` left out.

    Returns ``{"loss_actor", "loss_action"}``; a batch with no labelled pixel gives zero losses (with gradient
    paths intact), not NaN. The mean is the sum over labelled pixels divided by their count (at least 1), as
    ``nll_loss``'s own mean computes it, bit for bit, without asking the host whether any pixel is labelled (a
    device sync per head and step).
    """
    losses = {}
    for name, target in (("actor", actor), ("action", action)):
        total = F.nll_loss(outputs[name], target, ignore_index=IGNORE, reduction="sum")
        losses[f"loss_{name}"] = total / (target != IGNORE).sum().clamp_min(1)
    return losses


_JOINT_ACTOR = torch.tensor([0, *(actor_of(p) for p in VALID_PAIRS)])
_JOINT_ACTION = torch.tensor([0, *(action_of(p) for p in VALID_PAIRS)])
_JOINT_ID = torch.tensor([0, *VALID_PAIRS], dtype=torch.uint8)


def class_argmax(scores: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """``scores.argmax(dim)``, the same indices (the first of tied maxima), through ``max``: on the CPU ``argmax`` over
    a class dimension that is not the innermost runs 3-9x slower (a fifth of a prediction job's time)."""
    return scores.max(dim).indices


def joint_prediction(actor_logp: torch.Tensor, action_logp: torch.Tensor) -> torch.Tensor:
    """(B, H, W) uint8 A2D ids: argmax of log p(actor) + log p(action) over background and the 43 valid pairs.

    Frame by frame: the 44 joint scores of a whole batch of 320 x 568 frames would take 256 MB per tensor."""
    device = actor_logp.device
    actors, actions, ids = _JOINT_ACTOR.to(device), _JOINT_ACTION.to(device), _JOINT_ID.to(device)
    out = torch.empty((actor_logp.shape[0], *actor_logp.shape[2:]), dtype=torch.uint8, device=device)
    for b in range(actor_logp.shape[0]):
        joint = actor_logp[b].index_select(0, actors)  # index_select: 10x faster than indexing on the CPU
        joint += action_logp[b].index_select(0, actions)
        out[b] = ids[class_argmax(joint, 0)]
    return out
