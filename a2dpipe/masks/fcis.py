"""FCIS (Li et al., CVPR 2017) in PyTorch: fully convolutional instance segmentation from position-sensitive
inside/outside score maps, with torchvision's RPN, ``roi_align`` / ``ps_roi_align``, ``batched_nms`` and input
transform.

Contract (the same as torchvision's :class:`~torchvision.models.detection.MaskRCNN`, so the mask trainer and the
region cache writer take either model):

- train: ``model(images, targets) -> {"loss_classifier", "loss_box_reg", "loss_mask", "loss_objectness",
  "loss_rpn_box_reg"}``; ``images`` a list of (3, H, W) float tensors in [0, 1], ``targets`` a list of dicts
  ``boxes`` (N, 4) float x1, y1, x2, y2, ``labels`` (N,) int64 in 1..num_classes-1, ``masks`` (N, H, W) uint8;
- eval: ``model(images) -> [{"boxes", "labels", "scores", "masks" (N, 1, H, W) float in [0, 1]}]`` at input size;
  ``model.roi_heads.score_thresh`` and ``model.roi_heads.detections_per_img`` are the inference cut, as in
  torchvision.

Network. A ResNet whose last stage is dilated (stride kept, receptive field grown), as FCIS does (the tiny CPU
backbone at stride 4 dilates its last two, for 96-px frames): the RPN reads the second-to-last stage, the heads
read the last one through a 1x1 convolution (``reduce``), then two sibling 1x1 convolutions make the score maps:

- ``inside_outside``: 2 x (C + 1) x k^2 channels (C + 1 classes counting the background), one inside map and one
  outside map per class and per cell of a k x k grid over the RoI;
- ``box_maps``: 4 x k^2 channels, class-agnostic box deltas (dx, dy, dw, dh) per grid cell.

Channel layout and assembling: :mod:`a2dpipe.masks.position_sensitive` (with a worked example).

Joint formulation. Per pixel and class, softmax over (inside, outside) is the mask (sigmoid(inside - outside)); per
class, max(inside, outside) averaged over the RoI is the detection logit (softmax over the C + 1 classes). Box
deltas: ``box_maps`` pooled by ``ps_roi_align`` at k x k and averaged, coded as FCIS does (divided by the standard
deviations (0.2, 0.2, 0.5, 0.5)). Training follows FCIS's code (:mod:`a2dpipe.masks.fcis_training`): proposals
and ground-truth boxes matched to ground truth at IoU 0.5, every RoI's loss (classification on all, box regression
and the per-pixel mask loss of the ground-truth class on foreground RoIs only), the ``batch_size_per_image``
hardest per image kept (online hard example mining), the mask loss summed over pixels with weight 10 / N.
Inference: scores and class-specific masks of the proposals; their regressed boxes assembled again give a second
set; per-class NMS over both sets; then, with ``mask_voting``, FCIS's mask voting over every RoI of both sets
(:func:`~a2dpipe.masks.voting.mask_voting`: boxes refitted to the voted masks, masks binary).
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from pathlib import Path

import torch
from torch import nn
from torchvision.models.detection import _utils as det_utils
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.roi_heads import paste_masks_in_image, project_masks_on_boxes
from torchvision.models.detection.rpn import RegionProposalNetwork, RPNHead
from torchvision.models.detection.transform import GeneralizedRCNNTransform, resize_boxes
from torchvision.ops import batched_nms, box_iou, clip_boxes_to_image, ps_roi_align, remove_small_boxes

from a2dpipe.masks import fcis_official as official
from a2dpipe.masks.backbones import DilatedResNet, DilatedTinyBody, load_imagenet_weights
from a2dpipe.masks.fcis_training import (FCISLossRecipe, box_coder, freeze_pretrained_layers, kept_losses,
                                         per_roi_losses)
from a2dpipe.masks.position_sensitive import assemble, assemble_naive, psroi_pool
from a2dpipe.masks.voting import mask_voting

__all__ = [
    "FCIS",
    "FCISHeads",
    "FCIS_BACKBONES",
    "DilatedTinyBody",
    "assemble",
    "assemble_naive",
    "mask_voting",
    "fcis",
    "load_imagenet_weights",
]

log = logging.getLogger("a2dpipe.masks")

FCIS_BACKBONES = ("tiny", "resnet50", "resnet101")
FCIS_LAYOUTS = ("torchvision", "official")
# RoIs per frame OHEM keeps on the tiny backbone: 64, not 32. Validation mask AP (dataset source, 300 steps,
# lr 0.005, actor / class-agnostic at score threshold 0.05): 20.1 / 16.2 with 32, 28.9 / 22.5 with 64
TINY_OHEM_ROIS = 64


class FCIS(nn.Module):
    """FCIS: input transform, dilated ResNet, RPN, position-sensitive heads (see the module docstring).

    ``backbone(x)`` returns ``(rpn_features, head_features)`` at the same stride; ``roi_heads`` is a
    :class:`FCISHeads`. Train and eval returns follow torchvision's MaskRCNN.
    """

    def __init__(self, backbone: nn.Module, rpn: RegionProposalNetwork, roi_heads: "FCISHeads",
                 transform: GeneralizedRCNNTransform):
        super().__init__()
        self.transform = transform
        self.backbone = backbone
        self.rpn = rpn
        self.roi_heads = roi_heads

    def forward(self, images: list[torch.Tensor], targets: list[dict] | None = None):
        if self.training and targets is None:
            raise ValueError("FCIS in train mode needs targets")
        original_sizes = [tuple(img.shape[-2:]) for img in images]
        batch, targets = self.transform(images, targets)
        rpn_features, head_features = self.backbone(batch.tensors)
        proposals, rpn_losses = self.rpn(batch, OrderedDict([("0", rpn_features)]), targets)
        if self.training:
            return {**self.roi_heads(head_features, proposals, batch.image_sizes, targets), **rpn_losses}
        detections = self.roi_heads(head_features, proposals, batch.image_sizes)
        return [self._to_input_size(d, size, original) for d, size, original
                in zip(detections, batch.image_sizes, original_sizes)]

    @staticmethod
    def _to_input_size(detection: dict, size, original) -> dict:
        """Boxes back to input pixels, RoI masks pasted in the input frame."""
        boxes = resize_boxes(detection["boxes"], size, original)
        masks = paste_masks_in_image(detection["masks"], boxes, original)
        return {"boxes": boxes, "labels": detection["labels"], "scores": detection["scores"], "masks": masks}


class FCISHeads(nn.Module):
    """Position-sensitive inside/outside and box heads on the last-stage features, with their losses and inference.

    ``forward(features (B, D, h, w), proposals [(R_b, 4)], image_sizes, targets=None)``: in train mode the dict
    ``loss_classifier, loss_box_reg, loss_mask``; in eval mode per image ``boxes, labels, scores`` and ``masks``
    (N, 1, M, M) in RoI coordinates (after mask voting when ``mask_voting``). ``stride`` is the feature map's, in
    input pixels. ``pooling``: ``align`` assembles by bilinear sampling (:func:`assemble`, box deltas by
    ``ps_roi_align`` at k x k), ``psroi`` as the official FCIS (:func:`psroi_pool` at M x M, averaged for the box
    deltas).
    """

    def __init__(self, in_channels: int, mid_channels: int, num_classes: int, *, stride: int, k: int = 7,
                 roi_size: int = 21, fg_iou_thresh: float = 0.5, batch_size_per_image: int = 128,
                 score_thresh: float = 0.05, nms_thresh: float = 0.3, detections_per_img: int = 100,
                 mask_voting: bool = True, recipe: FCISLossRecipe = FCISLossRecipe(), voting_own_class: bool = True,
                 pooling: str = "align"):
        super().__init__()
        if pooling not in ("align", "psroi"):
            raise ValueError(f"pooling must be 'align' or 'psroi', got {pooling!r}")
        self.pooling = pooling
        if roi_size < k:
            raise ValueError(f"roi_size ({roi_size}) must be at least the grid size k ({k})")
        self.num_classes, self.k, self.roi_size, self.spatial_scale = num_classes, k, roi_size, 1.0 / stride
        self.reduce = nn.Sequential(nn.Conv2d(in_channels, mid_channels, 1), nn.ReLU(inplace=True))
        self.inside_outside = nn.Conv2d(mid_channels, 2 * num_classes * k * k, 1)
        self.box_maps = nn.Conv2d(mid_channels, 4 * k * k, 1)
        for conv in (self.inside_outside, self.box_maps):
            nn.init.normal_(conv.weight, std=0.01)
            nn.init.zeros_(conv.bias)
        self.matcher = det_utils.Matcher(fg_iou_thresh, fg_iou_thresh, allow_low_quality_matches=False)
        self.box_coder = box_coder()
        self.batch_size_per_image = batch_size_per_image
        self.score_thresh, self.nms_thresh, self.detections_per_img = score_thresh, nms_thresh, detections_per_img
        self.mask_voting, self.recipe, self.voting_own_class = mask_voting, recipe, voting_own_class

    def forward(self, features, proposals, image_sizes, targets=None):
        hidden = self.reduce(features)
        maps = self.inside_outside(hidden), self.box_maps(hidden)
        if self.training:
            return self._losses(maps, proposals, targets)
        return self._detect(maps, proposals, image_sizes)

    # --- layers ---------------------------------------------------------------------------------------------------

    def roi_outputs(self, maps, boxes: list[torch.Tensor]):
        """Per RoI: class logits (R, C+1), mask logits inside - outside (R, C+1, M, M), box deltas (R, 4)."""
        score_maps, box_maps = maps
        rois = _rois(boxes)
        if self.pooling == "psroi":
            assembled = psroi_pool(score_maps, rois, self.k, self.roi_size, self.spatial_scale)
            deltas = psroi_pool(box_maps, rois, self.k, self.roi_size, self.spatial_scale).flatten(1, 2).mean((2, 3))
        else:
            assembled = assemble(score_maps, rois, self.k, self.roi_size, self.spatial_scale)
            deltas = ps_roi_align(box_maps, rois, self.k, self.spatial_scale, 2).mean((2, 3))
        inside, outside = assembled.unbind(1)
        class_logits = torch.maximum(inside, outside).mean((2, 3))
        return class_logits, inside - outside, deltas

    # --- training -------------------------------------------------------------------------------------------------

    def _losses(self, maps, proposals, targets):
        """FCIS's training losses (:mod:`a2dpipe.masks.fcis_training`): every RoI's, then OHEM."""
        boxes, labels, matched, gt_boxes = [], [], [], []
        for props, target in zip(proposals, targets):
            props = torch.cat([props, target["boxes"]])  # ground truth boxes are RoIs too, as in FCIS
            lab, idx = self._match(props, target)
            boxes.append(props), labels.append(lab), matched.append(idx)
            gt_boxes.append(target["boxes"][idx] if len(target["boxes"]) else props)
        class_logits, mask_logits, deltas = self.roi_outputs(maps, boxes)
        labels_all = torch.cat(labels)
        fg = torch.where(labels_all > 0)[0]
        target_deltas = mask_targets = None
        if len(fg):
            target_deltas = self.box_coder.encode_single(torch.cat(gt_boxes)[fg], torch.cat(boxes)[fg])
            mask_targets = torch.cat([
                project_masks_on_boxes(t["masks"], b, m, self.roi_size) if len(t["boxes"])
                else b.new_zeros(len(b), self.roi_size, self.roi_size)
                for t, b, m in zip(targets, boxes, matched)
            ])[fg]
        losses = per_roi_losses(class_logits, labels_all, mask_logits[fg, labels_all[fg]], mask_targets, deltas,
                                target_deltas, fg, self.recipe)
        return kept_losses(*losses, labels_all, [len(b) for b in boxes], self.recipe, self.batch_size_per_image,
                           self.roi_size ** 2, mask_logits.sum() * 0 + deltas.sum() * 0)

    def _match(self, boxes: torch.Tensor, target: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """Class label (0 = background) and matched ground-truth index of each RoI."""
        if len(target["boxes"]) == 0:  # a frame without instances: every RoI is background
            zeros = boxes.new_zeros(len(boxes), dtype=torch.int64)
            return zeros, zeros
        idx = self.matcher(box_iou(target["boxes"], boxes))
        labels = target["labels"][idx.clamp(min=0)].to(torch.int64)
        labels[idx < 0] = 0
        return labels, idx.clamp(min=0)

    # --- inference ------------------------------------------------------------------------------------------------

    def _detect(self, maps, proposals, image_sizes):
        class_logits, mask_logits, deltas = self.roi_outputs(maps, proposals)
        refined = self.box_coder.decode_single(deltas, torch.cat(proposals))
        refined = [clip_boxes_to_image(b, size) for b, size in zip(refined.split([len(p) for p in proposals]),
                                                                     image_sizes)]
        class_logits2, mask_logits2, _ = self.roi_outputs(maps, refined)
        counts = [len(p) for p in proposals]
        per_image = zip(proposals, refined, class_logits.split(counts), class_logits2.split(counts),
                        mask_logits.split(counts), mask_logits2.split(counts))
        return [self._detect_image(torch.cat([p, r]), torch.cat([c1, c2]), torch.cat([m1, m2]))
                for p, r, c1, c2, m1, m2 in per_image]

    def _detect_image(self, boxes, class_logits, mask_logits) -> dict:
        """Class-specific candidates above ``score_thresh``, per-class NMS, best ``detections_per_img``."""
        num_fg = self.num_classes - 1
        scores = class_logits.softmax(1)[:, 1:].reshape(-1)
        rois = torch.arange(len(boxes), device=boxes.device).repeat_interleave(num_fg)
        labels = torch.arange(1, self.num_classes, device=boxes.device).repeat(len(boxes))
        cand = torch.where(scores >= self.score_thresh)[0]
        cand = cand[remove_small_boxes(boxes[rois[cand]], 1e-2)]
        cand = cand[scores[cand].argsort(descending=True)]
        kept = cand[batched_nms(boxes[rois[cand]], scores[cand], labels[cand], self.nms_thresh)]
        kept = kept[: self.detections_per_img]
        out = {"boxes": boxes[rois[kept]], "labels": labels[kept], "scores": scores[kept],
               "masks": mask_logits[rois[kept], labels[kept]].sigmoid().unsqueeze(1)}
        if self.mask_voting:
            out["boxes"], out["masks"], voted = mask_voting(out["boxes"], out["labels"], boxes, class_logits.softmax(1),
                                                            mask_logits.sigmoid(), own_class=self.voting_own_class)
            out["labels"], out["scores"] = out["labels"][voted], out["scores"][voted]
        return out


def _rois(boxes: list[torch.Tensor]) -> torch.Tensor:
    """(R, 5) RoIs ``batch index, x1, y1, x2, y2`` from per-image boxes."""
    index = torch.cat([torch.full((len(b), 1), i, dtype=b.dtype, device=b.device) for i, b in enumerate(boxes)])
    return torch.cat([index, torch.cat(boxes)], 1)


# --- builder ----------------------------------------------------------------------------------------------------------


def fcis(
    *,
    backbone: str = "tiny",
    num_classes: int,
    min_size: int,
    max_size: int,
    k: int = 7,
    roi_size: int | None = None,
    mask_voting: bool = True,
    imagenet_weights: str | Path | None = None,
    pretrained_layout: bool = False,
    width: int = 24,
    tiny_stride: int = 4,
    box_detections_per_img: int = 100,
    box_score_thresh: float = 0.05,
    layout: str = "torchvision",
    frozen_layers: bool = False,
    voting_own_class: bool = True,
    **recipe,
) -> FCIS:
    """An FCIS of ``num_classes`` classes (with the background) on ``backbone`` in ``FCIS_BACKBONES``.

    ``tiny``: :class:`DilatedTinyBody` (``tiny_stride`` 4 or 8), anchors 12..96 px, 200 training RoIs per image of which
    OHEM keeps 64, 100 test proposals (the tiny Mask R-CNN's 100), 128-channel ``reduce``, 14 x 14 RoI masks (objects of
    8..90 px); ``resnet50`` / ``resnet101``: :class:`DilatedResNet` (stride 16), anchors 32..512 px, 300 training RoIs
    of which OHEM keeps 128, 300 test proposals, 1024-channel ``reduce``, 21 x 21 RoI masks (FCIS's sizes), optionally
    from ``imagenet_weights`` (frozen batch norm, stem and ``layer1`` then, as also with ``pretrained_layout``). ``k``
    is the position-sensitive grid, ``roi_size`` the assembled mask size (default: per backbone, as above).
    ``layout="official"`` (ResNets only) is the official FCIS's network, which its converted weights need
    (:mod:`a2dpipe.masks.fcis_official`): Caffe ResNet, 12 anchors, 512-channel RPN, its input and pooling.
    ``frozen_layers``: :func:`~a2dpipe.masks.fcis_training.freeze_pretrained_layers` (fine-tuning, as FCIS);
    ``recipe``: :class:`~a2dpipe.masks.fcis_training.FCISLossRecipe` fields; ``voting_own_class``: see ``mask_voting``.
    Long because it sets both backbones' sizes, the RPN and the heads side by side, in one place.
    """
    if layout not in FCIS_LAYOUTS:
        raise ValueError(f"FCIS layout must be one of {FCIS_LAYOUTS}, got {layout!r}")
    is_official, mean, std = layout == "official", [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    if backbone == "tiny":
        if imagenet_weights is not None or is_official:
            raise ValueError("imagenet_weights and the official layout apply to the resnet50 / resnet101 FCIS "
                             "backbones, not tiny")
        body: nn.Module = DilatedTinyBody(width, tiny_stride)
        anchors = AnchorGenerator(sizes=((12, 24, 48, 96),), aspect_ratios=((0.5, 1.0, 2.0),))
        mid, rpn_counts = 128, dict(pre_train=600, post_train=200, pre_test=300, post_test=100, batch=128)
        roi_size, ohem = roi_size or 14, TINY_OHEM_ROIS
    elif backbone in ("resnet50", "resnet101"):
        body = _resnet_body(int(backbone[6:]), imagenet_weights, pretrained_layout, is_official)
        anchors = AnchorGenerator(sizes=((32, 64, 128, 256, 512),), aspect_ratios=((0.5, 1.0, 2.0),))
        if is_official:
            anchors = official.LegacyAnchorGenerator((official.ANCHOR_SIZES,), (official.ASPECT_RATIOS,))
            mean, std = list(official.PIXEL_MEAN_RGB), list(official.PIXEL_STD)
        mid, rpn_counts = 1024, dict(pre_train=6000, post_train=300, pre_test=6000, post_test=300, batch=256)
        roi_size, ohem = roi_size or 21, 128
    else:
        raise ValueError(f"FCIS backbone must be one of {FCIS_BACKBONES}, got {backbone!r}")
    if frozen_layers:
        freeze_pretrained_layers(body)
    num_anchors = anchors.num_anchors_per_location()[0]
    head = (official.WideRPNHead(body.rpn_channels, official.RPN_CHANNELS, num_anchors) if is_official
            else RPNHead(body.rpn_channels, num_anchors))
    rpn = _rpn(anchors, head, rpn_counts, min_size=official.RPN_MIN_SIZE if is_official else 1e-3)
    heads = FCISHeads(
        body.out_channels, mid, num_classes, stride=body.stride, k=k, roi_size=roi_size, batch_size_per_image=ohem,
        score_thresh=box_score_thresh, detections_per_img=box_detections_per_img, mask_voting=mask_voting,
        pooling="psroi" if is_official else "align", recipe=FCISLossRecipe(**recipe),
        voting_own_class=voting_own_class,
    )
    return FCIS(body, rpn, heads, GeneralizedRCNNTransform(min_size, max_size, mean, std))


def _resnet_body(depth: int, imagenet_weights, pretrained_layout: bool, is_official: bool) -> DilatedResNet:
    """The dilated ResNet: frozen batch norm when it starts from pretrained weights, Caffe's for the official
    layout (whose start is the converted official file, not torchvision's ImageNet weights)."""
    if imagenet_weights is not None and is_official:
        raise ValueError("the official FCIS layout starts from the converted official weights, not from "
                         "torchvision's ImageNet ResNet (another layout): set imagenet_weights to None")
    body = DilatedResNet(depth, frozen=imagenet_weights is not None or pretrained_layout or is_official,
                         caffe=is_official)
    if imagenet_weights is not None:
        load_imagenet_weights(body, imagenet_weights)
    return body


def _rpn(anchors: AnchorGenerator, head: nn.Module, counts: dict, min_size: float) -> RegionProposalNetwork:
    """torchvision's RPN with FCIS's matching thresholds, ``counts`` RoIs and proposals under ``min_size`` px
    dropped."""
    rpn = RegionProposalNetwork(
        anchors, head, fg_iou_thresh=0.7, bg_iou_thresh=0.3, batch_size_per_image=counts["batch"],
        positive_fraction=0.5, pre_nms_top_n=dict(training=counts["pre_train"], testing=counts["pre_test"]),
        post_nms_top_n=dict(training=counts["post_train"], testing=counts["post_test"]), nms_thresh=0.7,
    )
    rpn.min_size = min_size
    return rpn
