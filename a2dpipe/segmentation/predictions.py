"""Predictions of one variant on one split:
``results/predictions/<split>/<kind>/<input>/<train_source>/<test_source>.h5`` (:mod:`a2dpipe.variants`), written
by ``a2dpipe predict``.

Layout (Predictions contract), one group ``"{video}/{frame:05d}"`` per test frame with uint8 datasets at frame
size, gzip-compressed: ``actor`` (0..7), ``action`` (0..9), ``joint`` (A2D ids: 0 or one of the 43 valid pairs,
from the product of the two distributions). Root attributes: ``schema`` (``"a2dpipe.predictions/2"``,
:data:`FORMAT`), ``variant``, ``model`` (file name), ``device`` (where the network ran,
:func:`a2dpipe.devices.describe_device`), ``seconds_per_frame`` (network forward incl. the region back-end and the joint
argmax, excluding I/O; CUDA synchronised) and ``frames`` (groups written). A file of schema version 1 (some without
``device``) is refused, naming the rule that rebuilds it.

>>> with PredictionWriter("p.h5", variant="baseline-rgb", model="model.pt", device="CPU") as writer:  # doctest: +SKIP
...     writer.write("vid", 25, {"actor": actor, "action": action, "joint": joint})
>>> with PredictionStore("p.h5") as store:                                              # doctest: +SKIP
...     store.read("vid", 25)["joint"].shape
(96, 128)
"""

from __future__ import annotations

import numpy as np

from a2dpipe.errors import unreadable_artifact
from a2dpipe.labels import ACTIONS, ACTORS, VALID_PAIRS
from a2dpipe.stores import ArtifactFormat, ArtifactReader, ArtifactWriter, group_key

__all__ = ["FORMAT", "MAPS", "PREDICTED_SPLITS", "PredictionStore", "PredictionWriter"]

FORMAT = ArtifactFormat("predictions", 2, "predictions file")
MAPS = ("actor", "action", "joint")
PREDICTED_SPLITS = ("test", "val")  # test scores the tables; val the choices made by looking at results
_VALID_JOINT = np.zeros(256, bool)  # lookup by uint8 label: background and the valid actor-action ids
_VALID_JOINT[[0, *VALID_PAIRS]] = True


class PredictionWriter(ArtifactWriter):
    """Writes a predictions file atomically; set ``seconds_per_frame`` before the ``with`` block ends.

    ``settings``, when given, is written as the ``settings`` root attribute (see :class:`ArtifactWriter`).
    """

    FORMAT = FORMAT

    def __init__(self, path, *, variant: str, model: str, device: str, settings: dict | None = None):
        super().__init__(path, attrs={"variant": variant, "model": model, "device": device}, settings=settings)
        self.seconds_per_frame = float("nan")

    def write(self, video: str, frame: int, maps: dict) -> None:
        """Store the ``actor``, ``action`` and ``joint`` maps (H, W) of one frame as uint8."""
        group = self.create_group(video, frame)
        for name in MAPS:
            group.create_dataset(name, data=np.asarray(maps[name], np.uint8), compression="gzip", compression_opts=4)

    def finish(self) -> None:
        self.set_attrs(seconds_per_frame=self.seconds_per_frame, frames=self.count)


class PredictionStore(ArtifactReader):
    """Read-only access to a predictions file; ``read(video, frame, names)`` gives the maps asked for."""

    FORMAT = FORMAT
    VALUE_RANGES = {"actor": (0, len(ACTORS)), "action": (0, len(ACTIONS)), "joint": (0, max(VALID_PAIRS))}

    def check_values(self, video: str, frame: int, name: str, array: np.ndarray) -> None:
        """Actor and action indices in range; joint labels 0 or a valid actor-action id."""
        super().check_values(video, frame, name, array)
        if name == "joint" and array.size and not _VALID_JOINT[array].all():
            wrong = sorted(set(np.unique(array[~_VALID_JOINT[array]]).tolist()))
            raise unreadable_artifact(self.path, FORMAT.what, f"frame {group_key(video, frame)}: joint holds "
                                                              f"label(s) {wrong[:5]} that are no actor-action id")

    @property
    def variant(self) -> str:
        return str(self.attrs.get("variant", self.path.stem))

    def read(self, video: str, frame: int, names=MAPS) -> dict[str, np.ndarray]:
        return self.read_arrays(video, frame, tuple(names))
