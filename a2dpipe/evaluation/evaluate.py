"""Evaluation stage: the metrics of one prediction set over every test (or validation) frame.

Command::

    a2dpipe evaluate --config C --predictions results/predictions/<V>.h5 --frames results/frames/shard-000.h5 ... \
        --out results/evaluation/<V>.json --per-video results/evaluation/<V>.videos.npz [--split test|val]

where ``<V>`` is a variant's ``<kind>/<input>/<train_source>/<test_source>`` (:mod:`a2dpipe.variants`).

Reads the ground-truth ``label`` of every frame whose ``split`` attribute is ``--split`` (default ``test``) in the
frame stores, the ``actor``, ``action`` and ``joint`` maps of the same frame in the prediction file, and
accumulates confusion matrices over all frames (``a2dpipe.evaluation.metrics``), for the whole image and for the
non-boundary pixels, in total and per video. The per-video matrices (``--per-video``, format of
``a2dpipe.evaluation.bootstrap.write_per_video``) are what the tables' bootstrap intervals resample.

With ``evaluation.settings_from: heads`` (default) the actor and action settings score the two heads' own maps
(``actor``, ``action``) and the actor-action setting the joint map; with ``joint`` all three settings are derived
from the joint map.

Output JSON (fractions in [0, 1]; ``null`` where a score is undefined)::

    {"variant": str, "predictions": str, "split": str, "frames": int, "videos": int, "boundary_width": int,
     "settings_from": str, "seconds_per_frame": float | null,
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

from a2dpipe.config import check_inputs, stamp
from a2dpipe.settings import add_config_arguments, read_settings
from a2dpipe.dataset.frames import FrameStore
from a2dpipe.evaluation.bootstrap import write_per_video
from a2dpipe.integrity import with_digest
from a2dpipe.errors import A2DError
from a2dpipe.io import atomic_path
from a2dpipe.evaluation.metrics import REGIONS, ConfusionAccumulator, metrics, per_category_accuracy
from a2dpipe.progress import progress
from a2dpipe.segmentation.predictions import MAPS, PREDICTED_SPLITS, PredictionStore
from a2dpipe.stores import group_key

__all__ = ["evaluate", "iter_test_labels", "configure_parser", "run"]

log = logging.getLogger(__name__)

SETTINGS_FROM = ("heads", "joint")


def iter_test_labels(frame_paths, wanted: str = "test"):
    """Yield ``(video, frame, label)`` for every frame of ``split`` in the frame stores, in file and key order."""
    for path in frame_paths:
        with FrameStore(path) as store:
            for video, frame in store.keys(wanted):
                yield video, frame, store.read_arrays(video, frame, ("label",))["label"]


def _read_prediction(store: PredictionStore, video: str, frame: int, settings_from: str, shape):
    names = ("joint",) if settings_from == "joint" else MAPS
    if (video, frame) not in store:
        raise A2DError(f"{store.path}: no prediction for test frame {group_key(video, frame)}")
    maps = store.read(video, frame, names)
    for name, m in maps.items():
        if m.shape != tuple(shape):
            key = group_key(video, frame)
            raise A2DError(f"{store.path}: {key}/{name} has shape {m.shape}, the frame is {tuple(shape)}")
    return maps["joint"] if settings_from == "joint" else maps


def evaluate(pred_path, frame_paths, boundary_width: int = 15, settings_from: str = "heads", *,
             split: str = "test", per_video=None) -> dict:
    """Accumulate every ``split`` frame of ``frame_paths`` against ``pred_path``; returns the JSON document
    (module doc). With ``per_video`` (a path) the per-video confusion matrices are written there too."""
    if settings_from not in SETTINGS_FROM:
        raise A2DError(f"evaluation.settings_from: expected one of {SETTINGS_FROM}, got {settings_from!r}")
    if split not in PREDICTED_SPLITS:
        raise A2DError(f"evaluate: split must be one of {PREDICTED_SPLITS}, got {split!r}")
    acc = ConfusionAccumulator(boundary_width)
    seen: set[tuple[str, int]] = set()
    with PredictionStore(pred_path) as store:
        variant = store.variant
        spf = store.attrs.get("seconds_per_frame")
        labels = progress(iter_test_labels(frame_paths, split), total=len(store.keys()), desc=f"evaluate {variant}")
        for video, frame, label in labels:
            pred = _read_prediction(store, video, frame, settings_from, label.shape)
            try:
                acc.add(label, pred, video=video)
            except ValueError as err:
                raise A2DError(f"{pred_path}: {group_key(video, frame)}: {err}") from None
            seen.add((video, frame))
        extra = [key for key in store.keys() if key not in seen]
    if extra:
        raise A2DError(f"{pred_path}: predictions for {len(extra)} frame(s) that are not {split} frames, "
                       f"e.g. {group_key(*extra[0])}")
    if acc.frames == 0:
        raise A2DError(f"{pred_path}: the frame stores hold no {split} frame to evaluate")
    variant = variant.decode() if isinstance(variant, bytes) else str(variant)
    log.info("%s: evaluated %d %s frames of %d videos", variant, acc.frames, split, len(acc.by_video))
    if per_video is not None:
        videos, stacks = acc.video_matrices()
        with atomic_path(per_video) as tmp:
            write_per_video(tmp, variant, videos, stacks)
    scores = {r: metrics(acc.matrices[r]) for r in REGIONS}
    return {
        "variant": variant,
        "predictions": str(pred_path),
        "split": split,
        "frames": acc.frames,
        "videos": len(acc.by_video),
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
    add_config_arguments(parser, "evaluate")
    parser.add_argument("--predictions", required=True, help="prediction HDF5 of one variant")
    parser.add_argument("--frames", required=True, nargs="+", help="frame stores (every shard)")
    parser.add_argument("--out", required=True, help="evaluation JSON to write")
    parser.add_argument("--per-video", help="per-video confusion matrices (.npz) to write, for the bootstrap")
    parser.add_argument("--split", choices=PREDICTED_SPLITS, default="test",
                        help="frames to score (val: the validate target)")


def run(args) -> None:
    settings = read_settings(args, "evaluate")
    # frames shards of one code, and a predictions file whose stamp agrees with them
    check_inputs(settings, {"frames shard": args.frames, "predictions file": [args.predictions]})
    section = settings["evaluation"]
    result = evaluate(
        args.predictions,
        args.frames,
        boundary_width=int(section["boundary_width"]),
        settings_from=section["settings_from"],
        split=args.split,
        per_video=args.per_video,
    )
    result["provenance"] = stamp(settings)
    with atomic_path(args.out) as tmp:  # with the digest of its content: readers check it (tables)
        Path(tmp).write_text(json.dumps(with_digest(_json_safe(result)), indent=1, allow_nan=False))
