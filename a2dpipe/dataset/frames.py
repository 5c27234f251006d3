"""Frames of one shard: ``a2dpipe extract-frames --config C --root DIR --index CSV --shard NNN --out FILE``.

Decodes each annotated frame of the shard's videos and its optical-flow partner, and stores them with the
ground truth in one HDF5 file (written atomically). Layout, one group per annotated frame ``"{video}/{frame:05d}"``:

================== ============ ======================================================================
dataset            shape, type  content
================== ============ ======================================================================
``rgb``            (H, W, 3) u8 the annotated frame, RGB
``neighbour``      (H, W, 3) u8 its flow partner, RGB
``label``          (H, W) u8    raw A2D id map (invalid ids kept as they are; labels.to_setting ignores them)
``instance_masks`` (N, H, W) u8 0/1 instance masks (soft masks thresholded at 0.5)
``instance_boxes`` (N, 4) f32   x1, y1, x2, y2 in pixels as annotated, clipped to the frame (trainers use
                                the masks' tight boxes, :func:`masks_to_boxes`, instead)
``instance_ids``   (N,) u8      A2D id of each instance
================== ============ ======================================================================

Every non-empty dataset carries a Fletcher-32 checksum: a flipped bit is an error naming the file when it is read.
The three images are stored in 64 x 64-pixel chunks (:func:`a2dpipe.stores.pixel_chunks`), so that a training
crop decodes only the tiles it overlaps; shards written with other chunks read the same.
On the synthetic benchmark a group also holds ``distractor_masks`` (M, H, W) u8 0/1: the visible non-actor
objects, which the generic mask source is trained on (read from the benchmark's sidecar files; absent on A2D).

Group attributes: ``split`` ('train' / 'val' / 'test'), ``neighbour_frame`` (1-based) and ``direction``: ``'next'`` means
flow is taken from the frame to frame + 1, ``'previous'`` from frame - 1 to the frame. ``frames.neighbour``
chooses; the last frame of a clip always uses ``'previous'`` and the first always ``'next'``. Text attributes are
stored at fixed length (read back through :meth:`FrameStore.group_attrs`), inside the checksummed object headers;
version 1 stored ``split`` and ``direction`` as variable-length strings in HDF5's global heap, where a damaged
length can hang a reader, and is refused.
Root attributes: ``schema`` (``"a2dpipe.frames/2"``, :data:`FORMAT`), ``shard``, ``neighbour``, ``compression``.
Written by :class:`FrameWriter`, read back with :class:`FrameStore` (both on :mod:`a2dpipe.stores`).
"""

from __future__ import annotations

import argparse
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from a2dpipe import labels
from a2dpipe.dataset.a2d import annotation_path, read_clip_frames, read_videoset, video_path
from a2dpipe.dataset.annotation import masks_to_boxes, read_annotation
from a2dpipe.dataset.index import read_index
from a2dpipe.settings import add_config_arguments, read_settings
from a2dpipe.errors import A2DError
from a2dpipe.dataset.synthetic import distractor_path, read_distractors
from a2dpipe.progress import progress
from a2dpipe.stores import ArtifactFormat, ArtifactReader, ArtifactWriter, pixel_chunks

log = logging.getLogger(__name__)

__all__ = ["FORMAT", "FrameRecord", "FrameStore", "FrameWriter", "extract_shard", "masks_to_boxes", "neighbour_of"]

FORMAT = ArtifactFormat("frames", 2, "frames shard")


@dataclass
class FrameRecord:
    """One annotated frame as stored by :func:`extract_shard` (shapes in the module docstring)."""

    video: str
    frame: int
    split: str
    rgb: np.ndarray
    neighbour: np.ndarray
    label: np.ndarray
    instance_masks: np.ndarray
    instance_boxes: np.ndarray
    instance_ids: np.ndarray
    direction: str
    neighbour_frame: int


