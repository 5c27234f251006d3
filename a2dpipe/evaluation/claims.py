"""This run's bootstrap intervals and the paper's claims checked through them.

:class:`Intervals` holds one paired bootstrap (:mod:`.bootstrap`) over the test videos of every variant with
per-video confusion matrices; :func:`claims` compares variants through the interval of their difference and gives
each claim a verdict (:func:`verdict`). Variants are named by :func:`variant_name`.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from a2dpipe.evaluation.bootstrap import CONFIDENCE, Bootstrap, normal_interval, per_video_key, point_score, read_per_video
from a2dpipe.evaluation.writers import interval_text
from a2dpipe.io import A2DError
from a2dpipe.variants import NONE, Variant, variant_name as _display_name

__all__ = ["MAIN_SOURCE", "CLAIMS", "Intervals", "load_intervals", "variant_name", "percent", "verdict", "claims"]

MAIN_SOURCE = "dataset"  # the paper's default: region masks of a model trained on the target dataset


def variant_name(method: str, inp: str, train: str = MAIN_SOURCE, test: str = MAIN_SOURCE) -> str:
    """The display name of a method's variant on an input (:func:`a2dpipe.variants.variant_name`); the baseline
    takes no mask source and the mask vote only a test source, so the ones it does not take are left out."""
    train = train if method == "ours" else NONE
    test = test if method != "baseline" else NONE
    return _display_name(Variant(method, inp, train, test))


def percent(value) -> float:
    """A score in [0, 1] as a percentage; ``nan`` for a missing (None) score."""
    return math.nan if value is None else 100.0 * float(value)


class Intervals:
    """Bootstrap intervals of this run's metrics: one paired :class:`Bootstrap` over the test videos.

    ``per_video`` maps each variant to its per-video confusion matrices (``read_per_video``); every variant must
    cover the same test videos (they are scored on the same split), or the pairing would be meaningless.
    """

    def __init__(self, per_video: dict[str, dict], *, resamples: int = 1000, seed: int = 0):
        if not per_video:
            raise A2DError("no per-video confusion matrices: the bootstrap needs at least one variant's")
        videos = {variant: doc["videos"] for variant, doc in per_video.items()}
        first, reference = next(iter(videos.items()))
        for variant, listed in videos.items():
            if listed != reference:
                raise A2DError(f"per-video matrices of {variant} and {first} cover different test videos")
        self.per_video = per_video
        self.bootstrap = Bootstrap(reference, resamples=resamples, seed=seed)
        self._samples: dict[tuple[str, str, str], dict[str, np.ndarray]] = {}

    def has(self, variant: str) -> bool:
        return variant in self.per_video

    def _matrices(self, variant: str, region: str, setting: str) -> np.ndarray:
        key = per_video_key(region, setting)
        if key not in self.per_video[variant]:
            raise A2DError(f"per-video matrices of {variant} lack {key}")
        return self.per_video[variant][key]

    def samples(self, variant: str, region: str, setting: str) -> dict[str, np.ndarray]:
        """``{score: (B,) resampled values}`` of a variant, computed once."""
        key = (variant, region, setting)
        if key not in self._samples:
            self._samples[key] = self.bootstrap.score_samples(self._matrices(variant, region, setting))
        return self._samples[key]

    def point(self, variant: str, score: str, setting: str, region: str = "whole") -> float:
        """One metric on all test videos (what the evaluation reports), in [0, 1]."""
        return point_score(self._matrices(variant, region, setting), score)

    def interval(self, variant: str, score: str, setting: str, region: str = "whole") -> tuple[float, float]:
        """(low, high) of one metric, in [0, 1] (:func:`.bootstrap.normal_interval`)."""
        point = self.point(variant, score, setting, region)
        return normal_interval(point, self.samples(variant, region, setting)[score], bounds=(0.0, 1.0))

    def difference(self, first: str, second: str, score: str, setting: str, region: str = "whole",
                   confidence: float = CONFIDENCE) -> tuple[float, float]:
        """(low, high) of ``second - first``, paired draws; a two-sided ``confidence`` interval (each end a
        one-sided test at half the rest)."""
        a = self.samples(first, region, setting)[score]
        b = self.samples(second, region, setting)[score]
        point = self.point(second, score, setting, region) - self.point(first, score, setting, region)
        return normal_interval(point, b - a, confidence)


def load_intervals(paths, evals: dict, *, resamples: int = 1000, seed: int = 0) -> Intervals:
    """:class:`Intervals` from per-video ``.npz`` files; each must add up to its variant's evaluation JSON."""
    per_video = {}
    for path in paths:
        doc = read_per_video(path)
        variant = doc["variant"]
        if variant not in evals:
            raise A2DError(f"{path}: per-video matrices of {variant}, which has no evaluation file")
        confusion = evals[variant].get("confusion", {})
        for region, by_setting in confusion.items():
            for setting, total in by_setting.items():
                key = per_video_key(region, setting)
                if key not in doc or not np.array_equal(doc[key].sum(axis=0), np.asarray(total)):
                    raise A2DError(f"{path}: {key} does not add up to the confusion matrix of {variant}'s "
                                   "evaluation (a stale file?)")
        per_video[variant] = doc
    return Intervals(per_video, resamples=resamples, seed=seed)


