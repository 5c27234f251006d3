"""The flow cache of one shard: ``results/flow/<method>/shard-NNN.h5``.

Layout: one group per annotated frame, ``"{video}/{frame:05d}"``, holding ``flow`` (H, W, 2) float16 (u, v in
pixels; half precision keeps 1/32 px up to 64 px) and ``rgb`` (H, W, 3) uint8 (the configured encoding), lzf in
64 x 64-pixel chunks (:func:`a2dpipe.stores.pixel_chunks`). Root attributes: ``schema`` (``"a2dpipe.flow/2"``,
:data:`FORMAT`), ``method``, ``encoding``, ``dis_preset`` (DIS only), ``wheel_max`` (wheel only; absent when
per-frame), ``device`` (neural methods: where they ran), ``seconds_per_frame`` (estimator time per frame, measured
while computing) and ``frames`` (groups written). Each group also holds ``rgb_mirror`` (H, W, 3) uint8: the image of
the stored field with u negated, in the same encoding and on the same scale (negating u keeps every magnitude), i.e.
the flow image of the left-right mirrored frame with its columns not yet reversed. Training mirrors half its samples;
with it, a mirrored window is read like any other instead of re-encoded (a wheel image of 320 x 320 pixels costs
~8 ms of CPU with torchvision's encoder, ~2.5 ms with today's). The flow of a group is from the annotated frame to its
neighbour, or from the neighbour to it when the group's ``direction`` is 'previous' (copied from the frames store
with ``neighbour_frame``). Written by :class:`FlowWriter`, read by :class:`FlowStore` (both on
:mod:`a2dpipe.stores`); a cache of schema version 1 (some without ``rgb_mirror`` or ``device``) is refused, naming
the rule that rebuilds it.

>>> with FlowStore("results/flow/dis/shard-000.h5") as store:     # doctest: +SKIP
...     flow, rgb = store.read("EadxBPmQvtg", 25)
"""

from __future__ import annotations

import numpy as np

from a2dpipe.flow.encode import flow_images
from a2dpipe.errors import A2DError
from a2dpipe.stores import ArtifactFormat, ArtifactReader, ArtifactWriter, pixel_chunks

__all__ = ["FORMAT", "FlowStore", "FlowWriter"]

FORMAT = ArtifactFormat("flow", 2, "flow cache")
MAX_FLOW = 4096.0  # pixels: no frame is wider (A2D's are 320 px high)


class FlowStore(ArtifactReader):
    """Read-only access to a flow cache; a context manager."""

    FORMAT = FORMAT
    # a flow vector longer than any frame is damage (float16 reaches 65504)
    VALUE_RANGES = {"flow": (-MAX_FLOW, MAX_FLOW)}

    def __init__(self, path):
        super().__init__(path)
        missing = {"method", "encoding", "seconds_per_frame"} - set(self._file.attrs)
        if missing:
            self._file.close()
            raise A2DError(f"{self.path}: not a flow cache (root attributes {sorted(missing)} missing)")

    @property
    def method(self) -> str:
        return self.attrs["method"]

    @property
    def encoding(self) -> str:
        return self.attrs["encoding"]

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

    def write(self, video: str, frame: int, flow: np.ndarray, rgb: np.ndarray | None = None, **attrs) -> None:
        """One frame: its field ``flow`` (stored float16), its flow image ``rgb`` in the cache's ``encoding`` and
        ``rgb_mirror``, both made here from the stored field when ``rgb`` is None (:func:`flow_images`: the image
        of the stored field with u negated); ``attrs`` become group attributes."""
        group = self.create_group(video, frame)
        field = np.asarray(flow, np.float16)
        image, mirror = flow_images(field.astype(np.float32), self._attrs["encoding"], self._attrs.get("wheel_max"))
        rgb = image if rgb is None else rgb
        for name, data in (("flow", field), ("rgb", np.asarray(rgb, np.uint8)), ("rgb_mirror", mirror)):
            group.create_dataset(name, data=data, compression="lzf", chunks=pixel_chunks(data.shape))
        group.set_attrs(**attrs)

    def finish(self) -> None:
        self.set_attrs(seconds_per_frame=self.seconds_per_frame, frames=self.count)
