"""Region masks quantised and cropped where the model made them: the torch twin of
:meth:`~a2dpipe.masks.cropped.CroppedMasks.from_regions`, equal to it byte for byte.

A mask model pastes every region's soft mask into the whole frame: 50 regions of a 320 x 568 frame are 36 MB of
float32. On a GPU, :func:`cropped_on_device` quantises them there (``rint(clip(mask, 0, 1) * 255)``, in float32 as
numpy does: one multiplication, rounded half to even), finds each mask's rectangle (the smallest holding its
non-zero levels) from the row and column maxima of the levels, and gathers the rectangles' levels into one flat
uint8 array; only that array (about 0.8 MB a frame) and the rectangles come to the host. The cache writer then
has only the checksums and HDF5 left to do.
"""

from __future__ import annotations

import torch

from a2dpipe.masks.cropped import CroppedMasks

__all__ = ["cropped_on_device", "quantised_levels", "level_extents"]

_QUANT = 255.0


def quantised_levels(masks: torch.Tensor) -> torch.Tensor:
    """(N, H, W) uint8 ``rint(clip(mask, 0, 1) * 255)`` of soft masks, on their device (float32 arithmetic)."""
    scaled = masks.to(torch.float32) * _QUANT  # 255 is exact in float32: the product is rounded once, as numpy's
    return scaled.clamp_(0.0, _QUANT).round_().to(torch.uint8)  # round: half to even, as np.rint


def _first_and_end(flags: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Along the last axis of boolean ``flags``: the first set index and one past the last (size and 0 if none)."""
    size = flags.shape[-1]
    index = torch.arange(size, device=flags.device)
    first = torch.where(flags, index, size).amin(dim=-1)
    end = torch.where(flags, index + 1, 0).amax(dim=-1)
    return first, end


def level_extents(levels: torch.Tensor) -> torch.Tensor:
    """(N, 4) int64 top, left, height, width of the smallest rectangle holding each mask's non-zero levels (all 0
    for a mask with none), on the levels' device."""
    top, bottom = _first_and_end(levels.amax(dim=2) > 0)
    left, right = _first_and_end(levels.amax(dim=1) > 0)
    present = (bottom > top).to(torch.int64)[:, None]
    return torch.stack([top, left, bottom - top, right - left], dim=1).clamp_(min=0) * present


def _gather(levels: torch.Tensor, extents: torch.Tensor, total: int) -> torch.Tensor:
    """The rectangles' levels one after the other, each row by row (flat uint8, ``total`` pixels), by one gather:
    each output pixel's region, row and column come from its position and the regions' running areas."""
    n, height, width = levels.shape
    device = levels.device
    areas = extents[:, 2] * extents[:, 3]
    starts = torch.cumsum(areas, 0) - areas
    region = torch.repeat_interleave(torch.arange(n, device=device), areas, output_size=total)
    local = torch.arange(total, device=device) - starts[region]
    w = extents[region, 3]
    row = torch.div(local, w, rounding_mode="floor")
    flat = (region * height + extents[region, 0] + row) * width + extents[region, 1] + (local - row * w)
    return levels.reshape(-1)[flat]


def cropped_on_device(boxes: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor,
                      masks: torch.Tensor) -> CroppedMasks:
    """:class:`CroppedMasks` of regions whose (N, H, W) soft ``masks`` lie on a device: quantised, their rectangles
    found and gathered there; the boxes, scores, labels, rectangles and levels come to the host as numpy arrays."""
    n, height, width = masks.shape
    levels = quantised_levels(masks)
    extents = level_extents(levels)
    host_extents = extents.cpu().numpy()
    total = int((host_extents[:, 2] * host_extents[:, 3]).sum())
    data = _gather(levels, extents, total) if total else levels.new_zeros(0)
    return CroppedMasks(boxes.detach().cpu().numpy().astype("float32").reshape(-1, 4),
                        scores.detach().cpu().numpy().astype("float32").reshape(-1),
                        labels.detach().cpu().numpy().astype("int64").reshape(-1),
                        host_extents, data.cpu().numpy(), (height, width))
