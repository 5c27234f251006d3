"""The A2D-shaped mode of the synthetic benchmark (the rehearsal dataset) and the rehearsal preset.

The real metadata (../shared/real-data/a2d-metadata) drives the end-to-end check; the error and determinism checks
use small metadata written here, with frames small enough to draw in a fraction of a second.
"""

from __future__ import annotations

import csv
import hashlib
import re
from pathlib import Path

import cv2
import pandas as pd
import pytest
import yaml

from a2dpipe.config import load_config
from a2dpipe.dataset.a2d import list_annotated_frames, read_videoset, video_path
from a2dpipe.dataset.synthetic import plan_from_metadata, select_videos, synthesize
from a2dpipe.errors import A2DError
from conftest import REPO
from conftest import schema_section

REAL_METADATA = Path(__file__).resolve().parents[2] / "shared" / "real-data" / "a2d-metadata"

# Small metadata in the real files' formats: (video, label, height, width, num_frames, usage) and annotated frames.
VIDEOS = [
    ("vid-a", 11, 32, 48, 6, 0),
    ("vid-b", 43, 32, 40, 5, 0),
    ("vid-c", 79, 32, 48, 7, 1),
    ("vid-d", 19, 32, 48, 6, 1),
]
ANNOTATED = {"vid-a": {2: "11", 4: "11 34"}, "vid-b": {3: "43.0"}, "vid-c": {1: "79", 7: "79 55"}, "vid-d": {5: ""}}


