"""Every checkpoint the project reads or writes, in one place: files are data, never code.

Readers (all through :func:`read_checkpoint`: ``torch.load(..., weights_only=True)`` on the CPU, numpy scalars
allowed because older third-party files pickle them beside their weights; a file that asks for anything else, such
as a crafted pickle that would run code, is refused with an ``A2DError`` naming it):

- :func:`load_weights` -- third-party weights (ImageNet ResNets, COCO Mask R-CNN, FlowNet and RAFT) into a module,
  strictly or by matching names and shapes, saying what it could not match. Batch norm's ``num_batches_tracked``
  counters are not weights: older torchvision files lack them, frozen batch norm has none, so a file with or
  without them loads the same (a missing counter keeps the model's value, one the model lacks is ignored);
- :func:`load_model_file` / :func:`save_model_file` -- a model written by ``a2dpipe train`` (stage 1 or 2) or
  ``a2dpipe train-mask-model``: a versioned format (:data:`MODEL_FILES`) holding the builder's keyword arguments,
  the weights, what the model is and one provenance stamp; a file of another version is refused with the rule
  that rebuilds it;
- :func:`load_resume` / :func:`save_resume` -- the resumable training state a trainer keeps beside its output::

    {"fingerprint": str,     # digest of the settings and inputs; a checkpoint made from other inputs is ignored
     "inputs": {name: str} | None,  # the digest of each part (settings, each input file): the log names changes
     "step": int,            # optimiser steps done
     "model", "optimizer", "scheduler": state_dicts,
     "scaler": dict,         # the float16 GradScaler's state (scale, growth tracker); {} when none scales
     "rng": rng_state(),     # python (list), numpy (tensor + numbers), torch and CUDA (tensors) generator states
     "history": list}        # loss-curve rows so far (dicts of numbers)

Batches and augmentations come from generators seeded by (seed, step), but dropout and library code (such as
Mask R-CNN's proposal samplers) draw from the *global* generators; saving and restoring those is what makes a
resumed run end with the same weights as an uninterrupted one. Two resume checkpoints are kept (``checkpoint.pt``
and the one before, ``checkpoint.prev.pt``): one that cannot be read is renamed ``*.corrupt`` with a warning and
training continues from the other, or from scratch. Resume states load on the CPU (``torch.set_rng_state`` takes
only a CPU tensor); ``load_state_dict`` then copies model and optimiser tensors to the model's device.
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
from torch import nn

from a2dpipe.config import stamp
from a2dpipe.errors import A2DError, rebuild_hint, unreadable_artifact
from a2dpipe.io import atomic_path
from a2dpipe.stores import ArtifactFormat

__all__ = [
    "read_checkpoint", "state_dict_of", "load_weights", "load_state_strict", "load_state_partial",
    "describe_mismatch", "save_model_file", "load_model_file", "MODEL_FILES", "SEGMENTATION_MODEL", "MASK_MODEL",
    "rng_state", "set_rng_state", "fingerprint", "load_resume", "save_resume", "remove_resume", "write_curve",
]

log = logging.getLogger(__name__)

_RESUME_KEYS = {"fingerprint", "step", "model", "optimizer", "scheduler", "scaler", "rng", "history"}


def _numpy_scalars() -> list:
    """Globals that rebuild numpy scalars and dtypes: data only, and what flownet2-pytorch's files pickle."""
    from numpy import dtypes

    scalar = (np._core if hasattr(np, "_core") else np.core).multiarray.scalar
    kinds = [getattr(dtypes, n) for n in dir(dtypes) if n.endswith("DType") and n[0].isupper()]
    return [scalar, (scalar, "numpy.core.multiarray.scalar"), np.dtype, *kinds]


