"""The flow cache of one shard: ``results/flow/<method>/shard-NNN.h5``.

Layout: one group per annotated frame, ``"{video}/{frame:05d}"``, holding ``flow`` (H, W, 2) float16 (u, v in
pixels; half precision keeps 1/32 px up to 64 px) and ``rgb`` (H, W, 3) uint8 (the configured encoding). Root
attributes: ``method``, ``encoding``, ``wheel_max`` (wheel only; absent when per-frame), ``seconds_per_frame``
(estimator time per frame, measured while computing) and ``frames`` (groups written). The flow of a group is from
the annotated frame to its neighbour, or from the neighbour to it when the group's ``direction`` is 'previous'
(copied from the frames store with ``neighbour_frame``).

>>> with FlowStore("results/flow/dis/shard-000.h5") as store:     # doctest: +SKIP
...     flow, rgb = store.read("EadxBPmQvtg", 25)
"""

from __future__ import annotations

import os

import numpy as np

from a2dpipe.io import A2DError, HDF5Store

__all__ = ["FlowStore", "FlowWriter", "group_name"]


def group_name(video: str, frame: int) -> str:
    return f"{video}/{int(frame):05d}"


class FlowStore(HDF5Store):
    """Read-only access to a flow cache; a context manager."""

    def __init__(self, path: str | os.PathLike):
        super().__init__(path, "flow cache")
        missing = {"method", "encoding", "seconds_per_frame"} - set(self._file.attrs)
        if missing:
            self._file.close()
            raise A2DError(f"{self.path}: not a flow cache (root attributes {sorted(missing)} missing)")

    @property
    def attrs(self) -> dict:
        """Root attributes: method, encoding, seconds_per_frame, frames (and wheel_max when fixed)."""
        return {k: (v.item() if hasattr(v, "item") else v) for k, v in self._file.attrs.items()}

    @property
    def method(self) -> str:
        return str(self._file.attrs["method"])

    @property
    def encoding(self) -> str:
        return str(self._file.attrs["encoding"])

    def keys(self) -> list[tuple[str, int]]:
        """(video, frame) of every stored frame, sorted."""
        return [(video, int(frame)) for video in sorted(self._file) for frame in sorted(self._file[video])]

    def __contains__(self, key: tuple[str, int]) -> bool:
        return group_name(*key) in self._file

    def read(self, video: str, frame: int) -> tuple[np.ndarray, np.ndarray]:
        """(flow (H, W, 2) float32 pixels, rgb (H, W, 3) uint8) of one frame."""
        name = group_name(video, frame)
        if name not in self._file:
            raise A2DError(f"{self.path}: no flow for video {video!r} frame {int(frame)} (group {name!r})")
        with self.reading(f"frame {name}"):
            group = self._file[name]
            return group["flow"][()].astype(np.float32), group["rgb"][()]


class FlowWriter:
    """Writes a flow cache into an open path (the caller makes it atomic); a context manager.

    ``attrs`` (method, encoding, ...) are written on entry; ``seconds_per_frame`` and ``frames`` by ``finish``.
    """

    def __init__(self, path: str | os.PathLike, **attrs):
        import h5py

        self._file = h5py.File(path, "w")
        for key, value in attrs.items():
            if value is not None:
                self._file.attrs[key] = value
        self.count = 0

    def write(self, video: str, frame: int, flow: np.ndarray, rgb: np.ndarray, **attrs) -> None:
        group = self._file.create_group(group_name(video, frame))
        group.create_dataset("flow", data=np.asarray(flow, np.float16), compression="gzip", compression_opts=1)
        group.create_dataset("rgb", data=np.asarray(rgb, np.uint8), compression="gzip", compression_opts=1)
        for key, value in attrs.items():
            group.attrs[key] = value
        self.count += 1

    def finish(self, seconds_per_frame: float) -> None:
        self._file.attrs["seconds_per_frame"] = float(seconds_per_frame)
        self._file.attrs["frames"] = self.count

    def __enter__(self) -> FlowWriter:
        return self

    def __exit__(self, *exc) -> None:
        self._file.close()
