"""Paired bootstrap over test videos: 95% intervals for every metric and for differences between variants.

The unit of resampling is the video, not the frame or the pixel: frames of one video share actors, background
and motion, so they are not independent evidence. One resample draws as many videos as the test split holds,
uniformly with replacement; its confusion matrix is the sum of the drawn videos' matrices (a video drawn twice
counts twice) and its scores follow (``a2dpipe.evaluation.metrics`` conventions: a class absent from a resample's
ground truth drops out of that resample's mean class accuracy). Every variant is resampled with the *same* draws
(paired), so a difference between two variants is computed draw by draw and the variation the two share (hard
videos are hard for every method) cancels.

Vectorised: the draws are one (B, V) index array; ``np.bincount`` turns them into (B, V) multiplicities, and one
matrix product with the (V, K*K) per-video matrices sums every resample at once: no loop over resamples or
classes. Intervals are percentile intervals (2.5th and 97.5th percentile of the B resampled values).

>>> per_video = np.array([[[5, 0], [0, 5]], [[5, 0], [5, 0]]])     # two videos, two classes
>>> boot = Bootstrap(["a", "b"], resamples=200, seed=0)
>>> point, low, high = boot.interval(per_video, "global_accuracy")
>>> round(point, 2), low <= point <= high
(0.75, True)
"""

from __future__ import annotations

import hashlib
import math
import zipfile
import zlib
from pathlib import Path

import numpy as np

from a2dpipe.io import A2DError, unreadable_artifact

__all__ = [
    "CONFIDENCE",
    "Bootstrap",
    "batch_scores",
    "percentile_interval",
    "read_per_video",
    "write_per_video",
    "per_video_key",
]

CONFIDENCE = 0.95
SCORES = ("global_accuracy", "mean_class_accuracy", "mean_iou")


def batch_scores(cms: np.ndarray) -> dict[str, np.ndarray]:
    """The three scores of a stack of confusion matrices: ``{score: (B,) float}`` (``nan`` where undefined).

    Same conventions as :func:`a2dpipe.evaluation.metrics.scores`, for (B, K, K) at once.
    """
    cms = np.asarray(cms, dtype=np.float64)
    tp = np.diagonal(cms, axis1=1, axis2=2)
    gt = cms.sum(axis=2)
    pred = cms.sum(axis=1)
    union = gt + pred - tp
    total = cms.sum(axis=(1, 2))
    with np.errstate(invalid="ignore", divide="ignore"):
        acc = np.where(gt > 0, tp / gt, np.nan)
        iou = np.where(union > 0, tp / union, np.nan)
        glob = np.where(total > 0, tp.sum(axis=1) / total, np.nan)
    return {"global_accuracy": glob, "mean_class_accuracy": _nan_mean_rows(acc), "mean_iou": _nan_mean_rows(iou)}


