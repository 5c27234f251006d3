"""Middlebury ``.flo`` files and the end-point error.

Format (little-endian): float32 magic 202021.25, int32 width, int32 height, then height*width interleaved
float32 (u, v) pairs, row-major. Values above 1e9 (or non-finite) mark unknown flow.

>>> write_flo("a.flo", np.zeros((2, 3, 2), np.float32))      # doctest: +SKIP
>>> read_flo("a.flo").shape                                    # doctest: +SKIP
(2, 3, 2)
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from a2dpipe.errors import A2DError
from a2dpipe.io import atomic_path

__all__ = ["FLO_MAGIC", "UNKNOWN_FLOW", "read_flo", "write_flo", "valid_flow", "endpoint_error"]

FLO_MAGIC = 202021.25
UNKNOWN_FLOW = 1e9  # Middlebury convention: |u| or |v| above this means "no ground truth here"


def read_flo(path: str | os.PathLike) -> np.ndarray:
    """Read a ``.flo`` file into an (H, W, 2) float32 array of (u, v) in pixels."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise A2DError(f"{path}: flow file not found") from None
    if len(data) < 12:
        raise A2DError(f"{path}: too short to be a .flo file ({len(data)} bytes)")
    magic = np.frombuffer(data, "<f4", 1)[0]
    if magic != np.float32(FLO_MAGIC):
        raise A2DError(f"{path}: bad .flo magic {magic!r} (expected {FLO_MAGIC})")
    width, height = (int(x) for x in np.frombuffer(data, "<i4", 2, offset=4))
    expected = 12 + 8 * width * height
    if width <= 0 or height <= 0 or len(data) != expected:
        raise A2DError(f"{path}: header says {width}x{height} but the file holds {len(data)} bytes, not {expected}")
    return np.frombuffer(data, "<f4", offset=12).reshape(height, width, 2).astype(np.float32)


def write_flo(path: str | os.PathLike, flow: np.ndarray) -> None:
    """Write an (H, W, 2) flow field as a ``.flo`` file (atomically)."""
    flow = np.asarray(flow)
    if flow.ndim != 3 or flow.shape[2] != 2:
        raise A2DError(f"{path}: flow must have shape (H, W, 2), got {flow.shape}")
    height, width = flow.shape[:2]
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(np.array([FLO_MAGIC], "<f4").tobytes())
        f.write(np.array([width, height], "<i4").tobytes())
        f.write(np.ascontiguousarray(flow, "<f4").tobytes())


def valid_flow(flow: np.ndarray) -> np.ndarray:
    """(H, W) bool: pixels whose flow is known (finite and below the Middlebury unknown threshold)."""
    return np.isfinite(flow).all(-1) & (np.abs(flow) < UNKNOWN_FLOW).all(-1)


def endpoint_error(estimate: np.ndarray, truth: np.ndarray, valid: np.ndarray | None = None) -> float:
    """Mean Euclidean distance between estimated and true (u, v) over known pixels.

    ``estimate`` and ``truth`` are (H, W, 2); ``valid`` (H, W) bool defaults to the pixels where ``truth`` is known.
    """
    estimate, truth = np.asarray(estimate, np.float64), np.asarray(truth, np.float64)
    if estimate.shape != truth.shape or estimate.shape[-1] != 2:
        raise ValueError(f"estimate {estimate.shape} and truth {truth.shape} must both be (H, W, 2)")
    mask = valid_flow(truth) if valid is None else np.asarray(valid, bool) & valid_flow(truth)
    if not mask.any():
        raise ValueError("no pixel has known ground-truth flow")
    return float(np.linalg.norm(estimate[mask] - truth[mask], axis=-1).mean())
