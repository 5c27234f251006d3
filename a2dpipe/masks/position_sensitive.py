"""Position-sensitive inside/outside score maps of FCIS: their channel layout, the assembling of each RoI's
maps from its k x k grid of channels (used by :mod:`a2dpipe.masks.fcis`).

Channel layout (the one of R-FCN and torchvision's ``ps_roi_align``, with a leading inside/outside axis): channel

    ((part * (C + 1) + c) * k + i) * k + j        part 0 = inside, 1 = outside; class c; grid row i, column j

and ``box_maps`` channel ``(d * k + i) * k + j`` for delta d in (dx, dy, dw, dh).

Assembling. Each RoI is cut into a k x k grid and resampled at M x M cells (``roi_size``, 21 in FCIS, at least k);
output cell (r, s) lies in grid bin (i, j) = (r * k // M, s * k // M) and is read, by aligned bilinear sampling
(as ``roi_align``), from that bin's channel only. Worked example, k = 3, C + 1 = 3 classes (54 channels), M = 6:
output cell (r, s) = (1, 5) of the *outside* map of class 2 lies in bin (1 * 3 // 6, 5 * 3 // 6) = (0, 2), so it
is read from channel ((1 * 3 + 2) * 3 + 0) * 3 + 2 = 47; cell (4, 0) of the inside map of class 1 reads bin
(2, 0), channel ((0 * 3 + 1) * 3 + 2) * 3 + 0 = 15. The result is (R, 2, C + 1, M, M). Implemented as one
vectorised gather of every sample's bilinear taps (torchvision's aligned ``roi_align`` rule, one point per cell by
default: a cell is under a feature pixel wide); :func:`assemble_naive`, a per-RoI, per-bin loop of ``roi_align``
crops, is the reference it is tested against.

:func:`psroi_pool` assembles the same channels the official FCIS's way (its ``PSROIPooling`` operator): the RoI's
corners rounded to pixels (the end inclusive), each of the M x M cells the mean of the feature pixels its
rectangle touches (0 when it touches none), rather than a bilinear sample.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torchvision.ops import roi_align

__all__ = ["assemble", "assemble_naive", "psroi_pool"]


def assemble(score_maps: torch.Tensor, rois: torch.Tensor, k: int, roi_size: int, spatial_scale: float,
             sampling_ratio: int = 1) -> torch.Tensor:
    """Assemble each RoI's inside/outside maps: (B, 2 (C+1) k^2, h, w), rois (R, 5) -> (R, 2, C+1, M, M).

    Exactly torchvision's aligned ``roi_align`` sampling (``sampling_ratio``^2 bilinear points per cell, averaged),
    each cell reading its bin's channel: a vectorised gather of the four bilinear taps of every point, equal to
    :func:`assemble_naive` bit for bit. Alternatives measured on one CPU thread (k = 7, M = 14, 16 maps): one
    ``ps_roi_align`` over channels gathered per cell is 4 times slower (cache-bound); one ``roi_align`` over k^2
    sub-RoIs per RoI is 2.5 times faster forward but 1.6 times slower forward + backward at training size, and
    equal to the loop only to rounding.
    """
    batch, channels, height, width = score_maps.shape
    groups, points = channels // (k * k), roi_size * sampling_ratio
    ys = _sample_points(rois[:, 2], rois[:, 4], spatial_scale, roi_size, sampling_ratio)  # (R, points)
    xs = _sample_points(rois[:, 1], rois[:, 3], spatial_scale, roi_size, sampling_ratio)
    grid_bin = torch.arange(points, device=rois.device) // sampling_ratio * k // roi_size
    # channels last, groups innermost: the taps of one point in every group lie within one pixel's channels
    channel = (torch.arange(groups, device=rois.device) * k + grid_bin[:, None, None]) * k + grid_bin[:, None]
    image = rois[:, 0].long()[:, None, None, None] * height  # (R, 1, 1, 1)
    flat = score_maps.permute(0, 2, 3, 1).reshape(-1)
    out = 0
    for y, wy in _bilinear_taps(ys, height):
        row = (image + y[:, :, None, None]) * width
        for x, wx in _bilinear_taps(xs, width):
            index = (row + x[:, None, :, None]) * channels + channel  # (R, points, points, G)
            taps = flat.gather(0, index.reshape(-1)).reshape(index.shape)  # gather: its backward is a fast scatter
            out = out + taps * (wy[:, :, None, None] * wx[:, None, :, None])
    out = out.permute(0, 3, 1, 2)
    if sampling_ratio > 1:
        out = F.avg_pool2d(out, sampling_ratio)
    return out.reshape(len(rois), 2, groups // 2, roi_size, roi_size)


def _sample_points(start: torch.Tensor, end: torch.Tensor, scale: float, cells: int, ratio: int) -> torch.Tensor:
    """Sample coordinates (R, cells * ratio) along one axis, as aligned ``roi_align`` places them."""
    origin = start * scale - 0.5
    step = (end * scale - 0.5 - origin) / cells
    cell = torch.arange(cells, dtype=start.dtype, device=start.device).repeat_interleave(ratio)
    offset = (torch.arange(ratio, dtype=start.dtype, device=start.device) + 0.5).repeat(cells)
    return origin[:, None] + cell * step[:, None] + offset * step[:, None] / ratio


def _bilinear_taps(coords: torch.Tensor, size: int):
    """The two taps (index, weight) of each coordinate on an axis of ``size`` pixels, ``roi_align``'s border rule:
    beyond one pixel outside the map weighs nothing, else clamped to the map."""
    valid = (coords >= -1.0) & (coords <= size)
    coords = coords.clamp(min=0)
    low = coords.long()
    last = low >= size - 1
    low = low.clamp(max=size - 1)
    coords = torch.where(last, low.to(coords.dtype), coords)
    high = torch.where(last, low, low + 1)
    frac = coords - low
    return (low, (1 - frac) * valid), (high, frac * valid)


def psroi_pool(score_maps: torch.Tensor, rois: torch.Tensor, k: int, roi_size: int, spatial_scale: float,
               chunk: int = 64) -> torch.Tensor:
    """The official FCIS's ``PSROIPooling`` (msracver/FCIS ``psroi_pooling.cu``) on the channel layout above:
    (B, 2 (C+1) k^2, h, w), rois (R, 5) with ends one past the box -> (R, 2, C+1, M, M), cell means read from a
    summed-area table (float64, so that a mean equals the kernel's sum to float32 rounding), the cells' pixels
    found in the RoIs' type (float32 at least) as the operator finds them in its own. ``chunk`` RoIs at a time
    bound memory.
    """
    batch, channels, height, width = score_maps.shape
    groups = channels // (k * k)
    table = F.pad(score_maps.double().cumsum(2).cumsum(3), (1, 0, 1, 0))  # (B, C, h + 1, w + 1)
    flat = table.permute(0, 2, 3, 1).reshape(-1)
    cells = torch.arange(roi_size, device=rois.device)
    grid_bin = (cells * k // roi_size).clamp(max=k - 1)
    channel = (torch.arange(groups, device=rois.device) * k + grid_bin[:, None, None]) * k + grid_bin[:, None]
    outs = []
    for part in rois.split(chunk):
        r = part.to(torch.promote_types(part.dtype, torch.float32))  # the operator's DType, float32 at least
        y0, y1 = _psroi_bins(r[:, 2], r[:, 4], spatial_scale, roi_size, height)  # (R, M) each
        x0, x1 = _psroi_bins(r[:, 1], r[:, 3], spatial_scale, roi_size, width)
        image = part[:, 0].long()[:, None, None, None] * (height + 1)

        def corner(y, x):
            index = ((image + y[:, :, None, None]) * (width + 1) + x[:, None, :, None]) * channels + channel
            return flat.gather(0, index.reshape(-1)).reshape(index.shape)  # (R, M, M, G)

        total = corner(y1, x1) - corner(y0, x1) - corner(y1, x0) + corner(y0, x0)
        area = ((y1 - y0)[:, :, None] * (x1 - x0)[:, None, :]).to(total.dtype)[..., None]
        outs.append(torch.where(area > 0, total / area.clamp(min=1), total.new_zeros(())).permute(0, 3, 1, 2))
    out = torch.cat(outs) if outs else score_maps.new_zeros(0, groups, roi_size, roi_size)
    return out.to(score_maps.dtype).reshape(len(rois), 2, groups // 2, roi_size, roi_size)


def _psroi_bins(start: torch.Tensor, end: torch.Tensor, scale: float, cells: int, size: int):
    """First and one-past-last feature pixel of each cell along one axis, (R, cells) each, as ``PSROIPooling``
    computes them in its data type, float32 or float64 here as ``start`` (C's ``round``: halves away from zero; an
    empty cell has end <= start). ``end`` is one past the box (the official kernel's inclusive end, rounded, + 1)."""
    begin = torch.floor(start + 0.5) * scale
    extent = (torch.floor(end + 0.5) * scale - begin).clamp(min=0.1)
    step = extent / cells
    index = torch.arange(cells, dtype=start.dtype, device=start.device)
    low = torch.floor(index * step[:, None] + begin[:, None]).long().clamp(0, size)
    high = torch.ceil((index + 1) * step[:, None] + begin[:, None]).long().clamp(0, size)
    return low, torch.maximum(high, low)


def assemble_naive(score_maps: torch.Tensor, rois: torch.Tensor, k: int, roi_size: int, spatial_scale: float,
                   sampling_ratio: int = 1) -> torch.Tensor:
    """Reference for :func:`assemble`: for every RoI and every grid bin, crop that bin's channel of every
    (part, class) map with ``roi_align`` and copy the bin's cells. Slow; for tests."""
    groups = score_maps.shape[1] // (k * k)
    out = score_maps.new_zeros(len(rois), groups, roi_size, roi_size)
    rows = [[r for r in range(roi_size) if r * k // roi_size == i] for i in range(k)]
    for n in range(len(rois)):
        for i in range(k):
            for j in range(k):
                channels = [(g * k + i) * k + j for g in range(groups)]
                crop = roi_align(score_maps[:, channels], rois[n:n + 1], roi_size, spatial_scale, sampling_ratio,
                                 aligned=True)
                r0, r1, c0, c1 = rows[i][0], rows[i][-1] + 1, rows[j][0], rows[j][-1] + 1
                out[n, :, r0:r1, c0:c1] = crop[0, :, r0:r1, c0:c1]
    return out.reshape(len(rois), 2, -1, roi_size, roi_size)
