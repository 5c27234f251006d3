"""MXNet's NDArray ``.params`` files (``mx.nd.save``), read with numpy alone: the format of the published FCIS
weights (msracver/FCIS), so that converting them needs no MXNet.

Layout (little-endian). A list: uint64 magic ``0x112``, uint64 reserved, uint64 count, that many arrays, then
uint64 count and that many names (uint64 length + UTF-8 bytes; ``arg:<name>`` for weights, ``aux:<name>`` for batch
norm statistics). An array: uint32 magic, then

- ``0xF993FAC9`` (V2) or ``0xF993FACA`` (V3, NumPy shape semantics): int32 storage type (0 dense; sparse is
  refused), the shape (uint32 / int32 rank, int64 dims; rank 0 in V2 or -1 in V3 is an empty array and ends the
  record), int32 device type and id, int32 dtype flag, the raw data;
- ``0xF993FAC8`` (V1): the shape as above, then device, dtype flag and data;
- anything else (the first MXNet releases): that word is the rank, followed by uint32 dims, device, dtype flag and
  data.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from a2dpipe.errors import A2DError

__all__ = ["read_params", "LIST_MAGIC"]

LIST_MAGIC = 0x112
V1_MAGIC, V2_MAGIC, V3_MAGIC = 0xF993FAC8, 0xF993FAC9, 0xF993FACA
DTYPES = {0: np.float32, 1: np.float64, 2: np.float16, 3: np.uint8, 4: np.int32, 5: np.int8, 6: np.int64,
          7: np.bool_}


class _Stream:
    """Sequential little-endian reads from a bytes buffer; running past its end is an error naming the file."""

    def __init__(self, data: bytes, path: Path):
        self.data, self.path, self.pos = data, path, 0

    def take(self, size: int, what: str) -> bytes:
        if size < 0 or self.pos + size > len(self.data):
            raise A2DError(f"{self.path}: truncated MXNet .params file: {what} needs {size} bytes at offset "
                           f"{self.pos}, the file has {len(self.data)}")
        chunk = self.data[self.pos:self.pos + size]
        self.pos += size
        return chunk

    def scalar(self, dtype: str, what: str) -> int:
        dt = np.dtype(dtype).newbyteorder("<")
        return int(np.frombuffer(self.take(dt.itemsize, what), dt)[0])

    def array(self, dtype, count: int, what: str) -> np.ndarray:
        dt = np.dtype(dtype).newbyteorder("<")
        return np.frombuffer(self.take(dt.itemsize * count, what), dt, count)


def read_params(path: str | Path) -> dict[str, np.ndarray]:
    """The named arrays of an MXNet ``.params`` file, names as saved (``arg:conv1_weight``, ``aux:...``).

    ``A2DError`` naming the file for a file that is not one (wrong magic), is truncated, holds sparse arrays or an
    unknown dtype, or whose name and array counts differ.
    """
    path = Path(path)
    stream = _Stream(path.read_bytes(), path)
    magic = stream.scalar("u8", "the list magic")
    if magic != LIST_MAGIC:
        raise A2DError(f"{path}: not an MXNet NDArray .params file (magic {magic:#x}, expected {LIST_MAGIC:#x}); "
                       "convert the file MXNet's mx.nd.save / save_checkpoint wrote")
    stream.scalar("u8", "the reserved word")
    arrays = [_read_array(stream, i) for i in range(stream.scalar("u8", "the array count"))]
    names = [stream.take(stream.scalar("u8", f"name {i}'s length"), f"name {i}").decode("utf-8", "replace")
             for i in range(stream.scalar("u8", "the name count"))]
    if len(names) != len(arrays):
        raise A2DError(f"{path}: {len(arrays)} arrays but {len(names)} names: an MXNet .params file names every "
                       "array")
    if len(set(names)) != len(names):
        raise A2DError(f"{path}: an array name appears twice")
    return dict(zip(names, arrays))


def _read_array(stream: _Stream, index: int) -> np.ndarray:
    what = f"array {index}"
    magic = stream.scalar("u4", f"{what}'s magic")
    if magic in (V2_MAGIC, V3_MAGIC):
        storage = stream.scalar("i4", f"{what}'s storage type")
        if storage != 0:
            raise A2DError(f"{stream.path}: {what} is a sparse array (storage type {storage}); only dense arrays "
                           "hold network weights")
    if magic in (V1_MAGIC, V2_MAGIC, V3_MAGIC):
        rank = stream.scalar("i4", f"{what}'s rank")
        if (rank == 0 and magic == V2_MAGIC) or rank == -1:  # a none array: nothing follows
            return np.zeros((0,), np.float32)
        shape = tuple(int(d) for d in stream.array("i8", max(rank, 0), f"{what}'s shape"))
    else:  # the first releases: no magic, the word read is the rank and dims are uint32
        shape = tuple(int(d) for d in stream.array("u4", magic, f"{what}'s shape"))
    if any(d < 0 for d in shape):
        raise A2DError(f"{stream.path}: {what} has an unknown dimension in its shape {shape}")
    stream.array("i4", 2, f"{what}'s device")
    flag = stream.scalar("i4", f"{what}'s dtype")
    if flag not in DTYPES:
        raise A2DError(f"{stream.path}: {what} has dtype flag {flag}, not one of MXNet's dense dtypes "
                       f"{sorted(DTYPES)}")
    count = int(np.prod(shape, dtype=np.int64))
    return stream.array(DTYPES[flag], count, f"{what}'s {count} values").reshape(shape).copy()
