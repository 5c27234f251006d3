"""This run's bootstrap intervals and the paper's claims checked through them.

:class:`Intervals` holds one paired bootstrap (:mod:`.bootstrap`) over the test videos of every variant with
per-video confusion matrices; :func:`claims` compares variants through the interval of their difference and gives
each claim a verdict (:func:`verdict`). Variants are named by :func:`a2dpipe.variants.variant_name`.
"""

from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np
import pandas as pd

from a2dpipe.evaluation.bootstrap import (CONFIDENCE, Bootstrap, normal_interval, per_video_key, point_score,
                                          read_per_video)
from a2dpipe.evaluation.writers import interval_text
from a2dpipe.errors import A2DError
from a2dpipe.variants import INPUTS, variant_name, variant_of

__all__ = ["CLAIMS", "CORRECTIONS", "Intervals", "load_intervals", "percent", "verdict",
           "claim_levels", "claims", "claims_caption"]

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

    def difference_samples(self, first: str, second: str, score: str, setting: str,
                           region: str = "whole") -> tuple[float, np.ndarray]:
        """(point, (B,) paired resampled values) of ``second - first``."""
        a = self.samples(first, region, setting)[score]
        b = self.samples(second, region, setting)[score]
        point = self.point(second, score, setting, region) - self.point(first, score, setting, region)
        return point, b - a

    def difference(self, first: str, second: str, score: str, setting: str, region: str = "whole",
                   confidence: float = CONFIDENCE) -> tuple[float, float]:
        """(low, high) of ``second - first``, paired draws; a two-sided ``confidence`` interval (each end a
        one-sided test at half the rest)."""
        return normal_interval(*self.difference_samples(first, second, score, setting, region), confidence)


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
# the variants the claims compare: the paper's (dataset masks) unless the claim is about the masks
_BASELINE_RGB, _BASELINE_RGBFLOW = (variant_name(variant_of("baseline", inp)) for inp in INPUTS)
_OURS_RGB, _OURS_RGBFLOW = (variant_name(variant_of("ours", inp)) for inp in INPUTS)
_OURS_GENERIC_MASKS = variant_name(variant_of("ours", "rgbflow", "generic", "generic"))
_OURS_GT_MASKS = variant_name(variant_of("ours", "rgbflow", "dataset", "gt"))
_MASK_VOTE = variant_name(variant_of("maskvote", "rgbflow"))
# (claim, metric, setting, variants expected to increase left to right)
CLAIMS = [
    ("Ours beats Baseline in actor-action mean class accuracy (RGB + flow)",
     _MCA, "actor_action", [_BASELINE_RGBFLOW, _OURS_RGBFLOW]),
    ("flow improves action mean class accuracy (Baseline)",
     _MCA, "action", [_BASELINE_RGB, _BASELINE_RGBFLOW]),
    ("flow improves action mean class accuracy (Ours)",
     _MCA, "action", [_OURS_RGB, _OURS_RGBFLOW]),
    ("test masks: gt > dataset > generic (actor-action mean class accuracy)",
     _MCA, "actor_action", [_OURS_GENERIC_MASKS, _OURS_RGBFLOW, _OURS_GT_MASKS]),
    ("test masks: gt > dataset > generic (actor-action mean IoU)",
     "mean_iou", "actor_action", [_OURS_GENERIC_MASKS, _OURS_RGBFLOW, _OURS_GT_MASKS]),
    ("control: Mask vote beats Baseline in actor-action mean class accuracy (RGB + flow): masks alone help",
     _MCA, "actor_action", [_BASELINE_RGBFLOW, _MASK_VOTE]),
    ("control: Ours beats Mask vote in actor-action mean class accuracy (RGB + flow): the region head helps",
     _MCA, "actor_action", [_MASK_VOTE, _OURS_RGBFLOW]),
]
RESOLVED = ("yes", "no")
STEP_LEVEL = (1 - CONFIDENCE) / 2  # one-sided level of each step's test (2.5%: the lower end of a 95% interval)
CORRECTIONS = ("none", "holm", "bonferroni")
CLAIM_COLUMNS = ["claim", "this run (expected to increase left to right)", "difference [two-sided interval]",
                 "interval", "holds", "lowest interval end (points)"]


def verdict(intervals: list[tuple[float, float]]) -> str:
    """``yes`` when every difference's interval lies above zero, ``no`` when some interval lies below zero (that
    step is a decrease), ``not resolved`` otherwise (an interval that touches zero, such as an exact tie's
    [0, 0], resolves nothing); ``n/a`` when an interval is undefined."""
    if any(math.isnan(low) or math.isnan(high) for low, high in intervals):
        return "n/a"
    if all(low > 0 for low, _ in intervals):
        return "yes"
    if any(high < 0 for _, high in intervals):
        return "no"
    return "not resolved"


def increase_p_value(point: float, samples: np.ndarray) -> float:
    """One-sided p-value of "no increase" for a difference: the normal tail above ``point`` / sd of ``samples``
    (what :func:`.bootstrap.normal_interval` puts at its lower end); 0 or 1 when the samples do not vary."""
    samples = np.asarray(samples, dtype=np.float64)
    samples = samples[~np.isnan(samples)]
    if math.isnan(point) or samples.size < 2:
        return math.nan
    sd = float(samples.std(ddof=1))
    if sd == 0:
        return 0.0 if point > 0 else 1.0
    return 1.0 - NormalDist().cdf(point / sd)