def read_checkpoint(path: str | Path, what: str) -> object:
    """The object stored at ``path`` (tensors on the CPU), read without running code; ``what`` names it in errors."""
    path = Path(path)
    if not path.is_file():
        raise A2DError(f"{path}: {what} not found")
    try:
        with torch.serialization.safe_globals(_numpy_scalars()):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - torch raises several types for a foreign, damaged or hostile file
        lines = [line.strip() for line in str(err).splitlines() if line.strip()]
        named = [line for line in lines if "GLOBAL" in line]  # what weights_only refused to import
        if named:
            raise A2DError(f"{path}: {what} refused: it holds Python objects other than tensors and plain data, "
                           f"which would run code when loaded ({named[0][:200]})") from None
        detail = next((line for line in lines if "Unsupported" in line), lines[0] if lines else type(err).__name__)
        raise A2DError(f"{path}: {what} is not a readable torch checkpoint (truncated, damaged or another format): "
                       f"{detail[:200]}") from None


def state_dict_of(obj: object, path: str | Path, keys: Sequence[str] = ("state_dict", "model")) -> dict:
    """The state dict in a loaded file: the object itself or the first of ``keys`` it holds; ``module.`` stripped."""
    if isinstance(obj, dict):
        for key in keys:
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise A2DError(f"{path}: no state dict found (expected a state dict of tensors or a dict holding one of "
                       f"{list(keys)})")
    return {k.removeprefix("module."): v for k, v in obj.items()}


_COUNTER = "num_batches_tracked"  # batch norm's step counter: a buffer, not a weight
_NAMED = 8  # names listed per kind of mismatch in an error (the count says how many there are)


def _mismatch(own: dict, state: dict) -> tuple[list, list, list]:
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = sorted(k for k in set(own) & set(state) if tuple(own[k].shape) != tuple(state[k].shape))
    return missing, unexpected, wrong


def _with_counters(own: dict, state: dict) -> dict:
    """``state`` with batch norm's counters made to agree with ``own`` (the model's state dict): those the file
    lacks (older torchvision files) get the model's value, those the model lacks (frozen batch norm) are dropped."""
    state = {k: v for k, v in state.items() if not k.endswith(_COUNTER) or k in own}
    return {**{k: v for k, v in own.items() if k.endswith(_COUNTER) and k not in state}, **state}


def _shape(tensor: torch.Tensor) -> str:
    return "(" + ", ".join(map(str, tensor.shape)) + ")"


def _listed(names: list[str]) -> str:
    return ", ".join(names[:_NAMED]) + (f" and {len(names) - _NAMED} more" if len(names) > _NAMED else "")


def describe_mismatch(own: dict, state: dict) -> str:
    """What keeps ``state`` from loading into a model whose state dict is ``own``, in words: the model's tensors the
    file lacks, the file's tensors the model has no place for, and those of another shape with both shapes (listed
    once, not as both missing and unused); empty when everything agrees."""
    missing, unexpected, wrong = _mismatch(own, state)
    parts = [f"{len(missing)} of the model's tensors missing from the file: {_listed(missing)}" if missing else "",
             f"{len(unexpected)} tensors of the file unused: {_listed(unexpected)}" if unexpected else "",
             f"{len(wrong)} of another shape: " + _listed([f"{k} {_shape(state[k])} in the file, "
                                                          f"{_shape(own[k])} in the model" for k in wrong])
             if wrong else ""]
    return "; ".join(p for p in parts if p)


def load_state_strict(model: nn.Module, state: dict, path, name: str) -> None:
    """Load ``state`` into ``model`` when keys and shapes all agree (a ``module.`` prefix is stripped first, batch
    norm counters reconciled as the module docstring says); otherwise raise ``A2DError`` naming the file, the
    expected network and every mismatch (:func:`describe_mismatch`)."""
    own = model.state_dict()
    state = _with_counters(own, {k.removeprefix("module."): v for k, v in state.items()})
    problems = describe_mismatch(own, state)
    if problems:
        raise A2DError(f"{path}: not a {name} checkpoint: {problems}")
    model.load_state_dict(state)


