"""Device choice: where a torch job runs (:func:`select_device`) and how a measurement names it
(:func:`describe_device`). Light to import: torch is imported only when a device is chosen or named.
"""

from __future__ import annotations

import logging
import platform
from pathlib import Path

from a2dpipe.errors import A2DError

__all__ = ["select_device", "describe_device"]

log = logging.getLogger("a2dpipe")


def describe_device(device=None) -> str:
    """Where a measurement ran, for timing tables: ``"CUDA <name>"`` for a CUDA ``device``, else ``"CPU <model>"``.
    ``None`` names the CPU without importing torch (its import costs seconds)."""
    if device is not None and device.type == "cuda":
        import torch

        return f"CUDA {torch.cuda.get_device_name(device)}"
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"CPU {line.split(':', 1)[1].strip()}"
    except OSError:
        pass
    return f"CPU {cpu}"


def select_device(requested: str = "auto"):
    """``'auto'`` picks CUDA when present, else CPU, and says so once in the log. ``auto`` and ``cuda`` on a machine
    with several GPUs take one that no other job holds (:func:`a2dpipe.accelerator.claim_gpu`).

    Every torch stage starts here, so this also flushes denormal floats to zero on the CPU. A trained network is
    confident: 5-10 % of a stage-1 batch's class probabilities fall below float32's normal range (1.2e-38), and the
    loss gradients through them stay there, at ~100 cycles per operation: a stage-1 step on one thread took twice as
    long. Values that small move no float32 weight. The setting is the calling thread's; torch's worker threads keep
    denormals, which cost nothing measurable: with 2 threads, setting theirs too left a stage-1 step as it was.
    """
    import torch

    torch.set_flush_denormal(True)
    if requested == "auto" and not torch.cuda.is_available():
        log.info("no CUDA device found: running on the CPU")
        return torch.device("cpu")
    device = torch.device("cuda" if requested == "auto" else requested)
    if device.type != "cuda":
        return device
    if not torch.cuda.is_available():
        raise A2DError(f"config asks for device {requested!r} but CUDA is not available")
    from a2dpipe.accelerator import claim_gpu, configure_cuda

    if device.index is None:  # `auto`, `cuda`: a GPU no other job of this machine runs on (a2dpipe.accelerator)
        device = torch.device("cuda", claim_gpu())
    configure_cuda(device)
    return device

