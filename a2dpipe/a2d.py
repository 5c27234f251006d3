"""Reading (and writing) datasets in the A2D release layout.

Layout of a dataset root (the A2D "Release" folder)::

    videoset.csv                              no header; one row per video (see VIDEOSET_COLUMNS)
    clips320H/<video>.mp4                     the clip
    Annotations/mat/<video>/<frame:05d>.mat   MATLAB v7.3 (HDF5) annotation of a 1-based frame
    Annotations/col/<video>/<frame:05d>.png   the same annotation as a colour image
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from a2dpipe.io import A2DError

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
SPLITS = {0: "train", 1: "test"}


def read_videoset(path: str | Path) -> pd.DataFrame:
    """Parse ``videoset.csv`` into a frame with ``VIDEOSET_COLUMNS`` plus ``split`` ('train' / 'test')."""
    path = Path(path)
    try:
        table = pd.read_csv(path, header=None, dtype={0: str})
    except FileNotFoundError:
        raise A2DError(f"{path}: videoset.csv not found") from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise A2DError(f"{path}: cannot parse videoset.csv: {err}") from None
    if table.shape[1] != len(VIDEOSET_COLUMNS):
        raise A2DError(f"{path}: expected {len(VIDEOSET_COLUMNS)} columns, found {table.shape[1]}")
    table.columns = list(VIDEOSET_COLUMNS)
    int_cols = ["label", "height", "width", "num_frames", "num_annotated_frames", "usage"]
    for col in int_cols:
        if not pd.api.types.is_numeric_dtype(table[col]):
            raise A2DError(f"{path}: column {col!r} holds non-numeric values")
    bad = ~table["usage"].isin(list(SPLITS))
    if bad.any():
        raise A2DError(f"{path}: usage must be 0 (train) or 1 (test); row {int(bad.idxmax()) + 1} has {table['usage'][bad].iloc[0]}")
    if table["video"].duplicated().any():
        raise A2DError(f"{path}: video {table['video'][table['video'].duplicated()].iloc[0]!r} is listed twice")
    table[int_cols] = table[int_cols].astype(int)
    table["split"] = table["usage"].map(SPLITS)
    return table