_MCA = "mean_class_accuracy"
# (claim, metric, setting, variants expected to increase left to right)
CLAIMS = [
    ("Ours beats Baseline in actor-action mean class accuracy (RGB + flow)",
     _MCA, "actor_action", ["baseline-rgbflow", variant_name("ours", "rgbflow")]),
    ("flow improves action mean class accuracy (Baseline)",
     _MCA, "action", ["baseline-rgb", "baseline-rgbflow"]),
    ("flow improves action mean class accuracy (Ours)",
     _MCA, "action", [variant_name("ours", "rgb"), variant_name("ours", "rgbflow")]),
    ("test masks: gt > dataset > generic (actor-action mean class accuracy)",
     _MCA, "actor_action", [variant_name("ours", "rgbflow", "generic", "generic"), variant_name("ours", "rgbflow"),
                            variant_name("ours", "rgbflow", "dataset", "gt")]),
    ("test masks: gt > dataset > generic (actor-action mean IoU)",
     "mean_iou", "actor_action", [variant_name("ours", "rgbflow", "generic", "generic"),
                                  variant_name("ours", "rgbflow"), variant_name("ours", "rgbflow", "dataset", "gt")]),
    ("control: Mask vote beats Baseline in actor-action mean class accuracy (RGB + flow): masks alone help",
     _MCA, "actor_action", ["baseline-rgbflow", variant_name("maskvote", "rgbflow")]),
    ("control: Ours beats Mask vote in actor-action mean class accuracy (RGB + flow): the region head helps",
     _MCA, "actor_action", [variant_name("maskvote", "rgbflow"), variant_name("ours", "rgbflow")]),
]
RESOLVED = ("yes", "no")


def verdict(intervals: list[tuple[float, float]]) -> str:
    """``yes`` when every difference's interval lies above zero, ``no`` when some interval has nothing above
    zero (that step is not an increase), ``not resolved`` otherwise; ``n/a`` when an interval is undefined."""
    if any(math.isnan(low) or math.isnan(high) for low, high in intervals):
        return "n/a"
    if all(low > 0 for low, _ in intervals):
        return "yes"
    if any(high <= 0 for _, high in intervals):
        return "no"
    return "not resolved"


def claims(evals: dict, intervals: Intervals | None = None) -> pd.DataFrame:
    """Each claim with the numbers it compares, each step's difference with its 95% interval, and the verdict
    (:func:`verdict`; ``n/a`` when a variant it needs was not evaluated or has no per-video matrices)."""
    rows = []
    for claim, metric, setting, variants in CLAIMS:
        values = [percent(evals[v]["metrics"]["whole"][setting][metric]) if v in evals else math.nan for v in variants]
        steps, bounds = [], []
        for (first, a), (second, b) in zip(zip(variants, values), zip(variants[1:], values[1:])):
            paired = intervals is not None and intervals.has(first) and intervals.has(second)
            low, high = intervals.difference(first, second, metric, setting) if paired else (math.nan, math.nan)
            bounds.append((low, high))
            steps.append(interval_text(b - a, 100.0 * low, 100.0 * high, 1, signed=True))
        holds = "n/a" if any(math.isnan(v) for v in values) else verdict(bounds)
        rows.append([claim, " / ".join("-" if math.isnan(v) else f"{v:.1f}" for v in values), "; ".join(steps),
                     holds])
    return pd.DataFrame(rows, columns=["claim", "this run (expected to increase left to right)",
                                       "difference [95% interval]", "holds"])
