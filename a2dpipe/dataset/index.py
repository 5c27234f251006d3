"""The frame index: ``a2dpipe index --config C --root DIR --out index.csv``.

One row per annotated frame, columns ``video, frame, split, height, width, num_frames, shard`` (``frame``
1-based, ``split`` 'train' / 'val' / 'test', ``shard`` a 3-digit string). Videos are assigned to shards in
``videoset.csv`` row order after ``dataset.exclude_videos`` are dropped: shard = position // ``dataset.shard_size``
(:func:`assign_shards`, which the workflow uses too, so the DAG and the index agree).

Validation split (:func:`assign_validation`): A2D has no official one, so a share ``dataset.val_fraction`` of the
training videos is held out, whole videos only: ``ceil(val_fraction * train videos)`` of them, but never the last
training video (one training video keeps them all; ``val_fraction: 0`` holds none out). The held-out videos are
those with the smallest SHA-256 of their id: deterministic, independent of the seed and of ``videoset.csv`` row
order, and adding a video to the dataset moves at most that one video between the two splits. Training and every
choice made by looking at results use ``train`` and ``val``; ``test`` labels only score the final tables.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import math
from pathlib import Path

import pandas as pd

from a2dpipe.dataset.a2d import check_video_id, list_annotated_frames, read_videoset
from a2dpipe.settings import add_config_arguments, read_settings
from a2dpipe.errors import A2DError, unreadable_artifact
from a2dpipe.io import atomic_path

log = logging.getLogger(__name__)

INDEX_COLUMNS = ["video", "frame", "split", "height", "width", "num_frames", "shard"]


def configure_parser(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser, "index")
    parser.add_argument("--root", required=True, help="dataset root in the A2D layout")
    parser.add_argument("--out", required=True, help="index CSV to write")


def run(args: argparse.Namespace) -> None:
    dataset = read_settings(args, "index")["dataset"]
    index = build_index(args.root, dataset["shard_size"], dataset["exclude_videos"],
                        val_fraction=dataset["val_fraction"])
    write_index(index, args.out)


def assign_shards(videoset: pd.DataFrame, shard_size: int, exclude=()) -> pd.DataFrame:
    """``videoset`` without the excluded videos, in row order, with a ``shard`` column ("000", "001", ...)."""
    if shard_size < 1:
        raise A2DError(f"config dataset.shard_size: must be at least 1, got {shard_size}")
    exclude = set(exclude)
    unknown = exclude - set(videoset["video"])
    if unknown:
        log.warning("dataset.exclude_videos names %d video(s) not in videoset.csv: %s", len(unknown), sorted(unknown))
    kept = videoset[~videoset["video"].isin(exclude)].reset_index(drop=True)
    kept["shard"] = [f"{i // shard_size:03d}" for i in range(len(kept))]
    return kept


def _video_rank_key(video: str) -> str:
    return hashlib.sha256(video.encode("utf-8")).hexdigest()


def validation_videos(train_videos, val_fraction: float) -> set[str]:
    """The training videos held out for validation (rule in the module docstring)."""
    if not 0 <= val_fraction < 1 or not math.isfinite(val_fraction):
        raise A2DError(f"config dataset.val_fraction: must be in [0, 1), got {val_fraction}")
    videos = sorted(set(train_videos))
    count = min(math.ceil(val_fraction * len(videos)), len(videos) - 1) if videos else 0
    return set(sorted(videos, key=_video_rank_key)[:count])


def assign_validation(videoset: pd.DataFrame, val_fraction: float) -> pd.DataFrame:
    """``videoset`` with the :func:`validation_videos` of its train split relabelled ``val`` (a new frame)."""
    out = videoset.copy()
    held_out = validation_videos(out.loc[out["split"] == "train", "video"], val_fraction)
    out.loc[out["video"].isin(held_out), "split"] = "val"
    if val_fraction > 0 and not held_out:
        log.warning("dataset.val_fraction=%s: too few training videos to hold any out; no validation split",
                    val_fraction)
    return out


def build_index(root: str | Path, shard_size: int, exclude=(), *, val_fraction: float = 0.0) -> pd.DataFrame:
    """Index of every annotated frame of ``root`` (see module docstring); an empty train or test split is an error.

    ``val_fraction`` > 0 relabels a share of the training videos ``val`` (:func:`assign_validation`).
    """
    root = Path(root)
    videoset = assign_shards(read_videoset(root / "videoset.csv"), shard_size, exclude)
    for split in ("train", "test"):
        if not (videoset["split"] == split).any():
            raise A2DError(f"{root / 'videoset.csv'}: the {split} split is empty (after dataset.exclude_videos)")
    videoset = assign_validation(videoset, val_fraction)
    frames = list_annotated_frames(root, videoset)
    index = frames.merge(videoset[["video", "height", "width", "num_frames", "shard"]], on="video", how="left")
    for split in ("train", "test"):
        if not (index["split"] == split).any():
            raise A2DError(f"{root}: the {split} split has no annotated frames")
    return index[INDEX_COLUMNS]


def read_index(path: str | Path) -> pd.DataFrame:
    """Read an index written by :func:`write_index` (shard kept as a 3-digit string).

    An index that cannot be parsed, lacks a column, holds a non-integer frame or size, or a video id that is not
    a plain file name is an :class:`A2DError` naming the file and the command that rebuilds it.
    """
    path = Path(path)
    try:
        index = pd.read_csv(path, dtype={"video": str, "shard": str, "split": str}, keep_default_na=False)
    except FileNotFoundError:
        raise A2DError(f"{path}: index not found") from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise unreadable_artifact(path, "index", f"cannot parse the index: {err}") from None
    missing = set(INDEX_COLUMNS) - set(index.columns)
    if missing:
        raise unreadable_artifact(path, "index", f"index lacks column(s) {sorted(missing)}")
    for col in ("frame", "height", "width", "num_frames"):
        if not pd.api.types.is_integer_dtype(index[col]):
            raise unreadable_artifact(path, "index", f"column {col!r} holds values that are not whole numbers")
    for line, video in enumerate(index["video"], start=2):  # line 1 is the header
        check_video_id(video, f"{path}: line {line}")
    return index


def write_index(index: pd.DataFrame, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        index.to_csv(tmp, index=False)
    counts = index.groupby("split").size().to_dict()
    log.info(
        "indexed %d annotated frames of %d videos in %d shard(s): %s -> %s",
        len(index),
        index["video"].nunique(),
        index["shard"].nunique(),
        counts,
        path,
    )
