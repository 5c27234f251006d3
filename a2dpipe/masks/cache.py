"""HDF5 cache of candidate region masks: one writer (:class:`MaskCacheWriter`), one reader (:class:`MaskCache`).

One file per shard and mask source, ``results/masks/<source>/shard-NNN.h5``. Schema (version 4)::

    /                                   root attrs:
        schema          "a2dpipe.masks/4"  (what makes a file a region-mask cache; :data:`FORMAT`)
        source          dataset | generic | gt
        model           checkpoint path and its SHA-256 prefix ("" for gt)
        config          JSON of the ``masks`` config section used
        seconds_per_frame  model inference (or ground-truth conversion) time per frame, I/O excluded
        frames          number of frame groups
    /<video>/<frame:05d>/               one group per annotated frame (frame numbers 1-based, as in A2D)
        attrs: height, width            frame size (the masks' size)
        regions (N,)   compound         one record per region (one dataset: fewer HDF5 objects to write):
          box    (4,) float32           x1, y1, x2, y2 in frame pixels, finite, inside [0, width] x [0, height]
          score  float32                confidence in [0, 1]; 1 for ground truth
          label  uint8                  actor 1..7; 0 = actor unknown (the ``generic`` source has no actor classes)
          extent (4,) int32             top, left, height, width of the region's stored rectangle: the smallest
                                        one holding every non-zero pixel of its quantised mask (0 x 0: none)
        masks   (P,)   uint8            the rectangles one after the other, each row by row (P = sum of their
                                        areas), soft masks quantised to 0..255 (probability * 255; every pixel
                                        outside its rectangle is 0)

Both datasets are uncompressed, one chunk each with a Fletcher-32 checksum. ``N`` may be 0: the frame is stored with
empty datasets and read back as empty arrays. The reader opens the file once and reads only the groups asked for,
so random access by (video, frame) never loads the whole file; it checks what it reads (scores in [0, 1], finite
boxes inside the frame, rectangles inside the frame and adding up to ``masks``) and a violation is an
:class:`A2DError` naming the file, the frame and the rule that rebuilds it.

Version 1 stored every mask at full frame size, gzip-compressed: 50 regions of a 320 x 568 frame cost ~180 ms to
write and ~150 ms to read for a training sample, where a mask's rectangle is a fraction of the frame. Version 2
stored the cropped levels themselves, in 64 KiB chunks (~25% more to compress, and slower), and each region
field in a dataset of its own. Version 3 stored the levels' differences from pixel to pixel (mostly 0 or +-1),
lzf-compressed: ~0.3 MiB per frame of 50 regions against ~0.8 MiB as they are, but lzf cost the writer's thread
~6 ms per frame and the reader ~3 ms (with the running sum), where HDF5 copies the bytes in ~1 ms
(docs/performance.md). Files of an older version are refused (the reader names the schema and says to rebuild
them with ``snakemake --forcerun region_masks``), never read. Reading and writing reproduce version 1's masks pixel for
pixel: the same quantisation, only zeros left out.

Writing runs beside the model (:class:`MaskCacheWriter`): a pool of threads crops and quantises a frame's masks
and computes each dataset's stored chunk, checksum included (:func:`a2dpipe.chunks.stored_chunk`), and one writer
thread, in frame order, hands HDF5 the chunks as they are (HDF5 takes one call at a time per process: the writer's
share of its lock is a copy per dataset). Numpy and torch release the GIL in their large operations. A job on a GPU
hands the writer :class:`CroppedMasks` quantised and cropped there
(:func:`a2dpipe.masks.device_crop.cropped_on_device`), byte for byte what the writer would make of the full-frame
masks: the pool then only computes the checksums.

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
from pathlib import Path

import numpy as np

from a2dpipe.chunks import PipelinedWriter, stored_chunk, write_stored
from a2dpipe.integrity import file_digest
from a2dpipe.errors import A2DError, rebuild_hint
from a2dpipe.masks.cropped import CroppedMasks, Regions
from a2dpipe.stores import ArtifactFormat, ArtifactReader, group_key

__all__ = ["Regions", "CroppedMasks", "MaskCache", "MaskCacheWriter", "FORMAT", "SCHEMA", "SOURCES",
           "REGION_RECORD"]

FORMAT = ArtifactFormat("masks", 4, "region-mask cache")
SCHEMA = FORMAT.schema
SOURCES = ("dataset", "generic", "gt")
REGION_RECORD = np.dtype([("box", "<f4", (4,)), ("score", "<f4"), ("label", "u1"), ("extent", "<i4", (4,))])


class MaskCacheWriter(PipelinedWriter):
    """Write one region-mask cache atomically: nothing appears at ``path`` unless the ``with`` block succeeds.

    Use as a context manager; on an exception the partial file is removed. Set ``seconds_per_frame`` before the
    block ends (it is written on a clean exit, with ``frames``). With ``threaded``, :meth:`write` returns at once:
    a pool of ``threads`` threads crops the masks and computes the stored chunks (:meth:`encode`) and one writer
    thread stores them in frame order (:meth:`store`); at most ``queue_size`` frames wait for it, which bounds the
    memory held. The caller must not change the arrays it gave. A failure on a thread is raised by the next
    :meth:`write` or when the block ends.

    Args:
        path: final file path.
        source: one of ``SOURCES``.
        model: provenance of the regions (checkpoint path and hash); empty for ground truth.
        config: the ``masks`` config section, stored as JSON.
        settings: written as the ``settings`` root attribute when given (see :class:`ArtifactWriter`).
        threaded: write on threads of their own (False: in the calling thread, e.g. to time it).
        threads: the pool's threads (with ``threaded``).
        queue_size: frames waiting for the writer thread at most.
    """

    FORMAT = FORMAT

    def __init__(self, path, *, source: str, model: str = "", config: dict | None = None,
                 settings: dict | None = None, threaded: bool = True, threads: int = 1, queue_size: int = 2):
        if source not in SOURCES:
            raise ValueError(f"source must be one of {SOURCES}, got {source!r}")
        attrs = {"source": source, "model": model, "config": json.dumps(config or {}, sort_keys=True)}
        super().__init__(path, attrs=attrs, settings=settings, threads=max(1, int(threads)) if threaded else 0,
                         queue_size=queue_size, name="mask-cache")
        self.seconds_per_frame = float("nan")

    def write(self, video: str, frame: int, regions: Regions | CroppedMasks) -> None:
        """Store the regions of one frame (on the writer's threads): full-frame :class:`Regions`, or
        :class:`CroppedMasks` already quantised and cropped (e.g. on the model's GPU); a frame written twice is an
        error."""
        if len(regions) and (regions.labels.min() < 0 or regions.labels.max() > 7):
            key = group_key(video, frame)
            raise ValueError(f"{key}: actor labels must be 0..7, got {np.unique(regions.labels).tolist()}")
        self.submit(video, frame, regions)

    @staticmethod
    def encode(regions: Regions | CroppedMasks) -> tuple[tuple[int, int], list[tuple[np.ndarray, np.ndarray]]]:
        """What :meth:`store` writes of one frame: (frame size, [(array, its stored chunk)] of ``regions`` and
        ``masks``): the masks cropped and quantised unless they are already, each chunk's checksum computed here,
        not under HDF5's lock."""
        cropped = regions if isinstance(regions, CroppedMasks) else CroppedMasks.from_regions(regions)
        records = np.empty(len(cropped.boxes), REGION_RECORD)
        records["box"], records["score"] = cropped.boxes, cropped.scores
        records["label"], records["extent"] = cropped.labels, cropped.extents
        return cropped.size, [(array, stored_chunk(array)) for array in (records, cropped.data)]

    def store(self, video: str, frame: int, encoded, **attrs) -> None:
        """The HDF5 part of a write: the frame's group, its size, and its two datasets (:meth:`encode`'s), each
        written as its one chunk as it is (:func:`a2dpipe.chunks.write_stored`)."""
        (height, width), datasets = encoded
        group = self.create_group(video, frame)
        group.set_attrs(height=height, width=width)
        for name, (array, chunk) in zip(("regions", "masks"), datasets):
            write_stored(group, name, array, chunk)

    def finish(self) -> None:
        super().finish()
        self.set_attrs(seconds_per_frame=float(self.seconds_per_frame), frames=self.count)


class MaskCache(ArtifactReader):
    """Read a region-mask cache by (video, frame); each read touches only that frame's datasets.

    Raises :class:`A2DError` naming the file when it is missing, truncated, not HDF5, HDF5 of another kind or
    schema version, or holds values out of range (scores outside [0, 1], boxes not finite or outside the frame).

    Attributes:
        source, model, seconds_per_frame, config: the root attributes (see the module docstring).
    """

    FORMAT = FORMAT
    _NAMES = ("regions", "masks")

    def __init__(self, path):
        super().__init__(path)
        attrs = self.attrs
        if "frames" not in attrs:
            self._file.close()
            raise A2DError(f"{self.path}: region-mask cache was never finished (no 'frames' attribute); "
                           f"{rebuild_hint(FORMAT.what)}")
        self.source = str(attrs["source"])
        self.model = str(attrs["model"])
        self.config = json.loads(attrs["config"])
        self.seconds_per_frame = float(attrs.get("seconds_per_frame", float("nan")))

    def __len__(self) -> int:
        return int(self._file.attrs["frames"])

    def read(self, video: str, frame: int) -> Regions:
        """The regions of one frame, full-frame masks dequantised to float32 in [0, 1]."""
        return self.read_cropped(video, frame).regions()

    def read_cropped(self, video: str, frame: int) -> CroppedMasks:
        """The regions of one frame as stored (:class:`CroppedMasks`), checked; ``paste`` builds any window."""
        key = group_key(video, frame)
        if key not in self._file:
            raise A2DError(f"{self.path}: no regions for frame {key}")
        group = self.group(video, frame)
        with self.reading(f"frame {key}"):
            size = int(group.attrs["height"]), int(group.attrs["width"])
        arrays = self.read_arrays(video, frame, self._NAMES)
        records = arrays["regions"].reshape(-1)
        if records.dtype.names != REGION_RECORD.names:
            raise A2DError(f"{self.path}: frame {key}: regions of fields {records.dtype.names}, not "
                           f"{REGION_RECORD.names}; {rebuild_hint(FORMAT.what)}")
        cropped = CroppedMasks(records["box"].astype(np.float32).reshape(-1, 4),
                               records["score"].astype(np.float32), records["label"].astype(np.int64),
                               records["extent"].astype(np.int64).reshape(-1, 4),
                               arrays["masks"].reshape(-1), size)
        self._check(key, cropped)
        return cropped

    def _check(self, key: str, c: CroppedMasks) -> None:
        """Range checks of one frame's values (module docstring); an A2DError naming file, frame and rebuild."""
        height, width = c.size
        n = len(c.boxes)
        problems = []
        if not (len(c.scores) == len(c.labels) == len(c.extents) == n):
            problems.append(f"{n} boxes but {len(c.scores)} scores, {len(c.labels)} labels, "
                            f"{len(c.extents)} extents")
        elif n:
            if not (np.isfinite(c.scores).all() and (c.scores >= 0).all() and (c.scores <= 1).all()):
                problems.append(f"scores outside [0, 1] ({c.scores.min()} .. {c.scores.max()})")
            x, y = c.boxes[:, 0::2], c.boxes[:, 1::2]
            if not (np.isfinite(c.boxes).all() and (x >= 0).all() and (x <= width).all() and (y >= 0).all()
                    and (y <= height).all()):
                problems.append(f"boxes not finite or outside the {width} x {height} frame")
            if c.labels.max() > 7:
                problems.append(f"actor labels above 7 ({c.labels.max()})")
            top, left, h, w = c.extents.T
            if ((c.extents < 0).any() or (top + h > height).any() or (left + w > width).any()):
                problems.append("mask rectangles outside the frame")
            elif int((h * w).sum()) != c.data.size:
                problems.append(f"mask rectangles of {int((h * w).sum())} pixels but {c.data.size} stored")
        elif c.data.size:
            problems.append(f"{c.data.size} mask pixels stored for no region")
        if problems:
            raise A2DError(f"{self.path}: frame {key}: {'; '.join(problems)}: the file is damaged or not written "
                           f"by this version; {rebuild_hint(FORMAT.what)}")


def model_provenance(path: os.PathLike | None) -> str:
    """``"<path> sha256:<digest>"`` of the model file an artifact was made from; ``""`` for none."""
    if not path:
        return ""
    return f"{Path(path).as_posix()} sha256:{file_digest(path)}"
