"""The project's error and the messages of a damaged or missing artifact: each names the file, the problem and the
command that fixes it (``<file>: <what is wrong>; <fix>``).
"""

from __future__ import annotations

import contextlib
import os

__all__ = ["A2DError", "REBUILT_BY", "rebuild_hint", "artifact_error", "unreadable_artifact", "open_hdf5",
           "reading_artifact"]


class A2DError(RuntimeError):
    """A problem with the user's data or configuration; the message names the file or key and what is wrong."""


# The rule that writes each intermediate artifact (by the name readers give it), so that the error for an
# unreadable one can say how to rebuild it.
REBUILT_BY = {
    "index": "index",
    "frames shard": "extract_frames",
    "frames store": "extract_frames",
    "flow cache": "flow",
    "region-mask cache": "region_masks",
    "predictions file": "predict",
    "evaluation": "evaluate",
    "per-video confusion matrices": "evaluate",
    "mask model": "train_mask_model",
    "stage-1 model": "train_stage1",
    "stage-2 model": "train_stage2",
}


def rebuild_hint(what: str) -> str:
    """How to rebuild an artifact called ``what`` (a key of :data:`REBUILT_BY`): the sentence every message ends
    with, ``rebuild it with `snakemake --forcerun <rule>`, or delete it and run snakemake again``."""
    rule = REBUILT_BY.get(what)
    if rule is None:
        return "rebuild it: delete it and run snakemake again"
    return f"rebuild it with `snakemake --forcerun {rule}`, or delete it and run snakemake again"


def artifact_error(path: str | os.PathLike, problem: str, fix: str) -> A2DError:
    """The one error format: ``<file>: <what is wrong>; <the command or config key that fixes it>``."""
    return A2DError(f"{path}: {problem}; {fix}")


def unreadable_artifact(path: str | os.PathLike, what: str, problem: str) -> A2DError:
    """The error for an artifact that exists but cannot be read (truncated, bit-flipped, hand-edited).

    Names the file, the problem and how to rebuild it (:func:`rebuild_hint`). Nothing is deleted here: the file
    may be the only copy of something the user wants to inspect.
    """
    return artifact_error(path, f"{problem}; the {what} is damaged or incomplete", rebuild_hint(what))


def open_hdf5(path: str | os.PathLike, what: str):
    """Open ``path`` read-only as an ``h5py.File``; :class:`A2DError` naming the file when it cannot be.

    ``what`` names the artifact expected there (``"frames shard"``, ``"flow cache"`` ...) for the messages
    ``<path>: <what> not found`` and ``<path>: not a readable HDF5 file (...): ...`` followed by how to rebuild
    it (:func:`unreadable_artifact`).
    """
    import h5py  # here, so that importing a2dpipe.io stays light

    try:
        return h5py.File(path, "r")
    except FileNotFoundError:
        raise A2DError(f"{path}: {what} not found") from None
    except OSError as err:
        problem = f"not a readable HDF5 file (truncated or another format?): {err}"
        raise unreadable_artifact(path, what, problem) from None


@contextlib.contextmanager
def reading_artifact(path: str | os.PathLike, what: str, item: str):
    """Turn an HDF5 failure while reading ``item`` of ``path`` into :class:`A2DError` naming the file and its rebuild.

    HDF5 reports a flipped bit or a cut-off chunk as a bare ``OSError`` (failed filter or checksum), ``KeyError``
    (damaged object header) or ``RuntimeError`` (damaged link table), none of which names the file.

    >>> with reading_artifact("results/frames/shard-000.h5", "frames shard", "frame v/00001"):  # doctest: +SKIP
    ...     rgb = group["rgb"][()]
    """
    try:
        yield
    except A2DError:
        raise
    except (OSError, KeyError, ValueError, RuntimeError) as err:
        raise unreadable_artifact(path, what, f"cannot read {item}: {err}") from None

