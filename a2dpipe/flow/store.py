"""The flow cache of one shard: ``results/flow/<method>/shard-NNN.h5``.

Layout: one group per annotated frame, ``"{video}/{frame:05d}"``, holding ``flow`` (H, W, 2) float16 (u, v in
pixels; half precision keeps 1/32 px up to 64 px) and ``rgb`` (H, W, 3) uint8 (the configured encoding), lzf in
64 x 64-pixel chunks (:func:`a2dpipe.stores.pixel_chunks`; caches written before, gzip in automatic chunks, read the
same). Root attributes: ``schema`` (``"a2dpipe.flow/1"``, :data:`FORMAT`), ``method``, ``encoding``, ``dis_preset`` (DIS
only), ``wheel_max`` (wheel only; absent when per-frame), ``seconds_per_frame`` (estimator time per frame, measured
while computing) and ``frames`` (groups written). Group attribute ``peak``: (u, v) float32, the longest vector of the
stored field, so that a mirrored training window is re-encoded on the wheel's per-frame scale without decoding the
whole field (caches written before it lack it: their readers decode the whole field). The flow of a group is from the annotated frame to its
neighbour, or from the neighbour to it when the group's ``direction`` is 'previous' (copied from the frames store
with ``neighbour_frame``). Written by :class:`FlowWriter`, read by :class:`FlowStore` (both on
:mod:`a2dpipe.stores`).

>>> with FlowStore("results/flow/dis/shard-000.h5") as store:     # doctest: +SKIP
...     flow, rgb = store.read("EadxBPmQvtg", 25)
"""

from __future__ import annotations

import numpy as np

from a2dpipe.flow.encode import longest_vector
from a2dpipe.io import A2DError
from a2dpipe.stores import ArtifactFormat, ArtifactReader, ArtifactWriter, pixel_chunks

__all__ = ["FORMAT", "FlowStore", "FlowWriter"]

FORMAT = ArtifactFormat("flow", 1, "flow cache", "a2dpipe flow (rule flow)")


class FlowStore(ArtifactReader):
    """Read-only access to a flow cache; a context manager."""

    FORMAT = FORMAT

    def __init__(self, path):
        super().__init__(path)
        missing = {"method", "encoding", "seconds_per_frame"} - set(self._file.attrs)
        if missing:
            self._file.close()
            raise A2DError(f"{self.path}: not a flow cache (root attributes {sorted(missing)} missing)")

    @property
    def method(self) -> str:
        return str(self._file.attrs["method"])

    @property
    def encoding(self) -> str:
        return str(self._file.attrs["encoding"])

    def peak(self, video: str, frame: int) -> np.ndarray | None:
        """(2,) float32 longest vector of the stored field (group attribute ``peak``); None in a cache written
        before the attribute was (read the whole field instead)."""
        peak = self.group(video, frame).attrs.get("peak")
        return None if peak is None else np.asarray(peak, np.float32)

    def read(self, video: str, frame: int) -> tuple[np.ndarray, np.ndarray]:
        """(flow (H, W, 2) float32 pixels, rgb (H, W, 3) uint8) of one frame."""
        arrays = self.read_arrays(video, frame, ("flow", "rgb"))
        return arrays["flow"].astype(np.float32), arrays["rgb"]


class FlowWriter(ArtifactWriter):
    """Writes a flow cache atomically; a context manager.

    ``attrs`` (method, encoding, ...) and ``settings`` (see :class:`ArtifactWriter`) are written on entry; set
    ``seconds_per_frame`` before the block ends (it is written on a clean exit, with ``frames``).
    """

    FORMAT = FORMAT

    def __init__(self, path, *, settings: dict | None = None, **attrs):
        super().__init__(path, attrs=attrs, settings=settings)
        self.seconds_per_frame = None

    def write(self, video: str, frame: int, flow: np.ndarray, rgb: np.ndarray, **attrs) -> None:
        group = self.create_group(video, frame)
        field = np.asarray(flow, np.float16)
        for name, data in (("flow", field), ("rgb", np.asarray(rgb, np.uint8))):
            group.create_dataset(name, data=data, compression="lzf", chunks=pixel_chunks(data.shape))
        group.attrs["peak"] = longest_vector(field)
        for key, value in attrs.items():
            group.attrs[key] = value

    def finish(self) -> None:
        self.set_attrs(seconds_per_frame=self.seconds_per_frame, frames=self.count)
