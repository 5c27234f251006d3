"""Shared plumbing of every stage: atomic outputs, HDF5 input, logging, device choice.

Every artifact is written under a temporary name beside its final path and renamed only when complete, so a
killed or failed job never leaves a file that looks finished.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import glob
import logging
import os
import platform
import re
import secrets
import shutil
import socket
import sys
from pathlib import Path

__all__ = ["A2DError", "atomic_path", "open_hdf5", "unreadable_artifact", "reading_artifact", "setup_logging",
           "select_device", "describe_device", "artifact_error", "rebuild_hint", "write_failure", "check_room"]

log = logging.getLogger("a2dpipe")


class A2DError(RuntimeError):
    """A problem with the user's data or configuration; the message names the file or key and what is wrong."""


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds.

    Works for files and directories. On any exception the temporary is removed and the final path is untouched.
    Each writer gets its own temporary, ``.<name>.tmp-<host>-<pid>-<random>``, so two writers of one output (two
    commands started by hand) never share one; the last to finish wins. Temporaries of ``path`` whose writer is
    gone (same host, process no longer running) are removed first; a live writer's, or one from another host
    (where liveness cannot be checked), is left alone.

    >>> with atomic_path("out.h5") as tmp:      # doctest: +SKIP
    ...     write_everything(tmp)
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temporaries(final)
    tmp = final.with_name(f".{final.name}.tmp-{_writer_token()}")
    try:
        yield tmp
    except BaseException as err:
        failure = write_failure(final, tmp, err) if isinstance(err, Exception) else None
        _remove(tmp)
        if failure is not None:
            raise failure from None
        raise
    if not tmp.exists():
        raise A2DError(f"{final}: the writer produced no output")
    _replace(tmp, final)


# Room an HDF5 writer keeps free below the file-size limit and on the disk (see check_room).
MIN_ROOM = 8 << 20


def _fsize_limit() -> int | None:
    """The soft file-size limit of this process (``ulimit -f``) in bytes; None when unlimited."""
    import resource

    limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    return None if limit == resource.RLIM_INFINITY else int(limit)


def _free_bytes(path: Path) -> int:
    stats = os.statvfs(path.parent)
    return stats.f_bavail * stats.f_frsize


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def write_failure(final: str | os.PathLike, tmp: str | os.PathLike, err: BaseException) -> A2DError | None:
    """The error for a write of ``final`` (through its temporary ``tmp``) that failed for want of room, or None.

    A full disk or quota (ENOSPC, EDQUOT) and the file-size limit (EFBIG, ``ulimit -f``) are told by the errno
    where the library keeps it, else by the state they leave (no room left on the device, the temporary at the
    limit): torch and HDF5 report them as bare RuntimeErrors ("basic_ios::clear: iostream error").
    """
    final, tmp = Path(final), Path(tmp)
    code = getattr(err, "errno", None)
    text = str(err)
    limit = _fsize_limit()
    if code == errno.EFBIG or "File too large" in text or (limit is not None and _size(tmp) >= limit):
        shown = f"{limit} bytes" if limit is not None else "a limit"
        return A2DError(f"{final}: cannot be written: the file-size limit (ulimit -f, {shown}) leaves no room for "
                        f"it; nothing was left at that path; fix: raise the limit (ulimit -f unlimited) and run "
                        f"snakemake again")
    try:
        full = code in (errno.ENOSPC, errno.EDQUOT) or "No space left" in text or _free_bytes(final) < (1 << 20)
    except OSError:
        full = False
    if full:
        return A2DError(f"{final}: cannot be written: no space left on the device (or the disk quota is used up); "
                        f"nothing was left at that path; fix: free space there (or point config `results` to a "
                        f"larger disk) and run snakemake again")
    return None


def check_room(final: str | os.PathLike, tmp: str | os.PathLike, need: int) -> None:
    """A2DError (:func:`write_failure`) unless ``need`` more bytes (plus :data:`MIN_ROOM`) fit in ``tmp``.

    HDF5 cannot fail a write cleanly: its chunk cache writes when a dataset is released, where h5py can only print
    the error, and the file then closes on a damaged state (a segfault under ``ulimit -f``). So the HDF5 writers
    ask first, once per frame, whether the next frame still fits under the file-size limit and on the disk.
    """
    tmp = Path(tmp)
    need = int(need) + MIN_ROOM
    limit = _fsize_limit()
    if limit is not None and _size(tmp) + need > limit:
        raise write_failure(final, tmp, OSError(errno.EFBIG, "File too large"))
    if _free_bytes(Path(final)) < need:
        raise write_failure(final, tmp, OSError(errno.ENOSPC, "No space left on device"))


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9.]", "_", socket.gethostname()) or "host"


def _writer_token() -> str:
    """``<host>-<pid>-<random>``: unique per writer, even for several writers in one process."""
    return f"{_host()}-{os.getpid()}-{secrets.token_hex(4)}"


