"""Paired bootstrap over test videos: against a direct computation, coverage, shrinkage, determinism, pairing."""

from __future__ import annotations

import numpy as np
import pytest

from a2dpipe.evaluation.bootstrap import (
    Bootstrap,
    batch_scores,
    percentile_interval,
    read_per_video,
    write_per_video,
)
from a2dpipe.evaluation.metrics import scores
from a2dpipe.io import A2DError

SCORES = ("global_accuracy", "mean_class_accuracy", "mean_iou")


def hand_made(videos: int = 6, classes: int = 3, seed: int = 0) -> np.ndarray:
    """(V, K, K) per-video confusion matrices: mostly right, videos of unequal size and difficulty."""
    rng = np.random.default_rng(seed)
    out = np.zeros((videos, classes, classes), dtype=np.int64)
    for v in range(videos):
        right = rng.uniform(0.5, 0.95)
        for g in range(classes):
            n = int(rng.integers(0, 40)) if g else 200  # class 0 (background) in every video, others not always
            out[v, g, g] = int(right * n)
            out[v, g, (g + 1) % classes] = n - int(right * n)
    return out


def direct(per_video: np.ndarray, draws: np.ndarray, score: str) -> np.ndarray:
    """One resample at a time, with the metrics module's own scores: the reference the vectorised path must equal."""
    return np.array([scores(per_video[row].sum(axis=0))[score] for row in draws])


@pytest.mark.parametrize("score", SCORES)
def test_vectorised_resamples_equal_a_direct_computation(score):
    per_video = hand_made()
    boot = Bootstrap([f"v{i}" for i in range(len(per_video))], resamples=300, seed=4)
    np.testing.assert_allclose(boot.samples(per_video, score), direct(per_video, boot.draws, score), rtol=1e-12)
    # the summed matrices themselves are exact
    np.testing.assert_array_equal(boot.matrices(per_video)[7], per_video[boot.draws[7]].sum(axis=0))


def test_batch_scores_match_the_metrics_module_with_absent_classes():
    cms = np.array([[[5, 1, 0], [0, 0, 0], [2, 0, 3]], [[0, 0, 0], [0, 0, 0], [0, 0, 0]]])
    got = batch_scores(cms)
    for score in SCORES:
        assert got[score][0] == pytest.approx(scores(cms[0])[score])
        assert np.isnan(got[score][1]) and np.isnan(scores(cms[1])[score])


@pytest.mark.parametrize("score", SCORES)
def test_interval_contains_the_point_estimate(score):
    per_video = hand_made(videos=12)
    point, low, high = Bootstrap(range(12), resamples=1000, seed=0).interval(per_video, score)
    assert point == pytest.approx(scores(per_video.sum(axis=0))[score])
    assert low < point < high


def test_interval_shrinks_with_more_videos():
    few = hand_made(videos=8, seed=1)
    many = np.concatenate([few] * 9)  # the same kind of videos, nine times as many
    width = {}
    for name, per_video in (("few", few), ("many", many)):
        _, low, high = Bootstrap(range(len(per_video)), resamples=1000, seed=0).interval(per_video,
                                                                                      "mean_class_accuracy")
        width[name] = high - low
    assert width["many"] < 0.6 * width["few"]  # about 1/3 (1/sqrt(9)) expected


def test_identical_for_a_fixed_seed_and_different_for_another():
    per_video = hand_made()
    videos = range(len(per_video))
    a = Bootstrap(videos, resamples=200, seed=3).interval(per_video, "mean_iou")
    b = Bootstrap(videos, resamples=200, seed=3).interval(per_video, "mean_iou")
    c = Bootstrap(videos, resamples=200, seed=4).interval(per_video, "mean_iou")
    assert a == b and a != c


def test_paired_difference_is_tighter_than_the_intervals_it_compares():
    base = hand_made(videos=20, seed=2)
    better = base.copy()
    # every video gains the same few right pixels: hard videos stay hard, the gain is consistent
    better[:, 1, 1] += 3
    better[:, 1, 2] = np.maximum(better[:, 1, 2] - 3, 0)
    boot = Bootstrap(range(20), resamples=1000, seed=0)
    point, low, high = boot.difference(base, better, "global_accuracy")
    assert point > 0 and low > 0  # resolved although the two single intervals overlap
    _, base_low, base_high = boot.interval(base, "global_accuracy")
    _, better_low, _ = boot.interval(better, "global_accuracy")
    assert better_low < base_high and high - low < base_high - base_low
    # a variant against itself: exactly zero in every resample
    assert boot.difference(base, base, "mean_iou") == (0.0, 0.0, 0.0)


def test_percentile_interval_ignores_undefined_resamples():
    assert percentile_interval(np.array([np.nan, 1.0, 2.0, 3.0]), 0.5) == (1.5, 2.5)
    assert all(np.isnan(percentile_interval(np.array([np.nan]))))


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="at least one"):
        Bootstrap([], resamples=10)
    with pytest.raises(ValueError, match="resamples"):
        Bootstrap(["a"], resamples=0)
    with pytest.raises(ValueError, match="per-video"):
        Bootstrap(["a", "b"], resamples=5).matrices(np.zeros((3, 2, 2)))


def test_per_video_file_round_trip_and_errors(tmp_path):
    per_video = hand_made(videos=3)
    path = tmp_path / "v.videos.npz"
    write_per_video(path, "baseline-rgb", ["a", "b", "c"], {"whole": {"actor": per_video}})
    doc = read_per_video(path)
    assert doc["variant"] == "baseline-rgb" and doc["videos"] == ["a", "b", "c"]
    np.testing.assert_array_equal(doc["whole.actor"], per_video)
    write_per_video(path, "x", ["a", "b"], {"whole": {"actor": per_video}})  # 3 matrices for 2 videos
    with pytest.raises(A2DError, match="one non-negative K x K matrix per video"):
        read_per_video(path)
    path.write_text("not a zip")
    with pytest.raises(A2DError, match="cannot read"):
        read_per_video(path)
