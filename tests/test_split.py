"""The validation split: whole videos, deterministic, and no trainer ever sees a validation or test video."""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd
import pytest

from conftest import schema_section
from a2dpipe.dataset.frames import extract_shard
from a2dpipe.dataset.index import assign_validation, build_index, validation_videos
from a2dpipe.dataset.synthetic import synthesize
from a2dpipe.errors import A2DError
from a2dpipe.masks.stage import cache_regions

SYNTHETIC = schema_section("synthetic", {  # the schema fills the keys left out
    "videos": 8,
    "test_fraction": 0.5,
    "height": 48,
    "widths": [64],
    "frames": 4,
    "annotated_frames": 2,
    "max_actors": 2,
    "distractors": 1,
    "camera_motion": 1.0,
    "video_quality": 60,
})

MASKS = schema_section("masks", {  # the schema fills the keys left out
    "backbone": "tiny", "coco_checkpoint": None, "min_size": 48, "max_size": 96, "iterations": 1, "batch_size": 1,
    "optimizer": "sgd", "lr": 0.01, "checkpoint_every": 1, "score_threshold": 0.0, "max_regions": 5,
})


def _videoset(train: int, test: int) -> pd.DataFrame:
    videos = [f"v{i:03d}" for i in range(train + test)]
    return pd.DataFrame({"video": videos, "split": ["train"] * train + ["test"] * test})


def test_validation_holds_out_whole_training_videos_only():
    videoset = _videoset(80, 48)
    split = assign_validation(videoset, 0.125)
    assert (split["split"] == "val").sum() == 10  # ceil(0.125 * 80)
    assert (split["split"] == "train").sum() == 70
    assert set(split.loc[split["split"] == "val", "video"]) <= set(videoset.loc[videoset["split"] == "train", "video"])
    assert (split["split"] == "test").sum() == 48  # the test split is never touched


def test_validation_split_is_deterministic_and_independent_of_row_order():
    videoset = _videoset(40, 10)
    first = validation_videos(videoset.loc[videoset["split"] == "train", "video"], 0.2)
    shuffled = videoset.sample(frac=1.0, random_state=1)
    again = validation_videos(shuffled.loc[shuffled["split"] == "train", "video"], 0.2)
    assert first == again and len(first) == 8
    # one more training video (ceil(0.2 * 41) = 9 held out) keeps every video held out before
    grown = validation_videos([*videoset.loc[videoset["split"] == "train", "video"], "extra"], 0.2)
    assert first < grown and len(grown) == 9


def test_small_train_splits_keep_training_data():
    assert len(validation_videos(["a", "b", "c", "d"], 0.125)) == 1  # at least one once the fraction is > 0
    assert validation_videos(["a"], 0.5) == set()  # the last training video is never held out
    assert len(validation_videos(["a", "b"], 0.9)) == 1  # ceil(1.8) = 2, capped to leave one training video
    assert validation_videos(["a", "b", "c"], 0.0) == set()


@pytest.mark.parametrize("fraction", [-0.1, 1.0, float("nan")])
def test_a_fraction_outside_0_1_is_an_error(fraction):
    with pytest.raises(A2DError, match="val_fraction"):
        validation_videos(["a", "b"], fraction)


# --- the trainers' sample lists on a real (synthetic) dataset ---------------------------------------------------


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    """Frames stores and ground-truth region caches of an 8-clip set: 3 train, 1 val and 4 test clips."""
    tmp = tmp_path_factory.mktemp("split")
    root = tmp / "a2d"
    synthesize(SYNTHETIC, seed=5, out=root)
    index = build_index(root, shard_size=4, val_fraction=0.25)
    frames, masks = [], []
    for shard in sorted(index["shard"].unique()):
        frames.append(tmp / "frames" / f"shard-{shard}.h5")
        extract_shard(root, index, shard, frames[-1])
        masks.append(tmp / "masks" / f"shard-{shard}.h5")
        cache_regions({"masks": MASKS}, "gt", frames[-1], masks[-1])
    videos = {split: set(index.loc[index["split"] == split, "video"]) for split in ("train", "val", "test")}
    return {"index": index, "frames": frames, "masks": masks, "videos": videos}


def test_index_split_is_disjoint_by_video(stores):
    index, videos = stores["index"], stores["videos"]
    assert set(index["split"]) == {"train", "val", "test"}
    assert index.groupby("video")["split"].nunique().max() == 1
    assert [len(videos[s]) for s in ("train", "val", "test")] == [3, 1, 4]
    assert build_index(stores["frames"][0].parents[1] / "a2d", 4, val_fraction=0.25).equals(index)


FITS = {"train": ("train",), "train+val": ("train", "val")}


@pytest.mark.parametrize("fit", list(FITS))
@pytest.mark.parametrize("stage", [1, 2])
def test_segmentation_trainer_samples_hold_training_videos_only(stores, stage, fit, monkeypatch, tmp_path):
    from a2dpipe.segmentation import train as trainer

    seen = {}
    monkeypatch.setattr(trainer, "train", lambda config, *, samples, **kw: seen.setdefault("keys", samples.keys()))
    args = argparse.Namespace(
        config=str(_config(tmp_path, fit)), settings=None, threads=0, input="rgb", stage=stage, flow=[],
        frames=stores["frames"],
        masks=stores["masks"] if stage == 2 else [], stage1="stage1.pt" if stage == 2 else None,
        out=str(tmp_path / "model.pt"), mask_source="dataset",
    )
    trainer.run(args)
    videos = {video for video, _ in seen["keys"]}
    assert videos == set().union(*(stores["videos"][split] for split in FITS[fit]))


@pytest.mark.parametrize("fit", list(FITS))
def test_mask_model_trainer_samples_hold_training_videos_only(stores, fit, monkeypatch, tmp_path):
    from a2dpipe.masks import train as mask_trainer

    class Stop(Exception):
        pass

    seen = {}

    def record(reader, refs, *args):
        seen["videos"] = {ref.video for ref in refs}
        raise Stop

    monkeypatch.setattr(mask_trainer, "training_batch", record)
    config = {"seed": 0, "device": "cpu", "dataset": {"final_fit": fit}, "masks": MASKS}
    with pytest.raises(Stop):
        mask_trainer.train_mask_model(config, "dataset", [str(p) for p in stores["frames"]], tmp_path / "m.pt")
    assert seen["videos"] == set().union(*(stores["videos"][split] for split in FITS[fit]))


def _config(tmp_path: Path, fit: str = "train") -> Path:
    """The config of the stores (commands refuse inputs made with other settings than theirs)."""
    import yaml

    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({"seed": 0, "device": "cpu", "dataset": {"final_fit": fit}, "masks": MASKS}))
    return path
