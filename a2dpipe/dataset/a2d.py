"""Reading (and writing) datasets in the A2D release layout.

Layout of a dataset root (the A2D "Release" folder)::

    videoset.csv                              no header; one row per video (see VIDEOSET_COLUMNS)
    clips320H/<video>.mp4                     the clip
    Annotations/mat/<video>/<frame:05d>.mat   MATLAB v7.3 (HDF5) annotation of a 1-based frame
    Annotations/col/<video>/<frame:05d>.png   the same annotation as a colour image
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import pandas as pd

from a2dpipe.io import A2DError, atomic_path
from a2dpipe.labels import VALID_PAIRS

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
        raise A2DError(
            f"{path}: usage must be 0 (train) or 1 (test); row {int(bad.idxmax()) + 1} has {table['usage'][bad].iloc[0]}"
        )
    if table["video"].duplicated().any():
        raise A2DError(f"{path}: video {table['video'][table['video'].duplicated()].iloc[0]!r} is listed twice")
    table[int_cols] = table[int_cols].astype(int)
    table["split"] = table["usage"].map(SPLITS)
    return table


# --------------------------------------------------------------------------------------------------------------
# Annotations (MATLAB v7.3 .mat files)
# --------------------------------------------------------------------------------------------------------------

MATLAB_HEADER = "MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: Thu Jan  1 00:00:00 1970 HDF5 schema 1.00 ."
USERBLOCK_SIZE = 512


@dataclass
class Annotation:
    """Ground truth of one annotated frame.

    Attributes:
        id_map: (H, W) uint8 A2D ids (actor * 10 + action, 0 background).
        masks: (N, H, W) float32 in [0, 1], one (soft or binary) mask per instance.
        boxes: (N, 4) float32 x1, y1, x2, y2 in pixels, as stored in the file.
        ids: (N,) uint8 A2D id of each instance.
    """

    id_map: np.ndarray
    masks: np.ndarray
    boxes: np.ndarray
    ids: np.ndarray

    def __post_init__(self) -> None:
        n = len(self.ids)
        if self.masks.shape != (n, *self.id_map.shape) or self.boxes.shape != (n, 4):
            raise ValueError(
                f"inconsistent annotation: id_map {self.id_map.shape}, masks {self.masks.shape}, "
                f"boxes {self.boxes.shape}, ids {self.ids.shape}"
            )

    @property
    def height(self) -> int:
        return int(self.id_map.shape[0])

    @property
    def width(self) -> int:
        return int(self.id_map.shape[1])


def _matlab_array(f, name: str, path: Path) -> np.ndarray | None:
    """A MATLAB variable as h5py stores it (still transposed); ``None`` when absent, empty array when MATLAB_empty."""
    if name not in f:
        return None
    obj = f[name]
    if not isinstance(obj, h5py.Dataset):
        raise A2DError(f"{path}: {name!r} is a {type(obj).__name__}, expected a numeric array")
    if obj.attrs.get("MATLAB_empty", 0):
        return np.zeros((0,), dtype=np.float64)
    data = obj[()]
    if not np.issubdtype(np.asarray(data).dtype, np.number) and np.asarray(data).dtype != bool:
        raise A2DError(f"{path}: {name!r} holds {np.asarray(data).dtype} values, expected numbers")
    return np.asarray(data)


def _as_ids(values: np.ndarray, what: str, path: Path) -> np.ndarray:
    """Check that values are whole numbers in 0..255 and return them as uint8."""
    values = np.asarray(values)
    if values.size and (not np.all(np.isfinite(values)) or np.any(values != np.round(values))):
        raise A2DError(f"{path}: {what} holds non-integer values")
    if values.size and (values.min() < 0 or values.max() > 255):
        raise A2DError(f"{path}: {what} holds values outside 0..255 ({values.min()}..{values.max()})")
    return values.astype(np.uint8)


def read_annotation(path: str | Path) -> Annotation:
    """Read one A2D annotation ``.mat`` (MATLAB v7.3) into an :class:`Annotation`.

    h5py sees MATLAB arrays transposed: ``reS_id`` is (W, H); ``reMask`` is (N, W, H), or (W, H) for a single
    instance; ``reBBox`` is (4, N); ``id`` is (1, N) float64. Defects of the real release are repaired and logged:
    duplicated instances (same id and mask) are dropped; when there are more masks (or boxes) than ids, the first
    ``len(ids)`` are kept. An instance id outside the 43 valid pairs, or anything else that is wrong, raises :class:`A2DError` naming the file.
    """
    path = Path(path)
    try:
        f = h5py.File(path, "r")
    except FileNotFoundError:
        raise A2DError(f"{path}: annotation file not found") from None
    except OSError as err:
        raise A2DError(f"{path}: not a MATLAB v7.3 (HDF5) file: {err}") from None
    with f:
        fields = {name: _matlab_array(f, name, path) for name in ("reS_id", "reMask", "reBBox", "id")}
    missing = [name for name, value in fields.items() if value is None]
    if missing:
        raise A2DError(f"{path}: missing field(s) {', '.join(missing)}")

    seg = fields["reS_id"]
    if seg.ndim != 2:
        raise A2DError(f"{path}: reS_id has shape {seg.shape}, expected (W, H)")
    id_map = _as_ids(seg.T, "reS_id", path)
    height, width = id_map.shape

    ids = _as_ids(fields["id"].reshape(-1), "id", path)
    n = len(ids)
    invalid = sorted(set(ids.tolist()) - set(VALID_PAIRS))
    if invalid:  # an instance must be an actor doing something; pixels with such ids are only ignored
        raise A2DError(f"{path}: instance id(s) {invalid} are not among the 43 valid actor-action pairs")

    mask = fields["reMask"]
    if mask.size == 0:
        mask = np.zeros((0, height, width), dtype=np.float32)
    elif mask.ndim == 2:  # a single instance has no instance axis
        mask = mask.T[None]
    elif mask.ndim == 3:
        mask = mask.transpose(0, 2, 1)
    else:
        raise A2DError(f"{path}: reMask has shape {fields['reMask'].shape}, expected (N, W, H) or (W, H)")
    if mask.shape[1:] != (height, width):
        raise A2DError(f"{path}: reMask is {mask.shape[2]}x{mask.shape[1]} (WxH) but reS_id is {width}x{height}")
    mask = mask.astype(np.float32)
    if mask.size and (mask.min() < 0 or mask.max() > 1):
        raise A2DError(f"{path}: reMask values lie outside [0, 1] ({mask.min()}..{mask.max()})")

    box = fields["reBBox"]
    if box.size == 0:
        box = np.zeros((0, 4), dtype=np.float32)
    elif box.ndim == 2 and box.shape[0] == 4:
        box = box.T.astype(np.float32)
    elif box.size == 4 and n == 1:  # one box saved as a vector: orientation carries no information
        box = box.reshape(1, 4).astype(np.float32)
    else:
        raise A2DError(f"{path}: reBBox has shape {fields['reBBox'].shape}, expected (4, N)")

    for name, arr in (("reMask", mask), ("reBBox", box)):
        if len(arr) < n:
            raise A2DError(f"{path}: {len(arr)} instance(s) in {name} but {n} id(s)")
    if len(mask) > n or len(box) > n:
        log.warning("%s: %d mask(s), %d box(es) for %d id(s); keeping the first %d", path, len(mask), len(box), n, n)
        mask, box = mask[:n], box[:n]

    keep = _unique_instances(ids, mask)
    if len(keep) < n:
        log.warning("%s: dropped %d duplicated instance(s)", path, n - len(keep))
        ids, mask, box = ids[keep], mask[keep], box[keep]
    return Annotation(id_map=id_map, masks=np.ascontiguousarray(mask), boxes=box, ids=ids)


def _unique_instances(ids: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """Indices of the first occurrence of each (id, mask) pair, in order."""
    flat = masks.reshape(len(masks), masks[0].size if len(masks) else 0)
    seen: dict[tuple[int, bytes], int] = {}
    for i in range(len(ids)):  # instances, not pixels: a handful per frame
        seen.setdefault((int(ids[i]), flat[i].tobytes()), i)
    return np.array(sorted(seen.values()), dtype=np.int64)


def _write_matlab(f, name: str, array: np.ndarray, matlab_class: str) -> None:
    """Store ``array``, indexed as in MATLAB, as MATLAB does: transposed (column-major), with ``MATLAB_class``."""
    if array.size == 0:
        # MATLAB writes an empty array as its dimensions (uint64) flagged MATLAB_empty.
        dims = np.array(array.shape if array.ndim >= 2 else (0, 0), dtype=np.uint64)
        ds = f.create_dataset(name, data=dims, track_times=False)
        ds.attrs["MATLAB_empty"] = np.uint8(1)
    else:
        ds = f.create_dataset(name, data=np.ascontiguousarray(array.T), track_times=False)
    ds.attrs["MATLAB_class"] = np.bytes_(matlab_class)
    if matlab_class == "logical":
        ds.attrs["MATLAB_int_decode"] = np.int32(1)


def write_annotation(path: str | Path, annotation: Annotation) -> None:
    """Write ``annotation`` as a genuine MATLAB v7.3 ``.mat`` (atomically).

    The file is HDF5 with a 512-byte user block holding the MATLAB header text, each variable carries its
    ``MATLAB_class`` attribute and is stored transposed (MATLAB is column-major): ``reS_id`` (H, W) uint8,
    ``reMask`` (H, W, N) logical if binary else double (a single instance is a plain (H, W) matrix),
    ``reBBox`` (N, 4) double and ``id`` (N, 1) double (h5py reads these as (4, N) and (1, N)).
    """
    a = annotation
    binary = bool(np.all((a.masks == 0) | (a.masks == 1)))
    masks = a.masks.transpose(1, 2, 0)  # MATLAB's (H, W, N); h5py reads it back as (N, W, H)
    masks = masks[:, :, 0] if len(a.ids) == 1 else masks  # MATLAB drops a trailing singleton dimension
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w", userblock_size=USERBLOCK_SIZE, libver="earliest") as f:
            _write_matlab(f, "reS_id", a.id_map.astype(np.uint8), "uint8")
            _write_matlab(
                f, "reMask", masks.astype(np.uint8 if binary else np.float64), "logical" if binary else "double"
            )
            _write_matlab(f, "reBBox", a.boxes.astype(np.float64), "double")  # h5py reads (4, N)
            _write_matlab(f, "id", a.ids.astype(np.float64)[:, None], "double")  # h5py reads (1, N)
        _write_matlab_header(tmp)


def _write_matlab_header(path: Path) -> None:
    # 116 bytes of text, 8 bytes subsystem offset, version 0x0200 and the 'IM' endian mark (little-endian).
    header = MATLAB_HEADER.ljust(116).encode("ascii") + b"\x00" * 8 + b"\x00\x02IM"
    with open(path, "r+b") as f:
        f.write(header)


# --------------------------------------------------------------------------------------------------------------
# Dataset root: paths, annotated frames, clips
# --------------------------------------------------------------------------------------------------------------


def video_path(root: str | Path, video: str) -> Path:
    return Path(root, "clips320H", f"{video}.mp4")


def annotation_path(root: str | Path, video: str, frame: int) -> Path:
    return Path(root, "Annotations", "mat", video, f"{frame:05d}.mat")


def colour_path(root: str | Path, video: str, frame: int) -> Path:
    return Path(root, "Annotations", "col", video, f"{frame:05d}.png")


def list_annotated_frames(root: str | Path, videoset: pd.DataFrame | None = None) -> pd.DataFrame:
    """Annotated frames of a dataset root, from ``Annotations/mat/<video>/<frame:05d>.mat``.

    Returns a frame with columns ``video, frame, split`` (frame numbers 1-based), videos in ``videoset`` order
    and frames ascending. The count per video must equal ``num_annotated_frames`` of ``videoset.csv`` and every
    frame must lie in ``1..num_frames``; otherwise :class:`A2DError` names the video.
    """
    root = Path(root)
    if videoset is None:
        videoset = read_videoset(root / "videoset.csv")
    rows: list[tuple[str, int, str]] = []
    for video, expected, num_frames, split in videoset[
        ["video", "num_annotated_frames", "num_frames", "split"]
    ].itertuples(index=False):
        folder = root / "Annotations" / "mat" / video
        files = sorted(folder.glob("*.mat")) if folder.is_dir() else []
        if len(files) != expected:
            raise A2DError(f"{folder}: video {video} has {len(files)} annotated frame(s); videoset.csv says {expected}")
        for file in files:
            if not file.stem.isdigit():
                raise A2DError(f"{file}: annotation name is not a frame number")
            frame = int(file.stem)
            if not 1 <= frame <= num_frames:
                raise A2DError(f"{file}: video {video} frame {frame} lies outside 1..{num_frames} (videoset.csv)")
            rows.append((video, frame, split))
    return pd.DataFrame(rows, columns=["video", "frame", "split"])


def read_clip_frames(path: str | Path, frame_numbers, expected_frames: int | None = None) -> dict[int, np.ndarray]:
    """Decode the requested 1-based frames of a clip in one pass: ``{frame: (H, W, 3) uint8 RGB}``.

    Raises :class:`A2DError` naming the video when it cannot be opened, when decoding stops before the last
    requested frame (truncated or short clip), or when the container holds fewer frames than ``expected_frames``
    (the count ``videoset.csv`` gives).
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
            if frame in pending:
                out[frame] = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
                pending.discard(frame)
    finally:
        cap.release()
    return out