def claim_levels(p_values: list[float], correction: str) -> tuple[list[float], list[bool]]:
    """Per claim, the one-sided level of each of its steps' tests and whether the family allows a ``yes``.

    ``p_values``: each claim's p-value (its largest step's: a claim holds only when every step does, an
    intersection-union test that needs no correction within the claim); nan for a claim not tested.
    ``none``: every claim at :data:`STEP_LEVEL` (a per-claim test). ``bonferroni``: at STEP_LEVEL / m for the m
    tested claims. ``holm``: the claim of rank j (0-based, smallest p first) at STEP_LEVEL / (m - j), and a ``yes``
    only when every claim ranked before it holds too (Holm's step-down). Both keep the chance of any false ``yes``
    among the claims at most STEP_LEVEL.
    """
    if correction not in CORRECTIONS:
        raise A2DError(f"evaluation.claims_correction must be one of {CORRECTIONS}, got {correction!r}")
    tested = [i for i, p in enumerate(p_values) if not math.isnan(p)]
    m = max(len(tested), 1)
    levels = [STEP_LEVEL] * len(p_values)
    allowed = [True] * len(p_values)
    if correction == "bonferroni":
        levels = [STEP_LEVEL / m] * len(p_values)
    elif correction == "holm":
        still = True
        for rank, i in enumerate(sorted(tested, key=lambda i: p_values[i])):
            levels[i] = STEP_LEVEL / (m - rank)
            allowed[i] = still
            still = still and p_values[i] <= levels[i]
    return levels, allowed


def level_text(level: float) -> str:
    """``95% (2.5% one-sided per step)`` for a one-sided level of 0.025."""
    return f"{100 * (1 - 2 * level):.3g}% ({100 * level:.2g}% one-sided per step)"


def claims(evals: dict, intervals: Intervals | None = None, correction: str = "none") -> pd.DataFrame:
    """Each claim with the numbers it compares, each step's difference with its two-sided interval (at the claim's
    level, :func:`claim_levels`), that level, the verdict (:func:`verdict`; ``n/a`` when a variant it needs was
    not evaluated or has no per-video matrices) and the lowest end of its steps' intervals in points (how far a
    ``yes`` sits from not resolved)."""
    prepared = []
    for claim, metric, setting, variants in CLAIMS:
        values = [percent(evals[v]["metrics"]["whole"][setting][metric]) if v in evals else math.nan for v in variants]
        steps = list(zip(variants, variants[1:]))
        paired = intervals is not None and all(intervals.has(v) for v in variants)
        p_value = math.nan
        if paired and not any(math.isnan(v) for v in values):
            p_value = max(increase_p_value(*intervals.difference_samples(a, b, metric, setting)) for a, b in steps)
        prepared.append((claim, metric, setting, values, steps, paired, p_value))
    levels, allowed = claim_levels([row[-1] for row in prepared], correction)
    rows = []
    for (claim, metric, setting, values, steps, paired, _), level, allow in zip(prepared, levels, allowed):
        bounds, texts = [], []
        for (first, second), (a, b) in zip(steps, zip(values, values[1:])):
            low, high = (intervals.difference(first, second, metric, setting, confidence=1 - 2 * level) if paired
                         else (math.nan, math.nan))
            bounds.append((low, high))
            texts.append(interval_text(b - a, 100.0 * low, 100.0 * high, 1, signed=True))
        holds = "n/a" if any(math.isnan(v) for v in values) else verdict(bounds)
        if holds == "yes" and not allow:
            holds = "not resolved"  # Holm: a claim ranked before it does not hold
        lowest = min((100.0 * low for low, _ in bounds), default=math.nan)
        rows.append([claim, " / ".join("-" if math.isnan(v) else f"{v:.1f}" for v in values), "; ".join(texts),
                     level_text(level), holds, lowest])
    return pd.DataFrame(rows, columns=CLAIM_COLUMNS)


def claims_caption(correction: str, count: int = len(CLAIMS)) -> str:
    """What the claims table's verdicts are: the test behind each, the family it controls, what it is
    conditional on, and how stable a verdict near the edge is."""
    family = {
        "none": f"no correction across the {count} claims (config evaluation.claims_correction: none): each claim "
                f"is read on its own, and the chance that at least one of {count} claims without a real effect "
                f"reads yes is up to {100 * (1 - (1 - STEP_LEVEL) ** count):.0f}%",
        "bonferroni": f"Bonferroni across the {count} claims (evaluation.claims_correction): each step at "
                      f"{100 * STEP_LEVEL:g}% / {count}, so the chance of any false yes among them is at most "
                      f"{100 * STEP_LEVEL:g}%",
        "holm": f"Holm's step-down across the {count} claims (evaluation.claims_correction): the claim with the "
                f"j-th smallest p-value at {100 * STEP_LEVEL:g}% / ({count} - j + 1), a yes only when every claim "
                f"before it holds; the chance of any false yes among them is at most {100 * STEP_LEVEL:g}%",
    }[correction]
    return (
        "The paper's qualitative claims and the mask-vote control, checked on this run's numbers. Each step is a "
        f"one-sided test at the level in column interval (the lower end of a two-sided interval): yes when every "
        "step's interval lies above zero (a claim with several steps needs all of them), no when some step's lies "
        "below zero, not resolved otherwise, an exact tie included. "
        f"{family[0].upper()}{family[1:]}. The intervals are conditional on the trained models: they measure the "
        "choice of test videos (paired normal bootstrap over them), not training noise; the seeds run "
        "(config/seeds.yaml, aggregate/claims.csv) is the test of that, and of the machine: two threads instead of "
        "one, or another kind of CPU, add floats in another order and have moved a difference by up to 3 points, "
        "so read a yes whose lowest interval end is within a few points of zero with the seeds run beside it."
    )
