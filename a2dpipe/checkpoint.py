"""Resumable training state shared by the trainers (``a2dpipe train`` and ``a2dpipe train-mask-model``).

A trainer writes ``checkpoint.pt`` beside its output every few steps and removes it once the model is written.
It holds everything a killed run needs to continue exactly where it stopped::

    {"fingerprint": str,     # digest of the settings and data; a checkpoint of other settings is ignored
     "step": int,            # optimiser steps done
     "model", "optimizer", "scheduler": state_dicts,
     "rng": rng_state(),     # python, numpy, torch (and CUDA) generator states
     "history": list}        # loss-curve rows so far (the trainer's row type)

Batches and augmentations come from generators seeded by (seed, step), but dropout and library code (such as
Mask R-CNN's proposal samplers) draw from the *global* generators; saving and restoring those is what makes a
resumed run end with the same weights as an uninterrupted one.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import random
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from a2dpipe.io import atomic_path

__all__ = ["rng_state", "set_rng_state", "fingerprint", "load_resume", "save_resume", "write_curve"]

log = logging.getLogger(__name__)

_KEYS = {"fingerprint", "step", "model", "optimizer", "scheduler", "rng", "history"}


def rng_state() -> dict:
    """States of the python, numpy, torch and (when present) CUDA global generators."""
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def set_rng_state(state: dict) -> None:
    """Restore what :func:`rng_state` saved (CUDA states only when saved and CUDA is present)."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def fingerprint(**items) -> str:
    """16 hex digits identifying ``items`` (JSON with sorted keys; what JSON cannot encode goes in as ``str``)."""
    return hashlib.sha256(json.dumps(items, sort_keys=True, default=str).encode()).hexdigest()[:16]


def load_resume(path: str | Path, fingerprint: str, model, optimizer, scheduler,
                map_location="cpu") -> tuple[int, list] | None:
    """Restore model, optimiser, scheduler and RNG states from the checkpoint at ``path``; ``(step, history)``.

    None (nothing restored) when there is no checkpoint or it was written under another fingerprint.
    """
    path = Path(path)
    if not path.is_file():
        return None
    state = torch.load(path, map_location=map_location, weights_only=False)
    if not isinstance(state, dict) or state.get("fingerprint") != fingerprint or not _KEYS <= set(state):
        log.info("ignoring %s: written under other settings", path)
        return None
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    set_rng_state(state["rng"])
    log.info("resuming from %s at step %d", path, state["step"])
    return state["step"], state["history"]


def save_resume(path: str | Path, fingerprint: str, step: int, model, optimizer, scheduler, history: list) -> None:
    """Write the training state (module docstring) atomically, with the current RNG states."""
    state = {"fingerprint": fingerprint, "step": step, "model": model.state_dict(),
             "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "rng": rng_state(),
             "history": history}
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def write_curve(path: str | Path, rows: list[Sequence | Mapping], columns: Sequence[str]) -> None:
    """Write a loss curve as CSV with header ``columns``; rows are sequences in that order or mappings by name."""
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(columns)
        writer.writerows([row[c] for c in columns] if isinstance(row, Mapping) else row for row in rows)