def _nan_mean_rows(values: np.ndarray) -> np.ndarray:
    defined = ~np.isnan(values)
    count = defined.sum(axis=1)
    total = np.where(defined, values, 0.0).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def percentile_interval(samples: np.ndarray, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """(low, high) percentiles holding ``confidence`` of the defined samples; (nan, nan) when none is defined."""
    samples = np.asarray(samples, dtype=np.float64)
    samples = samples[~np.isnan(samples)]
    if not samples.size:
        return math.nan, math.nan
    tail = 100 * (1 - confidence) / 2
    low, high = np.percentile(samples, [tail, 100 - tail])
    return float(low), float(high)


class Bootstrap:
    """``resamples`` seeded draws of the test videos, shared by every variant (paired).

    Args:
        videos: the test videos, in the order of the per-video matrices' first axis.
        resamples: number of resamples B (at least 1).
        seed: the draws are a function of (seed, number of videos, resamples) alone.
    """

    def __init__(self, videos, *, resamples: int = 1000, seed: int = 0):
        self.videos = [str(v) for v in videos]
        if not self.videos:
            raise ValueError("the bootstrap needs at least one test video")
        if resamples < 1:
            raise ValueError(f"resamples must be at least 1, got {resamples}")
        n = len(self.videos)
        self.draws = np.random.default_rng([seed, n]).integers(0, n, size=(resamples, n))
        offsets = (np.arange(resamples) * n)[:, None]
        self.weights = np.bincount((self.draws + offsets).ravel(), minlength=resamples * n).reshape(resamples, n)

    @property
    def resamples(self) -> int:
        return len(self.draws)

    def matrices(self, per_video: np.ndarray) -> np.ndarray:
        """(B, K, K) resampled confusion matrices from (V, K, K) per-video ones (exact: counts stay below 2**53)."""
        per_video = np.asarray(per_video)
        if per_video.ndim != 3 or per_video.shape[0] != len(self.videos) or per_video.shape[1] != per_video.shape[2]:
            raise ValueError(f"expected ({len(self.videos)}, K, K) per-video matrices, got {per_video.shape}")
        k = per_video.shape[1]
        flat = per_video.reshape(len(self.videos), k * k).astype(np.float64)
        return (self.weights.astype(np.float64) @ flat).reshape(-1, k, k)

    def samples(self, per_video: np.ndarray, score: str) -> np.ndarray:
        """(B,) resampled values of ``score`` (one of global_accuracy, mean_class_accuracy, mean_iou)."""
        if score not in SCORES:
            raise ValueError(f"unknown score {score!r}; expected one of {SCORES}")
        return self.score_samples(per_video)[score]

    def score_samples(self, per_video: np.ndarray) -> dict[str, np.ndarray]:
        """``{score: (B,) resampled values}`` for all three scores from one pass over the resamples."""
        return batch_scores(self.matrices(per_video))

    def interval(self, per_video: np.ndarray, score: str) -> tuple[float, float, float]:
        """(point estimate on all videos, low, high) of ``score``."""
        point = batch_scores(np.asarray(per_video).sum(axis=0, keepdims=True))[score][0]
        return (float(point), *percentile_interval(self.samples(per_video, score)))

    def difference(self, first: np.ndarray, second: np.ndarray, score: str) -> tuple[float, float, float]:
        """(point, low, high) of ``score(second) - score(first)``, resampled in pairs (same draws for both)."""
        point = self.interval(second, score)[0] - self.interval(first, score)[0]
        return (float(point), *percentile_interval(self.samples(second, score) - self.samples(first, score)))


# --- per-video confusion matrices on disk ---------------------------------------------------------------------


def per_video_key(region: str, setting: str) -> str:
    return f"{region}.{setting}"


def _arrays_digest(arrays: dict) -> str:
    """sha256 over the names, dtypes, shapes and bytes of ``arrays`` in name order."""
    digest = hashlib.sha256()
    for key in sorted(arrays):
        array = np.ascontiguousarray(arrays[key])
        digest.update(f"\0{key}\0{array.dtype.str}\0{array.shape}\0".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def write_per_video(path, variant: str, videos: list[str], matrices: dict[str, dict[str, np.ndarray]]) -> None:
    """``.npz`` with ``variant`` (0-d str), ``videos`` (V,) str, ``<region>.<setting>`` (V, K, K) int64 and
    ``sha256`` (0-d str, the digest of the others: zip's CRC-32 covers the bytes of each member, not which members
    there are nor their names)."""
    arrays = {"variant": np.array(variant), "videos": np.array(videos, dtype=str)}
    for region, by_setting in matrices.items():
        for setting, stack in by_setting.items():
            arrays[per_video_key(region, setting)] = np.asarray(stack, dtype=np.int64)
    arrays[DIGEST] = np.array(_arrays_digest(arrays))
    with open(path, "wb") as f:
        np.savez_compressed(f, **arrays)


DIGEST = "sha256"
WHAT = "per-video confusion matrices"


def read_per_video(path) -> dict:
    """``{"variant": str, "videos": [str], "<region>.<setting>": (V, K, K) int64}``; A2DError names a bad file and
    the rule that rebuilds it (damaged zip, a digest that does not match, counts that are no confusion matrices)."""
    path = Path(path)
    if not path.is_file():
        raise A2DError(f"{path}: {WHAT} not found; run `snakemake {path}` to make it")
    try:
        with np.load(path, allow_pickle=False) as data:
            out = {key: data[key] for key in data.files}
    except (OSError, ValueError, EOFError, KeyError, RuntimeError, NotImplementedError, zipfile.BadZipFile,
            zlib.error) as err:  # RuntimeError: a flipped flag bit reads as "encrypted"
        raise unreadable_artifact(path, WHAT, f"cannot read it ({type(err).__name__}: {err})") from None
    stored = out.pop(DIGEST, None)
    if stored is not None and str(stored) != _arrays_digest(out):
        raise unreadable_artifact(path, WHAT, "its arrays do not match their sha256 digest (a changed byte)")
    if "variant" not in out or "videos" not in out:
        raise unreadable_artifact(path, WHAT, "not a per-video confusion file (no 'variant' or 'videos')")
    videos = [str(v) for v in out.pop("videos")]
    for key, stack in out.items():
        if key == "variant":
            continue
        if stack.ndim != 3 or stack.shape[0] != len(videos) or stack.shape[1] != stack.shape[2] or (stack < 0).any():
            raise unreadable_artifact(path, WHAT, f"{key} is not one non-negative K x K matrix per video "
                                                  f"(shape {stack.shape})")
    return {**out, "variant": str(out["variant"]), "videos": videos}
