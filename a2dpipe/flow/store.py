"""The flow cache of one shard: ``results/flow/<method>/shard-NNN.h5``.

Layout: one group per annotated frame, ``"{video}/{frame:05d}"``, holding ``flow`` (H, W, 2) float16 (u, v in
pixels; half precision keeps 1/32 px up to 64 px) and ``rgb`` (H, W, 3) uint8 (the configured encoding),
uncompressed, each dataset one chunk with a Fletcher-32 checksum (:func:`flow_chunks`). The writer computes the
checksums with the images, in its encoder threads, and hands HDF5 each chunk as stored (:mod:`a2dpipe.chunks`), so
that its one writing thread (HDF5 takes one call at a time per process) copies bytes and little else.
Root attributes: ``schema`` (``"a2dpipe.flow/3"``, :data:`FORMAT`), ``method``, ``encoding``, ``dis_preset`` (DIS
only), ``wheel_max`` (wheel only; absent when per-frame), ``device`` (neural methods: where they ran),
``seconds_per_frame`` (estimator time per frame, measured while computing) and ``frames`` (groups written). Each
group also holds ``rgb_mirror`` (H, W, 3) uint8: the image of the stored field with u negated, in the same encoding
and on the same scale (negating u keeps every magnitude), i.e. the flow image of the left-right mirrored frame with
its columns not yet reversed. Training mirrors half its samples; with it, a mirrored window is read like any other
instead of re-encoded (a wheel image of 320 x 320 pixels costs ~8 ms of CPU with torchvision's encoder, ~2.5 ms
with today's). The flow of a group is from the annotated frame to its neighbour, or from the neighbour to it when
the group's ``direction`` is 'previous' (copied from the frames store with ``neighbour_frame``). Written by
:class:`FlowWriter`, read by :class:`FlowStore` (both on :mod:`a2dpipe.stores`).

Schema 2 stored the same arrays lzf-compressed in 64 x 64-pixel chunks: lzf cost a flow job most of its CPU time
per frame for a small saving (the half-precision field and smooth colours leave it little to find), and 64 x 64
chunks ~45 index entries and checksums per dataset (docs/performance.md, ``benchmarks/flow_cache.py``). A training
crop now reads its image's one chunk whole: a copy and a checksum, no decompression. Caches of schemas 1 and 2 are
refused, naming the rule that rebuilds them.

>>> with FlowStore("results/flow/dis/shard-000.h5") as store:     # doctest: +SKIP
...     flow, rgb = store.read("EadxBPmQvtg", 25)
"""

from __future__ import annotations

import numpy as np

from a2dpipe.chunks import PipelinedWriter, stored_chunk, write_stored
from a2dpipe.flow.encode import flow_images
from a2dpipe.errors import A2DError
from a2dpipe.stores import ArtifactFormat, ArtifactReader

__all__ = ["FORMAT", "DATASETS", "FlowStore", "FlowWriter", "flow_chunks"]

FORMAT = ArtifactFormat("flow", 3, "flow cache")
MAX_FLOW = 4096.0  # pixels: no frame is wider (A2D's are 320 px high)
DATASETS = ("flow", "rgb", "rgb_mirror")


def flow_chunks(shape: tuple[int, ...]) -> tuple[int, ...]:
    """HDF5 chunk shape of a flow-cache dataset: the whole (H, W, C) array, one chunk (see the module docstring)."""
    return tuple(shape)


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


class FlowWriter(PipelinedWriter):
    """Writes a flow cache atomically; a context manager.

    ``attrs`` (method, encoding, ...) and ``settings`` (see :class:`ArtifactWriter`) are written on entry; set
    ``seconds_per_frame`` before the block ends (it is written on a clean exit, with ``frames``). With ``threads``
    (> 0), :meth:`write` returns at once: that many threads encode the frames' images and one writer thread stores
    them in order (:class:`~a2dpipe.chunks.PipelinedWriter`; at most ``2 * threads + 2`` frames wait). ``threads``
    0: both in the calling thread.
    """

    FORMAT = FORMAT

    def __init__(self, path, *, settings: dict | None = None, threads: int = 0, **attrs):
        threads = max(int(threads), 0)
        super().__init__(path, attrs=attrs, settings=settings, threads=threads, queue_size=2 * threads + 2,
                         name="flow-cache")
        self.seconds_per_frame = None

    def write(self, video: str, frame: int, flow: np.ndarray, rgb: np.ndarray | None = None, **attrs) -> None:
        """One frame: its field ``flow`` (stored float16), its flow image ``rgb`` in the cache's ``encoding`` and
        ``rgb_mirror``, both made from the stored field when ``rgb`` is None (:meth:`encode`); ``attrs`` become
        group attributes. A frame written twice is an :class:`A2DError`."""
        self.submit(video, frame, flow, rgb, **attrs)

    def encode(self, flow: np.ndarray, rgb: np.ndarray | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
        """What :meth:`store` writes of one frame: (array, its :func:`stored_chunk`) of each of :data:`DATASETS`:
        the field as stored (float16), the image (:func:`flow_images` of the stored field, what a reader can
        re-derive; ``rgb`` instead when given) and the mirror image. The checksums are computed here, in the pool's
        threads, not under HDF5's lock."""
        field = np.asarray(flow, np.float16)
        image, mirror = flow_images(field.astype(np.float32), self._attrs["encoding"], self._attrs.get("wheel_max"))
        arrays = (field, image if rgb is None else np.asarray(rgb, np.uint8), mirror)
        return [(array, stored_chunk(array)) for array in arrays]

    def store(self, video: str, frame: int, datasets: list[tuple[np.ndarray, np.ndarray]], **attrs) -> None:
        """The HDF5 part of a write: one frame's group, its :data:`DATASETS` (:meth:`encode`'s) each written as its
        one chunk as it is (``write_direct_chunk``: no copy through HDF5's filter pipeline), and its attributes."""
        group = self.create_group(video, frame)
        for name, (array, chunk) in zip(DATASETS, datasets):
            write_stored(group, name, array, chunk)  # one chunk: flow_chunks(array.shape)
        group.set_attrs(**attrs)

    def finish(self) -> None:
        super().finish()
        self.set_attrs(seconds_per_frame=self.seconds_per_frame, frames=self.count)