def _write_metadata(folder: Path, videos=VIDEOS, annotated=ANNOTATED, extra_rows=()) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    counts = {v: len(annotated.get(v, {})) for v, *_ in videos}
    (folder / "videoset.csv").write_text(
        "".join(f"{v},{lab},00:00:01,00:00:02,{h},{w},{n},{counts[v]},{u}\n" for v, lab, h, w, n, u in videos)
    )
    usage = {v: u for v, *_, u in videos}
    with (folder / "annotated-frames.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["img_id", "label", "usage"])
        for video, frames in annotated.items():
            for frame, label in frames.items():
                writer.writerow([f"pngs320H/{video}/{frame:05d}.png", label, usage[video]])
        for row in extra_rows:
            writer.writerow(row)
    return folder


def _section(metadata: Path, fraction: float = 1.0) -> dict:
    return schema_section("synthetic", {"metadata": str(metadata), "fraction": fraction, "distractors": 1})


def test_clips_take_the_metadata_shapes_and_frames(tmp_path):
    root = tmp_path / "a2d"
    synthesize(_section(_write_metadata(tmp_path / "meta")), seed=3, out=root)
    videos = read_videoset(root / "videoset.csv")
    assert list(videos["video"]) == [v for v, *_ in VIDEOS]
    assert list(videos["usage"]) == [u for *_, u in VIDEOS]
    assert list(videos["label"]) == [lab for _, lab, *_ in VIDEOS]
    assert list(videos["num_frames"]) == [n for *_, n, _ in VIDEOS]
    frames = list_annotated_frames(root, videos)
    assert {(v, f) for v, f in frames[["video", "frame"]].itertuples(index=False)} == {
        (v, f) for v, fs in ANNOTATED.items() for f in fs
    }
    for video, _, height, width, num_frames, _ in VIDEOS:
        cap = cv2.VideoCapture(str(video_path(root, video)))
        ok, first = cap.read()
        assert ok and first.shape == (height, width, 3)
        assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == num_frames
        cap.release()


def test_actors_are_the_ids_the_annotated_frames_list(tmp_path):
    folder = _write_metadata(tmp_path / "meta")
    plan = {c["video"]: c for c in plan_from_metadata(folder, max_actors=3)}
    assert plan["vid-a"]["pairs"] == [11, 34]  # most frequent first
    assert plan["vid-b"]["pairs"] == [43]  # "43.0" as the real file writes it
    assert plan["vid-c"]["pairs"] == [79, 55]
    assert plan["vid-d"]["pairs"] == [19]  # no id listed: the video's label
    assert plan_from_metadata(folder, max_actors=1)[0]["pairs"] == [11]


def test_fraction_is_nested_keeps_both_splits_and_leaves_clips_unchanged(tmp_path):
    videos = [f"v{i:04d}" for i in range(2000)]
    usage = [int(i % 5 == 0) for i in range(2000)]
    small, large = select_videos(videos, usage, 1 / 64), select_videos(videos, usage, 1 / 16)
    assert all(b for a, b in zip(small, large) if a), "1/64 keeps a subset of 1/16"
    assert 2000 / 64 / 2 < sum(small) < 2000 / 64 * 2 and 2000 / 16 / 2 < sum(large) < 2000 / 16 * 2
    tiny = select_videos(videos, usage, 1e-6)
    assert sorted(u for k, u in zip(tiny, usage) if k) == [0, 1], "an empty split keeps one video"

    meta = _write_metadata(tmp_path / "meta")
    synthesize(_section(meta, 1.0), seed=3, out=tmp_path / "all")
    synthesize(_section(meta, 1e-6), seed=3, out=tmp_path / "part", workers=2)
    part = read_videoset(tmp_path / "part" / "videoset.csv")
    assert sorted(part["usage"]) == [0, 1]
    for video in part["video"]:  # a clip is drawn from the seed and its id: the same whatever else is written
        for sub in ("Annotations/mat", "Annotations/col"):
            names = sorted(p.name for p in (tmp_path / "all" / sub / video).iterdir())
            for name in names:
                a, b = (tmp_path / d / sub / video / name for d in ("all", "part"))
                assert hashlib.sha256(a.read_bytes()).digest() == hashlib.sha256(b.read_bytes()).digest()


def _expect_error(tmp_path, match, **kwargs):
    meta = _write_metadata(tmp_path / "meta", **kwargs)
    with pytest.raises(A2DError, match=match):
        synthesize(_section(meta), seed=0, out=tmp_path / "out")
    assert not (tmp_path / "out").exists() and [p.name for p in tmp_path.iterdir()] == ["meta"]


def test_missing_metadata_file_is_named(tmp_path):
    meta = _write_metadata(tmp_path / "meta")
    (meta / "annotated-frames.csv").unlink()
    with pytest.raises(A2DError, match=r"annotated-frames\.csv: annotated-frames\.csv not found"):
        synthesize(_section(meta), seed=0, out=tmp_path / "out")
    with pytest.raises(A2DError, match=r"videoset\.csv: videoset\.csv not found"):
        synthesize(_section(tmp_path / "nowhere"), seed=0, out=tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "extra, match",
    [
        ([("pngs320H/vid-a/00005.png", "11")], r"annotated-frames\.csv: row 8: expected 3 columns"),
        ([("pngs320H/vid-a/5.png", "11", "0")], r"row 8: img_id 'pngs320H/vid-a/5.png' is not"),
        ([("pngs320H/vid-a/00009.png", "11", "0")], r"row 8: frame 9 of video vid-a lies outside 1\.\.6"),
        ([("pngs320H/../00001.png", "11", "0")], r"row 8: video id '\.\.' is not a plain file name"),
        ([("pngs320H/vid-z/00001.png", "11", "0")], r"row 8: video vid-z is not in videoset\.csv"),
        ([("pngs320H/vid-a/00002.png", "11", "0")], r"row 8: frame 2 of video vid-a is listed twice"),
        ([("pngs320H/vid-a/00003.png", "11 x", "0")], r"row 8: label '11 x' holds 'x'"),
        ([("pngs320H/vid-a/00003.png", "11", "1")], r"row 8: usage '1' differs"),
    ],
)
def test_bad_annotated_frame_rows_name_file_and_row(tmp_path, extra, match):
    _expect_error(tmp_path, match, extra_rows=extra)


def test_bad_videoset_rows_name_file_and_row(tmp_path):
    _expect_error(tmp_path / "odd", r"videoset\.csv: row 2 \(video vid-b\): frame size 41x32",
                  videos=[*VIDEOS[:1], ("vid-b", 43, 32, 41, 5, 0), *VIDEOS[2:]])
    _expect_error(tmp_path / "id", r"videoset\.csv: row 1: video id 'a\\\\b' is not a plain file name",
                  videos=[("a\\b", 11, 32, 48, 6, 0), *VIDEOS[1:]], annotated={})
    meta = _write_metadata(tmp_path / "count" / "meta")
    text = (meta / "videoset.csv").read_text().replace(",32,48,6,2,0", ",32,48,6,3,0")
    (meta / "videoset.csv").write_text(text)
    with pytest.raises(A2DError, match=r"row 1 \(video vid-a\): num_annotated_frames is 3 but .* lists 2"):
        synthesize(_section(meta), seed=0, out=tmp_path / "count" / "out")


def test_rehearsal_preset_keeps_the_paper_shapes():
    rehearsal, paper = load_config(REPO / "config" / "rehearsal.yaml"), load_config(REPO / "config" / "paper.yaml")
    assert rehearsal["dataset"]["synthetic"] and rehearsal["synthetic"]["metadata"]
    assert rehearsal["dataset"]["shard_size"] == paper["dataset"]["shard_size"]
    assert rehearsal["masks"]["max_regions"] == paper["masks"]["max_regions"]
    assert rehearsal["masks"]["min_size"] == paper["masks"]["min_size"]
    assert rehearsal["segmentation"]["crop"] == paper["segmentation"]["crop"]
    assert rehearsal["segmentation"]["stage1"]["batch_size"] == paper["segmentation"]["stage1"]["batch_size"]
    assert rehearsal["segmentation"]["backbone"] == "tiny" and rehearsal["masks"]["backbone"] == "tiny"


def test_real_metadata_through_synthesize_and_index(tmp_path, tiny_config, snakemake_run):
    """A tiny fraction of the real A2D metadata (two videos, one per split) through `synthesize` and `index`."""
    if not (REAL_METADATA / "annotated-frames.csv").is_file():
        pytest.skip(f"real A2D metadata not found at {REAL_METADATA}")
    config = yaml.safe_load(tiny_config.read_text())
    config["dataset"].update(root=str(tmp_path / "a2d"), synthetic=True, exclude_videos=[])
    config["synthetic"].update(metadata=str(REAL_METADATA), fraction=1e-4, distractors=1)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    snakemake_run(tmp_path, "index", "--cores", "1", config=path)

    real = read_videoset(REAL_METADATA / "videoset.csv").set_index("video")
    listed = pd.read_csv(REAL_METADATA / "annotated-frames.csv")
    listed["video"] = listed["img_id"].str.split("/").str[1]
    listed["frame"] = listed["img_id"].str.split("/").str[2].str[:5].astype(int)
    written = read_videoset(tmp_path / "a2d" / "videoset.csv").set_index("video")
    assert sorted(written["usage"]) == [0, 1] and written.index.isin(real.index).all()
    columns = ["label", "height", "width", "num_frames", "num_annotated_frames", "usage", "start_time", "end_time"]
    pd.testing.assert_frame_equal(written[columns], real.loc[written.index, columns])

    index = pd.read_csv(tmp_path / "results" / "index.csv", dtype={"shard": str})
    expected = listed[listed["video"].isin(written.index)]
    assert sorted(zip(index["video"], index["frame"])) == sorted(zip(expected["video"], expected["frame"]))
    for row in index.itertuples(index=False):
        assert (row.height, row.width, row.num_frames) == tuple(real.loc[row.video, ["height", "width", "num_frames"]])
        assert (row.split == "test") == (real.loc[row.video, "usage"] == 1)
    for video in written.index:
        cap = cv2.VideoCapture(str(video_path(tmp_path / "a2d", video)))
        ok, first = cap.read()
        assert ok and first.shape == (320, real.loc[video, "width"], 3)
        assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == real.loc[video, "num_frames"]
        cap.release()


def test_a_long_clip_with_a_fast_pan_keeps_its_actors_in_view(tmp_path):
    """Real clips run to 300+ frames: the pan is capped so that the world part in view never vanishes."""
    meta = _write_metadata(tmp_path / "meta", videos=[("long", 11, 32, 48, 240, 0), ("other", 11, 32, 48, 6, 1)],
                           annotated={"long": {1: "11", 240: "11"}, "other": {3: "11"}})
    synthesize({**_section(meta), "camera_motion": 8.0}, seed=1, out=tmp_path / "out")
    assert len(list_annotated_frames(tmp_path / "out")) == 3


# --- the paper smoke preset -----------------------------------------------------------------------------------------

SMOKE = REPO / "config" / "paper-smoke.yaml"
SAME_AS_PAPER = {
    "dataset": ["shard_size", "exclude_videos", "val_fraction", "final_fit"], "frames": ["neighbour"],
    "flow": ["method", "encoding"],
    "masks": ["model", "backbone", "fcis_layout", "min_size", "max_size", "max_regions", "fcis_k", "fcis_mask_voting",
              "optimizer"],
    "segmentation": ["backbone", "aspp_rates", "crop", "amp"], "experiments": ["inputs", "regions"],
}
SAME_STAGE2 = ["batch_size", "roi_size", "fc_dim", "roi_channels", "pool", "pixel_stride", "cache_features"]


def test_paper_smoke_preset_keeps_the_paper_networks_and_shapes(tmp_path):
    """config/paper-smoke.yaml is the paper preset with the official FCIS (config/paper.yaml + paper-fcis.yaml) but
    for its step counts, batch sizes and data, and names weight files inside its results folder (written there by
    benchmarks/paper_smoke_weights.py), so that deleting the folder removes them."""
    from snakemake.utils import update_config

    paper = yaml.safe_load((REPO / "config" / "paper.yaml").read_text())
    update_config(paper, yaml.safe_load((REPO / "config" / "paper-fcis.yaml").read_text()))
    (tmp_path / "paper.yaml").write_text(yaml.safe_dump(paper))
    paper, smoke = load_config(tmp_path / "paper.yaml"), load_config(SMOKE)
    for section, keys in SAME_AS_PAPER.items():
        for key in keys:
            assert smoke[section][key] == paper[section][key], f"{section}.{key}"
    for key in SAME_STAGE2:
        assert smoke["segmentation"]["stage2"][key] == paper["segmentation"]["stage2"][key], key
    steps = [smoke["masks"]["iterations"], smoke["masks"]["finetune_iterations"],
             *(smoke["segmentation"][stage]["iterations"] for stage in ("stage1", "stage2"))]
    assert max(steps) <= 2 and smoke["dataset"]["synthetic"] and smoke["synthetic"]["metadata"]
    weights = [smoke["segmentation"]["rgb_weights"], smoke["segmentation"]["flow_weights"], smoke["flow"]["weights"],
               smoke["masks"]["coco_checkpoint"]]
    assert all(Path(w).parts[0] == smoke["results"] for w in weights), weights


def test_paper_smoke_preset_plans_every_rule_of_tables(tmp_path, snakemake_run):
    """Its DAG builds (weights are not inputs: the plan needs none of them) with every rule the paper path runs."""
    if not (REAL_METADATA / "videoset.csv").is_file():
        pytest.skip(f"real A2D metadata not found at {REAL_METADATA}")
    where = tmp_path / "metadata.yaml"
    where.write_text(yaml.safe_dump({"synthetic": {"metadata": str(REAL_METADATA)}}))
    proc = snakemake_run(tmp_path, "tables", "--dry-run", "--quiet", "rules", "--configfile", SMOKE, where)
    planned = {m[1]: int(m[2]) for m in re.finditer(r"^(\w+)\s+(\d+)$", proc.stdout, re.M) if m[1] != "total"}
    assert planned["flow"] == planned["extract_frames"] == 1 and planned["train_mask_model"] == 2, planned
    assert planned["region_masks"] == 2 and planned["gt_region_masks"] == 1 and planned["train_stage1"] == 2 and planned["train_stage2"] == 3, planned
    assert planned["tables"] == 1, planned
