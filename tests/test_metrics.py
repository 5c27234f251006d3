import json
import time
import warnings

import h5py
import numpy as np
import pytest
from sklearn.metrics import accuracy_score, balanced_accuracy_score, jaccard_score
from sklearn.metrics import confusion_matrix as sk_confusion_matrix

from a2dpipe import labels
from a2dpipe.evaluation import metrics
from a2dpipe.cli import main
from a2dpipe.dataset.frames import FORMAT as FRAMES
from a2dpipe.errors import A2DError
from a2dpipe.segmentation.predictions import FORMAT as PREDICTIONS

IDS = np.array([labels.BACKGROUND, *labels.VALID_PAIRS], dtype=np.uint8)


def random_frame(rng, shape=(24, 32), ignore_share=0.1, classes=IDS):
    """A random raw id map with some ignored pixels (invalid pairs and 255) and a random joint prediction."""
    gt = rng.choice(classes, size=shape)
    ignored = rng.random(shape) < ignore_share
    gt[ignored] = rng.choice(np.array([14, 99, 255], dtype=np.uint8), size=int(ignored.sum()))
    joint = rng.choice(classes, size=shape)
    return gt, joint


def independent_scores(gt_ids, joint, setting):
    """scikit-learn reference on the flattened, ignore-filtered pixels."""
    g = labels.to_setting(gt_ids, setting).ravel()
    p = labels.to_setting(joint, setting).ravel()
    keep = g != labels.IGNORE
    g, p = g[keep], p[keep]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scikit-learn warns about classes predicted but absent from y_true
        return {
            "global_accuracy": accuracy_score(g, p),
            "mean_class_accuracy": balanced_accuracy_score(g, p),
            "mean_iou": jaccard_score(g, p, average="macro"),
            "confusion": sk_confusion_matrix(g, p, labels=range(labels.NUM_CLASSES[setting])),
        }


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("setting", labels.SETTINGS)
def test_metrics_match_scikit_learn_on_random_maps_with_ignored_pixels(seed, setting):
    rng = np.random.default_rng(seed)
    # a few frames, and a class subset so that some classes are absent from ground truth or prediction
    classes = IDS if seed != 2 else IDS[:12]
    frames = [random_frame(rng, classes=classes) for _ in range(3)]
    acc = metrics.ConfusionAccumulator(boundary_width=0)
    for gt, joint in frames:
        acc.add(gt, joint)
    gt_all = np.concatenate([g for g, _ in frames], axis=1)
    joint_all = np.concatenate([j for _, j in frames], axis=1)
    ref = independent_scores(gt_all, joint_all, setting)
    cm = acc.matrices["whole"][setting]
    np.testing.assert_array_equal(cm, ref["confusion"])
    np.testing.assert_array_equal(acc.matrices["non_boundary"][setting], cm)  # width 0: no band
    got = metrics.metrics(acc.matrices["whole"])[setting]
    for key in ("global_accuracy", "mean_class_accuracy", "mean_iou"):
        assert got[key] == pytest.approx(ref[key], abs=1e-12), key
    assert got["classes"] == labels.class_names(setting)


def test_class_only_in_prediction_counts_in_iou_but_not_in_accuracy():
    gt = np.array([[0, 0, 11, 11]], dtype=np.uint8)
    joint = np.array([[0, 21, 11, 11]], dtype=np.uint8)  # baby-climbing predicted, never in ground truth
    s = metrics.scores(metrics.confusion_matrices(gt, joint)["actor_action"])
    assert s["mean_class_accuracy"] == pytest.approx((0.5 + 1.0) / 2)
    assert s["mean_iou"] == pytest.approx((0.5 + 1.0 + 0.0) / 3)
    assert s["global_accuracy"] == pytest.approx(0.75)
    assert np.isnan(s["class_accuracy"][5])  # adult-walking: absent from both


def test_head_maps_are_used_for_actor_and_action_settings():
    gt = np.array([[0, 11, 11, 11]], dtype=np.uint8)
    pred = {"actor": np.array([[0, 1, 1, 2]]), "action": np.array([[0, 1, 9, 1]]), "joint": np.array([[0, 11, 19, 21]])}
    cms = metrics.confusion_matrices(gt, pred)
    assert metrics.scores(cms["actor"])["global_accuracy"] == pytest.approx(0.75)
    assert metrics.scores(cms["action"])["global_accuracy"] == pytest.approx(0.75)
    assert metrics.scores(cms["actor_action"])["global_accuracy"] == pytest.approx(0.5)


def test_prediction_outside_the_setting_is_rejected():
    gt = np.zeros((2, 2), np.uint8)
    with pytest.raises(ValueError, match="outside"):
        metrics.ConfusionAccumulator(3).add(gt, {"actor": np.full((2, 2), 8), "action": np.zeros((2, 2)), "joint": gt})