class FrameStore(ArtifactReader):
    """Read-only access to a frames shard.

    ``keys(split)`` lists a split from the groups' ``split`` attributes, reading no frame data.

    >>> with FrameStore("results/frames/shard-000.h5") as store:     # doctest: +SKIP
    ...     for video, frame in store.keys():
    ...         record = store.read(video, frame)
    """

    FORMAT = FORMAT

    def __iter__(self):
        return (self.read(video, frame) for video, frame in self.keys())

    def read(self, video: str, frame: int) -> FrameRecord:
        arrays = self.read_arrays(video, frame, _RECORD_DATASETS)
        attrs = self.group_attrs(video, frame)
        return FrameRecord(
            video=video,
            frame=int(frame),
            split=str(attrs["split"]),
            **arrays,
            direction=str(attrs["direction"]),
            neighbour_frame=int(attrs["neighbour_frame"]),
        )


_RECORD_DATASETS = ("rgb", "neighbour", "label", "instance_masks", "instance_boxes", "instance_ids")


class FrameWriter(ArtifactWriter):
    """Writes a frames shard atomically; ``create_group(video, frame)`` gives the group a frame is stored in."""

    FORMAT = FORMAT


def configure_parser(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser, "extract-frames")
    parser.add_argument("--root", required=True, help="dataset root in the A2D layout")
    parser.add_argument("--index", required=True, help="index CSV written by `a2dpipe index`")
    parser.add_argument("--shard", required=True, help="3-digit shard id, e.g. 000")
    parser.add_argument("--out", required=True, help="HDF5 file to write")


def run(args: argparse.Namespace) -> None:
    section = read_settings(args, "extract-frames")["frames"]
    extract_shard(
        args.root,
        read_index(args.index),
        args.shard,
        args.out,
        neighbour=section["neighbour"],
        compression=section["compression"],
    )


def neighbour_of(frame: int, num_frames: int, neighbour: str = "next") -> tuple[int, str]:
    """Flow partner of a 1-based frame: ``(partner, direction)`` (see the module docstring)."""
    if neighbour not in ("next", "previous"):
        raise A2DError(f"config frames.neighbour: expected 'next' or 'previous', got {neighbour!r}")
    if num_frames < 2:
        raise A2DError(f"a clip of {num_frames} frame(s) has no flow partner")
    if (neighbour == "next" and frame < num_frames) or frame == 1:
        return frame + 1, "next"
    return frame - 1, "previous"


def _compression(name: str) -> dict:
    """Filters of every non-empty dataset: the configured compression plus a Fletcher-32 checksum, so that a
    flipped bit in a stored frame is an error when it is read, not silently wrong pixels."""
    if name == "lzf":
        return {"compression": "lzf", "fletcher32": True}
    if name == "gzip":
        return {"compression": "gzip", "compression_opts": 4, "fletcher32": True}
    if name == "none":
        return {"fletcher32": True}
    raise A2DError(f"config frames.compression: expected lzf, gzip or none, got {name!r}")


