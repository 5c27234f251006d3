"""Flow fields as RGB images, the input of the motion stream.

Two encodings (config ``flow.encoding``):

- ``wheel``: the Middlebury colour wheel (hue = direction, saturation = magnitude), drawn by
  ``torchvision.utils.flow_to_image``. Magnitudes are scaled by each frame's maximum unless ``wheel_max`` fixes
  the magnitude of full saturation, which keeps colours comparable across frames (longer flows are clipped).
- ``xym``: channels (u*16+128, v*16+128, |f|*16+128), rounded and clipped to 0..255, so one grey level is 1/16 px
  and flows up to 8 px are represented without clipping.

>>> flow_to_rgb(np.zeros((4, 5, 2), np.float32), "xym")[0, 0]     # doctest: +SKIP
array([128, 128, 128], dtype=uint8)
"""

from __future__ import annotations

import functools

import numpy as np

__all__ = ["ENCODINGS", "XYM_SCALE", "flow_to_rgb", "flow_to_xym", "flow_to_wheel", "wheel_images", "flow_images",
           "longest_vector"]

ENCODINGS = ("xym", "wheel")
XYM_SCALE = 16.0
XYM_OFFSET = 128.0


def flow_to_xym(flow: np.ndarray) -> np.ndarray:
    """(..., H, W, 2) flow in pixels -> (..., H, W, 3) uint8: u*16+128, v*16+128, |f|*16+128, clipped."""
    flow = np.asarray(flow, np.float32)
    u, v = flow[..., 0], flow[..., 1]
    magnitude = u * u
    magnitude += v * v
    np.sqrt(magnitude, out=magnitude)  # the 2-norm, rounded as np.linalg.norm rounds it
    image = np.empty(flow.shape[:-1] + (3,), np.uint8)
    for channel, plane in enumerate((u, v, magnitude)):  # plane by plane: ~5x faster than on interleaved arrays
        level = plane * np.float32(XYM_SCALE)
        level += np.float32(XYM_OFFSET)
        image[..., channel] = np.clip(np.rint(level, out=level), 0, 255, out=level)
    return image


def longest_vector(flow: np.ndarray) -> np.ndarray:
    """(2,) float32: the longest vector of a (H, W, 2) flow field (the wheel's per-frame scale)."""
    flow = np.asarray(flow, np.float32)
    squared = flow[..., 0] * flow[..., 0] + flow[..., 1] * flow[..., 1]  # planes, not an (N, 2) row sum: 8x faster
    return flow.reshape(-1, 2)[np.argmax(squared)].copy()


def flow_to_wheel(flow: np.ndarray, wheel_max: float | None = None) -> np.ndarray:
    """(H, W, 2) flow in pixels -> (H, W, 3) uint8 Middlebury colour-wheel image.

    ``wheel_max`` None: the frame's largest flow is fully saturated. A number: flows of that magnitude are fully
    saturated and longer ones are clipped to it, whatever the rest of the frame holds. Bit for bit the image of
    ``torchvision.utils.flow_to_image`` (with the clipped field and one pinning vector of length ``wheel_max``).
    """
    return wheel_images(flow, wheel_max)[0]


def wheel_images(flow: np.ndarray, wheel_max: float | None = None, *, mirror: bool = False) -> list[np.ndarray]:
    """``[image]``, or ``[image, mirror image]`` with ``mirror``, of one (H, W, 2) flow (see :func:`flow_to_wheel`).

    The mirror image is the image of the field with u negated, on the same scale (negating u keeps every
    magnitude): the flow cache's ``rgb_mirror``. Both share the magnitudes; only the hue differs. Same float32
    operations in the same order as torchvision's ``flow_to_image`` (the angle by ``torch.atan2``), so the bytes are
    its bytes, at ~1/4 of its time: the colour lookup is one gather of interleaved (H, W, 3) rows instead of
    six indexings, and nothing is permuted afterwards.
    """
    import torch

    u, v = (np.array(flow[..., c], np.float32) for c in range(2))  # contiguous planes
    if wheel_max is not None:  # clipped to wheel_max: scale = min(wheel_max / max(|f|, 1e-12), 1), rounded as
        scale = _norm(u, v)    # torch rounds it (a number over a tensor is the tensor's reciprocal times it)
        np.maximum(scale, np.float32(1e-12), out=scale)
        np.reciprocal(scale, out=scale)
        scale *= np.float32(wheel_max)
        np.minimum(scale, np.float32(1.0), out=scale)
        u *= scale
        v *= scale
    peak = _norm(u, v).max(initial=np.float32(0))
    if wheel_max is not None:  # the pinning vector (wheel_max, 0) counts towards the frame's maximum
        pin = np.float32(wheel_max)
        peak = max(peak, np.sqrt(pin * pin))
    denominator = np.float32(peak + np.finfo(np.float32).eps)
    u /= denominator
    v /= denominator
    norm = _norm(u, v)
    images = [_wheel_colours(torch.atan2(torch.from_numpy(-v), torch.from_numpy(-u)).numpy(), norm)]
    if mirror:  # u negated: the angle of (-u, v)
        images.append(_wheel_colours(torch.atan2(torch.from_numpy(-v), torch.from_numpy(u)).numpy(), norm))
    return images


