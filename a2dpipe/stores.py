"""One base for every per-frame HDF5 artifact: frames shards, flow caches, region-mask caches and predictions.

Each artifact is one HDF5 file with one group per annotated frame, keyed ``"{video}/{frame:05d}"`` (frame numbers
1-based, as in A2D; :func:`group_key`), and a root attribute ``schema`` (``"a2dpipe.<kind>/<version>"``) that says
what the file is. The stage that makes an artifact describes its datasets and attributes in its own module, next
to its reader and writer classes, which build on the two classes here:

- :class:`ArtifactWriter` writes atomically (through :func:`a2dpipe.io.atomic_path`: nothing appears at the final
  path unless the ``with`` block succeeds), stamps ``schema`` and the root attributes it is given, refuses a frame
  written twice and counts the frames;
- :class:`ArtifactReader` opens the file read-only (:func:`a2dpipe.errors.open_hdf5`), checks ``schema`` (a file of
  another kind or version is an :class:`A2DError` naming the file, what it is and the command that rebuilds it),
  lists keys, optionally of one split, from group names and attributes without reading any dataset, and reads a
  frame's datasets by name.

>>> FRAMES = ArtifactFormat("frames", 1, "frames shard")
>>> FRAMES.schema, group_key("EadxBPmQvtg", 25)
('a2dpipe.frames/1', 'EadxBPmQvtg/00025')
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from a2dpipe.config import stamp_attrs
from a2dpipe.errors import A2DError, open_hdf5, reading_artifact, rebuild_hint, unreadable_artifact
from a2dpipe.io import atomic_path, check_room

__all__ = ["ArtifactFormat", "ArtifactReader", "ArtifactWriter", "group_key", "parse_key", "pixel_chunks", "PIXEL_CHUNK"]

PIXEL_CHUNK = 64  # rows and columns of an image chunk: a training crop decodes only the chunks it overlaps


def pixel_chunks(shape: tuple[int, ...]) -> tuple[int, ...]:
    """HDF5 chunk shape of an image dataset (H, W[, C]): ``PIXEL_CHUNK`` x ``PIXEL_CHUNK`` pixels, every channel.

    A crop window then decodes little beyond itself, with one read for all channels (h5py's automatic chunks of a
    320 x 568 image are 80 x 142 pixels of one channel: read plane by plane, each plane's tiles decoded apart).
    Readers need not know: HDF5 reads any chunking, and files written before read the same.
    """
    return (min(PIXEL_CHUNK, shape[0]), min(PIXEL_CHUNK, shape[1]), *shape[2:])


def group_key(video: str, frame: int) -> str:
    """The group of one annotated frame: ``"{video}/{frame:05d}"``."""
    return f"{video}/{int(frame):05d}"


def parse_key(key: str) -> tuple[str, int]:
    """``"video/00025"`` -> ``("video", 25)``, the inverse of :func:`group_key`."""
    video, _, frame = key.rpartition("/")
    return video, int(frame)


@dataclass(frozen=True)
class ArtifactFormat:
    """What a kind of artifact is called (the key of its rule in :data:`a2dpipe.errors.REBUILT_BY`); ``schema`` is
    the value of its root attribute."""

    kind: str  # "frames", "flow", "masks", "predictions"
    version: int  # raise it when the layout changes in a way old readers would misread
    what: str  # in messages: "frames shard", "flow cache" ...; the key of its rebuilding rule in REBUILT_BY

    @property
    def schema(self) -> str:
        return f"a2dpipe.{self.kind}/{self.version}"

    def refuse(self, path, found, what: str | None = None, field: str = "schema") -> A2DError:
        """The error for a file at ``path`` whose ``field`` is ``found`` (None: absent) instead of :attr:`schema`:
        it names the file, what it holds and the rule that rebuilds it; ``what``: the artifact's name in the
        message (default :attr:`what`)."""
        what = what or self.what
        if found is None:
            problem = f"has no '{field}' root attribute" if field == "schema" else (
                f"has no {field} version: written by an earlier a2dpipe, or not an a2dpipe file")
        elif str(found).startswith(f"a2dpipe.{self.kind}/"):
            problem = f"was written with {field} {str(found)!r}; this version reads {self.schema!r}"
        else:
            problem = f"is an {str(found)!r} file"
        return A2DError(f"{path}: not a {what} of {field} {self.schema!r} (it {problem}); {rebuild_hint(what)}")


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _plain(value):
    """An attribute as read, as a Python value: bytes (fixed-length text) as text, numpy scalars as numbers."""
    if isinstance(value, bytes):
        return _text(value)
    return value.item() if hasattr(value, "item") else value


def set_fixed_attrs(attributes, attrs: dict) -> None:
    """Set HDF5 attributes (``obj.attrs``), ``None`` values left out, text at its fixed length (read back as bytes;
    readers decode it): it then lies in the checksummed object header, where a variable-length string would lie in
    HDF5's global heap, whose lengths no checksum covers and a damaged one of which can hang the reader."""
    import h5py

    for key, value in attrs.items():
        if isinstance(value, str):
            data = value.encode()
            attributes.create(key, data, dtype=h5py.string_dtype("utf-8", max(len(data), 1)))
        elif value is not None:
            attributes[key] = value


class ArtifactReader:
    """Read-only access to one artifact of ``FORMAT``; a context manager.

    Raises :class:`A2DError` naming the file when it is missing, not HDF5, or holds another kind or version.
    """

    FORMAT: ArtifactFormat

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._file = open_hdf5(self.path, self.FORMAT.what)
        try:
            self._check_schema()
        except BaseException:
            self._file.close()
            raise

    def _check_schema(self) -> None:
        with self.reading("the root attributes"):
            found = self._file.attrs.get("schema")
        found = None if found is None else _text(found)
        if found != self.FORMAT.schema:
            raise self.FORMAT.refuse(self.path, found)

    @property
    def attrs(self) -> dict:
        """Root attributes, numpy scalars as Python values and bytes as text."""
        with self.reading("the root attributes"):
            return {k: _plain(v) for k, v in self._file.attrs.items()}

    def group_attrs(self, video: str, frame: int) -> dict:
        """One frame's group attributes, as :attr:`attrs` gives the root's."""
        group = self.group(video, frame)
        with self.reading(f"the attributes of frame {group_key(video, frame)}"):
            return {k: _plain(v) for k, v in group.attrs.items()}

    def keys(self, split: str | None = None) -> list[tuple[str, int]]:
        """(video, frame) of every stored frame, sorted; only those whose ``split`` attribute is ``split`` if given.

        Reads group names (and, for a split, group attributes), never a dataset.
        """
        with self.reading("the list of frames"):
            keys = sorted((video, int(frame)) for video in self._file for frame in self._file[video])
            if split is None:
                return keys
            return [key for key in keys if self.split_of(*key) == split]

    def split_of(self, video: str, frame: int) -> str:
        """The ``split`` attribute of one frame's group."""
        split = self.group_attrs(video, frame).get("split")
        if split is None:
            raise A2DError(f"{self.path}: group {group_key(video, frame)} has no 'split' attribute")
        return str(split)

    def __len__(self) -> int:
        return sum(len(self._file[video]) for video in self._file)

    def __contains__(self, key) -> bool:
        return group_key(*key) in self._file

    def group(self, video: str, frame: int):
        """The ``h5py.Group`` of one frame; :class:`A2DError` when the file has none."""
        key = group_key(video, frame)
        try:  # one lookup, not a membership test and then another
            return self._file[key]
        except KeyError:
            if key in self._file:  # there, yet unreadable: a damaged object header
                with self.reading(f"frame {key}"):
                    return self._file[key]
            raise A2DError(f"{self.path}: no frame {key} in this {self.FORMAT.what}") from None

    def datasets(self, video: str, frame: int, names) -> dict:
        """The ``h5py.Dataset`` of each of ``names`` in the frame's group, by name, each looked up once; A2DError
        naming the file when the frame or one of the datasets is missing."""
        key = group_key(video, frame)
        found, missing = {}, []
        for name in names:
            try:  # by path from the root: one lookup (~0.1 ms less than the group's, then the dataset's)
                found[name] = self._file[f"{key}/{name}"]
            except KeyError:
                missing.append(name)
        if missing:
            group = self.group(video, frame)  # a missing frame is said as such
            with self.reading(f"frame {key}"):  # one there, yet unreadable: a damaged object header
                found.update({name: group[name] for name in missing if name in group})
            missing = [name for name in missing if name not in found]
        if missing:
            raise A2DError(f"{self.path}: frame {key} lacks dataset(s) {missing} ({self.FORMAT.what} layout)")
        return {name: found[name] for name in names}

    def read_arrays(self, video: str, frame: int, names, optional=()) -> dict[str, np.ndarray]:
        """The datasets ``names`` (each required) and ``optional`` (those present) of one frame, by name, each
        range-checked (:meth:`check_values`)."""
        found = self.datasets(video, frame, names)
        with self.reading(f"frame {group_key(video, frame)}"):
            if optional:
                group = self.group(video, frame)
                found.update({name: group[name] for name in optional if name in group})
            arrays = {name: dataset[()] for name, dataset in found.items()}
        for name, array in arrays.items():
            self.check_values(video, frame, name, array)
        return arrays

    def read_window(self, video: str, frame: int, names, rows: slice, cols: slice) -> dict[str, np.ndarray]:
        """:meth:`read_arrays` of ``names`` (each required), only inside ``rows`` x ``cols``: HDF5 decodes the
        chunks they touch."""
        datasets = self.datasets(video, frame, names)
        with self.reading(f"frame {group_key(video, frame)}"):
            arrays = {name: _hyperslab(dataset, rows, cols) for name, dataset in datasets.items()}
        for name, array in arrays.items():
            self.check_values(video, frame, name, array)
        return arrays

    # dataset name -> (lowest, highest) value a sound file holds there; NaN and infinity are always refused
    VALUE_RANGES: dict[str, tuple[float, float]] = {}

    def check_values(self, video: str, frame: int, name: str, array: np.ndarray) -> None:
        """A2DError naming the file, the frame and how to rebuild it when ``array`` (dataset ``name``) holds a
        value outside :attr:`VALUE_RANGES` (a value no writer writes: damage the checksums did not cover, or a
        file from elsewhere). Vectorised: one min and one max per array."""
        bounds = self.VALUE_RANGES.get(name)
        if bounds is None or array.size == 0:
            return
        if array.dtype == np.float16:  # numpy emulates half-precision arithmetic: ~100x slower than float32
            array = array.astype(np.float32)
        low, high = array.min(), array.max()  # NaN propagates through both
        if not (bounds[0] <= low and high <= bounds[1]):
            problem = (f"frame {group_key(video, frame)}: {name} holds values in [{low}, {high}], outside "
                       f"[{bounds[0]}, {bounds[1]}]")
            raise unreadable_artifact(self.path, self.FORMAT.what, problem)

    def reading(self, item: str):
        """Context manager: an HDF5 failure while reading ``item`` is an error naming this file and how to
        rebuild it (:func:`a2dpipe.errors.reading_artifact`)."""
        return reading_artifact(self.path, self.FORMAT.what, item)

    def close(self) -> None:
        self._file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _hyperslab(dataset, rows: slice, cols: slice) -> np.ndarray:
    """``dataset[rows, cols]``; channel by channel for an (H, W, C) image chunked one channel at a time (h5py's
    automatic chunks of such images), since HDF5 copies such a chunk into an interleaved selection element by
    element (3-4x slower than one contiguous plane per channel at 320 x 568)."""
    chunks, shape = dataset.chunks, dataset.shape  # each a query of the file: asked once
    if len(shape) != 3 or chunks is None or chunks[2] != 1 or shape[2] == 1:
        return dataset[rows, cols]
    return np.stack([dataset[rows, cols, c] for c in range(shape[2])], axis=-1)


class ArtifactWriter:
    """Writes one artifact of ``FORMAT`` atomically; use only as a context manager.

    On entry the file is created under a temporary name with the root attributes ``schema``, ``attrs`` (``None``
    values left out) and, when given, ``settings`` (the configuration it is made with, as sorted JSON, beside ``a2dpipe_version``:
    :func:`a2dpipe.config.stamp_attrs`). On a clean
    exit :meth:`finish` runs (subclasses write their closing attributes there) and the file is renamed into place;
    on an exception the temporary is removed and nothing appears at ``path``.

    >>> with FrameWriter("shard-000.h5", attrs={"shard": "000"}) as writer:   # doctest: +SKIP
    ...     group = writer.create_group("vid", 1)
    """

    FORMAT: ArtifactFormat

    def __init__(self, path: str | os.PathLike, *, attrs: dict | None = None, settings: dict | None = None):
        self.path = Path(path)
        self.count = 0  # frame groups written
        self._attrs = {"schema": self.FORMAT.schema, **(attrs or {})}
        if settings is not None:  # the provenance stamp: package version and settings
            self._attrs.update(stamp_attrs(settings))
        self._file = None
        self._stack = None

    def __enter__(self):
        import h5py  # here, so that importing a store module stays light

        with contextlib.ExitStack() as stack:
            tmp = stack.enter_context(atomic_path(self.path))
            self._tmp, self._last_size, self._largest_frame = Path(tmp), 0, 0
            check_room(self.path, tmp, 0)
            # libver v110: object headers and B-trees of the 1.10 format carry checksums, so a flipped bit in an
            # attribute or a link is an error too, not only one in a dataset (HDF5 >= 1.10 reads it)
            self._file = stack.enter_context(h5py.File(tmp, "w", libver=("v110", "latest")))
            stack.push(self._exit)  # runs first on leaving: the closing attributes while the file is open
            self.set_attrs(**self._attrs)
            self._stack = stack.pop_all()
        return self

    def _exit(self, exc_type, exc, tb) -> bool:
        if exc_type is None:
            self.finish()
        return False

    def __exit__(self, exc_type, exc, tb) -> bool:
        try:
            return self._stack.__exit__(exc_type, exc, tb)
        finally:
            self._stack = None

    def finish(self) -> None:
        """Called on a clean exit before the file is closed; the default writes nothing."""

    @property
    def file(self):
        """The open ``h5py.File`` (inside the ``with`` block only)."""
        if self._stack is None:
            raise RuntimeError(f"{type(self).__name__} writes only inside a `with` block")
        return self._file

    def set_attrs(self, **attrs) -> None:
        """Set root attributes (:func:`set_fixed_attrs`: text at its fixed length; ``None`` left out)."""
        set_fixed_attrs(self._file.attrs, attrs)

    def create_group(self, video: str, frame: int) -> "ChecksummedGroup":
        """The new, empty group of one frame; a frame written twice is an :class:`A2DError`.

        Every dataset made through it carries a Fletcher-32 checksum (:class:`ChecksummedGroup`). Before each frame
        the writer checks that the file can still grow by twice the largest frame so far under the file-size limit
        and on the disk (:func:`a2dpipe.io.check_room`): HDF5 cannot report a failed write cleanly.
        """
        key = group_key(video, frame)
        if key in self.file:
            raise A2DError(f"{self.path}: frame {key} written twice")
        size = self._tmp.stat().st_size if self._tmp.exists() else 0
        self._largest_frame = max(self._largest_frame, size - self._last_size)
        self._last_size = size
        check_room(self.path, self._tmp, 2 * self._largest_frame)
        self.count += 1
        return ChecksummedGroup(self.file.create_group(key))


class ChecksummedGroup:
    """An ``h5py.Group`` whose ``create_dataset`` adds a Fletcher-32 checksum to every dataset with data (HDF5
    verifies it on every read of a chunk, so a flipped bit is an error, never a changed value); everything else is
    the group's own. Empty and scalar datasets cannot hold one (they have no chunks) and hold nothing to flip."""

    def __init__(self, group):
        self._group = group

    def set_attrs(self, **attrs) -> None:
        """Set the group's attributes (:func:`set_fixed_attrs`: text at its fixed length; ``None`` left out)."""
        set_fixed_attrs(self._group.attrs, attrs)

    def create_dataset(self, name, shape=None, dtype=None, data=None, **kwargs):
        size = int(np.prod(np.shape(data) if data is not None else (shape or ())))
        if size > 0 and (data is None or np.ndim(data) > 0) and (shape is None or shape != ()):
            kwargs.setdefault("fletcher32", True)
        return self._group.create_dataset(name, shape=shape, dtype=dtype, data=data, **kwargs)

    def __getattr__(self, name):
        return getattr(self._group, name)

    def __getitem__(self, key):
        return self._group[key]

    def __setitem__(self, key, value):
        self._group[key] = value

    def __contains__(self, key) -> bool:
        return key in self._group

    def __iter__(self):
        return iter(self._group)

    def __len__(self) -> int:
        return len(self._group)
