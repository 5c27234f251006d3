"""Instance annotations of the frames stores, as Mask R-CNN targets.

Reads only what the mask models need (``rgb`` and the instance datasets) from the frames shards
``results/frames/shard-NNN.h5``, through their reader :class:`a2dpipe.dataset.frames.FrameStore`, one frame at
a time.

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

import numpy as np

from a2dpipe.dataset.frames import FrameStore, masks_to_boxes  # the frames' own box convention, re-exported here
from a2dpipe.errors import A2DError
from a2dpipe.stores import group_key

__all__ = ["FrameRef", "list_frames", "masks_to_boxes", "InstanceReader"]


@dataclass(frozen=True)
class FrameRef:
    """Where one annotated frame lives: store index in the reader's list, video, 1-based frame, split."""

    store: int
    video: str
    frame: int
    split: str




def list_frames(paths: list[str | Path], split: str | tuple[str, ...] | None = None) -> list[FrameRef]:
    """Every annotated frame of the stores (in store, video, frame order), optionally only one split or several.

    Reads group names and attributes only, no frame data.
    """
    splits = (split,) if isinstance(split, str) else split
    refs = []
    for index, path in enumerate(paths):
        with FrameStore(path) as store:
            for video, frame in store.keys():
                frame_split = store.split_of(video, frame)
                if splits is None or frame_split in splits:
                    refs.append(FrameRef(index, video, frame, frame_split))
    return refs


class InstanceReader:
    """Random access to frames and their instance targets across several frames stores.

    ``read(ref, source)`` returns ``(rgb (H, W, 3) uint8, masks (N, H, W) uint8, labels (N,) int64)``.
    """

    def __init__(self, paths: list[str | Path]):
        self.paths = [Path(p) for p in paths]
        self._stores: list[FrameStore] = []
        try:
            self._stores += [FrameStore(p) for p in self.paths]
        except BaseException:
            self.close()
            raise

    def rgb(self, ref: FrameRef) -> np.ndarray:
        return self._stores[ref.store].read_arrays(ref.video, ref.frame, ("rgb",))["rgb"]

    def read(self, ref: FrameRef, source: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        path = self.paths[ref.store]
        extra = ("distractor_masks",) if source == "generic" else ()  # optional: checked below with a reason
        arrays = self._stores[ref.store].read_arrays(
            ref.video, ref.frame, ("rgb", "instance_masks", "instance_ids"), optional=extra
        )
        rgb = arrays["rgb"]
        masks = arrays["instance_masks"].astype(np.uint8)
        actors = arrays["instance_ids"].astype(np.int64) // 10
        keep = (actors >= 1) & (actors <= 7)
        masks, labels = masks[keep], actors[keep]
        if source == "generic":
            if "distractor_masks" not in arrays:
                raise A2DError(
                    f"{path}: frame {group_key(ref.video, ref.frame)} has no 'distractor_masks': the generic mask "
                    "source is trained on every object, so it needs the synthetic benchmark's non-actor objects; on "
                    "real A2D set masks.coco_checkpoint to use a COCO model, or leave generic out of "
                    "experiments.regions (docs/real-a2d.md)"
                )
            others = arrays["distractor_masks"].astype(np.uint8).reshape(-1, *rgb.shape[:2])
            masks = np.concatenate([masks, others])
            labels = np.ones(len(masks), np.int64)
        elif source != "dataset":
            raise ValueError(f"source must be dataset or generic, got {source!r}")
        nonempty = masks.reshape(len(masks), -1).any(axis=1)
        return rgb, masks[nonempty], labels[nonempty]

    def close(self) -> None:
        for store in self._stores:
            store.close()

    def __enter__(self) -> "InstanceReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