def test_boundary_band_on_a_known_map():
    ids = np.zeros((12, 20), dtype=np.uint8)
    ids[:, 10:] = 11  # vertical change between columns 9 and 10
    band = metrics.boundary_band(ids, 5)
    expected = np.zeros_like(band)
    expected[:, 7:12] = True  # marked column 9, +-2: exactly 5 columns
    np.testing.assert_array_equal(band, expected)
    assert not metrics.boundary_band(ids, 0).any()
    # a single ignored pixel: the changes mark its top and left neighbours and the pixel itself
    dot = np.zeros((9, 9), dtype=np.uint8)
    dot[4, 4] = 255
    band = metrics.boundary_band(dot, 3)
    rows, cols = np.nonzero(band)
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (2, 5, 2, 5)
    # marked: (3, 4), (4, 3), (4, 4); their 3 x 3 squares cover rows/cols 2..5 except the corner (2, 2)
    assert band.sum() == 15 and not band[2, 2]


def test_default_band_is_15_pixels_across_a_straight_boundary():
    ids = np.zeros((40, 10), dtype=np.uint8)
    ids[20:] = 55
    band = metrics.boundary_band(ids, 15)
    assert band[:, 0].sum() == 15
    assert band[12:27, 0].all()


def test_non_boundary_counts_leave_out_the_band():
    rng = np.random.default_rng(5)
    gt = np.zeros((30, 30), dtype=np.uint8)
    gt[10:20, 8:22] = 11
    gt[0:3, 0:3] = 255
    joint = rng.choice(IDS[:3], size=gt.shape)
    acc = metrics.ConfusionAccumulator(boundary_width=5)
    acc.add(gt, joint)
    band = metrics.boundary_band(gt, 5)
    for s in labels.SETTINGS:
        want = metrics.confusion_matrix(labels.to_setting(gt, s), labels.to_setting(joint, s), labels.NUM_CLASSES[s], ~band)
        np.testing.assert_array_equal(acc.matrices["non_boundary"][s], want)
        assert acc.matrices["whole"][s].sum() == (gt != 255).sum()


def test_per_category_accuracy_names_background_and_43_pairs():
    gt = np.array([[0, 0, 11, 11, 78, 78]], dtype=np.uint8)
    joint = np.array([[0, 11, 11, 12, 78, 78]], dtype=np.uint8)
    acc = metrics.per_category_accuracy(metrics.confusion_matrices(gt, joint)["actor_action"])
    assert len(acc) == 44 and list(acc)[0] == "background"
    assert acc["background"] == 0.5 and acc["adult-climbing"] == 0.5 and acc["dog-walking"] == 1.0
    assert np.isnan(acc["bird-eating"])