def _norm(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """sqrt(u * u + v * v) in float32, rounded as torch's ``sum(flow.pow(2), dim).sqrt()`` rounds it (torch's
    vectorised square root differs from numpy's in the last bit of ~1 value in 6)."""
    import torch

    out = u * u
    out += v * v
    torch.from_numpy(out).sqrt_()
    return out


@functools.cache
def _colour_table() -> np.ndarray:
    """(56, 3) float32: torchvision's 55-colour Middlebury wheel / 255, its first colour repeated at the end (the
    wheel wraps: k0 + 1 of the last colour is the first)."""
    from torchvision.utils import _make_colorwheel

    table = (_make_colorwheel() / 255.0).numpy().astype(np.float32)
    return np.concatenate([table, table[:1]])


def _wheel_colours(angle: np.ndarray, norm: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 of angles ``atan2(-v, -u)`` and normalised magnitudes, as torchvision computes them, one
    contiguous colour plane at a time (arithmetic on interleaved (H, W, 3) arrays is several times slower)."""
    table = _colour_table()
    fk = angle / np.float32(np.pi)
    fk += np.float32(1)
    fk /= np.float32(2)
    fk *= np.float32(len(table) - 2)  # (num_cols - 1), num_cols = 55
    k0 = np.floor(fk)
    f = fk - k0
    rest = np.float32(1) - f
    k0 = k0.astype(np.intp)
    k1 = k0 + 1
    image = np.empty(angle.shape + (3,), np.uint8)
    for c in range(3):
        column = np.ascontiguousarray(table[:, c])
        col = np.take(column, k0)
        col *= rest
        col += f * np.take(column, k1)
        np.subtract(np.float32(1), col, out=col)
        col *= norm
        np.subtract(np.float32(1), col, out=col)
        col *= np.float32(255)
        image[..., c] = np.floor(col, out=col)
    return image


def flow_images(flow: np.ndarray, encoding: str, wheel_max: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(image, mirror image) of one (H, W, 2) flow: :func:`flow_to_rgb` of the flow and of the flow with u negated
    (on the same scale), computed together -- what the flow cache stores as ``rgb`` and ``rgb_mirror``.

    Equal to two :func:`flow_to_rgb` calls bit for bit; for xym the mirror differs from the image in its u channel
    only, for the wheel only in the hue, so the shared parts are computed once.
    """
    flow = np.asarray(flow, np.float32)
    if flow.ndim != 3 or flow.shape[-1] != 2:
        raise ValueError(f"flow must be (H, W, 2), got {flow.shape}")
    if encoding == "wheel":
        if wheel_max is not None and wheel_max <= 0:
            raise ValueError(f"wheel_max must be positive, got {wheel_max}")
        image, mirror = wheel_images(flow, wheel_max, mirror=True)
        return image, mirror
    image = flow_to_rgb(flow, encoding, wheel_max)
    mirror = image.copy()
    level = flow[..., 0] * np.float32(-XYM_SCALE)  # the u channel of (-u, v), rounded as flow_to_xym rounds it
    level += np.float32(XYM_OFFSET)
    mirror[..., 0] = np.clip(np.rint(level, out=level), 0, 255, out=level)
    return image, mirror


def flow_to_rgb(flow: np.ndarray, encoding: str, wheel_max: float | None = None) -> np.ndarray:
    """Encode one (H, W, 2) flow or a batch (B, H, W, 2) as uint8 RGB of the same leading shape plus 3 channels.

    Batched wheel images are normalised per frame, never across the batch.
    """
    flow = np.asarray(flow, np.float32)
    if flow.shape[-1] != 2 or flow.ndim not in (3, 4):
        raise ValueError(f"flow must be (H, W, 2) or (B, H, W, 2), got {flow.shape}")
    if encoding == "xym":
        return flow_to_xym(flow)
    if encoding == "wheel":
        if wheel_max is not None and wheel_max <= 0:
            raise ValueError(f"wheel_max must be positive, got {wheel_max}")
        if flow.ndim == 3:
            return flow_to_wheel(flow, wheel_max)
        return np.stack([flow_to_wheel(f, wheel_max) for f in flow])
    raise ValueError(f"unknown flow encoding {encoding!r}; expected one of {ENCODINGS}")