def extract_shard(
    root: str | Path, index, shard: str, out: str | Path, neighbour: str = "next", compression: str = "lzf"
) -> int:
    """Write the frames of ``shard`` (rows of ``index`` whose shard matches) to ``out``; returns the frame count."""
    root = Path(root)
    rows = index[index["shard"] == shard]
    if rows.empty:
        raise A2DError(f"{root / 'videoset.csv'}: shard {shard!r} has no annotated frame: {_unannotated(root, index)}")
    opts = _compression(compression)
    started = time.perf_counter()
    count = 0
    made_with = {"frames": {"neighbour": neighbour, "compression": compression}}
    with (FrameWriter(out, attrs={"shard": shard, "neighbour": neighbour, "compression": compression},
                      settings=made_with) as f, progress(total=len(rows), desc=f"frames shard {shard}") as bar):
        for video, clip in rows.groupby("video", sort=False):
            num_frames = int(clip["num_frames"].iloc[0])
            frames = [int(x) for x in clip["frame"]]
            beyond = [x for x in frames if x > num_frames]
            if beyond:
                raise A2DError(f"video {video}: annotated frame {beyond[0]} lies beyond its {num_frames} frames")
            try:
                partners = {x: neighbour_of(x, num_frames, neighbour) for x in frames}
            except A2DError as err:
                raise A2DError(f"{video_path(root, video)}: {err} (videoset.csv gives video {video} "
                               f"{num_frames} frame(s)); list {video} in config dataset.exclude_videos") from None
            wanted = set(frames) | {p for p, _ in partners.values()}
            size = (int(clip["height"].iloc[0]), int(clip["width"].iloc[0]))
            decoded = read_clip_frames(video_path(root, video), wanted, expected_frames=num_frames,
                                       expected_size=size)
            for row in clip.itertuples(index=False):
                _write_frame(f, root, row, decoded, partners[int(row.frame)], opts)
                count += 1
            bar.update(len(clip))
    log.info(
        "shard %s: %d frames of %d videos in %.1f s -> %s",
        shard,
        count,
        rows["video"].nunique(),
        time.perf_counter() - started,
        out,
    )
    return count


def _unannotated(root: Path, index) -> str:
    """Why a shard is empty, with the fix: the shard count follows videoset.csv, whose videos without an annotated
    frame (listed last) get shards of their own that no annotated frame fills."""
    videoset = read_videoset(root / "videoset.csv")
    missing = [v for v in videoset["video"] if v not in set(index["video"])]
    if not missing:
        return "the index lists none of its videos; rebuild it with `snakemake --forcerun index`"
    shown = ", ".join(missing[:8]) + (f" and {len(missing) - 8} more" if len(missing) > 8 else "")
    return (f"videoset.csv lists {len(missing)} video(s) without one ({shown}); list them in config "
            f"dataset.exclude_videos")


def _write_frame(f: FrameWriter, root: Path, row, decoded: dict, partner: tuple[int, str], opts: dict) -> None:
    video, frame = row.video, int(row.frame)
    path = annotation_path(root, video, frame)
    ann = read_annotation(path)
    rgb = decoded[frame]
    if ann.id_map.shape != rgb.shape[:2]:
        raise A2DError(
            f"{path}: annotation is {ann.width}x{ann.height} but frame {frame} of video {video} is "
            f"{rgb.shape[1]}x{rgb.shape[0]}"
        )
    invalid = ~labels.is_valid(ann.id_map)
    if invalid.any():
        log.warning(
            "%s: %d pixel(s) carry ids outside the 43 valid pairs %s (kept; ignored downstream)",
            path,
            int(invalid.sum()),
            sorted(set(np.unique(ann.id_map[invalid]).tolist())),
        )
    g = f.create_group(video, frame)
    g.set_attrs(split=row.split, neighbour_frame=partner[0], direction=partner[1])
    for name, image in (("rgb", rgb), ("neighbour", decoded[partner[0]]), ("label", ann.id_map)):
        g.create_dataset(name, data=image, chunks=pixel_chunks(image.shape), **opts)
    masks = (ann.masks >= 0.5).astype(np.uint8)
    g.create_dataset("instance_masks", data=masks, **(opts if masks.size else {}))
    g.create_dataset("instance_boxes", data=ann.boxes.astype(np.float32), **(opts if masks.size else {}))
    g.create_dataset("instance_ids", data=ann.ids.astype(np.uint8), **(opts if masks.size else {}))
    distractors = read_distractors(root, video, frame)  # None on real A2D
    if distractors is not None:
        if distractors.shape[1:] != rgb.shape[:2]:
            raise A2DError(
                f"{distractor_path(root, video, frame)}: distractor index is {distractors.shape[2]}x"
                f"{distractors.shape[1]} but frame {frame} of video {video} is {rgb.shape[1]}x{rgb.shape[0]}"
            )
        g.create_dataset("distractor_masks", data=distractors, **(opts if distractors.size else {}))
