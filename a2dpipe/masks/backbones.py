"""Backbones of the mask models: the narrow :class:`TinyBody` of the CPU default's Mask R-CNN (with an FPN, see
:mod:`a2dpipe.masks.model`), and for FCIS (:mod:`a2dpipe.masks.fcis`) ResNets whose last stage is dilated, as FCIS
does, returning the second-to-last stage (read by the RPN) and the last (read by the position-sensitive heads).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from torchvision.models import resnet50, resnet101
from torchvision.models._utils import IntermediateLayerGetter
from torchvision.ops import misc as misc_nn_ops

from a2dpipe.checkpoint import load_weights

__all__ = ["BasicBlock", "TinyBody", "DilatedTinyBody", "DilatedResNet", "load_imagenet_weights"]


class BasicBlock(nn.Module):
    """ResNet basic block (two 3x3 convolutions, optionally dilated, and a shortcut), with a projection when the
    shape changes."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, dilation: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, dilation, dilation, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, dilation, dilation, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False), nn.BatchNorm2d(out_channels)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class TinyBody(nn.Module):
    """Narrow ResNet body for small frames: ``layer1`` at stride 4, ``layer2`` at 8, ``layer3`` at 16. A smaller
    ``output_stride`` (8 or 4) dilates the stages that would go beyond it instead of striding them (FCIS's way of
    growing the receptive field without losing resolution).

    Channels are ``width``, ``2 * width``, ``4 * width``. Input (B, 3, H, W); returns the last stage (Mask R-CNN takes
    intermediate stages through :class:`BackboneWithFPN`).
    """

    def __init__(self, width: int = 24, *, output_stride: int = 16):
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, width // 2, 3, 2, 1, bias=False),
            nn.BatchNorm2d(width // 2),
            nn.ReLU(inplace=True),
            nn.Conv2d(width // 2, width, 3, 2, 1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
        )
        if output_stride not in (4, 8, 16):
            raise ValueError(f"output_stride must be 4, 8 or 16, got {output_stride}")
        self.layer1 = BasicBlock(width, width)
        self.layer2 = BasicBlock(width, 2 * width, **_stride_or_dilation(8, output_stride))
        self.layer3 = BasicBlock(2 * width, 4 * width, **_stride_or_dilation(16, output_stride))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer3(self.layer2(self.layer1(self.stem(x))))


def _stride_or_dilation(stride: int, output_stride: int) -> dict:
    """A stage that would reach ``stride``: strided by 2 if that stays within ``output_stride``, else dilated by
    as much as the strides it gives up."""
    return {"stride": 2} if stride <= output_stride else {"dilation": stride // output_stride}


class DilatedTinyBody(TinyBody):
    """:class:`TinyBody` at ``stride`` 4 (``layer2`` and ``layer3`` dilated by 2 and 4) or 8 (``layer3`` dilated by
    2), for FCIS: returns ``(layer2, layer3)``, the RPN's and the heads' features.

    Stride 4 for the synthetic benchmark's 96-px frames: an actor of 24 px spans 3 cells at stride 8, too few for a
    7 x 7 position-sensitive grid to place its bins in. Measured on the validation split (dataset source, 300 steps,
    one thread, mask AP at score threshold 0.05, actor / class-agnostic): stride 8 3.6 / 4.8, stride 4 10.6 / 8.8.
    """

    def __init__(self, width: int = 24, stride: int = 4):
        if stride not in (4, 8):
            raise ValueError(f"the tiny FCIS backbone's stride must be 4 or 8, got {stride}")
        super().__init__(width, output_stride=stride)
        self.stride = stride
        self.rpn_channels, self.out_channels = 2 * width, 4 * width

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        conv4 = self.layer2(self.layer1(self.stem(x)))
        return conv4, self.layer3(conv4)


class DilatedResNet(nn.Module):
    """torchvision ResNet-50/101 with ``layer4`` dilated (stride 16): returns ``(layer3, layer4)``.

    ``frozen=True`` (when starting from ImageNet weights, as FCIS does) uses frozen batch norm and freezes the stem
    and ``layer1``. ``caffe=True`` is the ResNet of the official FCIS (MSRA's Caffe ResNet, ``resnet_v1_101``): the
    stride of ``layer2`` and ``layer3`` on the first block's 1x1 convolution instead of its 3x3, ``layer4``'s first
    3x3 dilated by 2 like the others, and the stem's max pooling unpadded with the output size rounded up (MXNet's
    ``pooling_convention='full'``); the parameter names stay torchvision's.
    """

    stride = 16

    def __init__(self, depth: int, frozen: bool = False, caffe: bool = False):
        super().__init__()
        self.depth = depth
        norm = misc_nn_ops.FrozenBatchNorm2d if frozen else nn.BatchNorm2d
        net = {50: resnet50, 101: resnet101}[depth](
            weights=None, norm_layer=norm, replace_stride_with_dilation=[False, False, True]
        )
        if caffe:
            _caffe_layout(net)
        self.body = IntermediateLayerGetter(net, return_layers={"layer3": "rpn", "layer4": "head"})
        if frozen:
            for module in (self.body.conv1, self.body.layer1):
                module.requires_grad_(False)
        self.rpn_channels, self.out_channels = 1024, 2048

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.body(x)
        return features["rpn"], features["head"]


def _caffe_layout(net: nn.Module) -> None:
    """Rearrange a torchvision ResNet (``layer4`` dilated) into the Caffe ResNet of the official FCIS, in place."""
    net.maxpool = nn.MaxPool2d(3, 2, padding=0, ceil_mode=True)
    for layer in (net.layer2, net.layer3):
        layer[0].conv1.stride, layer[0].conv2.stride = (2, 2), (1, 1)
    net.layer4[0].conv2.dilation, net.layer4[0].conv2.padding = (2, 2), (2, 2)


def load_imagenet_weights(backbone: DilatedResNet, path: str | Path) -> None:
    """Initialise a :class:`DilatedResNet` from a local torchvision ImageNet ResNet state dict (``fc`` ignored),
    strictly, with or without batch norm counters (:func:`a2dpipe.checkpoint.load_weights`)."""
    load_weights(backbone.body, path, name=f"ResNet-{backbone.depth} (ImageNet, torchvision layout)",
                 what="ImageNet ResNet weights (config masks.fcis_imagenet_weights)", drop=("fc.",))
