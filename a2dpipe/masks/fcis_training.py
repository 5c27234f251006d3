"""How FCIS trains, as the official code (msracver/FCIS: ``resnet_v1_101_fcis.py``, ``proposal_annotator.py``,
``box_annotator_ohem.py``, ``experiments/fcis/cfgs/resnet_v1_101_coco_fcis_end2end_ohem.yaml``) does, for
:mod:`a2dpipe.masks.fcis`:

- every RoI (the proposals and the ground-truth boxes) is labelled: foreground at box IoU >= 0.5 with a ground
  truth, background below; its mask target is the ground-truth mask inside it, resampled to M x M and binarised at
  0.4 (``BINARY_THRESH``);
- per-RoI losses: classification cross-entropy; for foreground RoIs, the per-pixel softmax (inside, outside) loss of
  the ground-truth class (a binary cross-entropy on inside - outside) and a smooth-L1 (beta 1) on box deltas
  normalised by the standard deviations (0.2, 0.2, 0.5, 0.5);
- online hard example mining: each image keeps its ``N`` RoIs of highest classification + 10 x mean-pixel mask +
  box loss, foreground or not (``BATCH_ROIS_OHEM`` 128);
- the losses of the kept RoIs: classification averaged over them, weight 1; mask loss summed over the pixels of
  the kept foreground RoIs, weight 10 / N; box loss summed, weight 1 / N (``LOSS_WEIGHT`` (1, 10, 1) with the
  ``grad_scale`` of each loss symbol). Several images in a batch: the mean of their per-image losses.

Fine-tuning freezes every batch norm (global statistics, no gradient) and the first two stages (``conv1``, ``res2``;
``FIXED_PARAMS``): :func:`freeze_pretrained_layers`.

Departures, as options of :class:`FCISLossRecipe` (config ``masks.fcis_*``): a foreground quota in OHEM
(``ohem_fg_fraction``), the mask-loss weight (``mask_loss_weight``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.detection import _utils as det_utils
from torchvision.ops import misc as misc_nn_ops

__all__ = ["BOX_STDS", "FCISLossRecipe", "box_coder", "freeze_pretrained_layers", "hardest_rois", "kept_losses",
           "per_roi_losses"]

BOX_STDS = (0.2, 0.2, 0.5, 0.5)  # FCIS's TRAIN.BBOX_STDS: deltas are divided by them
MASK_BINARY_THRESH = 0.4  # FCIS's BINARY_THRESH: mask targets and voted masks are cut there


@dataclass(frozen=True)
class FCISLossRecipe:
    """Loss weights and OHEM rule; the defaults are FCIS's (see the module docstring).

    ``ohem_fg_fraction``: None ranks every RoI together (FCIS); a fraction keeps at most that share of each image's
    ``N`` as foreground, the rest the hardest background. ``mask_loss_weight``: the per-pixel mask loss summed over
    the kept foreground RoIs is scaled by it / N (FCIS: 10).
    """

    ohem_fg_fraction: float | None = None
    mask_loss_weight: float = 10.0
    box_loss_weight: float = 1.0
    box_beta: float = 1.0


def box_coder(stds=BOX_STDS) -> det_utils.BoxCoder:
    """torchvision's box coder with the deltas divided by ``stds`` (its weights are their inverses)."""
    return det_utils.BoxCoder(tuple(1.0 / s for s in stds))


def per_roi_losses(class_logits, labels, fg_mask_logits, mask_targets, deltas, target_deltas, fg, recipe):
    """Per RoI: classification, mean-pixel mask and box losses, (R,) each (zero mask and box loss on background).

    ``fg`` indexes the foreground RoIs; ``fg_mask_logits`` (F, M, M) are their ground-truth class's inside - outside
    logits, ``mask_targets`` (F, M, M) their targets in [0, 1] (binarised here at 0.4), ``deltas`` (R, 4) and
    ``target_deltas`` (F, 4) the predicted and wanted box deltas."""
    cls_loss = F.cross_entropy(class_logits, labels, reduction="none")
    mask_loss = torch.zeros_like(cls_loss)
    box_loss = torch.zeros_like(cls_loss)
    if len(fg):
        binary = (mask_targets >= MASK_BINARY_THRESH).to(fg_mask_logits.dtype)
        pixels = F.binary_cross_entropy_with_logits(fg_mask_logits, binary, reduction="none")
        mask_loss = mask_loss.index_put((fg,), pixels.mean((1, 2)))
        box = F.smooth_l1_loss(deltas[fg], target_deltas, beta=recipe.box_beta, reduction="none").sum(1)
        box_loss = box_loss.index_put((fg,), box)
    return cls_loss, mask_loss, box_loss


