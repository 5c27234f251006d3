"""Instance annotations of the frames stores, as Mask R-CNN targets.

Reads only what the mask models need (``rgb`` and the instance datasets) from ``results/frames/shard-NNN.h5``
groups ``"{video}/{frame:05d}"`` (see the Frames contract in DESIGN.md), one group at a time.

Targets per source:

- ``dataset``: the actor instances; class = actor = ``instance_ids // 10`` (1..7); ids whose actor is outside
  1..7 (annotation mistakes) are dropped.
- ``generic``: every object, actors *and* non-actor objects, as one class ``1`` ("object"). Non-actor objects come
  from the optional ``distractor_masks`` (M, H, W) uint8 dataset of a frame group, which the synthetic benchmark
  provides (real A2D has no such annotation: there the generic source is a COCO model, see ``train``).

Boxes are recomputed from the masks (tight, x2/y2 exclusive), so a box never disagrees with its mask and empty
masks are dropped before they reach torchvision (which rejects degenerate boxes).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from a2dpipe.dataset.frames import masks_to_boxes  # the frames' own convention, re-exported here
from a2dpipe.io import A2DError, open_hdf5, reading_artifact

__all__ = ["FrameRef", "list_frames", "masks_to_boxes", "InstanceReader"]


@dataclass(frozen=True)
class FrameRef:
    """Where one annotated frame lives: store index in the reader's list, video, 1-based frame, split."""

    store: int
    video: str
    frame: int
    split: str


def _open(path: Path) -> h5py.File:
    if not path.is_file():
        raise A2DError(f"{path}: frames store not found (run `a2dpipe extract-frames`)")
    return open_hdf5(path, "frames store")


def list_frames(paths: list[str | Path], split: str | None = None) -> list[FrameRef]:
    """Every annotated frame of the stores (in store, video, frame order), optionally only one split."""
    refs = []
    for index, path in enumerate(paths):
        with _open(Path(path)) as store:
            for video in sorted(store):
                for name in sorted(store[video]):
                    frame_split = str(store[video][name].attrs.get("split", ""))
                    if split is None or frame_split == split:
                        refs.append(FrameRef(index, video, int(name), frame_split))
    return refs


class InstanceReader:
    """Random access to frames and their instance targets across several frames stores.

    ``read(ref, source)`` returns ``(rgb (H, W, 3) uint8, masks (N, H, W) uint8, labels (N,) int64)``.
    """

    def __init__(self, paths: list[str | Path]):
        self.paths = [Path(p) for p in paths]
        self._files = [_open(p) for p in self.paths]

    def group(self, ref: FrameRef) -> h5py.Group:
        try:
            return self._files[ref.store][f"{ref.video}/{ref.frame:05d}"]
        except KeyError:
            raise A2DError(f"{self.paths[ref.store]}: no frame {ref.video}/{ref.frame:05d}") from None

    def rgb(self, ref: FrameRef) -> np.ndarray:
        return self.group(ref)["rgb"][()]

    def read(self, ref: FrameRef, source: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        group = self.group(ref)
        path = self.paths[ref.store]
        with reading_artifact(path, "frames store", f"frame {ref.video}/{ref.frame:05d}"):
            try:
                rgb = group["rgb"][()]
                masks = group["instance_masks"][()].astype(np.uint8)
                actors = group["instance_ids"][()].astype(np.int64) // 10
            except KeyError as err:
                raise A2DError(f"{path}: frame {ref.video}/{ref.frame:05d} lacks {err} (Frames contract)") from None
        keep = (actors >= 1) & (actors <= 7)
        masks, labels = masks[keep], actors[keep]
        if source == "generic":
            if "distractor_masks" not in group:
                raise A2DError(
                    f"{path}: frame {ref.video}/{ref.frame:05d} has no 'distractor_masks': the generic mask source "
                    "is trained on every object, so it needs the synthetic benchmark's non-actor objects; on real "
                    "A2D set masks.coco_checkpoint to use a COCO model instead"
                )
            others = group["distractor_masks"][()].astype(np.uint8).reshape(-1, *rgb.shape[:2])
            masks = np.concatenate([masks, others])
            labels = np.ones(len(masks), np.int64)
        elif source != "dataset":
            raise ValueError(f"source must be dataset or generic, got {source!r}")
        nonempty = masks.reshape(len(masks), -1).any(axis=1)
        return rgb, masks[nonempty], labels[nonempty]

    def close(self) -> None:
        for f in self._files:
            f.close()

    def __enter__(self) -> "InstanceReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
