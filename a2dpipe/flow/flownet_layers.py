"""FlowNet's shared parts, as flownet2-pytorch computes them: input normalisation, the correlation layer, warping,
the channel norm, and the convolution blocks every network of :mod:`.flownet` is built from.

- input: two RGB images with values in 0..255; per sample and channel the mean over both images is subtracted
  and the result divided by ``rgb_max`` = 255 (``normalize_pair``);
- height and width must be multiples of 64 (``check_size``);
- the correlation layer (``correlation``) replaces the CUDA extension: 21 x 21 displacements of stride 2
  within 20 px on 1 x 1 patches, each the channel mean of the product, computed with zero padding;
- warping (``Resample2d``) is bilinear with coordinates clamped to the image, ``ChannelNorm`` the L2 norm over
  channels.

The blocks hold no names of their own: the networks name each block as the reference does, so its checkpoints load.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn import init

__all__ = [
    "SIZE_MULTIPLE",
    "DIV_FLOW",
    "RGB_MAX",
    "normalize_pair",
    "correlation",
    "warp",
    "channel_norm",
    "upsample4",
    "conv_block",
    "inter_conv",
    "predict_flow",
    "deconv",
    "upsample_flow",
    "init_weights",
    "check_size",
]

SIZE_MULTIPLE = 64  # six stride-2 stages
DIV_FLOW = 20.0  # the networks predict flow / 20
RGB_MAX = 255.0


def normalize_pair(image1: torch.Tensor, image2: torch.Tensor, rgb_max: float = RGB_MAX) -> torch.Tensor:
    """Two (B, 3, H, W) images in 0..rgb_max -> (B, 6, H, W), centred on the pair's per-channel mean, / rgb_max."""
    pair = torch.stack([image1, image2], dim=2)  # (B, 3, 2, H, W), the reference's input layout
    pair = (pair - pair.mean(dim=(2, 3, 4), keepdim=True)) / rgb_max
    return torch.cat([pair[:, :, 0], pair[:, :, 1]], dim=1)


