"""Which GPU a job runs on, and in which precision.

Device per job: Snakemake runs as many GPU jobs at once as ``--resources gpu=N`` allows, and each would take GPU 0
(``cuda``). On a machine with several GPUs visible, a job therefore claims one: it takes an exclusive ``flock`` on
a lock file named after the GPU (its UUID, so jobs that see the GPUs in another order agree) and keeps it until it
exits, when the system releases it, also after a crash or a kill. A job takes the first GPU no other job holds.
With ``--resources gpu=N`` at most the machine's N GPUs, every job finds a free one; a job that finds none (more
GPU jobs than GPUs) shares the GPU its process id picks and says so. Under SLURM each job sees only the GPU it was
given (``CUDA_VISIBLE_DEVICES``), so there is nothing to claim. Lock files lie in ``$A2DPIPE_GPU_LOCKS`` or in
``<tmp>/a2dpipe-gpu-locks``, shared by every user of the machine.

Precision (config ``segmentation.amp``): autocast in bfloat16 on GPUs of compute capability 8.0 or later (Ampere,
Hopper: bf16 tensor cores, float32's range, no loss scaling); in float16 with a ``GradScaler`` on 7.x (Volta, Turing:
fp16 tensor cores only, and float16's range needs the loss scaled); float32 below (no tensor cores to gain from) and
on the CPU. ``cudnn.benchmark`` is on for CUDA: the crops of a training run have one size and A2D's frames a few,
so each convolution's fastest algorithm is searched once per size.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import tempfile
from pathlib import Path

import torch

__all__ = ["claim_gpu", "configure_cuda", "autocast_dtype", "autocast", "lock_folder"]

log = logging.getLogger(__name__)

# lock files held by this process: kept open (and so locked) until it exits
_HELD: list = []


def lock_folder() -> Path:
    """Where the GPU lock files lie (module docstring); made, writable by every user, when missing."""
    folder = Path(os.environ.get("A2DPIPE_GPU_LOCKS") or Path(tempfile.gettempdir(), "a2dpipe-gpu-locks"))
    if not folder.is_dir():
        folder.mkdir(parents=True, exist_ok=True)
        try:
            folder.chmod(0o1777)  # another user's jobs claim GPUs here too; the sticky bit keeps files their owner's
        except OSError:
            pass
    return folder


def _gpu_keys(count: int) -> list[str]:
    """A name per visible GPU that every process agrees on: its UUID where torch reports one, else its index."""
    keys = []
    for index in range(count):
        uuid = getattr(torch.cuda.get_device_properties(index), "uuid", None)
        keys.append(f"gpu-{uuid}" if uuid is not None else f"gpu-index-{index}")
    return keys


def _try_lock(path: Path):
    """The open, exclusively locked file at ``path``; None when another process holds it."""
    handle = open(path, "a+")
    try:
        os.chmod(path, 0o666)
    except OSError:
        pass
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        handle.close()
        if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return None
        raise
    return handle


def claim_gpu(count: int | None = None, folder: Path | None = None) -> int:
    """Index of the visible GPU this process runs on: the first no other process holds (module docstring)."""
    count = torch.cuda.device_count() if count is None else count
    if count <= 1:
        return 0
    folder = lock_folder() if folder is None else folder
    for index, key in enumerate(_gpu_keys(count)):
        handle = _try_lock(folder / f"{key}.lock")
        if handle is not None:
            _HELD.append(handle)
            log.info("running on GPU %d of %d (no other job holds it; lock %s)", index, count, handle.name)
            return index
    index = os.getpid() % count
    log.warning("all %d GPUs are held by other jobs: sharing GPU %d (run at most %d GPU jobs at once: "
                "--resources gpu=%d)", count, index, count, count)
    return index


def configure_cuda(device: torch.device) -> None:
    """Make ``device`` the current GPU, and let cuDNN pick each convolution's fastest algorithm per input size."""
    torch.cuda.set_device(device)
    torch.backends.cudnn.benchmark = True


def autocast_dtype(device: torch.device, amp: bool) -> torch.dtype | None:
    """Autocast precision on ``device`` under config ``amp`` (module docstring); None: float32, no autocast."""
    if not amp or device.type != "cuda":
        return None
    major, minor = torch.cuda.get_device_capability(device)
    if (major, minor) >= (8, 0):
        return torch.bfloat16
    if major >= 7:
        return torch.float16
    return None


def autocast(device_type: str, dtype: torch.dtype | None):
    """``torch.autocast`` to ``dtype`` on ``device_type``; disabled (float32) when ``dtype`` is None (or False)."""
    enabled = isinstance(dtype, torch.dtype)
    return torch.autocast(device_type, dtype=dtype if enabled else torch.bfloat16, enabled=enabled)
