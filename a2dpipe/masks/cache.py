"""HDF5 cache of candidate region masks: one writer (:class:`MaskCacheWriter`), one reader (:class:`MaskCache`).

One file per shard and mask source, ``results/masks/<source>/shard-NNN.h5``. Schema (version 1)::

    /                                   root attrs:
        schema          "a2dpipe.masks/1"  (what makes a file a region-mask cache; :data:`FORMAT`)
        source          dataset | generic | gt
        model           checkpoint path and its SHA-256 prefix ("" for gt)
        config          JSON of the ``masks`` config section used
        seconds_per_frame  model inference (or ground-truth conversion) time per frame, I/O excluded
        frames          number of frame groups
    /<video>/<frame:05d>/               one group per annotated frame (frame numbers 1-based, as in A2D)
        attrs: height, width            frame size (the masks' size)
        boxes   (N, 4) float32          x1, y1, x2, y2 in frame pixels
        scores  (N,)   float32          confidence in [0, 1]; 1 for ground truth
        labels  (N,)   uint8            actor 1..7; 0 = actor unknown (the ``generic`` source has no actor classes)
        masks   (N, H, W) uint8         soft mask quantised to 0..255 (probability * 255), full frame,
                                        gzip-compressed, chunked one region per chunk

``N`` may be 0: the frame is stored with empty datasets and read back as empty arrays. The reader opens the file
once and reads only the groups asked for, so random access by (video, frame) never loads the whole file.

Example:
    >>> with MaskCacheWriter("shard-000.h5", source="gt") as writer:       # doctest: +SKIP
    ...     writer.write("vid", 1, Regions.empty(96, 128))
    >>> with MaskCache("shard-000.h5") as cache:                           # doctest: +SKIP
    ...     cache.read("vid", 1).masks.shape
    (0, 96, 128)
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from a2dpipe.io import A2DError
from a2dpipe.stores import ArtifactFormat, ArtifactReader, ArtifactWriter, group_key

__all__ = ["Regions", "MaskCache", "MaskCacheWriter", "FORMAT", "SCHEMA", "SOURCES"]

FORMAT = ArtifactFormat("masks", 1, "region-mask cache", "a2dpipe region-masks (rule region_masks)")
SCHEMA = FORMAT.schema
SOURCES = ("dataset", "generic", "gt")
_QUANT = 255.0  # soft masks are stored as uint8 probability * 255 (error below 0.002, ~4x smaller than float32)


@dataclass
class Regions:
    """Candidate regions of one frame.

    Attributes:
        boxes: (N, 4) float32, x1, y1, x2, y2 in frame pixels.
        scores: (N,) float32 in [0, 1].
        labels: (N,) int64, actor 1..7, or 0 when the source does not know the actor.
        masks: (N, H, W) float32 in [0, 1], full frame.
    """

    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray
    masks: np.ndarray

    def __post_init__(self):
        self.boxes = np.asarray(self.boxes, dtype=np.float32).reshape(-1, 4)
        self.scores = np.asarray(self.scores, dtype=np.float32).reshape(-1)
        self.labels = np.asarray(self.labels, dtype=np.int64).reshape(-1)
        self.masks = np.asarray(self.masks, dtype=np.float32)
        n = len(self.boxes)
        if self.masks.ndim != 3 or not (len(self.scores) == len(self.labels) == len(self.masks) == n):
            raise ValueError(
                f"regions disagree: boxes {self.boxes.shape}, scores {self.scores.shape}, "
                f"labels {self.labels.shape}, masks {self.masks.shape} (want N, N, N, (N, H, W))"
            )

    def __len__(self) -> int:
        return len(self.boxes)

    @property
    def size(self) -> tuple[int, int]:
        """Frame (height, width)."""
        return int(self.masks.shape[1]), int(self.masks.shape[2])

    @classmethod
    def empty(cls, height: int, width: int) -> "Regions":
        """No regions on a ``height`` x ``width`` frame (a normal outcome, stored as such)."""
        return cls(np.zeros((0, 4)), np.zeros(0), np.zeros(0), np.zeros((0, height, width)))


class MaskCacheWriter(ArtifactWriter):
    """Write one region-mask cache atomically: nothing appears at ``path`` unless the ``with`` block succeeds.

    Use as a context manager; on an exception the partial file is removed. Set ``seconds_per_frame`` before the
    block ends (it is written on a clean exit, with ``frames``).

    Args:
        path: final file path.
        source: one of ``SOURCES``.
        model: provenance of the regions (checkpoint path and hash); empty for ground truth.
        config: the ``masks`` config section, stored as JSON.
        compression: gzip level of the mask datasets.
        settings: written as the ``settings`` root attribute when given (see :class:`ArtifactWriter`).
    """

    FORMAT = FORMAT

    def __init__(self, path, *, source: str, model: str = "", config: dict | None = None, compression: int = 4,
                 settings: dict | None = None):
        if source not in SOURCES:
            raise ValueError(f"source must be one of {SOURCES}, got {source!r}")
        attrs = {"source": source, "model": model, "config": json.dumps(config or {}, sort_keys=True)}
        super().__init__(path, attrs=attrs, settings=settings)
        self._compression = compression
        self.seconds_per_frame = float("nan")

    def write(self, video: str, frame: int, regions: Regions) -> None:
        """Store the regions of one frame; a frame written twice is an error."""
        key = group_key(video, frame)
        if len(regions) and (regions.labels.min() < 0 or regions.labels.max() > 7):
            raise ValueError(f"{key}: actor labels must be 0..7, got {np.unique(regions.labels).tolist()}")
        height, width = regions.size
        group = self.create_group(video, frame)
        group.attrs.update(height=height, width=width)
        group.create_dataset("boxes", data=regions.boxes)
        group.create_dataset("scores", data=regions.scores)
        group.create_dataset("labels", data=regions.labels.astype(np.uint8))
        quantised = _quantise(regions.masks)
        if len(regions):  # chunking (and so compression) needs a non-empty shape
            group.create_dataset(
                "masks", data=quantised, chunks=(1, height, width), compression="gzip",
                compression_opts=self._compression, shuffle=True,
            )
        else:
            group.create_dataset("masks", data=quantised)

    def finish(self) -> None:
        self.set_attrs(seconds_per_frame=float(self.seconds_per_frame), frames=self.count)


def _quantise(masks: np.ndarray) -> np.ndarray:
    """Soft masks in [0, 1] (clipped) -> uint8 ``rint(mask * _QUANT)``, through one float temporary: a frame's
    masks at A2D size (50 x 320 x 568) take 36 MB, and each fresh array of that size costs page faults."""
    scaled = np.multiply(masks, np.float32(_QUANT), dtype=np.float32)
    np.clip(scaled, 0.0, _QUANT, out=scaled)
    np.rint(scaled, out=scaled)
    return scaled.astype(np.uint8)


class MaskCache(ArtifactReader):
    """Read a region-mask cache by (video, frame); each read touches only that frame's datasets.

    Raises :class:`A2DError` naming the file when it is missing, truncated, not HDF5, or HDF5 of another kind.

    Attributes:
        source, model, seconds_per_frame, config: the root attributes (see the module docstring).
    """

    FORMAT = FORMAT

    def __init__(self, path):
        super().__init__(path)
        attrs = self._file.attrs
        if "frames" not in attrs:
            self._file.close()
            raise A2DError(f"{self.path}: region-mask cache was never finished (no 'frames' attribute)")
        self.source = str(attrs["source"])
        self.model = str(attrs["model"])
        self.config = json.loads(attrs["config"])
        self.seconds_per_frame = float(attrs.get("seconds_per_frame", float("nan")))

    def __len__(self) -> int:
        return int(self._file.attrs["frames"])

    def read(self, video: str, frame: int) -> Regions:
        """The regions of one frame (masks dequantised to float32 in [0, 1])."""
        key = group_key(video, frame)
        if key not in self._file:
            raise A2DError(f"{self.path}: no regions for frame {key}")
        arrays = self.read_arrays(video, frame, ("boxes", "scores", "labels", "masks"))
        masks = arrays.pop("masks")
        return Regions(**arrays, masks=masks.astype(np.float32) * np.float32(1.0 / _QUANT))


def model_provenance(path: os.PathLike | None) -> str:
    """``"<path> sha256:<digest>"`` of the model file an artifact was made from; ``""`` for none."""
    if not path:
        return ""
    return f"{Path(path).as_posix()} sha256:{file_digest(path)}"


def file_digest(path: os.PathLike, length: int = 12) -> str:
    """Short SHA-256 of a file, to record which checkpoint produced a cache."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:length]
