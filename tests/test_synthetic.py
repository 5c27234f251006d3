"""Synthetic A2D-format benchmark: determinism, layout, and content that exercises the method's claims."""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

from a2dpipe import labels
from a2dpipe.dataset.a2d import (
    annotation_path,
    colour_path,
    list_annotated_frames,
    read_clip_frames,
    read_videoset,
    video_path,
)
from a2dpipe.dataset.annotation import read_annotation
from a2dpipe.errors import A2DError
from conftest import schema_section
from a2dpipe.dataset.scenes import LOOKS, MOTIONS, _actor_tracks, _draw, plan_clips
from a2dpipe.dataset.synthetic import _settings, synthesize

REPO = Path(__file__).resolve().parents[1]
TINY = schema_section("synthetic", {  # the schema fills the keys left out
    "videos": 6,
    "test_fraction": 0.5,
    "height": 48,
    "widths": [64, 80, 96],
    "frames": 8,
    "annotated_frames": 2,
    "max_actors": 3,
    "distractors": 2,
    "camera_motion": 1.5,
    "video_quality": 60,
})


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synthetic") / "a2d"
    synthesize(TINY, seed=7, out=root)
    return root


def _annotations(root: Path) -> dict:
    frames = list_annotated_frames(root)
    return {
        (v, f): read_annotation(annotation_path(root, v, f))
        for v, f in frames[["video", "frame"]].itertuples(index=False)
    }


def test_layout_matches_a2d(tiny_root):
    videos = read_videoset(tiny_root / "videoset.csv")
    assert len(videos) == 6 and set(videos["split"]) == {"train", "test"}
    assert all(len(v) == 11 for v in videos["video"])
    assert list(videos["video"]) == sorted(videos["video"])
    assert videos["start_time"].str.fullmatch(r"\d\d:\d\d:\d\d").all()
    assert videos["end_time"].str.fullmatch(r"\d\d:\d\d:\d\d").all()
    assert (videos["num_annotated_frames"] == 2).all() and (videos["height"] == 48).all()
    assert videos["width"].nunique() > 1, "widths vary from clip to clip"
    frames = list_annotated_frames(tiny_root, videos)
    assert len(frames) == 12
    for row in videos.itertuples():
        clip = read_clip_frames(video_path(tiny_root, row.video), range(1, row.num_frames + 1), row.num_frames)
        assert clip[1].shape == (row.height, row.width, 3)
    assert not list(tiny_root.parent.glob(".*tmp*")), "the folder is written atomically"


