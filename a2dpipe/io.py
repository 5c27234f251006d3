"""Atomic outputs: every artifact is written under a temporary name beside its final path and renamed only when complete, so a
killed or failed job never leaves a file that looks finished.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import logging
import os
import re
import secrets
import shutil
import socket
from pathlib import Path

from a2dpipe.errors import A2DError

__all__ = ["atomic_path", "write_failure", "check_room", "MIN_ROOM"]

log = logging.getLogger("a2dpipe")


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


