"""FlowNet family in pure PyTorch: FlowNetS, FlowNetC, FlowNetSD and the stacked FlowNet2.

Module and parameter names and shapes follow NVIDIA's flownet2-pytorch (``networks/*.py``, ``models.py``), so the
public checkpoints of FlowNet2, FlowNet2-C, FlowNet2-S and FlowNet2-SD load unchanged (``load_flownet_weights``).
What that reference computes and these networks reproduce (their shared parts, the input normalisation, the
correlation layer and warping, are in :mod:`.flownet_layers`):

- height and width must be multiples of 64 (the estimator wrapper resizes and rescales the flow around this);
- the networks predict flow divided by ``div_flow`` = 20 at 1/4 resolution; the single networks return it
  multiplied by 20 and upsampled 4x bilinearly; FlowNet2 returns its fusion network's full-resolution output.

Every ``forward(image1, image2)`` takes two (B, 3, H, W) float tensors and returns (B, 2, H, W) flow in pixels
from image1 to image2 (u right, v down). ``pyramid(x)`` gives the multi-scale predictions (finest first) of
the single networks for training losses.
"""

from __future__ import annotations

import os

import torch
from torch import nn

from a2dpipe.flow.flownet_layers import (
    DIV_FLOW,
    channel_norm,
    check_size,
    conv_block,
    correlation,
    deconv,
    init_weights,
    inter_conv,
    normalize_pair,
    predict_flow,
    upsample4,
    upsample_flow,
    warp,
)

__all__ = [
    "FlowNetS",
    "FlowNetC",
    "FlowNetSD",
    "FlowNetFusion",
    "FlowNet2",
    "flownets",
    "flownetc",
    "flownetsd",
    "flownet2",
    "load_flownet_weights",
]


def _refine_flows(net: nn.Module, top: torch.Tensor, skips: tuple[torch.Tensor, ...], levels: tuple[int, ...],
                  inter: bool = False) -> tuple[torch.Tensor, ...]:
    """The expanding part of every FlowNet: a flow from the coarsest features ``top`` (level ``levels[0]``), then at
    each finer level the skip features, the deconvolved previous features and the upsampled previous flow,
    concatenated, predict that level's flow (through ``inter_conv<level>`` first when ``inter``).

    ``skips`` hold the features of ``levels[1:]``. The blocks are reached by the reference's names
    (``deconv5``, ``upsampled_flow6_to_5``, ``predict_flow5`` ...). Returns the flows, finest first.
    """
    flow = getattr(net, f"predict_flow{levels[0]}")(top)
    flows, features = [flow], top
    for coarse, level, skip in zip(levels, levels[1:], skips):
        upsampled = getattr(net, f"upsampled_flow{coarse}_to_{level}")(flow)
        features = torch.cat((skip, getattr(net, f"deconv{level}")(features), upsampled), 1)
        flow = getattr(net, f"predict_flow{level}")(getattr(net, f"inter_conv{level}")(features) if inter else features)
        flows.append(flow)
    return tuple(reversed(flows))


class _Decoder(nn.Module):
    """Shared refinement of FlowNetS/FlowNetC: deconvolutions with skip links, a flow at every scale."""

    def _decode(self, conv2, conv3, conv4, conv5, conv6):
        return _refine_flows(self, conv6, (conv5, conv4, conv3, conv2), (6, 5, 4, 3, 2))

    def _build_decoder(self, upsample_bias: bool) -> None:
        self.deconv5 = deconv(1024, 512)
        self.deconv4 = deconv(1026, 256)
        self.deconv3 = deconv(770, 128)
        self.deconv2 = deconv(386, 64)
        self.predict_flow6 = predict_flow(1024)
        self.predict_flow5 = predict_flow(1026)
        self.predict_flow4 = predict_flow(770)
        self.predict_flow3 = predict_flow(386)
        self.predict_flow2 = predict_flow(194)
        self.upsampled_flow6_to_5 = upsample_flow(upsample_bias)
        self.upsampled_flow5_to_4 = upsample_flow(upsample_bias)
        self.upsampled_flow4_to_3 = upsample_flow(upsample_bias)
        self.upsampled_flow3_to_2 = upsample_flow(upsample_bias)

    def forward(self, image1: torch.Tensor, image2: torch.Tensor) -> torch.Tensor:
        check_size(image1)
        flow2 = self.pyramid(normalize_pair(image1, image2))[0]
        return upsample4(flow2 * self.div_flow)


