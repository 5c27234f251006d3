"""The mask model behind the mask sources: FCIS (:mod:`a2dpipe.masks.fcis`) or Mask R-CNN, chosen by
``masks.model``; Mask R-CNN builders here (a ResNet-50-FPN model for real runs, a tiny one for the CPU default).

All are torchvision :class:`~torchvision.models.detection.MaskRCNN` models or follow its contract:

- train: ``model(images, targets) -> {"loss_classifier", "loss_box_reg", "loss_mask", "loss_objectness",
  "loss_rpn_box_reg"}``, with ``images`` a list of (3, H, W) float tensors in [0, 1] and ``targets`` a list of
  dicts ``boxes`` (N, 4) float x1, y1, x2, y2, ``labels`` (N,) int64 (1..num_classes-1), ``masks`` (N, H, W) uint8;
- eval: ``model(images) -> [{"boxes", "labels", "scores", "masks" (N, 1, H, W) float in [0, 1]}]`` at input size.

``num_classes`` counts the background: 8 for the A2D actors, 2 for a class-agnostic "object" model, 91 for COCO.
A local COCO checkpoint in torchvision's format (``maskrcnn_resnet50_fpn`` state dict, such as torchvision's
published ``maskrcnn_resnet50_fpn_coco-bf2d0c1e.pth``) can initialise any model of the same architecture: tensors
whose shape differs (the class-specific heads when the class count differs) keep their fresh initialisation,
everything else is loaded. A model used as is, untrained (the generic source), loads it strictly instead: a tensor
missing, unused or of another shape is an error naming it. Nothing is downloaded.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn
from torchvision.models import resnet50
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import BackboneWithFPN, _resnet_fpn_extractor
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.ops import MultiScaleRoIAlign, misc as misc_nn_ops

from a2dpipe.checkpoint import load_model_file, load_weights
from a2dpipe.masks.backbones import TinyBody
from a2dpipe.masks.fcis import FCIS, fcis

__all__ = [
    "BACKBONES",
    "TinyBody",
    "maskrcnn_tiny",
    "maskrcnn_resnet50_fpn",
    "MASK_MODELS",
    "build_mask_model",
    "mask_model_options",
    "coco_class_count",
    "load_coco_checkpoint",
    "load_mask_model",
]

log = logging.getLogger("a2dpipe.masks")

BACKBONES = ("tiny", "resnet50_fpn")
MASK_MODELS = ("fcis", "maskrcnn")


def maskrcnn_tiny(
    *, num_classes: int, min_size: int = 96, max_size: int = 192, width: int = 24, fpn_channels: int = 64, **kwargs
) -> MaskRCNN:
    """Mask R-CNN on :class:`TinyBody` + FPN, sized for ~96-px frames (objects of 8..90 px), trained from scratch.

    Anchors are 12, 24, 48, 96 px on strides 4, 8, 16, 32; heads are narrowed (256-d box MLP, two 64-channel mask
    convolutions) so that a few hundred iterations on two CPU cores take minutes. ``kwargs`` go to MaskRCNN.
    """
    body = TinyBody(width)
    backbone = BackboneWithFPN(
        body,
        return_layers={"layer1": "0", "layer2": "1", "layer3": "2"},
        in_channels_list=[width, 2 * width, 4 * width],
        out_channels=fpn_channels,
    )  # the FPN adds a max-pooled "pool" level (stride 32)
    anchors = AnchorGenerator(sizes=((12,), (24,), (48,), (96,)), aspect_ratios=((0.5, 1.0, 2.0),) * 4)
    # one bilinear sample per RoI bin, not 2 x 2: four make RoI align's backward pass a quarter of a CPU step, for
    # about two points of the dataset model's mask AP (docs/performance.md, "Mask models on a CPU")
    box_pool = MultiScaleRoIAlign(featmap_names=["0", "1", "2"], output_size=7, sampling_ratio=1)
    mask_pool = MultiScaleRoIAlign(featmap_names=["0", "1", "2"], output_size=14, sampling_ratio=1)
    options = dict(
        rpn_pre_nms_top_n_train=600,
        rpn_post_nms_top_n_train=300,
        rpn_pre_nms_top_n_test=300,
        rpn_post_nms_top_n_test=100,
        rpn_batch_size_per_image=128,
        # RoIs per frame for the box and mask losses: synthetic frames hold at most 5 objects, and 64 (Fast R-CNN's
        # figure) trains a third faster than 128 for the same validation mask AP (32.6 vs 33.3 actor, 28.1 vs 27.7
        # class-agnostic, 300 steps; 32 lost 2-3 points), as RoI align's backward dominates a step on the CPU
        box_batch_size_per_image=64,
    )
    options.update(kwargs)
    return MaskRCNN(
        backbone,
        num_classes=None,
        min_size=min_size,
        max_size=max_size,
        rpn_anchor_generator=anchors,
        box_roi_pool=box_pool,
        box_head=TwoMLPHead(fpn_channels * 7 * 7, 256),
        box_predictor=FastRCNNPredictor(256, num_classes),
        mask_roi_pool=mask_pool,
        mask_head=MaskRCNNHeads(fpn_channels, [fpn_channels, fpn_channels], 1),
        mask_predictor=MaskRCNNPredictor(fpn_channels, fpn_channels, num_classes),
        **options,
    )


def maskrcnn_resnet50_fpn(
    *, num_classes: int, min_size: int = 320, max_size: int = 568, pretrained_layout: bool = False, **kwargs
) -> MaskRCNN:
    """torchvision's ResNet-50-FPN Mask R-CNN (same parameter names as its COCO checkpoint).

    ``pretrained_layout=True`` uses frozen batch norm and trains only the last three ResNet stages, as torchvision
    does when starting from pretrained weights; otherwise everything trains with ordinary batch norm.
    """
    norm = misc_nn_ops.FrozenBatchNorm2d if pretrained_layout else nn.BatchNorm2d
    trainable = 3 if pretrained_layout else 5
    backbone = _resnet_fpn_extractor(resnet50(weights=None, norm_layer=norm), trainable)
    return MaskRCNN(backbone, num_classes=num_classes, min_size=min_size, max_size=max_size, **kwargs)


def build_mask_model(
    *,
    model: str = "maskrcnn",
    backbone: str = "tiny",
    num_classes: int,
    min_size: int,
    max_size: int,
    coco_checkpoint: str | Path | None = None,
    pretrained_layout: bool | None = None,
    **kwargs,
) -> MaskRCNN | FCIS:
    """The mask model of the config: ``model`` in ``MASK_MODELS``; optionally initialised from ``coco_checkpoint``.

    Mask R-CNN: ``backbone`` in ``BACKBONES``; ``kwargs`` go to torchvision's MaskRCNN. FCIS: ``backbone`` in
    :data:`~a2dpipe.masks.fcis.FCIS_BACKBONES`; ``kwargs`` go to :func:`~a2dpipe.masks.fcis.fcis` (``k``,
    ``mask_voting``, ``imagenet_weights``, ``box_detections_per_img``). ``pretrained_layout`` (default: whether a
    checkpoint is given) freezes batch norm and the first stages, as fine-tuning from pretrained weights wants.
    A ``coco_checkpoint`` must hold the weights of the same model kind (an FCIS file for FCIS).
    """
    if pretrained_layout is None:
        pretrained_layout = coco_checkpoint is not None
    if model == "fcis":
        net = fcis(backbone=backbone, num_classes=num_classes, min_size=min_size, max_size=max_size,
                   pretrained_layout=pretrained_layout and backbone != "tiny", **kwargs)
    elif model != "maskrcnn":
        raise ValueError(f"model must be one of {MASK_MODELS}, got {model!r}")
    elif backbone == "tiny":
        net = maskrcnn_tiny(num_classes=num_classes, min_size=min_size, max_size=max_size, **kwargs)
    elif backbone == "resnet50_fpn":
        net = maskrcnn_resnet50_fpn(
            num_classes=num_classes, min_size=min_size, max_size=max_size,
            pretrained_layout=pretrained_layout, **kwargs,
        )
    else:
        raise ValueError(f"Mask R-CNN backbone must be one of {BACKBONES}, got {backbone!r}")
    if coco_checkpoint is not None:
        load_coco_checkpoint(net, coco_checkpoint)
    return net


def mask_model_options(cfg: dict) -> dict:
    """The builder keywords that ``masks.model`` and its FCIS keys add to the architecture of a mask model."""
    if cfg["model"] != "fcis":
        return {"model": "maskrcnn"}
    return {"model": "fcis", "k": cfg["fcis_k"], "mask_voting": cfg["fcis_mask_voting"],
            "imagenet_weights": cfg["fcis_imagenet_weights"], "tiny_stride": cfg["fcis_tiny_stride"],
            "layout": cfg["fcis_layout"],
            "ohem_fg_fraction": cfg["fcis_ohem_fg_fraction"], "mask_loss_weight": cfg["fcis_mask_loss_weight"],
            "voting_own_class": cfg["fcis_voting_own_class"]}


def coco_class_count(cfg: dict) -> int:
    """Classes (with the background) of the COCO model the ``masks`` settings ``cfg`` read: the official FCIS's 81,
    else torchvision's 91."""
    return 81 if cfg["model"] == "fcis" and cfg["fcis_layout"] == "official" else 91


