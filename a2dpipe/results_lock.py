"""The results folder's lock: one run writes a results folder at a time, whichever working directory it was
started from (Snakemake's own lock is per working directory). The workflow checks it when it parses the config,
takes it when jobs start and releases it when the run ends; a killed run's lock is stale and ignored."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from a2dpipe.io import A2DError, atomic_path, host_name, writer_is_gone

__all__ = ["RESULTS_LOCK", "check_results_free", "lock_results", "unlock_results"]

RESULTS_LOCK = ".a2dpipe-run.lock"


def _lock_path(results: str | os.PathLike) -> Path:
    return Path(results) / RESULTS_LOCK


def check_results_free(results: str | os.PathLike) -> None:
    """A2DError when a run started from another working directory holds ``results`` (its lock, written by
    :func:`lock_results`), so two runs never write one folder (Snakemake's own lock is per working directory).

    A lock of this working directory is Snakemake's business; one whose run is gone (same host, process ended)
    is stale and ignored. On another host liveness cannot be checked: the message says how to remove it.
    """
    path = _lock_path(results)
    try:
        holder = json.loads(path.read_text())
    except (OSError, ValueError):
        return  # no lock (or a half-written one: its writer is starting and will check again)
    if not isinstance(holder, dict) or os.path.realpath(holder.get("workdir", "")) == os.path.realpath(os.getcwd()):
        return
    token = f"{holder.get('host', '')}-{holder.get('pid', '')}-0"
    if writer_is_gone(token):
        return
    raise A2DError(
        f"{Path(results)}: in use by a run started from {holder.get('workdir')} (host {holder.get('host')}, "
        f"process {holder.get('pid')}, since {holder.get('started')}); two runs writing one results folder "
        f"overwrite each other's files and logs; wait for it to end, or set config `results` to another folder "
        f"(if no run is live there, delete {path})")


def lock_results(results: str | os.PathLike) -> None:
    """Claim ``results`` for this run (:func:`check_results_free` first): the workflow's ``onstart``."""
    check_results_free(results)
    holder = {"workdir": os.path.realpath(os.getcwd()), "host": host_name(), "pid": os.getpid(),
              "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    with atomic_path(_lock_path(results)) as tmp:
        Path(tmp).write_text(json.dumps(holder) + "\n")


def unlock_results(results: str | os.PathLike) -> None:
    """Release ``results`` when this process holds it: the workflow's ``onsuccess`` and ``onerror``."""
    path = _lock_path(results)
    try:
        holder = json.loads(path.read_text())
    except (OSError, ValueError):
        return
    if isinstance(holder, dict) and holder.get("pid") == os.getpid() and holder.get("host") == host_name():
        path.unlink(missing_ok=True)