def load_weights(model: nn.Module, path: str | Path, *, name: str, what: str = "weights file",
                 keys: Sequence[str] = ("state_dict", "model"), drop: Sequence[str] = (),
                 partial: bool = False) -> list[str]:
    """Load third-party weights from ``path`` into ``model``; returns the model's names left as initialised.

    ``drop``: name prefixes of the file left out (an ImageNet classifier, ``fc.``). Strict by default: every name
    and shape must agree, or ``A2DError`` lists what did not (``name`` is the network expected). ``partial=True``
    loads what matches by name and shape (a COCO model for another class count), logs the rest and fails only
    when nothing matches.
    """
    state = state_dict_of(read_checkpoint(path, what), path, keys)
    state = {k: v for k, v in state.items() if not k.startswith(tuple(drop))}
    if not partial:
        load_state_strict(model, state, path, name)
        log.info("loaded %s from %s", name, path)
        return []
    return load_state_partial(model, state, path, name)


def load_state_partial(model: nn.Module, state: dict, path, name: str) -> list[str]:
    """Load the tensors of ``state`` whose name and shape match ``model`` (``path`` names their file, ``name``
    the network expected); log the rest (:func:`describe_mismatch`) and return the model's names left as
    initialised. ``A2DError`` when nothing matches."""
    own = model.state_dict()
    loaded = {k: v for k, v in state.items() if k in own and tuple(v.shape) == tuple(own[k].shape)}
    if not loaded:
        raise A2DError(f"{path}: no tensor matches the {name} being built (wrong backbone?)")
    state, loaded = _with_counters(own, state), _with_counters(own, loaded)
    model.load_state_dict(loaded, strict=False)
    fresh = [k for k in own if k not in loaded]
    log.info("%s: loaded %d of the %d tensors of %s; the rest: %s", path, len(loaded), len(own), name,
             describe_mismatch(own, state) or "none")
    return fresh


# -- model files -----------------------------------------------------------------------------------------------

# The trained networks' formats, versioned as the HDF5 artifacts are (:class:`a2dpipe.stores.ArtifactFormat`):
# raise a version when the layout changes in a way this reader would misread; files of another version are
# refused, never converted, and the message names the rule that rebuilds them.
SEGMENTATION_MODEL = ArtifactFormat("segmentation-model", 1, "segmentation model")
MASK_MODEL = ArtifactFormat("mask-model", 1, "mask model")
_SEGMENTATION_META = frozenset({"stage", "input", "mask_source", "steps", "amp", "curve"})
# a model file by what messages call it (a key of a2dpipe.errors.REBUILT_BY) -> its format, the metadata it holds
MODEL_FILES = {
    "stage-1 model": (SEGMENTATION_MODEL, _SEGMENTATION_META),
    "stage-2 model": (SEGMENTATION_MODEL, _SEGMENTATION_META),
    "mask model": (MASK_MODEL, frozenset({"source", "class_agnostic", "steps", "start", "final_loss"})),
}
_MODEL_PARTS = ("format", "builder", "model", "provenance")  # beside the metadata


def save_model_file(path: str | Path, what: str, *, builder: Mapping, weights: Mapping, meta: Mapping,
                    settings: Mapping) -> dict:
    """Write a trained model (``what``: a key of :data:`MODEL_FILES`) atomically; returns what was written::

        {"format": "a2dpipe.<kind>-model/<version>",
         "builder": {...},     # the keyword arguments of the network's builder: it rebuilds the network these
                               # weights fit (initial-weight arguments aside: the weights replace them)
         "model": state_dict,  # the weights, on the CPU
         "provenance": stamp,  # a2dpipe.config.stamp(settings): package version, settings, code digest
         **meta}               # what the model is: MODEL_FILES[what]'s keys, all of them
    """
    model_format, keys = MODEL_FILES[what]
    if set(meta) != keys:
        raise ValueError(f"a {what} holds the metadata {sorted(keys)}, not {sorted(meta)}")
    content = {"format": model_format.schema, "builder": dict(builder),
               "model": {k: v.detach().cpu() for k, v in weights.items()}, "provenance": stamp(settings), **meta}
    with atomic_path(path) as tmp:
        torch.save(content, tmp)
    return content


