"""Front-end: one or two dilated ResNet streams (RGB, flow-as-RGB) fused by concatenation (paper 3.2).

Each stream is a ResNet whose last two stages trade their stride for dilation (output stride 8), cut after
``layer4`` with ``IntermediateLayerGetter``. Parameter names follow torchvision's ResNet, so a torchvision-format
ImageNet checkpoint (``resnet101-*.pth``) loads into a stream as is (its ``fc.*`` entries are dropped).

torchvision's ``BasicBlock`` refuses ``dilation > 1``; ``DilatedBasicBlock`` below accepts it, so resnet18/34 and
the narrow ``tiny`` variant (CPU default) dilate like the Bottleneck networks.

Example:
    >>> import torch
    >>> fe = build_front_end(backbone="tiny", width=8, streams=("rgb", "flow"))
    >>> fe(torch.zeros(1, 3, 64, 96), torch.zeros(1, 3, 64, 96)).shape   # 2 streams x 8*width channels, stride 8
    torch.Size([1, 128, 8, 12])
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn
from torchvision.models._utils import IntermediateLayerGetter
from torchvision.models.resnet import Bottleneck, conv1x1, conv3x3

from a2dpipe.checkpoint import load_weights

__all__ = ["DilatedBasicBlock", "StreamResNet", "FrontEnd", "build_front_end", "load_imagenet_checkpoint",
           "OUTPUT_STRIDE"]

OUTPUT_STRIDE = 8

# backbone -> (block kind, blocks per stage); tiny is one narrow BasicBlock per stage
_ARCHS: dict[str, tuple[str, list[int]]] = {
    "resnet18": ("basic", [2, 2, 2, 2]),
    "resnet34": ("basic", [3, 4, 6, 3]),
    "resnet50": ("bottleneck", [3, 4, 6, 3]),
    "resnet101": ("bottleneck", [3, 4, 23, 3]),
    "tiny": ("basic", [1, 1, 1, 1]),
}


class DilatedBasicBlock(nn.Module):
    """torchvision's ``BasicBlock`` with dilation allowed (same parameter names, so checkpoints load).

    The first conv carries the stride and the incoming block's dilation, as torchvision's Bottleneck does for its
    3x3 conv; ``padding = dilation`` keeps the spatial size for stride 1.
    """

    expansion = 1

    def __init__(self, inplanes, planes, stride=1, downsample=None, groups=1, base_width=64, dilation=1, norm_layer=None):
        super().__init__()
        if groups != 1 or base_width != 64:
            raise ValueError("DilatedBasicBlock only supports groups=1 and base_width=64")
        norm_layer = norm_layer or nn.BatchNorm2d
        self.conv1 = conv3x3(inplanes, planes, stride, dilation=dilation)
        self.bn1 = norm_layer(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes, dilation=dilation)
        self.bn2 = norm_layer(planes)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class StreamResNet(nn.Module):
    """One stream of the front-end: torchvision's ResNet layout (``conv1, bn1, relu, maxpool, layer1..4``) without
    the classifier, its later stages dilated instead of strided.

    Args:
        block: ``DilatedBasicBlock`` or torchvision's ``Bottleneck``.
        layers: blocks per stage.
        widths: planes of the four stages (64, 128, 256, 512 for the ImageNet networks).
        replace_stride_with_dilation: per stage 2..4, dilate instead of striding (``[False, True, True]``: stride 8).
    """

    def __init__(self, block, layers: Sequence[int], widths: Sequence[int] = (64, 128, 256, 512), *,
                 replace_stride_with_dilation: Sequence[bool] = (False, True, True)):
        super().__init__()
        if len(layers) != 4 or len(widths) != 4 or len(replace_stride_with_dilation) != 3:
            raise ValueError("a ResNet has four stages: give 4 layer counts, 4 widths and 3 dilation flags")
        self.inplanes = widths[0]
        self.dilation = 1
        self.conv1 = nn.Conv2d(3, widths[0], kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, widths[0], layers[0])
        self.layer2 = self._make_layer(block, widths[1], layers[1], 2, replace_stride_with_dilation[0])
        self.layer3 = self._make_layer(block, widths[2], layers[2], 2, replace_stride_with_dilation[1])
        self.layer4 = self._make_layer(block, widths[3], layers[3], 2, replace_stride_with_dilation[2])
        self.out_channels = widths[3] * block.expansion
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def _make_layer(self, block, planes: int, blocks: int, stride: int = 1, dilate: bool = False) -> nn.Sequential:
        # Same bookkeeping as torchvision.models.resnet.ResNet._make_layer.
        downsample = None
        previous_dilation = self.dilation
        if dilate:
            self.dilation *= stride
            stride = 1
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                conv1x1(self.inplanes, planes * block.expansion, stride), nn.BatchNorm2d(planes * block.expansion)
            )
        layers = [block(self.inplanes, planes, stride, downsample, dilation=previous_dilation)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes, dilation=self.dilation) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


def _stream_resnet(backbone: str, width: int) -> StreamResNet:
    if backbone not in _ARCHS:
        raise ValueError(f"unknown backbone {backbone!r}; expected one of {sorted(_ARCHS)}")
    kind, layers = _ARCHS[backbone]
    block = DilatedBasicBlock if kind == "basic" else Bottleneck
    widths = [width, 2 * width, 4 * width, 8 * width] if backbone == "tiny" else [64, 128, 256, 512]
    return StreamResNet(block, layers, widths, replace_stride_with_dilation=[False, True, True])


def load_imagenet_checkpoint(stream: nn.Module, path: str | Path) -> None:
    """Load a torchvision-format ImageNet checkpoint (a state dict, or ``{"state_dict"|"model": ...}``) into a stream.

    The classifier (``fc.*``) is dropped; any other missing or unexpected key, or a shape mismatch, is an
    ``A2DError`` naming the file (:func:`a2dpipe.checkpoint.load_weights`). The flow stream takes RGB ImageNet
    weights as they are, first conv included.
    """
    load_weights(stream, path, name=f"{type(stream).__name__} stream (is it the configured backbone and width?)",
                 what="ImageNet checkpoint", drop=("fc.",))


class FrontEnd(nn.Module):
    """Dilated ResNet streams with early fusion.

    ``forward(rgb, flow=None)``: ``rgb`` and ``flow`` are (B, 3, H, W) normalised images (flow as its RGB
    encoding); returns (B, C, ceil(H/8), ceil(W/8)) with ``C = out_channels`` (streams' channels concatenated).
    A flow tensor is required exactly when the front-end has a flow stream.
    """

    def __init__(self, streams: dict[str, nn.Module], stream_channels: int):
        super().__init__()
        if "rgb" not in streams or set(streams) - {"rgb", "flow"}:
            raise ValueError("streams must be {'rgb'} or {'rgb', 'flow'}")
        # IntermediateLayerGetter returns {"out": layer4 features}, as torchvision's segmentation models do.
        self.streams = nn.ModuleDict(
            {name: IntermediateLayerGetter(net, return_layers={"layer4": "out"}) for name, net in streams.items()}
        )
        self.out_channels = stream_channels * len(streams)

    @property
    def uses_flow(self) -> bool:
        return "flow" in self.streams

    def forward(self, rgb: torch.Tensor, flow: torch.Tensor | None = None) -> torch.Tensor:
        if self.uses_flow != (flow is not None):
            raise ValueError("give a flow image exactly when the front-end has a flow stream")
        features = [self.streams["rgb"](rgb)["out"]]
        if flow is not None:
            features.append(self.streams["flow"](flow)["out"])
        return torch.cat(features, dim=1)


def build_front_end(*, backbone: str = "tiny", width: int = 24, streams: Sequence[str] = ("rgb",),
                    rgb_weights: str | None = None, flow_weights: str | None = None) -> FrontEnd:
    """Front-end with the named streams (``("rgb",)`` or ``("rgb", "flow")``), optionally ImageNet-initialised."""
    nets = {}
    for name in streams:
        net = _stream_resnet(backbone, width)
        weights = rgb_weights if name == "rgb" else flow_weights
        if weights:
            load_imagenet_checkpoint(net, weights)
        nets[name] = net
    return FrontEnd(nets, nets["rgb"].out_channels)