def hardest_rois(counts: list[int], losses: torch.Tensor, foreground: torch.Tensor, per_image: int,
                 fg_fraction: float | None = None) -> torch.Tensor:
    """Indices of the ``per_image`` highest-loss RoIs of each image (``counts`` RoIs each, in order): the hardest of
    all (FCIS), or with ``fg_fraction`` at most that share foreground and the rest the hardest background."""
    keep, start = [], 0
    for n in counts:
        loss = losses[start:start + n]
        if fg_fraction is None:
            chosen = loss.topk(min(n, per_image)).indices
        else:
            fg = foreground[start:start + n]
            fg_idx, bg_idx = torch.where(fg)[0], torch.where(~fg)[0]
            fg_idx = fg_idx[loss[fg_idx].topk(min(len(fg_idx), int(per_image * fg_fraction))).indices]
            bg_idx = bg_idx[loss[bg_idx].topk(min(len(bg_idx), per_image - len(fg_idx))).indices]
            chosen = torch.cat([fg_idx, bg_idx])
        keep.append(chosen + start)
        start += n
    return torch.cat(keep)


def kept_losses(cls_loss, mask_loss, box_loss, labels, counts, recipe, per_image: int, mask_pixels: int,
                zero: torch.Tensor) -> dict:
    """OHEM over the per-RoI losses, then FCIS's reductions of the kept RoIs (``zero``: a graph-connected zero for
    a batch without foreground). ``mask_pixels``: M x M, turning the mean-pixel mask loss back into the sum."""
    ranking = cls_loss + recipe.mask_loss_weight * mask_loss + recipe.box_loss_weight * box_loss
    keep = hardest_rois(counts, ranking.detach(), labels > 0, per_image, recipe.ohem_fg_fraction)
    fg_kept = keep[labels[keep] > 0]
    scale = 1.0 / (per_image * len(counts))  # FCIS's grad_scale 1 / N, per image, averaged over the images
    return {
        "loss_classifier": cls_loss[keep].mean(),
        "loss_box_reg": recipe.box_loss_weight * scale * box_loss[fg_kept].sum() if len(fg_kept) else zero,
        "loss_mask": recipe.mask_loss_weight * scale * mask_pixels * mask_loss[fg_kept].sum() if len(fg_kept)
        else zero,
    }


def freeze_pretrained_layers(body: nn.Module) -> nn.Module:
    """Freeze a backbone for fine-tuning as FCIS does: every batch norm becomes a frozen one (its running
    statistics, no gradient) and the stem and first stage stop learning (``conv1`` and ``res2``: ``stem`` /
    ``conv1`` + ``bn1`` and ``layer1`` here). Returns ``body``, changed in place."""
    _freeze_batch_norm(body)
    inner = getattr(body, "body", body)  # DilatedResNet wraps torchvision's layers in ``body``
    for name in ("stem", "conv1", "bn1", "layer1"):
        module = getattr(inner, name, None)
        if module is not None:
            module.requires_grad_(False)
    return body


def _freeze_batch_norm(module: nn.Module) -> None:
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            frozen = misc_nn_ops.FrozenBatchNorm2d(child.num_features, eps=child.eps)
            frozen.weight.copy_(child.weight.detach())
            frozen.bias.copy_(child.bias.detach())
            frozen.running_mean.copy_(child.running_mean)
            frozen.running_var.copy_(child.running_var)
            setattr(module, name, frozen)
        else:
            _freeze_batch_norm(child)