def test_annotations_hold_only_valid_pairs_and_match_colour_png(tiny_root):
    valid = set(labels.VALID_PAIRS)
    for (video, frame), ann in _annotations(tiny_root).items():
        assert set(ann.ids.tolist()) <= valid
        assert set(np.unique(ann.id_map).tolist()) <= valid | {0}
        assert set(ann.ids.tolist()) == set(np.unique(ann.id_map).tolist()) - {0}
        assert np.isin(ann.masks, (0, 1)).all()
        for k in range(len(ann.ids)):  # the id map is the union of the visible instance masks
            assert (ann.id_map[ann.masks[k] > 0] == ann.ids[k]).all()
            ys, xs = np.nonzero(ann.masks[k])
            np.testing.assert_array_equal(ann.boxes[k], [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
        png = cv2.cvtColor(cv2.imread(str(colour_path(tiny_root, video, frame))), cv2.COLOR_BGR2RGB)
        np.testing.assert_array_equal(png, labels.colorize(ann.id_map))


def test_same_seed_same_benchmark(tiny_root, tmp_path):
    again = tmp_path / "again"
    synthesize(TINY, seed=7, out=again)
    assert (again / "videoset.csv").read_bytes() == (tiny_root / "videoset.csv").read_bytes()
    first, second = _annotations(tiny_root), _annotations(again)
    assert first.keys() == second.keys()
    for key in first:
        for field in ("id_map", "masks", "boxes", "ids"):
            np.testing.assert_array_equal(getattr(first[key], field), getattr(second[key], field))
    other = tmp_path / "other"
    synthesize(TINY, seed=8, out=other)
    assert (other / "videoset.csv").read_bytes() != (tiny_root / "videoset.csv").read_bytes()


def test_video_is_lossy_but_faithful(tiny_root):
    """Decoded frames differ from the clean render (compression) yet keep the actors where the masks say."""
    videos = read_videoset(tiny_root / "videoset.csv")
    row = videos.iloc[0]
    frame = int(list_annotated_frames(tiny_root, videos.iloc[:1])["frame"].iloc[0])
    rgb = read_clip_frames(video_path(tiny_root, row.video), [frame])[frame].astype(np.float32)
    ann = read_annotation(annotation_path(tiny_root, row.video, frame))
    for k, pair in enumerate(ann.ids):
        inside = rgb[ann.masks[k] > 0].mean(0)
        colour = np.array(LOOKS[labels.actor_of(int(pair))].colour, np.float32)
        # Mean colour inside the mask is the actor's (shaded) colour, far from a grey background's.
        assert np.corrcoef(inside, colour)[0, 1] > 0.8 or np.abs(inside - colour).max() < 60


def test_several_small_and_occluded_actors_in_default_size():
    """On the default plan: balanced pairs, clips with several actors; in rendered clips, small and occluded actors."""
    s = _settings(schema_section("synthetic"))
    plan = plan_clips(s, np.random.default_rng(0))
    for usage in (0, 1):
        counts = Counter(p for c in plan if c["usage"] == usage for p in c["pairs"])
        assert set(counts) == set(labels.VALID_PAIRS), "every valid pair occurs in both splits"
        assert max(counts.values()) - min(counts.values()) <= 1, "pairs are balanced"
    train = Counter(p for c in plan if c["usage"] == 0 for p in c["pairs"])
    assert min(train.values()) >= 3, "enough training clips of every pair"
    assert sum(c["usage"] for c in plan) >= 40, "a test split large enough to resolve differences"
    assert sum(len(c["pairs"]) >= 2 for c in plan) > len(plan) / 3


def test_small_and_overlapping_actors(tiny_root):
    anns = list(_annotations(tiny_root).values())
    areas = [m.sum() / m.size for a in anns for m in a.masks]
    assert min(areas) < 0.01, "some actors are small"
    assert max(len(a.ids) for a in anns) >= 2, "several actors in some frames"

    def overlap(a, b):
        return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]

    assert any(overlap(a.boxes[i], a.boxes[j]) for a in anns for i in range(len(a.ids)) for j in range(i)), "occlusion"


def test_actions_differ_by_motion_only():
    """Appearance depends on the actor alone; each action has its own motion signature."""
    box = (0.0, 400.0, 0.0, 400.0)
    frames = 12

    def track(action, actor=1):
        rng = np.random.default_rng(action)
        return _actor_tracks(rng, actor * 10 + action, 12.0, frames, box)

    def speed(action):
        pos = track(action)[0]
        return float(np.abs(np.diff(pos[:, 0])).mean())

    still, still_angle, still_limb, _ = track(9)  # none: nothing moves
    assert np.ptp(still, 0).max() == 0 and np.ptp(still_limb) == 0
    eat, _, eat_limb, _ = track(3)  # eating: the body stays still, only the limb moves
    assert np.ptp(eat, 0).max() == 0 and np.ptp(eat_limb) > 0.5
    assert speed(7) > 1.5 * speed(8) > 1.5 * 1.2 * speed(2) > 0  # running > walking > crawling
    climb = track(1)[0]
    assert (np.diff(climb[:, 1]) < 0).all(), "climbers go up"
    assert np.ptp(track(6, actor=3)[1]) > 1.0, "rollers turn"
    hops = track(5)[0][:, 1]
    assert np.ptp(hops) > 5 and np.ptp(track(5)[0][:, 0]) == 0, "jumpers go up and down in place"
    assert set(MOTIONS) == set(range(1, 10)) and set(LOOKS) == set(range(1, 8))


def test_limb_moves_while_body_stays():
    """Rendering an eating adult at two limb angles changes only limb pixels: per-pixel motion is inconsistent."""
    look = LOOKS[1]
    a, b = np.zeros((60, 60, 3), np.float32), np.zeros((60, 60, 3), np.float32)
    owner_a, owner_b = np.zeros((60, 60), np.int16), np.zeros((60, 60), np.int16)
    _draw(a, owner_a, 1, look, 30, 30, 12, 0.0, look.limb_angle)
    _draw(b, owner_b, 1, look, 30, 30, 12, 0.0, look.limb_angle + 0.8)
    changed = np.any(a != b, axis=2)
    body = (owner_a > 0) & (owner_b > 0) & ~changed
    assert changed.sum() > 10 and body.sum() > 3 * changed.sum()  # most of the actor does not move


def test_config_defaults_in_step():
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    assert config["synthetic"] == schema_section("synthetic")


def test_bad_settings_are_errors_and_leave_nothing(tmp_path):
    with pytest.raises(A2DError, match="even"):
        synthesize({**TINY, "widths": [65]}, seed=0, out=tmp_path / "odd")
    with pytest.raises(A2DError, match="unknown"):
        synthesize({**TINY, "vidoes": 3}, seed=0, out=tmp_path / "typo")
    assert not list(tmp_path.iterdir())


def test_default_size_generates_quickly(tmp_path):
    """Timing guard on a quarter of the default (the default takes a few seconds)."""
    import time

    start = time.perf_counter()
    defaults = schema_section("synthetic")
    synthesize({**defaults, "videos": math.ceil(defaults["videos"] / 4)}, seed=0, out=tmp_path / "q")
    assert time.perf_counter() - start < 30


def test_failure_midway_leaves_no_folder(tmp_path, monkeypatch):
    import a2dpipe.dataset.synthetic as synthetic

    calls = []

    def failing(path, images, quality):
        calls.append(path)
        if len(calls) == 2:
            raise A2DError(f"{path}: simulated failure")
        return original(path, images, quality)

    original = synthetic._write_video
    monkeypatch.setattr(synthetic, "_write_video", failing)
    with pytest.raises(A2DError, match="simulated"):
        synthesize(TINY, seed=0, out=tmp_path / "a2d")
    assert not list(tmp_path.iterdir()), "neither the folder nor its temporary remains"