def test_100_frames_of_320_by_568_in_under_2_seconds():
    rng = np.random.default_rng(0)
    frames = []
    for _ in range(100):
        gt = np.zeros((320, 568), np.uint8)
        y, x = rng.integers(0, 200), rng.integers(0, 400)
        gt[y : y + 120, x : x + 160] = rng.choice(IDS[1:])
        gt[rng.random(gt.shape) < 0.01] = 255
        joint = np.roll(gt, 5, axis=1)
        joint[joint == 255] = 0
        frames.append((gt, {"actor": joint // 10, "action": joint % 10, "joint": joint}))
    acc = metrics.ConfusionAccumulator(15)
    start = time.perf_counter()
    for gt, pred in frames:
        acc.add(gt, pred)
    elapsed = time.perf_counter() - start
    assert acc.frames == 100
    assert elapsed < 2.0, f"metrics on 100 frames took {elapsed:.2f} s"


# --- the evaluate command on small HDF5 files written to the contracts ---------------------------------------


def write_frames(path, frames):
    with h5py.File(path, "w") as f:
        f.attrs["schema"] = FRAMES.schema
        for (video, frame, split), label in frames.items():
            g = f.create_group(f"{video}/{frame:05d}")
            g.create_dataset("label", data=label)
            g.create_dataset("rgb", data=np.zeros((*label.shape, 3), np.uint8))
            g.attrs["split"] = split


def write_predictions(path, preds, variant="baseline-rgb", seconds=0.01):
    with h5py.File(path, "w") as f:
        f.attrs["schema"] = PREDICTIONS.schema
        f.attrs["variant"] = variant
        f.attrs["seconds_per_frame"] = seconds
        for (video, frame), joint in preds.items():
            g = f.create_group(f"{video}/{frame:05d}")
            g.create_dataset("joint", data=joint)
            g.create_dataset("actor", data=(joint // 10).astype(np.uint8))
            g.create_dataset("action", data=(joint % 10).astype(np.uint8))


def test_evaluate_command_accumulates_all_test_frames(tmp_path, capsys):
    rng = np.random.default_rng(3)
    frames, preds = {}, {}
    for v, video in enumerate(["vidA", "vidB", "vidC"]):
        for frame in (5, 17):
            gt, joint = random_frame(rng, shape=(16, 20))
            gt[:8, :10] = 0  # a flat corner, so that the non-boundary region is not empty
            split = "train" if video == "vidC" else "test"
            frames[(video, frame, split)] = gt
            if split == "test":
                preds[(video, frame)] = joint
    write_frames(tmp_path / "shard-000.h5", {k: v for k, v in frames.items() if k[0] != "vidB"})
    write_frames(tmp_path / "shard-001.h5", {k: v for k, v in frames.items() if k[0] == "vidB"})
    write_predictions(tmp_path / "pred.h5", preds)
    cfg = tmp_path / "config.yaml"
    cfg.write_text("results: results\ndataset: {root: x}\nevaluation: {boundary_width: 3}\n")
    out = tmp_path / "eval.json"
    argv = ["evaluate", "--config", str(cfg), "--predictions", str(tmp_path / "pred.h5"), "--frames",
            str(tmp_path / "shard-000.h5"), str(tmp_path / "shard-001.h5"), "--out", str(out)]
    assert main(argv) == 0
    result = json.loads(out.read_text())
    assert result["variant"] == "baseline-rgb" and result["frames"] == 4
    # off a terminal the progress bar writes plain lines (the log shares stderr): it starts at 0/4, ends at 4/4
    bar = [line for line in capsys.readouterr().err.splitlines() if line.startswith("evaluate baseline-rgb: ")]
    assert "0/4" in bar[0] and bar[-1].startswith("evaluate baseline-rgb: 100%") and "4/4" in bar[-1]
    acc = metrics.ConfusionAccumulator(3)
    for (video, frame, split), gt in frames.items():
        if split == "test":
            acc.add(gt, preds[(video, frame)])
    for region in metrics.REGIONS:
        for s in labels.SETTINGS:
            np.testing.assert_array_equal(np.array(result["confusion"][region][s]), acc.matrices[region][s])
            want = metrics.scores(acc.matrices[region][s])["mean_iou"]
            got = result["metrics"][region][s]["mean_iou"]
            assert got is None if np.isnan(want) else got == pytest.approx(want)
    assert len(result["per_category_accuracy"]) == 44

    # a test frame without a prediction is an error naming the prediction file
    del preds[("vidB", 17)]
    write_predictions(tmp_path / "pred.h5", preds)
    assert main(argv) == 1
    with pytest.raises(A2DError, match="pred.h5"):
        from a2dpipe.evaluation import evaluate

        evaluate.evaluate(tmp_path / "pred.h5", [tmp_path / "shard-000.h5", tmp_path / "shard-001.h5"], 3)


def test_evaluate_writes_per_video_matrices_that_add_up_and_scores_the_validation_split(tmp_path):
    from a2dpipe.evaluation.bootstrap import read_per_video

    rng = np.random.default_rng(5)
    frames, preds = {}, {}
    for video, split in (("vidA", "test"), ("vidB", "test"), ("vidV", "val"), ("vidT", "train")):
        for frame in (2, 9):
            gt, joint = random_frame(rng, shape=(12, 16))
            frames[(video, frame, split)] = gt
            preds[(video, frame)] = joint
    write_frames(tmp_path / "shard-000.h5", frames)
    write_predictions(tmp_path / "test.h5", {k: v for k, v in preds.items() if k[0] in ("vidA", "vidB")})
    write_predictions(tmp_path / "val.h5", {k: v for k, v in preds.items() if k[0] == "vidV"})
    cfg = tmp_path / "config.yaml"
    cfg.write_text("evaluation: {boundary_width: 3}\n")
    for split, videos in (("test", ["vidA", "vidB"]), ("val", ["vidV"])):
        out, per_video = tmp_path / f"{split}.json", tmp_path / f"{split}.videos.npz"
        argv = ["evaluate", "--config", str(cfg), "--predictions", str(tmp_path / f"{split}.h5"), "--frames",
                str(tmp_path / "shard-000.h5"), "--out", str(out), "--per-video", str(per_video), "--split", split]
        assert main(argv) == 0
        result, stacks = json.loads(out.read_text()), read_per_video(per_video)
        assert result["split"] == split and result["videos"] == len(videos) and stacks["videos"] == videos
        for region in metrics.REGIONS:
            for s in labels.SETTINGS:
                stack = stacks[f"{region}.{s}"]
                np.testing.assert_array_equal(stack.sum(axis=0), np.array(result["confusion"][region][s]))
        # each video's matrix is that video's frames alone
        acc = metrics.ConfusionAccumulator(3)
        for frame in (2, 9):
            acc.add(frames[(videos[0], frame, split)], preds[(videos[0], frame)])
        np.testing.assert_array_equal(stacks["whole.actor_action"][0], acc.matrices["whole"]["actor_action"])
    # validation predictions scored as test frames: the test frames have no prediction
    argv = ["evaluate", "--config", str(cfg), "--predictions", str(tmp_path / "val.h5"), "--frames",
            str(tmp_path / "shard-000.h5"), "--out", str(tmp_path / "x.json")]
    assert main(argv) == 1 and not (tmp_path / "x.json").exists()
