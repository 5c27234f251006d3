"""Reading (and writing) datasets in the A2D release layout.

Layout of a dataset root (the A2D "Release" folder)::

    videoset.csv                              no header; one row per video (see VIDEOSET_COLUMNS)
    clips320H/<video>.mp4                     the clip
    Annotations/mat/<video>/<frame:05d>.mat   MATLAB v7.3 (HDF5) annotation of a 1-based frame
    Annotations/col/<video>/<frame:05d>.png   the same annotation as a colour image
"""

from __future__ import annotations

import logging
import re
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
    bad = ~table["usage"].isin(list(SPLITS))
    if bad.any():
        raise A2DError(
            f"{path}: usage must be 0 (train) or 1 (test); row {int(bad.idxmax()) + 1} has {table['usage'][bad].iloc[0]}"
        )
    if table["video"].duplicated().any():
        raise A2DError(f"{path}: video {table['video'][table['video'].duplicated()].iloc[0]!r} is listed twice")
    table["split"] = table["usage"].map(SPLITS)
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
# Annotations (MATLAB v7.3 .mat files)
# --------------------------------------------------------------------------------------------------------------

# How far (pixels, any side) a stored box may lie from its mask's extent before it is logged: conventions differ
# by a pixel (MATLAB's 1-based inclusive corners against 0-based exclusive ones), real mistakes by more.
BOX_MASK_TOLERANCE = 3
MATLAB_HEADER = "MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: Thu Jan  1 00:00:00 1970 HDF5 schema 1.00 ."
USERBLOCK_SIZE = 512


@dataclass
class Annotation:
    """Ground truth of one annotated frame.

    Attributes:
        id_map: (H, W) uint8 A2D ids (actor * 10 + action, 0 background).
        masks: (N, H, W) float32 in [0, 1], one (soft or binary) mask per instance.
        boxes: (N, 4) float32 x1, y1, x2, y2 in pixels, as stored in the file but clipped to the frame.
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
    ``len(ids)`` are kept. Boxes are clipped to the frame; instances left with an empty box or an empty mask
    are dropped and logged, and a box far from its mask's extent is logged (:func:`_usable_instances`). An instance
    id outside the 43 valid pairs, a NaN or infinite mask or box value (the message names the instance), or anything
    else that is wrong, raises :class:`A2DError` naming the file.
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
    _check_finite(mask.reshape(len(mask), height * width), "reMask", ids, path)
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
    _check_finite(box, "reBBox", ids, path)

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
    box = np.clip(box, 0, [width, height, width, height]).astype(np.float32)
    keep = _usable_instances(ids, mask, box, path)
    ids, mask, box = ids[keep], mask[keep], box[keep]
    return Annotation(id_map=id_map, masks=np.ascontiguousarray(mask), boxes=box, ids=ids)


def _check_finite(values: np.ndarray, name: str, ids: np.ndarray, path: Path) -> None:
    """:class:`A2DError` naming the first instance (1-based, with its id) whose ``values`` row is NaN or inf."""
    bad = ~np.isfinite(values).all(axis=1) if values.size else np.zeros(len(values), bool)
    if bad.any():
        i = int(bad.argmax())
        which = f"instance {i + 1}" + (f" (id {ids[i]})" if i < len(ids) else "")
        raise A2DError(f"{path}: {name} of {which} holds NaN or infinite values")


def _usable_instances(ids: np.ndarray, masks: np.ndarray, boxes: np.ndarray, path: Path) -> np.ndarray:
    """Indices of the instances worth keeping; the others are logged.

    ``boxes`` are already clipped to the frame. An instance whose box is empty (it lay outside the frame, or was
    inverted or of zero area) or whose mask is empty (no value reaches 0.5) is dropped. A box that differs from its
    mask's tight box by more than ``BOX_MASK_TOLERANCE`` pixels on some side is kept (later stages derive boxes
    from masks) but logged.
    """
    tight = masks_to_boxes(masks >= 0.5)
    empty_box = (boxes[:, 2] <= boxes[:, 0]) | (boxes[:, 3] <= boxes[:, 1])
    empty_mask = ~(masks >= 0.5).any(axis=(1, 2))
    for i in np.flatnonzero(empty_box | empty_mask):
        problem = "its box is empty once clipped to the frame" if empty_box[i] else "its mask is empty"
        log.warning("%s: dropped instance %d (id %d): %s (box %s)", path, i + 1, ids[i], problem, boxes[i].tolist())
    keep = ~(empty_box | empty_mask)
    off = np.abs(boxes - tight).max(axis=1) > BOX_MASK_TOLERANCE
    for i in np.flatnonzero(off & keep):
        log.warning(
            "%s: instance %d (id %d): box %s differs from its mask's extent %s by more than %d pixels",
            path, i + 1, ids[i], boxes[i].tolist(), tight[i].tolist(), BOX_MASK_TOLERANCE,
        )
    return np.flatnonzero(keep)


def masks_to_boxes(masks: np.ndarray) -> np.ndarray:
    """(N, H, W) binary masks -> (N, 4) float32 tight boxes x1, y1, x2, y2 (x2, y2 one past the last pixel).

    Empty masks give (0, 0, 0, 0).
    """
    masks = np.asarray(masks, dtype=bool)
    if len(masks) == 0:
        return np.zeros((0, 4), np.float32)
    rows, cols = masks.any(axis=2), masks.any(axis=1)  # (N, H), (N, W)
    height, width = masks.shape[1:]
    y1 = rows.argmax(axis=1)
    y2 = height - rows[:, ::-1].argmax(axis=1)
    x1 = cols.argmax(axis=1)
    x2 = width - cols[:, ::-1].argmax(axis=1)
    boxes = np.stack([x1, y1, x2, y2], axis=1).astype(np.float32)
    boxes[~rows.any(axis=1)] = 0
    return boxes


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
