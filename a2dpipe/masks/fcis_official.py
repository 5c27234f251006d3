"""The official FCIS's network layout (msracver/FCIS, ``resnet_v1_101_fcis``, COCO config), as parts for
:func:`a2dpipe.masks.fcis.fcis` with ``layout="official"``, so that its published weights, converted by
:mod:`a2dpipe.masks.convert`, compute what they computed in MXNet:

- 81 classes (COCO's 80 and the background; the caller passes ``num_classes``);
- the Caffe ResNet-101 (:class:`~a2dpipe.masks.backbones.DilatedResNet` with ``caffe=True``), frozen batch norm;
- 12 anchors per cell at stride 16: sizes 64, 128, 256, 512 px x aspect ratios 0.5, 1, 2, with the rounded widths
  and heights of Faster R-CNN's ``generate_anchors`` (:class:`LegacyAnchorGenerator`);
- a 512-channel 3x3 RPN convolution (:class:`WideRPNHead`), proposals smaller than 2 px dropped;
- BGR 0-255 input minus the pixel means, without division by a deviation: the converter reverses ``conv1``'s input
  channels so that the network reads RGB, and the transform's mean and std (:data:`PIXEL_MEAN_RGB`,
  :data:`PIXEL_STD`) turn [0, 1] images into 0-255 minus the mean;
- the position-sensitive heads pooled the official way (:func:`~a2dpipe.masks.position_sensitive.psroi_pool`).

Boxes. The official code counts a box's corners inclusively (width ``x2 - x1 + 1``); this network keeps the end
one past the last pixel (width ``x2 - x1``), the representation in which Faster R-CNN's box decoding and NMS are
torchvision's: its anchors are the official ones with 1 added to ``x2`` and ``y2``, and an official box is this
network's minus 1 on ``x2`` and ``y2``.

Where torchvision's RPN, used as is, departs from the official proposal operator (neither showed on the images of
``benchmarks/fcis_mxnet_compare.py``): it keeps the 6,000 best anchors before dropping those under 2 px, the
official code after; it caps the decoded width and height change at log(1000 / 16), the official code does not.
The test-time resize is torchvision's bilinear interpolation, the official code's OpenCV's.
"""

from __future__ import annotations

import torch
from torch import nn
from torchvision.models.detection.anchor_utils import AnchorGenerator

__all__ = ["LegacyAnchorGenerator", "WideRPNHead", "ANCHOR_SIZES", "ASPECT_RATIOS", "COCO_CLASSES",
           "PIXEL_MEAN_RGB", "PIXEL_STD", "RPN_CHANNELS", "RPN_MIN_SIZE", "BOX_STDS", "FEATURE_STRIDE"]

COCO_CLASSES = 81
FEATURE_STRIDE = 16
ANCHOR_SIZES = (64, 128, 256, 512)  # ANCHOR_SCALES 4, 8, 16, 32 x the stride
ASPECT_RATIOS = (0.5, 1.0, 2.0)  # height / width
RPN_CHANNELS = 512
RPN_MIN_SIZE = 2.0
PIXEL_MEANS_BGR = (103.06, 115.90, 123.15)
PIXEL_MEAN_RGB = tuple(m / 255 for m in reversed(PIXEL_MEANS_BGR))
PIXEL_STD = (1 / 255,) * 3
BOX_STDS = (0.2, 0.2, 0.5, 0.5)  # the official box deltas are the network's outputs times these


class LegacyAnchorGenerator(AnchorGenerator):
    """torchvision's anchor generator with Faster R-CNN's original cell anchors: for each aspect ratio (outer) and
    size (inner), a box around the centre (7.5, 7.5) of the first 16-px cell whose width is ``round(sqrt(256 /
    ratio))`` and height ``round(width * ratio)``, both times ``size / 16``; ends exclusive (see the module)."""

    def generate_anchors(self, scales, aspect_ratios, dtype=torch.float32, device=torch.device("cpu")):
        base = float(FEATURE_STRIDE)
        ratios = torch.as_tensor(aspect_ratios, dtype=torch.float64)
        widths = torch.round(torch.sqrt(base * base / ratios))
        heights = torch.round(widths * ratios)
        factors = torch.as_tensor(scales, dtype=torch.float64) / base
        ws = (widths[:, None] * factors[None]).reshape(-1)
        hs = (heights[:, None] * factors[None]).reshape(-1)
        centre = (base - 1) / 2
        anchors = torch.stack([centre - (ws - 1) / 2, centre - (hs - 1) / 2,
                               centre + (ws - 1) / 2 + 1, centre + (hs - 1) / 2 + 1], 1)
        return anchors.to(dtype=dtype, device=device)


class WideRPNHead(nn.Module):
    """RPN head as torchvision's ``RPNHead`` (same parameter roles) with its own width: a 3x3 convolution of
    ``mid_channels`` and ReLU, then 1x1 objectness (one logit per anchor) and box-delta (4 per anchor) layers."""

    def __init__(self, in_channels: int, mid_channels: int, num_anchors: int):
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(in_channels, mid_channels, 3, padding=1), nn.ReLU(inplace=True))
        self.cls_logits = nn.Conv2d(mid_channels, num_anchors, 1)
        self.bbox_pred = nn.Conv2d(mid_channels, 4 * num_anchors, 1)
        for layer in (self.conv[0], self.cls_logits, self.bbox_pred):
            nn.init.normal_(layer.weight, std=0.01)
            nn.init.zeros_(layer.bias)

    def forward(self, features: list[torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        hidden = [self.conv(f) for f in features]
        return [self.cls_logits(h) for h in hidden], [self.bbox_pred(h) for h in hidden]
