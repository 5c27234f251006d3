"""HDF5 cache of candidate region masks: one writer (:class:`MaskCacheWriter`), one reader (:class:`MaskCache`).

One file per shard and mask source, ``results/masks/<source>/shard-NNN.h5``. Schema (version 3)::

    /                                   root attrs:
        schema          "a2dpipe.masks/3"  (what makes a file a region-mask cache; :data:`FORMAT`)
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
                                        outside its rectangle is 0), stored as differences: each byte is its
                                        level minus the previous pixel's (modulo 256), so a running sum gives
                                        the levels back

Every dataset carries a Fletcher-32 checksum; ``masks`` is lzf-compressed, one chunk per frame. ``N`` may be 0: the
frame is stored with empty datasets and read back as empty arrays. The reader opens the file once and reads only the groups asked for,
so random access by (video, frame) never loads the whole file; it checks what it reads (scores in [0, 1], finite
boxes inside the frame, rectangles inside the frame and adding up to ``masks``) and a violation is an
:class:`A2DError` naming the file, the frame and the rule that rebuilds it.

Version 1 stored every mask at full frame size, gzip-compressed: 50 regions of a 320 x 568 frame cost ~180 ms to
write and ~150 ms to read for a training sample, where a mask's rectangle is a fraction of the frame. Version 2
stored the cropped levels themselves, in 64 KiB chunks (~25% more to compress, and slower), and each region
field in a dataset of its own. Files of an older
version are refused (the reader names the schema and says to rebuild them with
``snakemake --forcerun region_masks``), never read. Reading and writing reproduce version 1's masks pixel for
pixel: the same quantisation, only zeros left out.

Writing runs on a thread of its own (:class:`MaskCacheWriter`): cropping, quantising, compressing and the HDF5
calls of a frame overlap the model's work on the next (numpy and torch release the GIL in their large operations).
A job on a GPU hands the writer :class:`CroppedMasks` quantised and cropped there
(:func:`a2dpipe.masks.device_crop.cropped_on_device`), byte for byte what the writer would make of the full-frame
masks: the thread then only takes differences, compresses and writes.

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
import queue
import threading
from pathlib import Path

import numpy as np

from a2dpipe.integrity import file_digest
from a2dpipe.errors import A2DError, rebuild_hint
from a2dpipe.masks.cropped import CroppedMasks, Regions
from a2dpipe.stores import ArtifactFormat, ArtifactReader, ArtifactWriter, group_key

__all__ = ["Regions", "CroppedMasks", "MaskCache", "MaskCacheWriter", "FORMAT", "SCHEMA", "SOURCES",
           "REGION_RECORD"]

FORMAT = ArtifactFormat("masks", 3, "region-mask cache")
SCHEMA = FORMAT.schema
SOURCES = ("dataset", "generic", "gt")
_CHECKSUM = {"fletcher32": True}
REGION_RECORD = np.dtype([("box", "<f4", (4,)), ("score", "<f4"), ("label", "u1"), ("extent", "<i4", (4,))])
_MASK_FILTERS = {"compression": "lzf", "fletcher32": True}


def _differences(levels: np.ndarray) -> np.ndarray:
    """The flat quantised masks as stored: each byte minus the one before it (modulo 256; the first as is). Soft
    masks change slowly along a row, so most differences are 0 or +-1: lzf compresses them faster and ~20%
    smaller than the levels themselves."""
    stored = np.empty_like(levels)
    stored[:1] = levels[:1]
    np.subtract(levels[1:], levels[:-1], out=stored[1:])
    return stored


def _running_sums(stored: np.ndarray) -> np.ndarray:
    """The quantised levels back from :func:`_differences` (a uint8 running sum wraps modulo 256 as they did).
    torch's: ~4 times numpy's ``cumsum`` on uint8 (2 M bytes, a frame of large regions: 1.1 against 4.3 ms)."""
    import torch  # here, so that writing (the ground-truth source) does not import it

    return torch.cumsum(torch.from_numpy(stored), 0, dtype=torch.uint8).numpy()


class MaskCacheWriter(ArtifactWriter):
    """Write one region-mask cache atomically: nothing appears at ``path`` unless the ``with`` block succeeds.

    Use as a context manager; on an exception the partial file is removed. Set ``seconds_per_frame`` before the
    block ends (it is written on a clean exit, with ``frames``). :meth:`write` hands a frame to a writer thread
    (``threaded``; a queue of ``queue_size`` frames bounds the memory held) and returns: the caller must not change
    the arrays it gave. A failure of the thread is raised by the next :meth:`write` or when the block ends.

    Args:
        path: final file path.
        source: one of ``SOURCES``.
        model: provenance of the regions (checkpoint path and hash); empty for ground truth.
        config: the ``masks`` config section, stored as JSON.
        settings: written as the ``settings`` root attribute when given (see :class:`ArtifactWriter`).
        threaded: write on a thread of its own (False: in the calling thread, e.g. to time it).
        queue_size: frames waiting for the thread at most.
    """

    FORMAT = FORMAT

    def __init__(self, path, *, source: str, model: str = "", config: dict | None = None,
                 settings: dict | None = None, threaded: bool = True, queue_size: int = 2):
        if source not in SOURCES:
            raise ValueError(f"source must be one of {SOURCES}, got {source!r}")
        attrs = {"source": source, "model": model, "config": json.dumps(config or {}, sort_keys=True)}
        super().__init__(path, attrs=attrs, settings=settings)
        self.seconds_per_frame = float("nan")
        self._threaded = threaded
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, queue_size))
        self._thread: threading.Thread | None = None
        self._failure: BaseException | None = None
        self._keys: set[str] = set()

    def write(self, video: str, frame: int, regions: Regions | CroppedMasks) -> None:
        """Store the regions of one frame (on the writer thread): full-frame :class:`Regions`, or
        :class:`CroppedMasks` already quantised and cropped (e.g. on the model's GPU); a frame written twice is an
        error."""
        key = group_key(video, frame)
        if len(regions) and (regions.labels.min() < 0 or regions.labels.max() > 7):
            raise ValueError(f"{key}: actor labels must be 0..7, got {np.unique(regions.labels).tolist()}")
        if key in self._keys:
            raise A2DError(f"{self.path}: frame {key} written twice")
        self._keys.add(key)
        self.file  # noqa: B018 -- only inside the `with` block
        if not self._threaded:
            self._store(video, frame, regions)
            return
        self._raise_failure()
        if self._thread is None:
            self._thread = threading.Thread(target=self._drain, name="mask-cache-writer", daemon=True)
            self._thread.start()
        self._queue.put((video, frame, regions))

    def _store(self, video: str, frame: int, regions: Regions | CroppedMasks) -> None:
        cropped = regions if isinstance(regions, CroppedMasks) else CroppedMasks.from_regions(regions)
        height, width = cropped.size
        group = self.create_group(video, frame)
        group.attrs.update(height=height, width=width)
        records = np.empty(len(regions), REGION_RECORD)
        records["box"], records["score"] = cropped.boxes, cropped.scores
        records["label"], records["extent"] = cropped.labels, cropped.extents
        group.create_dataset("regions", data=records, **_CHECKSUM)
        chunk = (max(1, cropped.data.size),)  # one chunk: a frame's masks are read whole
        group.create_dataset("masks", data=_differences(cropped.data), chunks=chunk, maxshape=(None,),
                             **_MASK_FILTERS)

    def _drain(self) -> None:
        """The writer thread: store frames until the closing ``None``; after a failure, only empty the queue."""
        while True:
            item = self._queue.get()
            if item is None:
                return
            if self._failure is None:
                try:
                    self._store(*item)
                except BaseException as err:  # raised in the caller's thread by the next write or at the end
                    self._failure = err

    def _stop_thread(self) -> None:
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join()
            self._thread = None

    def _raise_failure(self) -> None:
        if self._failure is not None:
            failure, self._failure = self._failure, None
            raise failure

    def finish(self) -> None:
        self._stop_thread()
        self._raise_failure()
        self.set_attrs(seconds_per_frame=float(self.seconds_per_frame), frames=self.count)

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is not None:  # the thread stops before the partial file is removed
            self._stop_thread()
        return super().__exit__(exc_type, exc, tb)


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
                               _running_sums(arrays["masks"].reshape(-1)), size)
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
