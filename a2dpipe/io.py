"""Shared plumbing of every stage: atomic outputs, HDF5 input, logging, config access, device choice.

Every artifact is written under a temporary name beside its final path and renamed only when complete, so a
killed or failed job never leaves a file that looks finished.
"""

from __future__ import annotations

import contextlib
import glob
import logging
import os
import shutil
import sys
from pathlib import Path

import yaml

__all__ = ["A2DError", "atomic_path", "open_hdf5", "setup_logging", "load_config", "select_device"]

log = logging.getLogger("a2dpipe")


class A2DError(RuntimeError):
    """A problem with the user's data or configuration; the message names the file or key and what is wrong."""


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds.

    Works for files and directories. On any exception the temporary is removed and the final path is untouched;
    temporaries of ``path`` left by a killed writer are removed first (Snakemake runs one writer per output).

    >>> with atomic_path("out.h5") as tmp:      # doctest: +SKIP
    ...     write_everything(tmp)
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    for stale in final.parent.glob(f".{glob.escape(final.name)}.tmp-*"):  # left by a writer that was killed
        _remove(stale)
    tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
    try:
        yield tmp
    except BaseException:
        _remove(tmp)
        raise
    if not tmp.exists():
        raise A2DError(f"{final}: the writer produced no output")
    _remove(final)
    os.replace(tmp, final)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def open_hdf5(path: str | os.PathLike, what: str):
    """Open ``path`` read-only as an ``h5py.File``; :class:`A2DError` naming the file when it cannot be.

    ``what`` names the artifact expected there (``"frames shard"``, ``"flow cache"`` ...) for the messages
    ``<path>: <what> not found`` and ``<path>: not a readable HDF5 file (<what>; truncated or another format?): ...``.
    """
    import h5py  # here, so that importing a2dpipe.io stays light

    try:
        return h5py.File(path, "r")
    except FileNotFoundError:
        raise A2DError(f"{path}: {what} not found") from None
    except OSError as err:
        raise A2DError(f"{path}: not a readable HDF5 file ({what}; truncated or another format?): {err}") from None


def setup_logging(log_file: str | os.PathLike | None = None, level: int = logging.INFO) -> logging.Logger:
    """Log to stderr and, when given, to ``log_file`` (the rule's ``log:``)."""
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_file:
        Path(log_file).parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_file, mode="w"))
    logging.basicConfig(level=level, format="%(asctime)s %(name)s %(levelname)s %(message)s", handlers=handlers, force=True)
    return log


def load_config(path: str | os.PathLike) -> dict:
    """Read a YAML config file, validate it against the schema and fill in its defaults (:mod:`a2dpipe.config`).

    A file for a command run by hand may hold only the sections that command reads; what it leaves out takes the
    schema's defaults. A2DError naming the file when it is missing, not YAML, not a mapping, or breaks the schema.
    """
    from a2dpipe.config import resolve  # here: a2dpipe.config imports this module
    path = Path(path)
    try:
        with path.open() as f:
            config = yaml.safe_load(f)
    except FileNotFoundError:
        raise A2DError(f"{path}: config file not found") from None
    except yaml.YAMLError as err:
        raise A2DError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(config, dict):
        raise A2DError(f"{path}: expected a mapping at the top level")
    return resolve(config, str(path), partial=True)


def select_device(requested: str = "auto"):
    """``'auto'`` picks CUDA when present, else CPU, and says so once in the log."""
    import torch

    if requested == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        if device.type == "cpu":
            log.info("no CUDA device found: running on the CPU")
        return device
    device = torch.device(requested)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise A2DError(f"config asks for device {requested!r} but CUDA is not available")
    return device