def _writer_is_gone(token: str) -> bool:
    """Whether the writer named by a temporary's token has certainly stopped (only decidable on this host).

    Tokens are ``<host>-<pid>-<random>``; any other is not a temporary :func:`atomic_path` wrote: not ours to judge.
    """
    parts = token.rsplit("-", 2)
    if len(parts) != 3 or not parts[1].isdigit():
        return False
    host, pid = parts[0], int(parts[1])
    if host != _host():
        return False
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, owned by another user
        return False
    return False


def _remove_stale_temporaries(final: Path) -> None:
    prefix = f".{final.name}.tmp-"
    for temporary in final.parent.glob(f"{glob.escape(prefix)}*"):
        token = temporary.name[len(prefix):]
        if _writer_is_gone(token):
            log.info("%s: removing the temporary of a writer that is gone", temporary)
            _remove(temporary)
        else:
            log.info("%s: another writer's temporary (still running, or on another host); left alone", temporary)


def _replace(tmp: Path, final: Path) -> None:
    """Move ``tmp`` onto ``final``: one atomic rename for a file; for a directory the old one is first renamed
    aside (a rename cannot replace a non-empty directory), then removed."""
    if not (final.is_dir() and not final.is_symlink()):
        os.replace(tmp, final)
        return
    aside = final.with_name(f".{final.name}.tmp-{_writer_token()}")  # named as a temporary: a kill leaves no junk
    os.replace(final, aside)
    os.replace(tmp, final)
    _remove(aside)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


# The rule that writes each intermediate artifact (by the name readers give it), so that the error for an
# unreadable one can say how to rebuild it.
REBUILT_BY = {
    "index": "index",
    "frames shard": "extract_frames",
    "frames store": "extract_frames",
    "flow cache": "flow",
    "region-mask cache": "region_masks",
    "predictions file": "predict",
    "evaluation": "evaluate",
    "per-video confusion matrices": "evaluate",
    "mask model": "train_mask_model",
    "stage-1 model": "train_stage1",
    "stage-2 model": "train_stage2",
}


def rebuild_hint(what: str) -> str:
    """How to rebuild an artifact called ``what`` (a key of :data:`REBUILT_BY`): the sentence every message ends
    with, ``rebuild it with `snakemake --forcerun <rule>`, or delete it and run snakemake again``."""
    rule = REBUILT_BY.get(what)
    if rule is None:
        return "rebuild it: delete it and run snakemake again"
    return f"rebuild it with `snakemake --forcerun {rule}`, or delete it and run snakemake again"


def artifact_error(path: str | os.PathLike, problem: str, fix: str) -> A2DError:
    """The one error format: ``<file>: <what is wrong>; <the command or config key that fixes it>``."""
    return A2DError(f"{path}: {problem}; {fix}")


def unreadable_artifact(path: str | os.PathLike, what: str, problem: str) -> A2DError:
    """The error for an artifact that exists but cannot be read (truncated, bit-flipped, hand-edited).

    Names the file, the problem and how to rebuild it (:func:`rebuild_hint`). Nothing is deleted here: the file
    may be the only copy of something the user wants to inspect.
    """
    return artifact_error(path, f"{problem}; the {what} is damaged or incomplete", rebuild_hint(what))


def open_hdf5(path: str | os.PathLike, what: str):
    """Open ``path`` read-only as an ``h5py.File``; :class:`A2DError` naming the file when it cannot be.

    ``what`` names the artifact expected there (``"frames shard"``, ``"flow cache"`` ...) for the messages
    ``<path>: <what> not found`` and ``<path>: not a readable HDF5 file (...): ...`` followed by how to rebuild
    it (:func:`unreadable_artifact`).
    """
    import h5py  # here, so that importing a2dpipe.io stays light

    try:
        return h5py.File(path, "r")
    except FileNotFoundError:
        raise A2DError(f"{path}: {what} not found") from None
    except OSError as err:
        problem = f"not a readable HDF5 file (truncated or another format?): {err}"
        raise unreadable_artifact(path, what, problem) from None


@contextlib.contextmanager
def reading_artifact(path: str | os.PathLike, what: str, item: str):
    """Turn an HDF5 failure while reading ``item`` of ``path`` into :class:`A2DError` naming the file and its rebuild.

    HDF5 reports a flipped bit or a cut-off chunk as a bare ``OSError`` (failed filter or checksum), ``KeyError``
    (damaged object header) or ``RuntimeError`` (damaged link table), none of which names the file.

    >>> with reading_artifact("results/frames/shard-000.h5", "frames shard", "frame v/00001"):  # doctest: +SKIP
    ...     rgb = group["rgb"][()]
    """
    try:
        yield
    except A2DError:
        raise
    except (OSError, KeyError, ValueError, RuntimeError) as err:
        raise unreadable_artifact(path, what, f"cannot read {item}: {err}") from None


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


def setup_logging(log_file: str | os.PathLike | None = None, level: int = logging.INFO) -> logging.Logger:
    """Log to stderr and, when given, to ``log_file`` (the rule's ``log:``)."""
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_file:
        Path(log_file).parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_file, mode="w"))
    logging.basicConfig(level=level, format="%(asctime)s %(name)s %(levelname)s %(message)s", handlers=handlers, force=True)
    return log


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