def load_model_file(path: str | Path, what: str) -> dict:
    """A model file of :func:`save_model_file` (tensors on the CPU); ``what`` is what the caller expects (a key of
    :data:`MODEL_FILES`, such as ``"stage-2 model"``). A2DError naming the file and the rule that rebuilds it when
    it is missing, of another format or version (files written before model files carried a version included),
    another kind, or incomplete."""
    model_format, keys = MODEL_FILES[what]
    if not Path(path).is_file():
        raise A2DError(f"{path}: {what} not found; {rebuild_hint(what)}")
    content = read_checkpoint(path, what)
    found = content.get("format") if isinstance(content, dict) else None
    if found != model_format.schema:
        raise model_format.refuse(path, found, what, field="format")
    missing = sorted((set(_MODEL_PARTS) | keys) - set(content))
    if missing:
        raise unreadable_artifact(path, what, f"it lacks {missing}")
    if what.startswith("stage-") and what != f"stage-{content['stage']} model":
        raise A2DError(f"{path}: a stage-{content['stage']} model, not the {what} expected here")
    return content


# -- resumable training state ---------------------------------------------------------------------------------


def rng_state() -> dict:
    """States of the python, numpy, torch and (when present) CUDA global generators, as tensors and plain data."""
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {"python": [version, list(internal), gauss],
            "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                      "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def set_rng_state(state: dict) -> None:
    """Restore what :func:`rng_state` saved (CUDA states only when saved and CUDA is present)."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    torch.set_rng_state(state["torch"].cpu())  # a CPU ByteTensor, whatever device wrote it
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


def fingerprint(**items) -> str:
    """16 hex digits identifying ``items`` (JSON with sorted keys; what JSON cannot encode goes in as ``str``)."""
    return hashlib.sha256(json.dumps(items, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _previous(path: Path) -> Path:
    return path.with_name(path.stem + ".prev" + path.suffix)


def _check_resume(state: object, path: Path, model: nn.Module, optimizer, scaler) -> None:
    """A2DError unless ``state`` is a whole resume checkpoint that fits ``model``, ``optimizer`` and ``scaler``
    (a scaler's state when this run scales float16 gradients, none when it does not)."""
    if not isinstance(state, dict) or not _RESUME_KEYS <= set(state):
        raise A2DError(f"{path}: not a resume checkpoint (it needs {sorted(_RESUME_KEYS)})")
    try:
        missing, unexpected, wrong = _mismatch(model.state_dict(), state["model"])
        groups = [len(g["params"]) for g in state["optimizer"]["param_groups"]]
        sound = (not (missing or unexpected or wrong) and groups == [len(g["params"]) for g in optimizer.param_groups]
                 and isinstance(state["rng"]["torch"], torch.Tensor) and isinstance(state["step"], int)
                 and isinstance(state["history"], list) and isinstance(state["scheduler"], dict)
                 and isinstance(state["scaler"], dict) and bool(state["scaler"]) == _scales(scaler))
    except (KeyError, TypeError, AttributeError) as err:
        raise A2DError(f"{path}: a damaged resume checkpoint ({type(err).__name__}: {err})") from None
    if not sound:
        raise A2DError(f"{path}: a resume checkpoint that does not fit this model and optimiser")


def _recipe(recipe: str | Mapping[str, str]) -> tuple[str, dict | None]:
    """(fingerprint, named parts): a recipe is one fingerprint, or ``{name: digest}`` of every input a training
    run depends on (its settings, each input file, the model it starts from), whose names a mismatch reports."""
    if isinstance(recipe, str):
        return recipe, None
    return fingerprint(**recipe), dict(recipe)


def _changed(saved: object, parts: dict | None) -> str:
    """The names of the recipe parts that differ, for the log line; "settings" when nothing more is known."""
    if not isinstance(saved, dict) or parts is None:
        return "settings"
    names = [name for name in {**saved, **parts} if saved.get(name) != parts.get(name)]
    return ", ".join(names[:6]) + (f" and {len(names) - 6} more" if len(names) > 6 else "")


def _scales(scaler) -> bool:
    return scaler is not None and scaler.is_enabled()


def _read_resume(path: Path, recipe: str | Mapping[str, str], model: nn.Module, optimizer, scaler) -> dict | None:
    """The resume state at ``path`` when it is sound and made from these inputs (``recipe``); an unreadable one is
    set aside. One made from other inputs is ignored with one log line naming what changed."""
    fingerprint_, parts = _recipe(recipe)
    try:
        state = read_checkpoint(path, "resume checkpoint")
        if isinstance(state, dict) and state.get("fingerprint") != fingerprint_:
            log.info("ignoring %s: made from other inputs (changed: %s); training starts over", path,
                     _changed(state.get("inputs"), parts))
            return None
        _check_resume(state, path, model, optimizer, scaler)
        return state
    except A2DError as err:
        aside = path.with_name(path.name + ".corrupt")
        path.replace(aside)
        log.warning("%s; set aside as %s", err, aside.name)
        return None


def load_resume(path: str | Path, recipe: str | Mapping[str, str], model: nn.Module, optimizer,
                scheduler, scaler=None) -> tuple[int, list] | None:
    """Restore model, optimiser, scheduler, float16 gradient scaler (``torch.amp.GradScaler``: its scale and growth
    tracker decide which steps are skipped) and RNG states from ``path`` (or the checkpoint before it); ``(step,
    history)``, or None (nothing restored) when neither is present, sound and made from this ``recipe`` (a
    fingerprint, or ``{name: digest}`` of the settings and every input file: see :func:`_recipe`)."""
    path = Path(path)
    for candidate in (path, _previous(path)):
        state = _read_resume(candidate, recipe, model, optimizer, scaler) if candidate.is_file() else None
        if state is None:
            continue
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if _scales(scaler):
            scaler.load_state_dict(state["scaler"])
        set_rng_state(state["rng"])
        log.info("resuming from %s at step %d", candidate, state["step"])
        return state["step"], list(state["history"])
    return None


def save_resume(path: str | Path, recipe: str | Mapping[str, str], step: int, model: nn.Module, optimizer,
                scheduler, history: list, scaler=None) -> None:
    """Write the training state (module docstring) atomically, with the current RNG states and the ``recipe``'s
    parts (``inputs``); the checkpoint it replaces is kept as ``*.prev.pt``, once the new one is complete: a
    checkpoint that cannot be written (disk full) leaves the previous one in place."""
    path = Path(path)
    fingerprint_, parts = _recipe(recipe)
    state = {"fingerprint": fingerprint_, "inputs": parts, "step": step, "model": model.state_dict(),
             "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
             "scaler": scaler.state_dict() if _scales(scaler) else {}, "rng": rng_state(),
             "history": history}
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
        if path.is_file():  # the new one is whole: the current one becomes the previous
            path.replace(_previous(path))


def remove_resume(path: str | Path) -> None:
    """Remove the resume checkpoints once the model is written (a forced rerun then trains afresh)."""
    path = Path(path)
    for p in (path, _previous(path)):
        p.unlink(missing_ok=True)


def write_curve(path: str | Path, rows: list[Sequence | Mapping], columns: Sequence[str]) -> None:
    """Write a loss curve as CSV with header ``columns``; rows are sequences in that order or mappings by name."""
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(columns)
        writer.writerows([row[c] for c in columns] if isinstance(row, Mapping) else row for row in rows)
