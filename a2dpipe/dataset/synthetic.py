"""The synthetic A2D-format benchmark (the embedded default dataset): ``a2dpipe synthesize --config C --out DIR``.

It writes the real A2D release layout (see :mod:`a2dpipe.dataset.a2d`), so one reader serves both, and its content
(planned and drawn by :mod:`a2dpipe.dataset.scenes`) is built to exercise what the method is about:

* **actors by appearance**: each of the 7 actor classes has its own colour, texture and body shape, whatever it
  does; **actions by motion**: the 9 actions differ only in how the actor moves (speed, direction, hops,
  rotation, a swinging limb), so a single RGB frame cannot tell them apart and optical flow can;
* **parts**: most actors carry a limb. *eating* moves only the limb while the body stays still, and *walking*,
  *running* and *crawling* swing it, so per-pixel action evidence differs across one actor (the body of an eating
  adult moves like one doing nothing), which is what region masks make consistent;
* only the 43 valid actor-action pairs, balanced over each split; small actors; 1..``max_actors`` actors per
  clip that overlap and occlude each other; object-like distractors in non-actor colours that a "segment every
  object" model proposes; camera pan and shake; sensor noise, JPEG degradation (``video_quality``) and MPEG-4
  (``mp4v``) compression; widths drawn per clip; a few annotated frames per clip.

Annotations hold the visible part of each actor (after occlusion): ``reS_id`` id map, binary instance masks,
boxes ``x1, y1, x2, y2`` as pixel edges (0-based, exclusive right/bottom) and ids. Everything is drawn from
``seed``: the same config writes identical annotations and videoset.csv.

**A2D-shaped mode** (``synthetic.metadata``: a folder holding the real A2D ``videoset.csv`` and
``annotated-frames.csv``): the clips take the real videos' ids, splits, frame counts, frame sizes, annotated frame
numbers and time stamps, and their actors the actor-action ids the real annotated frames list (at most
``max_actors`` per clip); the content is drawn as above, each clip from the seed and a hash of its id, so a clip is
the same whatever ``fraction`` of the videos is written. This is the rehearsal dataset: the real dataset's size and
shapes through the pipeline, without the real pixels. See :func:`plan_from_metadata`.

The folder it writes holds ``.a2dpipe-synthetic.json`` (the settings it was made with and the package version);
``synthesize`` replaces only a folder holding that mark and refuses, naming it, to replace any other (a real A2D
copy that ``dataset.root`` points at stays untouched).
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import itertools
import json
import logging
import re
import time
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import cv2
import numpy as np

from a2dpipe import labels
from a2dpipe.dataset.a2d import annotation_path, check_video_id, colour_path, read_videoset, video_path
from a2dpipe.dataset.annotation import Annotation, write_annotation
from a2dpipe.dataset.scenes import draw_clip, plan_clips
from a2dpipe.config import check_section, stamp
from a2dpipe.settings import add_config_arguments, read_settings
from a2dpipe.errors import A2DError
from a2dpipe.io import atomic_path

log = logging.getLogger(__name__)

FPS = 24


def configure_parser(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser, "synthesize")
    parser.add_argument("--out", required=True, help="dataset root to write (A2D layout)")
    parser.add_argument("--workers", type=int, default=1, help="clips drawn in parallel processes (default 1)")


def run(args: argparse.Namespace) -> None:
    settings = read_settings(args, "synthesize")
    synthesize(settings["synthetic"], settings["seed"], args.out, workers=args.workers)


MARKER = ".a2dpipe-synthetic.json"


def check_replaceable(root: str | Path) -> None:
    """A2DError unless ``root`` is absent or a benchmark that ``synthesize`` wrote (it holds :data:`MARKER`)."""
    root = Path(root)
    if (root.exists() or root.is_symlink()) and not (root / MARKER).is_file():
        raise A2DError(f"{root}: exists and was not written by `a2dpipe synthesize` (no {MARKER} in it); refusing "
                       f"to replace it: point dataset.root elsewhere, or set dataset.synthetic: false to use it as "
                       f"a dataset")


# --------------------------------------------------------------------------------------------------------------
# Settings
# --------------------------------------------------------------------------------------------------------------

def _settings(section: dict) -> dict:
    """The ``synthetic`` section validated, every key present, plus the checks the schema cannot state."""
    s = check_section("synthetic", section)
    if s["videos"] < 2:
        raise A2DError("config synthetic.videos: need at least 2 clips (one per split)")
    if s["height"] % 2 or any(w % 2 for w in s["widths"]):
        raise A2DError("config synthetic.height/widths: MPEG-4 needs even frame sizes")
    if not 1 <= s["annotated_frames"] <= s["frames"]:
        raise A2DError("config synthetic.annotated_frames: must lie in 1..synthetic.frames")
    return s



def _write_video(path: Path, frames: Iterable[np.ndarray], quality: int) -> int:
    """MPEG-4 Part 2 (``mp4v``) through OpenCV, after a JPEG round trip at ``quality`` (extra lossy detail loss).

    ``frames`` (RGB uint8) are written as they come, so a generator keeps one frame in memory; returns their count.
    """
    frames = iter(frames)
    first = next(frames)
    height, width = first.shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), FPS, (width, height))
    if not writer.isOpened():
        raise A2DError(f"{path}: OpenCV cannot write mp4v video on this machine")
    count = 0
    try:
        for rgb in itertools.chain([first], frames):
            bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
            ok, jpeg = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
            writer.write(cv2.imdecode(jpeg, cv2.IMREAD_COLOR) if ok else bgr)
            count += 1
    finally:
        writer.release()
    return count


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600:02d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def distractor_path(root: str | Path, video: str, frame: int) -> Path:
    """Sidecar of the synthetic benchmark (not part of A2D): the visible distractors of an annotated frame.

    A grey PNG, 0 = no distractor, k = distractor k (after occlusion by actors). Real A2D has no such file.
    """
    return Path(root, "Annotations", "distractors", video, f"{frame:05d}.png")


def read_distractors(root: str | Path, video: str, frame: int) -> np.ndarray | None:
    """(M, H, W) uint8 0/1 masks of the visible distractors of a frame, or None when the dataset has no sidecar."""
    path = distractor_path(root, video, frame)
    if not path.is_file():
        return None
    index = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if index is None or index.ndim != 2:
        raise A2DError(f"{path}: not a single-channel distractor index PNG")
    ids = np.unique(index[index > 0])
    return (index[None] == ids[:, None, None]).astype(np.uint8)


def synthesize(section: dict, seed: int, out: str | Path, workers: int = 1) -> None:
    """Write the benchmark into ``out`` (replaced atomically as a whole, and only if ``synthesize`` wrote it).

    ``workers`` > 1 draws clips in that many processes; each clip depends only on its own seed, so the output is
    the same for any number of workers.
    """
    s = _settings(section)
    if workers < 1:
        raise A2DError(f"--workers: need at least 1, got {workers}")
    check_replaceable(out)
    started = time.perf_counter()
    if s["metadata"] is None:
        plan = plan_clips(s, np.random.default_rng(seed))
        clip_seeds = np.random.SeedSequence(seed).spawn(len(plan))  # each clip independent of the others
    else:
        plan = plan_from_metadata(s["metadata"], s["fraction"], s["max_actors"])
        clip_seeds = [np.random.SeedSequence([seed, *_id_words(clip["video"])]) for clip in plan]
    with atomic_path(out) as tmp:
        tmp.mkdir(parents=True)
        (tmp / "clips320H").mkdir()
        jobs = [(tmp, s, clip, clip_seed) for clip, clip_seed in zip(plan, clip_seeds)]
        if workers == 1:
            written = [_write_clip(*job) for job in jobs]
        else:
            with ProcessPoolExecutor(min(workers, len(jobs))) as pool:
                written = list(pool.map(_write_clip, *zip(*jobs), chunksize=1))
        (tmp / "videoset.csv").write_text("".join(row + "\n" for row, _ in written))
        (tmp / MARKER).write_text(json.dumps(stamp({"seed": seed, "synthetic": s}), indent=1) + "\n")
    frames = sum(n for _, n in written)
    seconds = time.perf_counter() - started
    n_test = sum(c["usage"] for c in plan)
    log.info(
        "wrote %d clips (%d train, %d test), %d frames (%.0f frames/s), %d annotated frames to %s in %.1f s",
        len(plan),
        len(plan) - n_test,
        n_test,
        frames,
        frames / max(seconds, 1e-9),
        sum(len(c["annotated"]) for c in plan) if s["metadata"] else len(plan) * s["annotated_frames"],
        out,
        seconds,
    )


def _write_clip(root: Path, s: dict, clip: dict, clip_seed: np.random.SeedSequence) -> tuple[str, int]:
    """Draw one clip and write its video and annotations under ``root``: its ``videoset.csv`` row and frame count."""
    rng = np.random.default_rng(clip_seed)
    distractor_maps: dict[int, np.ndarray] = {}
    annotations: dict[int, Annotation] = {}
    frames = draw_clip(s, clip, rng, annotations, distractor_maps)  # streamed: one frame in memory at a time
    count = _write_video(video_path(root, clip["video"]), frames, s["video_quality"])
    for frame, ann in annotations.items():
        path = annotation_path(root, clip["video"], frame)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_annotation(path, ann)
        col = colour_path(root, clip["video"], frame)
        col.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(col), cv2.cvtColor(labels.colorize(ann.id_map), cv2.COLOR_RGB2BGR))
        sidecar = distractor_path(root, clip["video"], frame)
        sidecar.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(sidecar), distractor_maps[frame])
    if "start_time" in clip:  # the real video's row, as the metadata gives it
        times, label = f"{clip['start_time']},{clip['end_time']}", clip["label"]
    else:
        start = int(rng.integers(0, 300))
        times, label = f"{_clock(start)},{_clock(start + s['frames'] / FPS)}", clip["pairs"][0]
    height = clip.get("height", s["height"])
    row = f"{clip['video']},{label},{times},{height},{clip['width']},{count},{len(annotations)},{clip['usage']}"
    return row, count


# --------------------------------------------------------------------------------------------------------------
# A2D-shaped mode: the clip plan from the real metadata
# --------------------------------------------------------------------------------------------------------------

VIDEOSET_FILE = "videoset.csv"
ANNOTATED_FILE = "annotated-frames.csv"
ANNOTATED_HEADER = ["img_id", "label", "usage"]
ANNOTATED_ID = re.compile(r"pngs320H/(?P<video>[^/]+)/(?P<frame>[0-9]{5})\.png")


def _id_words(video: str, salt: str = "") -> list[int]:
    """Four 32-bit words of the SHA-256 of ``salt`` + a video id (part of a clip's seed; the fraction's key)."""
    digest = hashlib.sha256((salt + video).encode("utf-8")).digest()
    return [int.from_bytes(digest[i : i + 4], "big") for i in range(0, 16, 4)]


def select_videos(videos: list[str], usage: list[int], fraction: float) -> list[bool]:
    """Which videos a ``fraction`` keeps: those whose id hashes below it, and in a split left empty the one that
    hashes lowest (so both splits stay). A smaller fraction keeps a subset of what a larger one keeps."""
    key = [_id_words(v, "fraction:")[0] / 2**32 for v in videos]  # salted: unrelated to the validation split's hash
    keep = [k < fraction for k in key]
    for split in set(usage):
        members = [i for i, u in enumerate(usage) if u == split]
        if not any(keep[i] for i in members):
            keep[min(members, key=key.__getitem__)] = True
    return keep


def count_metadata_videos(section: dict, exclude=()) -> int:
    """Videos the A2D-shaped mode writes for a ``synthetic`` config section (its ``metadata`` must be set), less
    those in ``exclude``."""
    s = _settings(section)
    videoset = read_videoset(Path(s["metadata"], VIDEOSET_FILE))
    keep = select_videos(list(videoset["video"]), list(videoset["usage"]), s["fraction"])
    return sum(k and video not in exclude for k, video in zip(keep, videoset["video"]))


def plan_from_metadata(folder: str | Path, fraction: float = 1.0, max_actors: int = 3) -> list[dict]:
    """The clip plan of the A2D-shaped mode, in ``videoset.csv`` order, one dict per kept video.

    Each clip holds the real ``video`` id, ``usage``, ``height``, ``width``, ``frames`` (num_frames),
    ``annotated`` (the 1-based frame numbers ``annotated-frames.csv`` lists), ``label``, ``start_time`` and
    ``end_time`` (copied into the written videoset row), and ``pairs``: the valid actor-action ids its annotated
    frames list, most frequent first, at most ``max_actors`` (the video's ``label`` when they list none).
    Bad metadata (a missing file, a malformed row, an annotated frame outside 1..num_frames, a count that differs
    from num_annotated_frames, a video id that is not a plain file name, an odd frame size) raises
    :class:`A2DError` naming the file and the row.
    """
    folder = Path(folder)
    videoset_path = folder / VIDEOSET_FILE
    videoset = read_videoset(videoset_path)
    annotated = _read_annotated_frames(folder / ANNOTATED_FILE, videoset)
    keep = select_videos(list(videoset["video"]), list(videoset["usage"]), fraction)
    plan = []
    for i, row in enumerate(videoset.itertuples(index=False)):
        where = f"{videoset_path}: row {i + 1} (video {row.video})"
        if row.height % 2 or row.width % 2 or min(row.height, row.width) < 32:
            raise A2DError(f"{where}: frame size {row.width}x{row.height}: need even sizes of at least 32 (MPEG-4)")
        if row.num_frames < 1:
            raise A2DError(f"{where}: num_frames is {row.num_frames}; a clip needs at least one frame")
        frames = annotated.get(row.video, {})
        if len(frames) != row.num_annotated_frames:
            raise A2DError(
                f"{where}: num_annotated_frames is {row.num_annotated_frames} but {ANNOTATED_FILE} lists "
                f"{len(frames)} frame(s) of it"
            )
        if not keep[i]:
            continue
        plan.append(
            {
                "video": row.video,
                "usage": int(row.usage),
                "height": int(row.height),
                "width": int(row.width),
                "frames": int(row.num_frames),
                "annotated": sorted(frames),
                "label": int(row.label),
                "start_time": row.start_time,
                "end_time": row.end_time,
                "pairs": _clip_pairs(frames.values(), int(row.label), max_actors),
            }
        )
    return plan


def _clip_pairs(frame_labels, label: int, max_actors: int) -> list[int]:
    """Valid actor-action ids of a video's annotated frames, most frequent first (ties by id), at most
    ``max_actors``; the video's label when no frame lists a valid one, adult-none (19) when it is not one either."""
    counts: dict[int, int] = {}
    for ids in frame_labels:
        for pair in ids:
            if pair in labels.VALID_PAIRS:
                counts[pair] = counts.get(pair, 0) + 1
    pairs = sorted(counts, key=lambda p: (-counts[p], p))[:max_actors]
    return pairs or [label if label in labels.VALID_PAIRS else labels.pair_id(1, 9)]


def _read_annotated_frames(path: Path, videoset) -> dict[str, dict[int, list[int]]]:
    """``{video: {frame: [actor-action ids]}}`` from ``annotated-frames.csv`` (header ``img_id,label,usage``;
    ``img_id`` = ``pngs320H/<video>/<frame:05d>.png``; ``label`` the space-separated ids, written as whole numbers
    or as ``15.0``). Every row is checked against ``videoset.csv``; A2DError names the file and the row."""
    try:
        with path.open(newline="", encoding="utf-8") as f:
            table = list(csv.reader(f))
    except FileNotFoundError:
        raise A2DError(f"{path}: {ANNOTATED_FILE} not found") from None
    except (UnicodeDecodeError, csv.Error) as err:
        raise A2DError(f"{path}: cannot parse {ANNOTATED_FILE}: {err}") from None
    if not table or table[0] != ANNOTATED_HEADER:
        raise A2DError(f"{path}: row 1 must be the header {','.join(ANNOTATED_HEADER)}")
    num_frames = dict(zip(videoset["video"], videoset["num_frames"]))
    splits = dict(zip(videoset["video"], videoset["usage"].astype(str)))
    out: dict[str, dict[int, list[int]]] = {}
    for number, cells in enumerate(table[1:], start=2):
        where = f"{path}: row {number}"
        if len(cells) != len(ANNOTATED_HEADER):
            raise A2DError(f"{where}: expected {len(ANNOTATED_HEADER)} columns, found {len(cells)}")
        img_id, label, usage = cells
        match = ANNOTATED_ID.fullmatch(img_id)
        if match is None:
            raise A2DError(f"{where}: img_id {img_id!r} is not pngs320H/<video>/<frame:05d>.png")
        video, frame = check_video_id(match["video"], where), int(match["frame"])
        if video not in num_frames:
            raise A2DError(f"{where}: video {video} is not in {VIDEOSET_FILE}")
        if not 1 <= frame <= num_frames[video]:
            raise A2DError(
                f"{where}: frame {frame} of video {video} lies outside 1..{num_frames[video]} ({VIDEOSET_FILE})"
            )
        if usage.strip() != splits[video]:
            raise A2DError(f"{where}: usage {usage!r} differs from {VIDEOSET_FILE}'s {splits[video]} for video {video}")
        if frame in out.setdefault(video, {}):
            raise A2DError(f"{where}: frame {frame} of video {video} is listed twice")
        out[video][frame] = _label_ids(label, where)
    return out


def _label_ids(text: str, where: str) -> list[int]:
    """The ids of a ``label`` cell (``"15.0 17.0"``): whole numbers 0..255, else A2DError at ``where``."""
    ids = []
    for token in text.split():
        try:
            value = float(token)
        except ValueError:
            value = float("nan")
        if not (value.is_integer() and 0 <= value <= 255):
            raise A2DError(f"{where}: label {text!r} holds {token!r}, not an actor-action id")
        ids.append(int(value))
    return ids
