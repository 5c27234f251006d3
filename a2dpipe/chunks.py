"""Chunks written as HDF5 stores them: one chunk per dataset, its Fletcher-32 checksum computed here.

The flow cache and the region-mask cache write each dataset as one uncompressed chunk with HDF5's ``fletcher32``
filter. HDF5 takes one call at a time per process, so a writer computes the stored bytes (:func:`stored_chunk`: the
array's bytes and their checksum, vectorised) where it likes, in threads of its own, and its one HDF5 thread only
creates the dataset and copies them in (:func:`write_stored`: ``write_direct_chunk``, no filter pipeline). Readers
need not know: HDF5 verifies the checksum on every read of the chunk, as it does for one its filter wrote.

>>> hex(fletcher32(np.frombuffer(b"abcde", np.uint8)))
'0x4ff029c7'
"""

from __future__ import annotations

import numpy as np

__all__ = ["fletcher32", "stored_chunk", "write_stored"]

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
