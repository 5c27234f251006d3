"""Chunks written as HDF5 stores them: one chunk per dataset, its Fletcher-32 checksum computed here.

The flow cache and the region-mask cache write each dataset as one uncompressed chunk with HDF5's ``fletcher32``
filter. HDF5 takes one call at a time per process, so a writer computes the stored bytes (:func:`stored_chunk`: the
array's bytes and their checksum, vectorised) where it likes, in threads of its own, and its one HDF5 thread only
creates the dataset and copies them in (:func:`write_stored`: ``write_direct_chunk``, no filter pipeline). Readers
need not know: HDF5 verifies the checksum on every read of the chunk, as it does for one its filter wrote.
:class:`PipelinedWriter` is the writer both caches build on: frames encoded on a pool, stored in order on one thread.

>>> hex(fletcher32(np.frombuffer(b"abcde", np.uint8)))
'0x4ff029c7'
"""

from __future__ import annotations

import queue
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from a2dpipe.errors import A2DError
from a2dpipe.stores import ArtifactWriter, group_key

__all__ = ["fletcher32", "stored_chunk", "write_stored", "PipelinedWriter"]

_BLOCK = 1 << 16  # 16-bit words per step of the checksum: small buffers, reused (and far below int64's range)
_WEIGHTS = np.arange(_BLOCK, 0, -1, dtype=np.int64)  # a block's words' weights in sum2, the last block's a tail


def fletcher32(data: np.ndarray) -> int:
    """HDF5's Fletcher-32 checksum of an array's bytes (``H5_checksum_fletcher32``, what its ``fletcher32`` filter
    appends to a chunk, little-endian), vectorised: over big-endian 16-bit words ``w_1 .. w_n`` (an odd last byte
    as the high byte of a word), sum1 = sum w_i and sum2 = sum (n - i + 1) w_i, each reduced modulo 65535 into
    1..65535 (0 only for a zero sum), as HDF5's end-around carries leave them; ``sum2 << 16 | sum1``."""
    raw = np.ascontiguousarray(data).reshape(-1).view(np.uint8)
    words = raw[: raw.size // 2 * 2].view(">u2")
    if raw.size % 2:
        words = np.append(words, np.uint16(raw[-1]) << np.uint16(8))
    n, sum1, sum2 = words.size, 0, 0
    block = np.empty(_BLOCK, np.int64)
    for start in range(0, n, _BLOCK):
        size = min(_BLOCK, n - start)
        part = block[:size]
        part[:] = words[start:start + size]
        total = int(part.sum())
        sum1 += total
        sum2 += int(np.dot(part, _WEIGHTS[_BLOCK - size:])) + (n - start - size) * total
    return (_fold(sum2) << 16) | _fold(sum1)


def _fold(total: int) -> int:
    return 0 if total == 0 else (total - 1) % 65535 + 1


def stored_chunk(array: np.ndarray) -> np.ndarray:
    """The bytes HDF5 stores for ``array`` as one chunk with its Fletcher-32 filter: the array's bytes, then the
    checksum (little-endian)."""
    raw = np.ascontiguousarray(array).reshape(-1).view(np.uint8)
    chunk = np.empty(raw.size + 4, np.uint8)
    chunk[:-4] = raw
    chunk[-4:] = np.frombuffer(fletcher32(raw).to_bytes(4, "little"), np.uint8)
    return chunk


def write_stored(group, name: str, array: np.ndarray, chunk: np.ndarray):
    """Dataset ``name`` of ``group`` holding ``array`` as one chunk with a Fletcher-32 checksum, written from
    ``chunk`` (:func:`stored_chunk` of ``array``) as it is. An empty array has no chunk: an empty dataset."""
    if array.size == 0:
        return group.create_dataset(name, shape=array.shape, dtype=array.dtype)
    dataset = group.create_dataset(name, shape=array.shape, dtype=array.dtype, chunks=array.shape, fletcher32=True)
    dataset.id.write_direct_chunk((0,) * array.ndim, chunk)
    return dataset


class PipelinedWriter(ArtifactWriter):
    """An :class:`~a2dpipe.stores.ArtifactWriter` whose frames go through two parts: :meth:`encode` (the arrays and
    their :func:`stored_chunk`, no HDF5 call) and :meth:`store` (the HDF5 calls), both given by a subclass.

    With ``threads`` > 0, :meth:`submit` returns at once: a pool of that many threads encodes (numpy releases the GIL
    in its large operations) and one writer thread stores the frames in order, beside the caller's work on the next
    ones; at most ``queue_size`` frames wait, which bounds the memory held. The caller must not change the arrays it
    gave. A failure on a thread is raised by the next :meth:`submit` or when the block ends (and no file appears).
    ``threads`` 0: both parts in the calling thread.
    """

    def __init__(self, path, *, attrs: dict, settings: dict | None, threads: int, queue_size: int, name: str):
        super().__init__(path, attrs=attrs, settings=settings)
        self.threads, self._name = max(int(threads), 0), name
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, queue_size))
        self._pool = self._thread = self._failure = None
        self._keys: set[str] = set()

    def encode(self, *args):
        raise NotImplementedError

    def store(self, video: str, frame: int, encoded, **attrs) -> None:
        raise NotImplementedError

    def submit(self, video: str, frame: int, *args, **attrs) -> None:
        """Encode ``args`` and store them as one frame's group with ``attrs``; a frame written twice is an
        :class:`A2DError`."""
        key = group_key(video, frame)
        if key in self._keys:
            raise A2DError(f"{self.path}: frame {key} written twice")
        self.file  # noqa: B018 -- only inside the `with` block
        self._keys.add(key)
        if not self.threads:
            self.store(video, frame, self.encode(*args), **attrs)
            return
        self._raise_failure()
        if self._thread is None:
            self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix=f"{self._name}-chunks")
            self._thread = threading.Thread(target=self._drain, name=f"{self._name}-writer", daemon=True)
            self._thread.start()
        self._queue.put((video, frame, self._pool.submit(self.encode, *args), attrs))

    def _drain(self) -> None:
        """The writer thread: store frames in order until the closing ``None``; after a failure, only empty the
        queue."""
        while (item := self._queue.get()) is not None:
            if self._failure is None:
                video, frame, encoded, attrs = item
                try:
                    self.store(video, frame, encoded.result(), **attrs)
                except BaseException as err:  # raised in the caller's thread by the next submit or at the end
                    self._failure = err

    def _stop_threads(self) -> None:
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join()
            self._pool.shutdown(cancel_futures=True)
            self._thread = self._pool = None

    def _raise_failure(self) -> None:
        if self._failure is not None:
            failure, self._failure = self._failure, None
            raise failure

    def finish(self) -> None:
        """Wait for every frame to be stored (a subclass then writes its closing attributes)."""
        self._stop_threads()
        self._raise_failure()

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is not None:  # the threads stop before the partial file is removed
            self._stop_threads()
        return super().__exit__(exc_type, exc, tb)
