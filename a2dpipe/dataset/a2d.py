"""Datasets in the A2D release layout: the videoset, the paths of clips and annotations, annotated frames, clips.

Layout of a dataset root (the A2D "Release" folder)::

    videoset.csv                              no header; one row per video (see VIDEOSET_COLUMNS)
    clips320H/<video>.mp4                     the clip
    Annotations/mat/<video>/<frame:05d>.mat   MATLAB v7.3 (HDF5) annotation of a 1-based frame
    Annotations/col/<video>/<frame:05d>.png   the same annotation as a colour image

The ``.mat`` annotations themselves are read and written by :mod:`.annotation`.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np
import pandas as pd

from a2dpipe.errors import A2DError

log = logging.getLogger(__name__)

VIDEOSET_COLUMNS = (
    "video",
    "label",
    "start_time",
    "end_time",
    "height",
    "width",
    "num_frames",
    "num_annotated_frames",
    "usage",
)
USAGE_SPLITS = {0: "train", 1: "test"}  # videoset.csv's usage column -> split


def read_videoset(path: str | Path) -> pd.DataFrame:
    """Parse ``videoset.csv`` into a frame with ``VIDEOSET_COLUMNS`` plus ``split`` ('train' / 'test').

    The file has no header row; every video id must pass :func:`check_video_id`; the other columns hold whole
    numbers. Anything else raises :class:`A2DError` naming the file, the row and the problem.
    """
    path = Path(path)
    try:  # every cell as text, nothing read as NaN: an id such as "NA" stays an id, an empty cell is an error
        table = pd.read_csv(path, header=None, dtype=str, keep_default_na=False)
    except FileNotFoundError:
        raise A2DError(f"{path}: videoset.csv not found") from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise A2DError(f"{path}: cannot parse videoset.csv: {err}") from None
    if table.shape[1] != len(VIDEOSET_COLUMNS):
        raise A2DError(f"{path}: expected {len(VIDEOSET_COLUMNS)} columns, found {table.shape[1]}")
    table.columns = list(VIDEOSET_COLUMNS)
    int_cols = ["label", "height", "width", "num_frames", "num_annotated_frames", "usage"]
    table[int_cols] = _whole_numbers(table[int_cols], path)
    for row, video in enumerate(table["video"], start=1):
        check_video_id(video, f"{path}: row {row}")
    bad = ~table["usage"].isin(list(USAGE_SPLITS))
    if bad.any():
        raise A2DError(
            f"{path}: usage must be 0 (train) or 1 (test); row {int(bad.idxmax()) + 1} has {table['usage'][bad].iloc[0]}"
        )
    if table["video"].duplicated().any():
        raise A2DError(f"{path}: video {table['video'][table['video'].duplicated()].iloc[0]!r} is listed twice")
    table["split"] = table["usage"].map(USAGE_SPLITS)
    return table


def _whole_numbers(columns: pd.DataFrame, path: Path) -> pd.DataFrame:
    """Text columns of videoset.csv as int64; a header line or any other non-integer cell is an error."""
    numbers = columns.apply(pd.to_numeric, errors="coerce")
    bad = numbers.isna() | (numbers != numbers.round())
    if not bad.any(axis=None):
        return numbers.astype(np.int64)
    row = int(bad.any(axis=1).to_numpy().argmax())
    col = str(bad.columns[bad.iloc[row].to_numpy().argmax()])
    if row == 0 and not bad.iloc[1:].any(axis=None):
        raise A2DError(
            f"{path}: row 1 looks like a header ({', '.join(columns.iloc[0].astype(str))}): videoset.csv has no "
            f"header row; its columns are {', '.join(VIDEOSET_COLUMNS)}. Remove that line"
        )
    raise A2DError(f"{path}: row {row + 1}: column {col!r} holds {columns[col].iloc[row]!r}, expected a whole number")


def check_video_id(video: str, where: str) -> str:
    """``video`` if it is a plain file-name token, else :class:`A2DError` (``where`` says which file and row).

    Ids become folder and file names (``clips320H/<video>.mp4``, ``Annotations/mat/<video>/``) and HDF5 group
    names, so an id may not be empty, ``.`` or ``..``, nor hold a path separator (``/`` or ``\\``; an absolute
    path starts with one) or a control character.
    """
    plain = (
        isinstance(video, str)
        and video not in ("", ".", "..")
        and not any(c in "/\\" or ord(c) < 32 or ord(c) == 127 for c in video)
    )
    if not plain:
        raise A2DError(
            f"{where}: video id {video!r} is not a plain file name "
            "(no '/' or '\\', not '.' or '..', not absolute, no control characters)"
        )
    return video


# --------------------------------------------------------------------------------------------------------------
# Dataset root: paths, annotated frames, clips
# --------------------------------------------------------------------------------------------------------------


def video_path(root: str | Path, video: str) -> Path:
    return Path(root, "clips320H", f"{video}.mp4")


def annotation_path(root: str | Path, video: str, frame: int) -> Path:
    return Path(root, "Annotations", "mat", video, f"{frame:05d}.mat")


def colour_path(root: str | Path, video: str, frame: int) -> Path:
    return Path(root, "Annotations", "col", video, f"{frame:05d}.png")


ANNOTATION_NAME = re.compile(r"[0-9]{5}\.mat")


def list_annotated_frames(root: str | Path, videoset: pd.DataFrame | None = None) -> pd.DataFrame:
    """Annotated frames of a dataset root, from ``Annotations/mat/<video>/<frame:05d>.mat``.

    Returns a frame with columns ``video, frame, split`` (frame numbers 1-based), videos in ``videoset`` order
    and frames ascending. The count per video must equal ``num_annotated_frames`` of ``videoset.csv`` and every
    frame must lie in ``1..num_frames``; otherwise :class:`A2DError` names the video. File names follow
    :func:`annotation_files`.
    """
    root = Path(root)
    if videoset is None:
        videoset = read_videoset(root / "videoset.csv")
    rows: list[tuple[str, int, str]] = []
    for video, expected, num_frames, split in videoset[
        ["video", "num_annotated_frames", "num_frames", "split"]
    ].itertuples(index=False):
        folder = root / "Annotations" / "mat" / video
        files = annotation_files(folder) if folder.is_dir() else {}
        if len(files) != expected:
            raise A2DError(f"{folder}: video {video} has {len(files)} annotated frame(s); videoset.csv says {expected}")
        for frame, file in sorted(files.items()):
            if not 1 <= frame <= num_frames:
                raise A2DError(f"{file}: video {video} frame {frame} lies outside 1..{num_frames} (videoset.csv)")
            rows.append((video, frame, split))
    return pd.DataFrame(rows, columns=["video", "frame", "split"])


def annotation_files(folder: Path) -> dict[int, Path]:
    """``{frame: path}`` of the annotations in one video's folder.

    An annotation is named ``<5 digits>.mat`` (``00003.mat`` for frame 3). Two files of one frame (``1.mat``
    beside ``00001.mat``) or a ``.mat`` file named otherwise is an :class:`A2DError` naming the file(s); anything
    else (``Thumbs.db``, a sub-folder) is not an annotation and is skipped with a log line.
    """
    annotations = []
    for entry in sorted(folder.iterdir()):
        if entry.suffix.lower() == ".mat" and entry.is_file():
            annotations.append(entry)
        else:
            log.warning("%s: not an annotation file (<5 digits>.mat); skipped", entry)
    by_frame: dict[int, Path] = {}
    for file in annotations:  # duplicates first: their message names both files
        if file.suffix == ".mat" and file.stem.isascii() and file.stem.isdigit():
            frame = int(file.stem)
            if frame in by_frame:
                raise A2DError(f"{by_frame[frame]} and {file}: both annotate frame {frame}; keep one")
            by_frame[frame] = file
    for file in annotations:
        if not ANNOTATION_NAME.fullmatch(file.name):
            raise A2DError(f"{file}: an annotation must be named <5 digits>.mat, the frame number (e.g. 00003.mat)")
    return by_frame


def read_clip_frames(path: str | Path, frame_numbers, expected_frames: int | None = None,
                     expected_size: tuple[int, int] | None = None) -> dict[int, np.ndarray]:
    """Decode the requested 1-based frames of a clip in one pass: ``{frame: (H, W, 3) uint8 RGB}``.

    Raises :class:`A2DError` naming the video when it cannot be opened, when decoding stops before the last
    requested frame (truncated or short clip), when the container holds fewer frames than ``expected_frames``
    (the count ``videoset.csv`` gives), or when its frames are not ``expected_size`` (height, width: videoset.csv's).
    """
    import cv2

    path = Path(path)
    wanted = sorted({int(k) for k in frame_numbers})
    if wanted and wanted[0] < 1:
        raise A2DError(f"{path}: frame numbers are 1-based; got {wanted[0]}")
    if not path.is_file():
        raise A2DError(f"{path}: video not found")
    cap = cv2.VideoCapture(str(path))
    try:
        if not cap.isOpened():
            raise A2DError(f"{path}: cannot open the video (unreadable or truncated)")
        count = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
        if expected_frames is not None and 0 < count < expected_frames:
            raise A2DError(f"{path}: the video holds {count} frames but videoset.csv says {expected_frames}")
        out: dict[int, np.ndarray] = {}
        pending = set(wanted)
        frame = 0
        while pending:
            ok, bgr = cap.read()
            if not ok:
                raise A2DError(
                    f"{path}: decoding stopped after frame {frame}; frame {min(pending)} was requested "
                    "(the video is truncated or shorter than expected)"
                )
            frame += 1
            if expected_size is not None and bgr.shape[:2] != tuple(expected_size):
                raise A2DError(
                    f"{path}: frames are {bgr.shape[1]}x{bgr.shape[0]} (width x height) but videoset.csv says "
                    f"{expected_size[1]}x{expected_size[0]}; correct the video's row in videoset.csv (or list "
                    f"the video in config dataset.exclude_videos)")
            if frame in pending:
                out[frame] = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
                pending.discard(frame)
    finally:
        cap.release()
    return out
