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

import torch
import torch.nn.functional as F
from torch import nn

from a2dpipe.config import section_defaults
from a2dpipe.labels import IGNORE, VALID_PAIRS, actor_of, action_of
from a2dpipe.segmentation.models.backends import ASPPBaseline, RegionBackEnd, build_region_back_end
from a2dpipe.segmentation.models.frontend import FrontEnd, build_front_end

__all__ = [
    "Segmenter",
    "build_segmenter",
    "segmentation_config",
    "segmentation_loss",
    "class_argmax",
    "joint_prediction",
    "VALID_PAIRS",
]


def segmentation_config(config: dict) -> dict:
    """The ``segmentation`` section of ``config``, validated, with the schema's defaults filled in (a new dict)."""
    return section_defaults("segmentation", config["segmentation"])


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


def build_segmenter(config: dict, *, input: str = "rgb", pretrained: bool = True, regions: bool = True) -> Segmenter:
    """Segmenter from a config's ``segmentation`` section for input ``rgb`` or ``rgbflow``.

    ``pretrained=False`` skips the ImageNet checkpoints (when a trained checkpoint is loaded right after).
    ``regions=False`` leaves out the region back-end (stage 1), so that neither the network nor its initialisation
    depends on the ``stage2`` settings.
    """
    if input not in ("rgb", "rgbflow"):
        raise ValueError(f"input must be 'rgb' or 'rgbflow', not {input!r}")
    seg = segmentation_config(config)
    front_end = build_front_end(
        backbone=seg["backbone"],
        width=seg["width"],
        streams=("rgb", "flow") if input == "rgbflow" else ("rgb",),
        rgb_weights=seg["rgb_weights"] if pretrained else None,
        flow_weights=seg["flow_weights"] if pretrained else None,
    )
    if not regions:
        return Segmenter(front_end, ASPPBaseline(front_end.out_channels, seg["aspp_rates"]), None)
    s2 = seg["stage2"]
    # built before the baseline: the order decides which of the seed's draws give the region back-end its initial
    # weights, so reordering would change every stage-2 result
    region = build_region_back_end(front_end.out_channels, roi_size=s2["roi_size"], fc_dim=s2["fc_dim"],
                                   uncovered_background=s2["uncovered_background"], pool=s2["pool"],
                                   pixel_stride=s2["pixel_stride"], roi_channels=s2["roi_channels"])
    return Segmenter(front_end, ASPPBaseline(front_end.out_channels, seg["aspp_rates"]), region)


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
