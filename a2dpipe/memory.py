"""The C allocator's tuning for jobs that free and remake large per-frame arrays (glibc only; a no-op elsewhere)."""

from __future__ import annotations

import functools
import logging

__all__ = ["fixed_mmap_threshold", "release_free_memory"]

log = logging.getLogger("a2dpipe")


def fixed_mmap_threshold(nbytes: int) -> None:
    """Have glibc serve every allocation of ``nbytes`` or more by its own mmap, returned to the system when freed.

    By default glibc raises that threshold as large blocks are freed, so per-frame tensors (whose sizes vary with
    the frame widths) come to live in the heap and fragment it: peak RSS then grows with the frames a job handles.
    Measured on A2D-shaped 320-px frames: predict (mask vote, RGB + flow) went from 1.3 GB at 31 test frames to
    2.3 GB at 178, and stays at 1.0 GB at 178 with it. The price is kernel time: every block above the threshold is
    faulted in afresh, so a job that frees and remakes large arrays every frame wants a higher ``nbytes`` and, if it
    runs long, :func:`release_free_memory` now and then (region-masks and predict use 32 MB). No-op (logged)
    without glibc.
    """
    mallopt = getattr(_glibc(), "mallopt", None)
    if mallopt is None or mallopt(-3, int(nbytes)) != 1:  # -3 = M_MMAP_THRESHOLD; mallopt returns 1 on success
        log.info(
            "could not fix the allocator's mmap threshold (not glibc): peak memory may grow with the frames")


def release_free_memory() -> None:
    """Return the free pages of glibc's heap to the system (``malloc_trim(0)``); no-op without glibc.

    Blocks under the mmap threshold are freed into the heap, where blocks of varying sizes leave holes that the
    process keeps: called once per batch, it keeps a long job's peak at its working set.
    """
    trim = getattr(_glibc(), "malloc_trim", None)
    if trim is not None:
        trim(0)


@functools.cache
def _glibc():
    """The C library as a ctypes handle, or None where it cannot be loaded."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name) if name else None
    except OSError:
        return None

