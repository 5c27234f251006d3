"""A2D reader: real metadata, MATLAB v7.3 annotations (as MATLAB writes them), defects, clip decoding."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest

from a2dpipe import labels
from a2dpipe.dataset.a2d import list_annotated_frames, read_clip_frames, read_videoset
from a2dpipe.dataset.annotation import Annotation, read_annotation, write_annotation
from a2dpipe.errors import A2DError

REAL = Path(__file__).resolve().parents[2] / "shared" / "real-data" / "a2d-metadata"


def real(name: str) -> Path:
    path = REAL / name
    if not path.is_file():
        pytest.skip(f"real A2D metadata not available ({path.name} is absent from ../shared/real-data)")
    return path


# ---------------------------------------------------------------------------------------------------------------
# Real metadata
# ---------------------------------------------------------------------------------------------------------------


def test_real_videoset_counts():
    videos = read_videoset(real("videoset.csv"))
    assert len(videos) == 3782
    assert (videos["split"] == "train").sum() == 3036
    assert (videos["split"] == "test").sum() == 746
    assert videos["num_annotated_frames"].sum() == 11926
    assert (videos["height"] == 320).all() and videos["width"].nunique() > 1
    assert labels.is_valid(videos["label"].to_numpy()).all()


def _real_annotated_frames() -> pd.DataFrame:
    table = pd.read_csv(real("annotated-frames.csv"))
    parts = table["img_id"].str.extract(r"pngs320H/(?P<video>[^/]+)/(?P<frame>\d{5})\.png$")
    assert parts.notna().all().all()
    return pd.DataFrame({"video": parts["video"], "frame": parts["frame"].astype(int), "usage": table["usage"]})


def test_real_annotated_frame_counts():
    frames = _real_annotated_frames()
    assert len(frames) == 11926
    assert (frames["usage"] == 0).sum() == 9561
    assert (frames["usage"] == 1).sum() == 2365


def test_list_annotated_frames_on_real_layout(tmp_path):
    """The real frame list laid out as Annotations/mat/<vid>/<frame>.mat agrees with videoset.csv."""
    frames = _real_annotated_frames()
    shutil.copy(real("videoset.csv"), tmp_path / "videoset.csv")
    mat = tmp_path / "Annotations" / "mat"
    for video, group in frames.groupby("video"):
        (mat / video).mkdir(parents=True)
        for frame in group["frame"]:
            (mat / video / f"{frame:05d}.mat").touch()
    listed = list_annotated_frames(tmp_path)
    assert len(listed) == 11926
    assert listed["split"].value_counts().to_dict() == {"train": 9561, "test": 2365}
    # Cross-check: one annotated frame missing is an error naming the video.
    victim = frames["video"].iloc[100]
    next((mat / victim).glob("*.mat")).unlink()
    with pytest.raises(A2DError, match=victim):
        list_annotated_frames(tmp_path)


# ---------------------------------------------------------------------------------------------------------------
# MATLAB v7.3 annotations
# ---------------------------------------------------------------------------------------------------------------


def _ground_truth(n: int = 2, height: int = 12, width: int = 17) -> Annotation:
    rng = np.random.default_rng(n)
    masks = np.zeros((n, height, width), dtype=np.float32)
    id_map = np.zeros((height, width), dtype=np.uint8)
    ids = np.array([11, 75, 43][:n], dtype=np.uint8)
    boxes = []
    for k in range(n):
        y, x = rng.integers(0, height - 5), rng.integers(0, width - 6)
        masks[k, y : y + 5, x : x + 6] = 1
        id_map[masks[k] > 0] = ids[k]
        boxes.append([x, y, x + 6, y + 5])
    return Annotation(id_map=id_map, masks=masks, boxes=np.array(boxes, np.float32).reshape(n, 4), ids=ids)


def _write_like_matlab(path: Path, gt: Annotation, *, masks=None, ids=None, boxes=None, drop=()) -> None:
    """A .mat as MATLAB v7.3 stores it, built by hand: column-major arrays appear transposed to h5py."""
    masks = gt.masks if masks is None else masks
    ids = gt.ids if ids is None else ids
    boxes = gt.boxes if boxes is None else boxes
    fields = {
        "reS_id": gt.id_map.T.astype(np.float64),  # MATLAB (H, W) -> h5py (W, H)
        "reMask": masks[0].T if len(masks) == 1 else masks.transpose(0, 2, 1),  # (W, H) or (N, W, H)
        "reBBox": boxes.T.astype(np.float64),  # (4, N)
        "id": ids.astype(np.float64)[None, :],  # (1, N) float64
    }
    with h5py.File(path, "w", userblock_size=512) as f:
        for name, data in fields.items():
            if name not in drop:
                f.create_dataset(name, data=data).attrs["MATLAB_class"] = np.bytes_("double")


@pytest.mark.parametrize("n", [1, 2, 3])
def test_read_matlab_convention(tmp_path, n):
    gt = _ground_truth(n)
    _write_like_matlab(tmp_path / "00001.mat", gt)
    got = read_annotation(tmp_path / "00001.mat")
    assert got.id_map.dtype == np.uint8 and got.id_map.shape == (12, 17)
    np.testing.assert_array_equal(got.id_map, gt.id_map)
    assert got.masks.shape == (n, 12, 17) and got.masks.dtype == np.float32
    np.testing.assert_array_equal(got.masks, gt.masks)
    np.testing.assert_array_equal(got.boxes, gt.boxes)
    np.testing.assert_array_equal(got.ids, gt.ids)
    assert got.ids.dtype == np.uint8


def test_soft_masks_survive(tmp_path):
    gt = _ground_truth(2)
    soft = gt.masks * np.float32(0.75)
    _write_like_matlab(tmp_path / "a.mat", gt, masks=soft)
    np.testing.assert_allclose(read_annotation(tmp_path / "a.mat").masks, soft)
    gt.masks = soft
    write_annotation(tmp_path / "b.mat", gt)
    np.testing.assert_allclose(read_annotation(tmp_path / "b.mat").masks, soft)


def test_write_annotation_is_matlab_v73(tmp_path):
    from conftest import schema_section
    from a2dpipe.dataset.scenes import render_clip

    s = {**schema_section("synthetic"), "videos": 2, "frames": 6, "annotated_frames": 2, "max_actors": 3}
    rng = np.random.default_rng(3)
    clip = {"video": "abcdefghijk", "usage": 0, "width": 144, "pairs": [11, 43, 75]}
    _, annotations, _ = render_clip(s, clip, rng)
    for frame, gt in annotations.items():
        path = tmp_path / f"{frame:05d}.mat"
        write_annotation(path, gt)
        head = path.read_bytes()[:128]
        assert head.startswith(b"MATLAB 7.3 MAT-file") and head[126:128] == b"IM"
        with h5py.File(path, "r") as f:
            assert f.userblock_size == 512
            assert f["reS_id"].shape == (gt.width, gt.height)  # stored transposed, as MATLAB does
            assert f["id"].shape == (1, len(gt.ids)) and f["id"].dtype == np.float64
            assert f["reBBox"].shape == (4, len(gt.ids))
            if len(gt.ids) == 1:
                assert f["reMask"].shape == (gt.width, gt.height)
            assert {f[k].attrs["MATLAB_class"] for k in f} <= {b"double", b"uint8", b"logical"}
        got = read_annotation(path)
        for field in ("id_map", "masks", "boxes", "ids"):
            np.testing.assert_array_equal(getattr(got, field), getattr(gt, field))
    assert not list(tmp_path.glob(".*tmp*")), "no temporary left behind"


def test_single_instance_round_trip(tmp_path):
    gt = _ground_truth(1)
    write_annotation(tmp_path / "one.mat", gt)
    with h5py.File(tmp_path / "one.mat", "r") as f:
        assert f["reMask"].ndim == 2
    np.testing.assert_array_equal(read_annotation(tmp_path / "one.mat").masks, gt.masks)


def test_empty_annotation_round_trip(tmp_path):
    empty = Annotation(
        np.zeros((8, 10), np.uint8),
        np.zeros((0, 8, 10), np.float32),
        np.zeros((0, 4), np.float32),
        np.zeros(0, np.uint8),
    )
    write_annotation(tmp_path / "e.mat", empty)
    got = read_annotation(tmp_path / "e.mat")
    assert got.masks.shape == (0, 8, 10) and got.boxes.shape == (0, 4) and got.ids.shape == (0,)


def test_duplicated_instances_dropped_and_logged(tmp_path, caplog):
    gt = _ground_truth(2)
    masks = np.concatenate([gt.masks, gt.masks[:1]])
    _write_like_matlab(
        tmp_path / "dup.mat", gt, masks=masks, ids=np.r_[gt.ids, gt.ids[:1]], boxes=np.r_[gt.boxes, gt.boxes[:1]]
    )
    with caplog.at_level(logging.WARNING):
        got = read_annotation(tmp_path / "dup.mat")
    assert "duplicated" in caplog.text and "dup.mat" in caplog.text
    np.testing.assert_array_equal(got.ids, gt.ids)
    np.testing.assert_array_equal(got.masks, gt.masks)


def test_more_masks_than_ids_keeps_first_and_logs(tmp_path, caplog):
    gt = _ground_truth(3)
    _write_like_matlab(tmp_path / "extra.mat", gt, ids=gt.ids[:2])
    with caplog.at_level(logging.WARNING):
        got = read_annotation(tmp_path / "extra.mat")
    assert "keeping the first 2" in caplog.text
    np.testing.assert_array_equal(got.masks, gt.masks[:2])
    np.testing.assert_array_equal(got.boxes, gt.boxes[:2])


def test_fewer_masks_than_ids_is_an_error(tmp_path):
    gt = _ground_truth(3)
    _write_like_matlab(tmp_path / "few.mat", gt, masks=gt.masks[:2], boxes=gt.boxes[:2])
    with pytest.raises(A2DError, match=r"few\.mat.*2 instance\(s\) in reMask but 3 id"):
        read_annotation(tmp_path / "few.mat")


def test_not_hdf5_is_a_clear_error(tmp_path):
    bad = tmp_path / "00007.mat"
    bad.write_bytes(b"MATLAB 5.0 MAT-file" + bytes(200))  # an old-format .mat, not v7.3
    with pytest.raises(A2DError, match=r"00007\.mat: not a MATLAB v7\.3"):
        read_annotation(bad)
    with pytest.raises(A2DError, match="not found"):
        read_annotation(tmp_path / "absent.mat")


def test_missing_field_and_bad_shapes_are_clear_errors(tmp_path):
    gt = _ground_truth(2)
    _write_like_matlab(tmp_path / "nomask.mat", gt, drop=("reMask",))
    with pytest.raises(A2DError, match=r"nomask\.mat: missing field\(s\) reMask"):
        read_annotation(tmp_path / "nomask.mat")
    wrong = np.zeros((2, 12, 16), np.float32)  # one column short of the id map
    _write_like_matlab(tmp_path / "shape.mat", gt, masks=wrong)
    with pytest.raises(A2DError, match=r"shape\.mat: reMask is 16x12"):
        read_annotation(tmp_path / "shape.mat")
    _write_like_matlab(tmp_path / "ids.mat", gt, ids=np.array([11.5, 300.0]))
    with pytest.raises(A2DError, match=r"ids\.mat: id holds non-integer"):
        read_annotation(tmp_path / "ids.mat")


# ---------------------------------------------------------------------------------------------------------------
# Clips
# ---------------------------------------------------------------------------------------------------------------


def _clip(tmp_path: Path, frames: int = 6) -> Path:
    import cv2

    path = tmp_path / "clip.mp4"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 24, (64, 48))
    for k in range(frames):
        writer.write(np.full((48, 64, 3), 30 * k % 256, np.uint8))
    writer.release()
    return path


def test_read_clip_frames_picks_frames_in_one_pass(tmp_path):
    path = _clip(tmp_path)
    got = read_clip_frames(path, [5, 2, 2], expected_frames=6)
    assert sorted(got) == [2, 5]
    assert got[2].shape == (48, 64, 3) and got[2].dtype == np.uint8
    assert abs(float(got[2].mean()) - 30) < 4 and abs(float(got[5].mean()) - 120) < 4  # 1-based frame numbers


def test_video_shorter_than_claimed_is_an_error(tmp_path):
    path = _clip(tmp_path)
    with pytest.raises(A2DError, match=r"clip\.mp4: the video holds 6 frames but videoset\.csv says 9"):
        read_clip_frames(path, [2], expected_frames=9)
    with pytest.raises(A2DError, match=r"clip\.mp4: decoding stopped after frame 6; frame 7"):
        read_clip_frames(path, [2, 7])


@pytest.mark.parametrize("keep", [0.3, 0.8])  # the tail holds the moov index: cut it and nothing plays
def test_truncated_video_is_an_error(tmp_path, keep):
    path = _clip(tmp_path, frames=12)
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(A2DError, match=r"clip\.mp4: (cannot open|decoding stopped)"):
        read_clip_frames(path, range(1, 13), expected_frames=12)
