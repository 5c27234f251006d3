"""Evaluation stage: the metrics of one prediction set over every test frame.

Command::

    a2dpipe evaluate --config C --predictions results/predictions/<variant>.h5 \
        --frames results/frames/shard-000.h5 ... --out results/evaluation/<variant>.json

Reads the ground-truth ``label`` of every frame whose ``split`` attribute is ``test`` in the frame stores, the
``actor``, ``action`` and ``joint`` maps of the same frame in the prediction file, and accumulates confusion
matrices over all frames (``a2dpipe.evaluation.metrics``), for the whole image and for the non-boundary pixels.

With ``evaluation.settings_from: heads`` (default) the actor and action settings score the two heads' own maps
(``actor``, ``action``) and the actor-action setting the joint map; with ``joint`` all three settings are derived
from the joint map.

Output JSON (fractions in [0, 1]; ``null`` where a score is undefined)::

    {"variant": str, "predictions": str, "frames": int, "boundary_width": int, "settings_from": str,
     "seconds_per_frame": float | null,
     "metrics": {"whole" | "non_boundary": {"actor" | "action" | "actor_action":
                 {"global_accuracy", "mean_class_accuracy", "mean_iou": float, "class_accuracy", "class_iou":
                  [float], "pixels": int, "classes": [str]}}},
     "per_category_accuracy": {"background": float, "adult-climbing": float, ...},   # 44 entries, whole image
     "confusion": {"whole" | "non_boundary": {setting: [[int]] (rows ground truth, columns prediction)}}}
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import numpy as np

from a2dpipe.io import A2DError, atomic_path, load_config, open_hdf5, reading_artifact
from a2dpipe.evaluation.metrics import REGIONS, ConfusionAccumulator, metrics, per_category_accuracy

__all__ = ["evaluate", "iter_test_labels", "configure_parser", "run"]

log = logging.getLogger(__name__)

SETTINGS_FROM = ("heads", "joint")


def iter_test_labels(frame_paths):
    """Yield ``(video, frame, label)`` for every test frame of the frame stores, in file and key order."""
    for path in frame_paths:
        with open_hdf5(path, "frames store") as f:
            for video in f:
                for name in f[video]:
                    group = f[video][name]
                    split = group.attrs.get("split")
                    if split is None:
                        raise A2DError(f"{path}: group {video}/{name} has no 'split' attribute")
                    if isinstance(split, bytes):
                        split = split.decode()
                    if split != "test":
                        continue
                    if "label" not in group:
                        raise A2DError(f"{path}: group {video}/{name} has no 'label' dataset")
                    with reading_artifact(path, "frames store", f"frame {video}/{name}"):
                        label = group["label"][()]
                    yield video, int(name), label


def _read_prediction(f, path, key: str, settings_from: str, shape) -> dict | np.ndarray:
    if key not in f:
        raise A2DError(f"{path}: no prediction for test frame {key}")
    group = f[key]
    names = ("joint",) if settings_from == "joint" else ("actor", "action", "joint")
    missing = [n for n in names if n not in group]
    if missing:
        raise A2DError(f"{path}: group {key} lacks dataset(s) {missing}")
    with reading_artifact(path, "prediction file", f"frame {key}"):
        maps = {n: group[n][()] for n in names}
    for n, m in maps.items():
        if m.shape != tuple(shape):
            raise A2DError(f"{path}: {key}/{n} has shape {m.shape}, the frame is {tuple(shape)}")
    return maps["joint"] if settings_from == "joint" else maps


def evaluate(pred_path, frame_paths, boundary_width: int = 15, settings_from: str = "heads") -> dict:
    """Accumulate every test frame of ``frame_paths`` against ``pred_path``; returns the JSON document (module doc)."""
    if settings_from not in SETTINGS_FROM:
        raise A2DError(f"evaluation.settings_from: expected one of {SETTINGS_FROM}, got {settings_from!r}")
    acc = ConfusionAccumulator(boundary_width)
    seen: set[str] = set()
    with open_hdf5(pred_path, "prediction file") as f:
        variant = f.attrs.get("variant", Path(pred_path).stem)
        spf = f.attrs.get("seconds_per_frame")
        for video, frame, label in iter_test_labels(frame_paths):
            key = f"{video}/{frame:05d}"
            pred = _read_prediction(f, pred_path, key, settings_from, label.shape)
            try:
                acc.add(label, pred)
            except ValueError as err:
                raise A2DError(f"{pred_path}: {key}: {err}") from None
            seen.add(key)
        extra = sorted(f"{v}/{n}" for v in f for n in f[v] if f"{v}/{n}" not in seen)
    if extra:
        raise A2DError(f"{pred_path}: predictions for {len(extra)} frame(s) that are not test frames, e.g. {extra[0]}")
    if acc.frames == 0:
        raise A2DError(f"{pred_path}: the frame stores hold no test frame to evaluate")
    log.info("%s: evaluated %d test frames", variant, acc.frames)
    scores = {r: metrics(acc.matrices[r]) for r in REGIONS}
    return {
        "variant": variant.decode() if isinstance(variant, bytes) else str(variant),
        "predictions": str(pred_path),
        "frames": acc.frames,
        "boundary_width": acc.boundary_width,
        "settings_from": settings_from,
        "seconds_per_frame": None if spf is None else float(spf),
        "metrics": scores,
        "per_category_accuracy": per_category_accuracy(acc.matrices["whole"]["actor_action"]),
        "confusion": {r: {s: m.tolist() for s, m in acc.matrices[r].items()} for r in REGIONS},
    }


def _json_safe(obj):
    """nan -> None, recursively (strict JSON has no NaN)."""
    if isinstance(obj, float):
        return None if math.isnan(obj) else obj
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_json_safe(v) for v in obj]
    return obj


def configure_parser(parser) -> None:
    parser.add_argument("--config", required=True, help="config file (section evaluation)")
    parser.add_argument("--predictions", required=True, help="prediction HDF5 of one variant")
    parser.add_argument("--frames", required=True, nargs="+", help="frame stores (every shard)")
    parser.add_argument("--out", required=True, help="evaluation JSON to write")


def run(args) -> None:
    section = load_config(args.config).get("evaluation") or {}
    result = evaluate(
        args.predictions,
        args.frames,
        boundary_width=int(section.get("boundary_width", 15)),
        settings_from=section.get("settings_from", "heads"),
    )
    with atomic_path(args.out) as tmp:
        Path(tmp).write_text(json.dumps(_json_safe(result), indent=1, allow_nan=False))