def load_coco_checkpoint(model: nn.Module, path: str | Path, *, strict: bool = False) -> list[str]:
    """Load the COCO checkpoint ``path`` into ``model``; return the names left as initialised.

    ``strict=False`` (a start for training): every tensor whose name and shape match; class-specific heads
    (``roi_heads.box_predictor.*``, ``roi_heads.mask_predictor.mask_fcn_logits.*``) differ in shape when the class
    count differs and are re-initialised; a checkpoint that matches nothing is an error. ``strict=True`` (a model
    used as is): every tensor of the model and of the file must match, or ``A2DError`` names each one that does not
    (:func:`a2dpipe.checkpoint.load_weights`).
    """
    return load_weights(model, path, name=f"COCO {type(model).__name__}", partial=not strict,
                        what="COCO checkpoint (config masks.coco_checkpoint)")


def load_mask_model(path: str | Path, device: torch.device | str = "cpu") -> tuple[MaskRCNN | FCIS, dict]:
    """A mask model saved by ``a2dpipe train-mask-model``, in eval mode on ``device``, and its model file.

    The file holds ``builder`` (this module's :func:`build_mask_model` keyword arguments), ``model`` (the weights),
    ``source``, ``class_agnostic``, ``steps``, ``start``, ``final_loss`` and ``provenance``
    (:func:`a2dpipe.checkpoint.load_model_file`).
    """
    checkpoint = load_model_file(path, "mask model")
    builder = dict(checkpoint["builder"])
    if builder.get("imagenet_weights"):  # the trained weights replace them; only their frozen layout matters
        builder.update(imagenet_weights=None, pretrained_layout=True)
    model = build_mask_model(**builder)
    model.load_state_dict(checkpoint["model"])
    return model.to(device).eval(), checkpoint
