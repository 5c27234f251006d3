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

The folder it writes holds ``.a2dpipe-synthetic.json`` (the settings it was made with and the package version);
``synthesize`` replaces only a folder holding that mark and refuses, naming it, to replace any other (a real A2D
copy that ``dataset.root`` points at stays untouched).
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import cv2
import numpy as np

from a2dpipe import labels
from a2dpipe.dataset.a2d import annotation_path, colour_path, video_path
from a2dpipe.dataset.annotation import write_annotation
from a2dpipe.dataset.scenes import plan_clips, render_clip
from a2dpipe.config import add_config_arguments, read_settings, section_defaults, stamp
from a2dpipe.io import A2DError, atomic_path

log = logging.getLogger(__name__)

FPS = 24


def configure_parser(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser, "seed, synthetic")
    parser.add_argument("--out", required=True, help="dataset root to write (A2D layout)")


def run(args: argparse.Namespace) -> None:
    settings = read_settings(args)
    synthesize(settings["synthetic"], settings["seed"], args.out)


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
    """The ``synthetic`` section validated and completed with the schema's defaults, plus the checks it cannot state."""
    s = section_defaults("synthetic", section)
    if s["videos"] < 2:
        raise A2DError("config synthetic.videos: need at least 2 clips (one per split)")
    if s["height"] % 2 or any(w % 2 for w in s["widths"]):
        raise A2DError("config synthetic.height/widths: MPEG-4 needs even frame sizes")
    if not 1 <= s["annotated_frames"] <= s["frames"]:
        raise A2DError("config synthetic.annotated_frames: must lie in 1..synthetic.frames")
    return s



def _write_video(path: Path, images: list[np.ndarray], quality: int) -> None:
    """MPEG-4 Part 2 (``mp4v``) through OpenCV, after a JPEG round trip at ``quality`` (extra lossy detail loss)."""
    height, width = images[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), FPS, (width, height))
    if not writer.isOpened():
        raise A2DError(f"{path}: OpenCV cannot write mp4v video on this machine")
    try:
        for rgb in images:
            bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
            ok, jpeg = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
            writer.write(cv2.imdecode(jpeg, cv2.IMREAD_COLOR) if ok else bgr)
    finally:
        writer.release()


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


def synthesize(section: dict, seed: int, out: str | Path) -> None:
    """Write the benchmark into ``out`` (replaced atomically as a whole, and only if ``synthesize`` wrote it)."""
    s = _settings(section)
    check_replaceable(out)
    started = time.perf_counter()
    root_rng = np.random.default_rng(seed)
    plan = plan_clips(s, root_rng)
    clip_seeds = np.random.SeedSequence(seed).spawn(len(plan))  # each clip independent of the others
    rows = []
    with atomic_path(out) as tmp:
        tmp.mkdir(parents=True)
        (tmp / "clips320H").mkdir()
        for clip, clip_seed in zip(plan, clip_seeds):
            rng = np.random.default_rng(clip_seed)
            distractor_maps: dict[int, np.ndarray] = {}
            images, annotations, annotated = render_clip(s, clip, rng, distractor_maps)
            _write_video(video_path(tmp, clip["video"]), images, s["video_quality"])
            for frame, ann in annotations.items():
                path = annotation_path(tmp, clip["video"], frame)
                path.parent.mkdir(parents=True, exist_ok=True)
                write_annotation(path, ann)
                col = colour_path(tmp, clip["video"], frame)
                col.parent.mkdir(parents=True, exist_ok=True)
                cv2.imwrite(str(col), cv2.cvtColor(labels.colorize(ann.id_map), cv2.COLOR_RGB2BGR))
                sidecar = distractor_path(tmp, clip["video"], frame)
                sidecar.parent.mkdir(parents=True, exist_ok=True)
                cv2.imwrite(str(sidecar), distractor_maps[frame])
            start = int(rng.integers(0, 300))
            rows.append(
                f"{clip['video']},{clip['pairs'][0]},{_clock(start)},{_clock(start + s['frames'] / FPS)},"
                f"{s['height']},{clip['width']},{s['frames']},{len(annotated)},{clip['usage']}"
            )
        (tmp / "videoset.csv").write_text("\n".join(rows) + "\n")
        (tmp / MARKER).write_text(json.dumps(stamp({"seed": seed, "synthetic": s}), indent=1) + "\n")
    n_test = sum(c["usage"] for c in plan)
    log.info(
        "wrote %d clips (%d train, %d test), %d annotated frames to %s in %.1f s",
        len(plan),
        len(plan) - n_test,
        n_test,
        len(plan) * s["annotated_frames"],
        out,
        time.perf_counter() - started,
    )