class FlowNetS(_Decoder):
    """FlowNet "simple": the two images stacked on channels. ``pyramid`` maps (B, input_channels, H, W) to the
    flows divided by 20 at 1/4 .. 1/64 resolution. ``input_channels`` is 6 for FlowNet2-S, 12 inside FlowNet2."""

    def __init__(self, *, input_channels: int = 6, batch_norm: bool = False, div_flow: float = DIV_FLOW):
        super().__init__()
        self.div_flow = div_flow
        self.conv1 = conv_block(batch_norm, input_channels, 64, kernel_size=7, stride=2)
        self.conv2 = conv_block(batch_norm, 64, 128, kernel_size=5, stride=2)
        self.conv3 = conv_block(batch_norm, 128, 256, kernel_size=5, stride=2)
        self.conv3_1 = conv_block(batch_norm, 256, 256)
        self.conv4 = conv_block(batch_norm, 256, 512, stride=2)
        self.conv4_1 = conv_block(batch_norm, 512, 512)
        self.conv5 = conv_block(batch_norm, 512, 512, stride=2)
        self.conv5_1 = conv_block(batch_norm, 512, 512)
        self.conv6 = conv_block(batch_norm, 512, 1024, stride=2)
        self.conv6_1 = conv_block(batch_norm, 1024, 1024)
        self._build_decoder(upsample_bias=False)
        init_weights(self)

    def pyramid(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        conv2 = self.conv2(self.conv1(x))
        conv3 = self.conv3_1(self.conv3(conv2))
        conv4 = self.conv4_1(self.conv4(conv3))
        conv5 = self.conv5_1(self.conv5(conv4))
        conv6 = self.conv6_1(self.conv6(conv5))
        return self._decode(conv2, conv3, conv4, conv5, conv6)


class FlowNetC(_Decoder):
    """FlowNet "correlation": a shared three-layer tower per image, then the correlation of the two feature maps
    (441 channels) beside a 32-channel projection of the first. ``pyramid`` maps (B, 6, H, W) as FlowNetS's."""

    def __init__(self, *, batch_norm: bool = False, div_flow: float = DIV_FLOW):
        super().__init__()
        self.div_flow = div_flow
        self.conv1 = conv_block(batch_norm, 3, 64, kernel_size=7, stride=2)
        self.conv2 = conv_block(batch_norm, 64, 128, kernel_size=5, stride=2)
        self.conv3 = conv_block(batch_norm, 128, 256, kernel_size=5, stride=2)
        self.conv_redir = conv_block(batch_norm, 256, 32, kernel_size=1, stride=1)
        self.corr_activation = nn.LeakyReLU(0.1)
        self.conv3_1 = conv_block(batch_norm, 473, 256)
        self.conv4 = conv_block(batch_norm, 256, 512, stride=2)
        self.conv4_1 = conv_block(batch_norm, 512, 512)
        self.conv5 = conv_block(batch_norm, 512, 512, stride=2)
        self.conv5_1 = conv_block(batch_norm, 512, 512)
        self.conv6 = conv_block(batch_norm, 512, 1024, stride=2)
        self.conv6_1 = conv_block(batch_norm, 1024, 1024)
        self._build_decoder(upsample_bias=True)
        init_weights(self)

    def pyramid(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        batch = x.shape[0]
        # both towers share weights: run them as one batch
        conv2ab = self.conv2(self.conv1(torch.cat([x[:, :3], x[:, 3:]], dim=0)))
        conv3ab = self.conv3(conv2ab)
        conv2a, conv3a, conv3b = conv2ab[:batch], conv3ab[:batch], conv3ab[batch:]
        corr = self.corr_activation(correlation(conv3a, conv3b))
        conv3_1 = self.conv3_1(torch.cat((self.conv_redir(conv3a), corr), 1))
        conv4 = self.conv4_1(self.conv4(conv3_1))
        conv5 = self.conv5_1(self.conv5(conv4))
        conv6 = self.conv6_1(self.conv6(conv5))
        return self._decode(conv2a, conv3_1, conv4, conv5, conv6)


class FlowNetSD(nn.Module):
    """FlowNet for small displacements: 3 x 3 kernels from the first layer, an extra full-resolution layer and
    intermediate convolutions before every prediction. ``pyramid`` maps (B, 6, H, W) as FlowNetS's."""

    def __init__(self, *, batch_norm: bool = False, div_flow: float = DIV_FLOW):
        super().__init__()
        self.div_flow = div_flow
        self.conv0 = conv_block(batch_norm, 6, 64)
        self.conv1 = conv_block(batch_norm, 64, 64, stride=2)
        self.conv1_1 = conv_block(batch_norm, 64, 128)
        self.conv2 = conv_block(batch_norm, 128, 128, stride=2)
        self.conv2_1 = conv_block(batch_norm, 128, 128)
        self.conv3 = conv_block(batch_norm, 128, 256, stride=2)
        self.conv3_1 = conv_block(batch_norm, 256, 256)
        self.conv4 = conv_block(batch_norm, 256, 512, stride=2)
        self.conv4_1 = conv_block(batch_norm, 512, 512)
        self.conv5 = conv_block(batch_norm, 512, 512, stride=2)
        self.conv5_1 = conv_block(batch_norm, 512, 512)
        self.conv6 = conv_block(batch_norm, 512, 1024, stride=2)
        self.conv6_1 = conv_block(batch_norm, 1024, 1024)
        self.deconv5 = deconv(1024, 512)
        self.deconv4 = deconv(1026, 256)
        self.deconv3 = deconv(770, 128)
        self.deconv2 = deconv(386, 64)
        self.inter_conv5 = inter_conv(batch_norm, 1026, 512)
        self.inter_conv4 = inter_conv(batch_norm, 770, 256)
        self.inter_conv3 = inter_conv(batch_norm, 386, 128)
        self.inter_conv2 = inter_conv(batch_norm, 194, 64)
        self.predict_flow6 = predict_flow(1024)
        self.predict_flow5 = predict_flow(512)
        self.predict_flow4 = predict_flow(256)
        self.predict_flow3 = predict_flow(128)
        self.predict_flow2 = predict_flow(64)
        self.upsampled_flow6_to_5 = upsample_flow(True)
        self.upsampled_flow5_to_4 = upsample_flow(True)
        self.upsampled_flow4_to_3 = upsample_flow(True)
        self.upsampled_flow3_to_2 = upsample_flow(True)
        init_weights(self)

    def pyramid(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        conv1 = self.conv1_1(self.conv1(self.conv0(x)))
        conv2 = self.conv2_1(self.conv2(conv1))
        conv3 = self.conv3_1(self.conv3(conv2))
        conv4 = self.conv4_1(self.conv4(conv3))
        conv5 = self.conv5_1(self.conv5(conv4))
        conv6 = self.conv6_1(self.conv6(conv5))
        return _refine_flows(self, conv6, (conv5, conv4, conv3, conv2), (6, 5, 4, 3, 2), inter=True)

    forward = _Decoder.forward


class FlowNetFusion(nn.Module):
    """FlowNet2's last block: (B, 11, H, W) (image 1, two flows, their norms, two warping errors) -> (B, 2, H, W)."""

    def __init__(self, *, batch_norm: bool = False):
        super().__init__()
        self.conv0 = conv_block(batch_norm, 11, 64)
        self.conv1 = conv_block(batch_norm, 64, 64, stride=2)
        self.conv1_1 = conv_block(batch_norm, 64, 128)
        self.conv2 = conv_block(batch_norm, 128, 128, stride=2)
        self.conv2_1 = conv_block(batch_norm, 128, 128)
        self.deconv1 = deconv(128, 32)
        self.deconv0 = deconv(162, 16)
        self.inter_conv1 = inter_conv(batch_norm, 162, 32)
        self.inter_conv0 = inter_conv(batch_norm, 82, 16)
        self.predict_flow2 = predict_flow(128)
        self.predict_flow1 = predict_flow(32)
        self.predict_flow0 = predict_flow(16)
        self.upsampled_flow2_to_1 = upsample_flow(True)
        self.upsampled_flow1_to_0 = upsample_flow(True)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        conv0 = self.conv0(x)
        conv1 = self.conv1_1(self.conv1(conv0))
        conv2 = self.conv2_1(self.conv2(conv1))
        return _refine_flows(self, conv2, (conv1, conv0), (2, 1, 0), inter=True)[0]


class FlowNet2(nn.Module):
    """FlowNet2: FlowNetC, then two FlowNetS refining on the warped second image (the large-displacement branch),
    FlowNetSD beside them (small displacements), and FlowNetFusion merging the two branches at full resolution."""

    def __init__(self, *, batch_norm: bool = False, div_flow: float = DIV_FLOW):
        super().__init__()
        self.div_flow = div_flow
        self.flownetc = FlowNetC(batch_norm=batch_norm)
        self.flownets_1 = FlowNetS(input_channels=12, batch_norm=batch_norm)
        self.flownets_2 = FlowNetS(input_channels=12, batch_norm=batch_norm)
        self.flownets_d = FlowNetSD(batch_norm=batch_norm)
        self.flownetfusion = FlowNetFusion(batch_norm=batch_norm)

    def _refine(self, net: FlowNetS, x: torch.Tensor, flow: torch.Tensor, mode: str) -> torch.Tensor:
        """One FlowNetS step on (images, image 2 warped by ``flow``, flow / 20, warping error)."""
        warped = warp(x[:, 3:], flow)
        error = channel_norm(x[:, :3] - warped)
        flow2 = net.pyramid(torch.cat((x, warped, flow / self.div_flow, error), dim=1))[0]
        return upsample4(flow2 * self.div_flow, mode)

    def forward(self, image1: torch.Tensor, image2: torch.Tensor) -> torch.Tensor:
        check_size(image1)
        x = normalize_pair(image1, image2)
        flow_c = upsample4(self.flownetc.pyramid(x)[0] * self.div_flow)
        flow_s1 = self._refine(self.flownets_1, x, flow_c, "bilinear")
        flow_s2 = self._refine(self.flownets_2, x, flow_s1, "nearest")
        # the reference divides (not multiplies) FlowNetSD's output by div_flow here; its weights expect that
        flow_sd = upsample4(self.flownets_d.pyramid(x)[0] / self.div_flow, "nearest")
        image1_only = x[:, :3]
        error_sd = channel_norm(image1_only - warp(x[:, 3:], flow_sd))
        error_s2 = channel_norm(image1_only - warp(x[:, 3:], flow_s2))
        fusion_in = torch.cat(
            (image1_only, flow_sd, flow_s2, channel_norm(flow_sd), channel_norm(flow_s2), error_sd, error_s2), dim=1
        )
        return self.flownetfusion(fusion_in)


def flownets(*, batch_norm: bool = False) -> FlowNetS:
    """FlowNet2-S (6 input channels), the layout of ``FlowNet2-S_checkpoint.pth.tar``."""
    return FlowNetS(input_channels=6, batch_norm=batch_norm)


def flownetc(*, batch_norm: bool = False) -> FlowNetC:
    """FlowNet2-C, the layout of ``FlowNet2-C_checkpoint.pth.tar``."""
    return FlowNetC(batch_norm=batch_norm)


def flownetsd(*, batch_norm: bool = False) -> FlowNetSD:
    """FlowNet2-SD, the layout of ``FlowNet2-SD_checkpoint.pth.tar``."""
    return FlowNetSD(batch_norm=batch_norm)


def flownet2(*, batch_norm: bool = False) -> FlowNet2:
    """FlowNet2 (162,518,834 parameters), the layout of ``FlowNet2_checkpoint.pth.tar``."""
    return FlowNet2(batch_norm=batch_norm)


def load_flownet_weights(model: nn.Module, path: str | os.PathLike) -> nn.Module:
    """Load a flownet2-pytorch checkpoint (a dict holding ``state_dict``, or a bare state dict) into ``model``.

    A ``module.`` prefix (checkpoints saved from ``DataParallel``) is stripped. Raises ``A2DError`` naming the
    file and the mismatching keys when the checkpoint is for another network.
    """
    from a2dpipe.checkpoint import load_weights

    load_weights(model, path, name=type(model).__name__, what="weights file (config flow.weights)",
                 keys=("state_dict",))
    return model
