"""Paired bootstrap over test videos: 95% intervals for every metric and for differences between variants.

The unit of resampling is the video, not the frame or the pixel: frames of one video share actors, background
and motion, so they are not independent evidence. One resample draws as many videos as the test split holds,
uniformly with replacement; its confusion matrix is the sum of the drawn videos' matrices (a video drawn twice
counts twice) and its scores follow. Every variant is resampled with the *same* draws (paired), so a difference
between two variants is computed draw by draw and the variation the two share (hard videos are hard for every
method) cancels.

Class set. A mean over classes is only comparable with the point estimate when it averages the same kind of
classes: a resample averages the classes that the point estimate averages (``a2dpipe.evaluation.metrics``
conventions on all test videos) and whose defining pixels it drew. Mean class accuracy: the classes with ground
truth in the resample (always a subset of the point estimate's). Mean IoU: a class with ground truth in the test set
counts in a resample only when the resample holds some of that ground truth; a class only predicted in the test set
(IoU 0 in the point estimate) counts wherever it is predicted. Scoring each resample by the metrics module's own
conventions instead lets a class whose few ground-truth videos were not drawn, but which some drawn video
predicts, count with IoU 0: zeros the point estimate never has, which pulled most resamples below the point.

Interval. Resampled means over classes that each lie in two or three test videos are not centred on the point
estimate even so (a drawn class's own videos come in more copies, on average, than the videos that add its false
positives), so a percentile interval inherits their offset. The interval is therefore the normal bootstrap
interval: the point estimate plus and minus z (1.96 for 95%) times the standard deviation of the resampled values,
a score's clipped to [0, 1]. On a simulated benchmark of A2D's shape (``tests/test_bootstrap.py``: 12 classes, each
in about two of 48 test videos, a known truth) its 95% intervals hold the truth in 94% of 900 test sets for mean class
accuracy and 97% for mean IoU, where the percentile interval of the metrics module's rule held it in 80% for
mean IoU, with 80% of its resamples below the point (1,000 resamples each).

Vectorised: the draws are one (B, V) index array; ``np.bincount`` turns them into (B, V) multiplicities, and one
matrix product with the per-video class counts (true positives, ground truth, predictions: (V, 3K)) sums every
resample at once: no loop over resamples or classes.

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
from statistics import NormalDist

import numpy as np

from a2dpipe.errors import A2DError, unreadable_artifact

__all__ = [
    "CONFIDENCE",
    "Bootstrap",
    "batch_scores",
    "class_counts",
    "counts_scores",
    "normal_interval",
    "percentile_interval",
    "read_per_video",
    "write_per_video",
    "per_video_key",
    "point_score",
]

CONFIDENCE = 0.95
SCORES = ("global_accuracy", "mean_class_accuracy", "mean_iou")


def class_counts(cms: np.ndarray) -> np.ndarray:
    """(..., 3, K) true positives, ground-truth and predicted pixels per class of (..., K, K) confusion matrices."""
    cms = np.asarray(cms, dtype=np.float64)
    return np.stack([np.diagonal(cms, axis1=-2, axis2=-1), cms.sum(axis=-1), cms.sum(axis=-2)], axis=-2)


def batch_scores(cms: np.ndarray, point_gt: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """The three scores of a stack of confusion matrices: ``{score: (B,) float}`` (``nan`` where undefined).

    Without ``point_gt``, the conventions of :func:`a2dpipe.evaluation.metrics.scores`, for (B, K, K) at once.
    With ``point_gt`` ((K,) bool: the classes with ground truth in the point estimate), the resample rule of the
    module doc: a class with ground truth there leaves the mean IoU of a matrix that holds none of it.
    """
    return counts_scores(class_counts(cms), point_gt)


def counts_scores(counts: np.ndarray, point_gt: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """:func:`batch_scores` from (B, 3, K) :func:`class_counts`."""
    tp, gt, pred = counts[:, 0], counts[:, 1], counts[:, 2]
    union = gt + pred - tp
    total = gt.sum(axis=1)
    iou_defined = union > 0
    if point_gt is not None:
        iou_defined &= (gt > 0) | ~np.asarray(point_gt, dtype=bool)
    with np.errstate(invalid="ignore", divide="ignore"):
        acc = np.where(gt > 0, tp / gt, np.nan)
        iou = np.where(iou_defined, tp / union, np.nan)
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


def normal_interval(point: float, samples: np.ndarray, confidence: float = CONFIDENCE,
                    bounds: tuple[float, float] = (-math.inf, math.inf)) -> tuple[float, float]:
    """(low, high) = ``point`` -/+ z x the standard deviation of the defined ``samples`` (z of a two-sided normal
    interval holding ``confidence``), clipped to ``bounds``; (nan, nan) without two defined samples or a point."""
    samples = np.asarray(samples, dtype=np.float64)
    samples = samples[~np.isnan(samples)]
    if samples.size < 2 or math.isnan(point):
        return math.nan, math.nan
    half = NormalDist().inv_cdf(0.5 + confidence / 2) * float(samples.std(ddof=1))
    return max(point - half, bounds[0]), min(point + half, bounds[1])


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
        self._weights = self.weights.astype(np.float64)  # what every product takes

    @property
    def resamples(self) -> int:
        return len(self.draws)

    def _check(self, per_video) -> np.ndarray:
        per_video = np.asarray(per_video)
        if per_video.ndim != 3 or per_video.shape[0] != len(self.videos) or per_video.shape[1] != per_video.shape[2]:
            raise ValueError(f"expected ({len(self.videos)}, K, K) per-video matrices, got {per_video.shape}")
        return per_video

    def matrices(self, per_video: np.ndarray) -> np.ndarray:
        """(B, K, K) resampled confusion matrices from (V, K, K) per-video ones (exact: counts stay below 2**53)."""
        per_video = self._check(per_video)
        k = per_video.shape[1]
        flat = per_video.reshape(len(self.videos), k * k).astype(np.float64)
        return (self._weights @ flat).reshape(-1, k, k)

    def samples(self, per_video: np.ndarray, score: str) -> np.ndarray:
        """(B,) resampled values of ``score`` (one of global_accuracy, mean_class_accuracy, mean_iou)."""
        if score not in SCORES:
            raise ValueError(f"unknown score {score!r}; expected one of {SCORES}")
        return self.score_samples(per_video)[score]

    def score_samples(self, per_video: np.ndarray, point_classes: bool = True) -> dict[str, np.ndarray]:
        """``{score: (B,) resampled values}`` for all three scores, each resample averaging the point estimate's
        classes (module doc; ``point_classes=False``: the metrics module's rule in each resample, for comparison);
        one matrix product for every resample."""
        counts = class_counts(self._check(per_video))  # (V, 3, K): all the scores need
        v, _, k = counts.shape
        resampled = (self._weights @ counts.reshape(v, 3 * k)).reshape(-1, 3, k)
        return counts_scores(resampled, point_gt=counts[:, 1].sum(axis=0) > 0 if point_classes else None)

    def interval(self, per_video: np.ndarray, score: str) -> tuple[float, float, float]:
        """(point estimate on all videos, low, high) of ``score``: the normal interval of the module doc."""
        point = point_score(per_video, score)
        return (point, *normal_interval(point, self.samples(per_video, score), bounds=(0.0, 1.0)))

    def difference(self, first: np.ndarray, second: np.ndarray, score: str) -> tuple[float, float, float]:
        """(point, low, high) of ``score(second) - score(first)``, resampled in pairs (same draws for both)."""
        point = point_score(second, score) - point_score(first, score)
        return (point, *normal_interval(point, self.samples(second, score) - self.samples(first, score)))


def point_score(per_video: np.ndarray, score: str) -> float:
    """``score`` of all videos together (the point estimate: metrics module conventions)."""
    return float(batch_scores(np.asarray(per_video).sum(axis=0, keepdims=True))[score][0])


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