def correlation(
    input1: torch.Tensor,
    input2: torch.Tensor,
    *,
    pad_size: int = 20,
    kernel_size: int = 1,
    max_displacement: int = 20,
    stride1: int = 1,
    stride2: int = 2,
) -> torch.Tensor:
    """Correlation of two (B, C, H, W) feature maps, as FlowNetC's CUDA layer computes it.

    Output (B, D*D, H_out, W_out) with D = 2 * (max_displacement // stride2) + 1; channel (j, i) -> j * D + i holds
    mean_c input1[c, y, x] * input2[c, y + dy_j, x + dx_i] with dy_j, dx_i in -max_displacement..max_displacement
    by stride2; positions outside the zero-padded input read zero. H_out = ceil((H + 2 pad - 2 max_disp) / stride1).

    Computed one vertical displacement at a time: for every output row a matrix product of the row's features
    with the band of input2 it can reach, (B, H_out, W_out, W_out + 2 max_disp) floats, from which the D horizontal
    displacements are gathered. Memory stays linear in H and never holds an (H*W)^2 volume; the products run in
    BLAS, about 17x faster on a CPU than a loop of element-wise products.
    """
    if kernel_size != 1:
        raise ValueError(f"only 1 x 1 correlation patches are supported (FlowNetC's), got kernel_size={kernel_size}")
    if input1.shape != input2.shape or input1.ndim != 4:
        raise ValueError(f"inputs must be two (B, C, H, W) tensors of one shape, got {input1.shape}, {input2.shape}")
    batch, channels, height, width = input1.shape
    radius = max_displacement // stride2
    size = 2 * radius + 1
    out_h = -(-(height + 2 * pad_size - 2 * max_displacement) // stride1)
    out_w = -(-(width + 2 * pad_size - 2 * max_displacement) // stride1)
    if out_h <= 0 or out_w <= 0:
        raise ValueError(f"input {height}x{width} is too small for max_displacement {max_displacement}")
    padded1 = F.pad(input1, (pad_size,) * 4)
    padded2 = F.pad(input2, (pad_size,) * 4)
    span_h, span_w = (out_h - 1) * stride1 + 1, (out_w - 1) * stride1 + 1
    m = max_displacement
    centre = padded1[:, :, m : m + span_h : stride1, m : m + span_w : stride1].permute(0, 2, 3, 1)  # (B, oh, ow, C)
    left = m - radius * stride2  # first column of input2 that any displacement reaches
    columns = 2 * radius * stride2 + span_w
    # index[x, i]: column of the band that output x reads at horizontal displacement i
    index = torch.arange(out_w, device=input1.device).view(-1, 1) * stride1
    index = (index + torch.arange(size, device=input1.device).view(1, -1) * stride2).expand(batch, out_h, out_w, size)
    rows = []
    for j in range(-radius, radius + 1):
        y0 = m + j * stride2
        band = padded2[:, :, y0 : y0 + span_h : stride1, left : left + columns].permute(0, 2, 1, 3)  # (B, oh, C, cols)
        rows.append(torch.gather(torch.matmul(centre, band), 3, index))  # (B, oh, ow, D)
    return torch.cat(rows, dim=3).permute(0, 3, 1, 2).contiguous() / channels


def warp(image: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """Bilinear sample (B, C, H, W) ``image`` at x + u, y + v (flow (B, 2, H, W) in pixels), coordinates clamped."""
    _, _, height, width = image.shape
    ys, xs = torch.meshgrid(
        torch.arange(height, dtype=flow.dtype, device=flow.device),
        torch.arange(width, dtype=flow.dtype, device=flow.device),
        indexing="ij",
    )
    gx = (xs + flow[:, 0]) * (2.0 / max(width - 1, 1)) - 1.0
    gy = (ys + flow[:, 1]) * (2.0 / max(height - 1, 1)) - 1.0
    grid = torch.stack([gx, gy], dim=-1)
    return F.grid_sample(image, grid, mode="bilinear", padding_mode="border", align_corners=True)


def channel_norm(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, 1, H, W) L2 norm over channels."""
    return x.pow(2).sum(dim=1, keepdim=True).sqrt()


def upsample4(x: torch.Tensor, mode: str = "bilinear") -> torch.Tensor:
    """4x upsampling of a (B, C, H, W) map, bilinear (corners not aligned) or nearest, as the reference."""
    if mode == "nearest":
        return F.interpolate(x, scale_factor=4, mode="nearest")
    return F.interpolate(x, scale_factor=4, mode="bilinear", align_corners=False)


def conv_block(batch_norm: bool, in_planes: int, out_planes: int, kernel_size: int = 3,
               stride: int = 1) -> nn.Sequential:
    """Convolution ("same" padding; no bias under batch norm), optional batch norm, LeakyReLU(0.1)."""
    conv = nn.Conv2d(in_planes, out_planes, kernel_size, stride, (kernel_size - 1) // 2, bias=not batch_norm)
    layers = [conv, nn.BatchNorm2d(out_planes)] if batch_norm else [conv]
    return nn.Sequential(*layers, nn.LeakyReLU(0.1))


def inter_conv(batch_norm: bool, in_planes: int, out_planes: int) -> nn.Sequential:
    """FlowNetSD and fusion: a 3 x 3 convolution (optional batch norm) before a flow prediction, no activation."""
    conv = nn.Conv2d(in_planes, out_planes, 3, 1, 1, bias=True)
    return nn.Sequential(conv, nn.BatchNorm2d(out_planes)) if batch_norm else nn.Sequential(conv)


def predict_flow(in_planes: int) -> nn.Conv2d:
    """A 3 x 3 convolution to the two flow channels."""
    return nn.Conv2d(in_planes, 2, 3, 1, 1, bias=True)


def deconv(in_planes: int, out_planes: int) -> nn.Sequential:
    """2x transposed convolution and LeakyReLU(0.1)."""
    return nn.Sequential(nn.ConvTranspose2d(in_planes, out_planes, 4, 2, 1, bias=True), nn.LeakyReLU(0.1))


def upsample_flow(bias: bool) -> nn.ConvTranspose2d:
    """2x transposed convolution of a flow (with or without bias, as each reference network has it)."""
    return nn.ConvTranspose2d(2, 2, 4, 2, 1, bias=bias)


def init_weights(module: nn.Module) -> None:
    """The reference initialisation: Xavier-uniform weights, U(0, 1) biases."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            if m.bias is not None:
                init.uniform_(m.bias)
            init.xavier_uniform_(m.weight)


def check_size(image: torch.Tensor) -> None:
    """``ValueError`` unless the image's height and width are multiples of :data:`SIZE_MULTIPLE`."""
    height, width = image.shape[-2:]
    if height % SIZE_MULTIPLE or width % SIZE_MULTIPLE:
        raise ValueError(f"FlowNet inputs must be multiples of {SIZE_MULTIPLE} px, got {height}x{width}")
