"""Bad input gives a clear error naming the file or config key, and leaves nothing that looks finished.

Each case corrupts one thing in a tiny synthetic dataset (or config, or an intermediate artifact) and runs the
command a rule would run. Known defects of the real A2D release (duplicated instances, more masks than ids) and
boxes that leave the frame are repaired and logged, not fatal; so are stray files beside the annotations.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import yaml

from a2dpipe.dataset.a2d import annotation_path, video_path
from a2dpipe.dataset.annotation import read_annotation
from a2dpipe.dataset.frames import FrameStore
from a2dpipe.errors import A2DError


def a2dpipe(*args, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "a2dpipe", *map(str, args)], capture_output=True, text=True, cwd=cwd, timeout=120
    )


@pytest.fixture(scope="module")
def clean_dataset(tmp_path_factory, tiny_config):
    root = tmp_path_factory.mktemp("clean") / "a2d"
    proc = a2dpipe("synthesize", "--config", tiny_config, "--out", root)
    assert proc.returncode == 0, proc.stderr
    return root


@pytest.fixture
def dataset(tmp_path, clean_dataset):
    """A fresh copy of the tiny synthetic dataset to corrupt, and its videoset rows."""
    root = tmp_path / "a2d"
    shutil.copytree(clean_dataset, root)
    return root


def first_annotated(root):
    """(video, frame) of the first annotation of the first video in videoset.csv."""
    video = pd.read_csv(root / "videoset.csv", header=None, dtype={0: str})[0].iloc[0]
    frame = int(sorted((root / "Annotations" / "mat" / video).glob("*.mat"))[0].stem)
    return video, frame


def annotated_with_instances(root, count=2):
    """(video, frame) of the first annotation of shard 000 holding at least ``count`` instances."""
    videos = pd.read_csv(root / "videoset.csv", header=None, dtype={0: str})[0]
    for video in videos.iloc[:4]:  # tiny preset: shard 000 holds the first four videos
        for path in sorted((root / "Annotations" / "mat" / video).glob("*.mat")):
            if len(read_annotation(path).ids) >= count:
                return video, int(path.stem)
    pytest.fail(f"no annotation of shard 000 holds {count} instances; the tiny preset must provide one")


def index_of(root, tiny_config, out_dir):
    out = out_dir / "index.csv"
    proc = a2dpipe("index", "--config", tiny_config, "--root", root, "--out", out)
    assert proc.returncode == 0, proc.stderr
    return out


def extract(root, tiny_config, tmp_path, shard="000"):
    """Run extract-frames on one shard; returns (process, output path, log path)."""
    index = index_of(root, tiny_config, tmp_path)
    out, log = tmp_path / "frames" / f"shard-{shard}.h5", tmp_path / "logs" / f"shard-{shard}.log"
    proc = a2dpipe("extract-frames", "--config", tiny_config, "--root", root, "--index", index, "--shard", shard,
                   "--out", out, "--log", log)
    return proc, out, log


def assert_clear_failure(proc, out, *phrases):
    """Exit status 1, one `error:` line holding every phrase, no traceback, and no output (not even a partial one)."""
    assert proc.returncode == 1, f"expected a clean failure, got {proc.returncode}:\n{proc.stderr}"
    assert "Traceback" not in proc.stderr, proc.stderr
    message = next(line for line in proc.stderr.splitlines() if ": error: " in line)
    for phrase in phrases:
        assert str(phrase) in message, f"{phrase!r} not in {message!r}"
    assert not out.exists(), f"{out} left behind"
    leftovers = [p.name for p in out.parent.iterdir()] if out.parent.exists() else []
    assert not leftovers, f"temporary files left beside {out}: {leftovers}"
    return message


def rewrite_field(path, name, data):
    """Replace one MATLAB variable of an annotation (h5py layout, i.e. already transposed)."""
    with h5py.File(path, "r+") as f:
        attrs = dict(f[name].attrs)
        del f[name]
        ds = f.create_dataset(name, data=data)
        ds.attrs.update(attrs)


def test_truncated_mp4(dataset, tiny_config, tmp_path):
    video, _ = first_annotated(dataset)
    clip = video_path(dataset, video)
    clip.write_bytes(clip.read_bytes()[: clip.stat().st_size // 3])
    proc, out, _ = extract(dataset, tiny_config, tmp_path)
    assert_clear_failure(proc, out, clip)


def test_mat_that_is_not_hdf5(dataset, tiny_config, tmp_path):
    path = annotation_path(dataset, *first_annotated(dataset))
    path.write_bytes(b"MATLAB 5.0 MAT-file, written by an older MATLAB" + bytes(200))
    proc, out, _ = extract(dataset, tiny_config, tmp_path)
    assert_clear_failure(proc, out, path, "not a MATLAB v7.3 (HDF5) file")


def test_mat_with_missing_field(dataset, tiny_config, tmp_path):
    path = annotation_path(dataset, *first_annotated(dataset))
    with h5py.File(path, "r+") as f:
        del f["reBBox"]
    proc, out, _ = extract(dataset, tiny_config, tmp_path)
    assert_clear_failure(proc, out, path, "missing field(s) reBBox")


def test_mat_with_fewer_masks_than_ids(dataset, tiny_config, tmp_path):
    path = annotation_path(dataset, *first_annotated(dataset))
    ids = read_annotation(path).ids
    rewrite_field(path, "id", np.append(ids, ids[:1]).astype(np.float64)[None])  # h5py layout (1, N)
    proc, out, _ = extract(dataset, tiny_config, tmp_path)
    assert_clear_failure(proc, out, path, f"{len(ids)} instance(s) in reMask but {len(ids) + 1} id(s)")


def test_mat_with_more_masks_than_ids_is_repaired_and_logged(dataset, tiny_config, tmp_path):
    video, frame = annotated_with_instances(dataset, 2)
    path = annotation_path(dataset, video, frame)
    ann = read_annotation(path)
    rewrite_field(path, "id", ann.ids[:-1].astype(np.float64)[None])
    proc, out, log = extract(dataset, tiny_config, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert f"{path}: {len(ann.ids)} mask(s)" in log.read_text()
    with FrameStore(out) as store:
        assert len(store.read(video, frame).instance_ids) == len(ann.ids) - 1


def test_duplicated_instance_is_dropped_and_logged(dataset, tiny_config, tmp_path):
    video, frame = first_annotated(dataset)
    path = annotation_path(dataset, video, frame)
    ann = read_annotation(path)
    with h5py.File(path, "r") as f:
        mask, box, ids = f["reMask"][()], f["reBBox"][()], f["id"][()]
    mask = mask[None] if mask.ndim == 2 else mask  # a single instance is stored without its instance axis
    rewrite_field(path, "reMask", np.concatenate([mask, mask[:1]]))
    rewrite_field(path, "reBBox", np.concatenate([box, box[:, :1]], axis=1))
    rewrite_field(path, "id", np.concatenate([ids, ids[:, :1]], axis=1))
    proc, out, log = extract(dataset, tiny_config, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert f"{path}: dropped 1 duplicated instance(s)" in log.read_text()
    with FrameStore(out) as store:
        np.testing.assert_array_equal(store.read(video, frame).instance_ids, ann.ids)


def test_instance_id_that_is_not_a_valid_pair(dataset, tiny_config, tmp_path):
    path = annotation_path(dataset, *first_annotated(dataset))
    ids = read_annotation(path).ids.astype(np.float64)
    ids[0] = 14  # adult-flying: actor and action exist, the pair does not
    rewrite_field(path, "id", ids[None])
    proc, out, _ = extract(dataset, tiny_config, tmp_path)
    assert_clear_failure(proc, out, path, "14")


def test_pixel_ids_outside_the_valid_pairs_are_kept_and_logged(dataset, tiny_config, tmp_path):
    video, frame = first_annotated(dataset)
    path = annotation_path(dataset, video, frame)
    with h5py.File(path, "r") as f:
        seg = f["reS_id"][()]
    seg[:2, :2] = 14  # the A2D label contract ignores such pixels in training and evaluation
    rewrite_field(path, "reS_id", seg)
    proc, out, log = extract(dataset, tiny_config, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert f"{path}: 4 pixel(s) carry ids outside the 43 valid pairs [14]" in log.read_text()


def test_annotation_beyond_the_video(dataset, tiny_config, tmp_path):
    video, frame = first_annotated(dataset)
    beyond = annotation_path(dataset, video, 99)
    annotation_path(dataset, video, frame).rename(beyond)
    out = tmp_path / "out" / "index.csv"
    proc = a2dpipe("index", "--config", tiny_config, "--root", dataset, "--out", out)
    assert_clear_failure(proc, out, beyond, "frame 99 lies outside 1..")


def test_empty_split(dataset, tiny_config, tmp_path):
    videoset = pd.read_csv(dataset / "videoset.csv", header=None, dtype={0: str})
    videoset[8] = 0  # every video in train
    videoset.to_csv(dataset / "videoset.csv", header=False, index=False)
    out = tmp_path / "out" / "index.csv"
    proc = a2dpipe("index", "--config", tiny_config, "--root", dataset, "--out", out)
    assert_clear_failure(proc, out, dataset / "videoset.csv", "the test split is empty")


@pytest.mark.parametrize(
    "section, key, value, phrase",
    [
        ("dataset", "shard_size", "eight", "'eight' is not of type 'integer'"),
        ("synthetic", "test_fraction", 1.5, "1.5 is greater than or equal to the maximum of 1"),
    ],
)
def test_config_value_of_wrong_type_or_range(tmp_path, tiny_config, snakemake_run, section, key, value, phrase):
    config = yaml.safe_load(tiny_config.read_text())
    config[section][key] = value
    bad = tmp_path / "config.yaml"
    bad.write_text(yaml.safe_dump(config))
    proc = snakemake_run(tmp_path, "--cores", "1", "--dry-run", "index", config=bad, check=False)
    assert proc.returncode != 0
    assert phrase in proc.stdout, proc.stdout[-3000:]
    assert f"{section}.{key}: {phrase}" in proc.stdout, proc.stdout[-3000:]  # names the key
    assert "properties" not in proc.stdout, proc.stdout[-3000:]  # one line, not the schema
    assert not (tmp_path / "results").exists()  # rejected before any job


# --------------------------------------------------------------------------------------------------------------
# Ids and names: a video id is a plain file name, an annotation is <5 digits>.mat
# --------------------------------------------------------------------------------------------------------------


def set_first_video_id(root, video):
    videoset = pd.read_csv(root / "videoset.csv", header=None, dtype=str, keep_default_na=False)
    videoset.iloc[0, 0] = video
    videoset.to_csv(root / "videoset.csv", header=False, index=False)


@pytest.mark.parametrize(
    "video", ["../escape", "sub/clip", "..", "back\\slash", "bell\x07", "ABSOLUTE"], ids=repr
)
def test_video_id_that_is_not_a_plain_file_name(dataset, tiny_config, tmp_path, video):
    if video == "ABSOLUTE":  # an existing folder outside the dataset, which the id would otherwise read
        video = str(tmp_path / "elsewhere")
        (tmp_path / "elsewhere").mkdir()
    set_first_video_id(dataset, video)
    out = tmp_path / "out" / "index.csv"
    proc = a2dpipe("index", "--config", tiny_config, "--root", dataset, "--out", out)
    assert_clear_failure(proc, out, dataset / "videoset.csv", "row 1", repr(video), "not a plain file name")


def test_header_row_in_videoset(dataset, tiny_config, tmp_path):
    csv = dataset / "videoset.csv"
    csv.write_text("video_id,label,start_time,end_time,height,width,num_frames,num_annotated_frames,usage\n"
                   + csv.read_text())
    out = tmp_path / "out" / "index.csv"
    proc = a2dpipe("index", "--config", tiny_config, "--root", dataset, "--out", out)
    assert_clear_failure(proc, out, csv, "row 1 looks like a header", "no header row")


def test_non_numeric_cell_in_videoset_names_row_and_column(dataset, tiny_config, tmp_path):
    videoset = pd.read_csv(dataset / "videoset.csv", header=None, dtype=str)
    videoset.iloc[2, 6] = "many"  # num_frames of the third video
    videoset.to_csv(dataset / "videoset.csv", header=False, index=False)
    out = tmp_path / "out" / "index.csv"
    proc = a2dpipe("index", "--config", tiny_config, "--root", dataset, "--out", out)
    assert_clear_failure(proc, out, "row 3", "'num_frames' holds 'many'")


def test_two_files_of_one_frame(dataset, tiny_config, tmp_path):
    video, frame = first_annotated(dataset)
    padded = annotation_path(dataset, video, frame)
    unpadded = padded.with_name(f"{frame}.mat")
    shutil.copy(padded, unpadded)
    out = tmp_path / "out" / "index.csv"
    proc = a2dpipe("index", "--config", tiny_config, "--root", dataset, "--out", out)
    assert_clear_failure(proc, out, padded, unpadded, f"both annotate frame {frame}")


def test_annotation_name_that_is_not_five_digits(dataset, tiny_config, tmp_path):
    video, frame = first_annotated(dataset)
    unpadded = annotation_path(dataset, video, frame).with_name(f"{frame}.mat")
    annotation_path(dataset, video, frame).rename(unpadded)
    out = tmp_path / "out" / "index.csv"
    proc = a2dpipe("index", "--config", tiny_config, "--root", dataset, "--out", out)
    assert_clear_failure(proc, out, unpadded, "must be named <5 digits>.mat")


def test_stray_files_beside_annotations_are_skipped_and_logged(dataset, tiny_config, tmp_path):
    video, _ = first_annotated(dataset)
    folder = dataset / "Annotations" / "mat" / video
    (folder / "Thumbs.db").write_bytes(b"\0" * 16)
    (folder / "notes").mkdir()
    out, log = tmp_path / "out" / "index.csv", tmp_path / "index.log"
    proc = a2dpipe("index", "--config", tiny_config, "--root", dataset, "--out", out, "--log", log)
    assert proc.returncode == 0, proc.stderr
    for name in ("Thumbs.db", "notes"):
        assert f"{folder / name}: not an annotation file (<5 digits>.mat); skipped" in log.read_text()
    num_annotated_frames = pd.read_csv(dataset / "videoset.csv", header=None)[7]
    assert len(pd.read_csv(out)) == num_annotated_frames.sum()


def test_video_id_in_a_damaged_index(dataset, tiny_config, tmp_path):
    index = index_of(dataset, tiny_config, tmp_path)
    table = pd.read_csv(index, dtype=str)
    table.loc[0, "video"] = "../" + table.loc[0, "video"]
    table.to_csv(index, index=False)
    out = tmp_path / "frames" / "shard-000.h5"
    proc = a2dpipe("extract-frames", "--config", tiny_config, "--root", dataset, "--index", index, "--shard", "000",
                   "--out", out)
    assert_clear_failure(proc, out, index, "line 2", "not a plain file name")


def test_index_missing_a_column_says_how_to_rebuild_it(dataset, tiny_config, tmp_path):
    index = index_of(dataset, tiny_config, tmp_path)
    pd.read_csv(index, dtype=str).drop(columns="num_frames").to_csv(index, index=False)
    out = tmp_path / "frames" / "shard-000.h5"
    proc = a2dpipe("extract-frames", "--config", tiny_config, "--root", dataset, "--index", index, "--shard", "000",
                   "--out", out)
    assert_clear_failure(proc, out, index, "lacks column(s) ['num_frames']", "snakemake --forcerun index")


# --------------------------------------------------------------------------------------------------------------
# Numbers: finite values, boxes inside the frame, boxes that agree with their masks
# --------------------------------------------------------------------------------------------------------------


def read_fields(path):
    """reMask with its instance axis, reBBox and id, in the h5py layout (transposed)."""
    with h5py.File(path, "r") as f:
        mask, box, ids = f["reMask"][()], f["reBBox"][()], f["id"][()]
    return (mask[None] if mask.ndim == 2 else mask), box, ids


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_box_with_non_finite_value(dataset, tiny_config, tmp_path, value):
    video, frame = annotated_with_instances(dataset, 2)
    path = annotation_path(dataset, video, frame)
    _, box, ids = read_fields(path)
    box[2, 1] = value  # x2 of the second instance
    rewrite_field(path, "reBBox", box)
    proc, out, _ = extract(dataset, tiny_config, tmp_path)
    assert_clear_failure(proc, out, path, f"reBBox of instance 2 (id {int(ids[0, 1])}) holds NaN or infinite values")


def test_mask_that_is_all_nan(dataset, tiny_config, tmp_path):
    video, frame = first_annotated(dataset)
    path = annotation_path(dataset, video, frame)
    mask, _, ids = read_fields(path)
    mask = mask.astype(np.float64)
    mask[0] = np.nan
    rewrite_field(path, "reMask", mask if len(mask) > 1 else mask[0])
    proc, out, _ = extract(dataset, tiny_config, tmp_path)
    assert_clear_failure(proc, out, path, f"reMask of instance 1 (id {int(ids[0, 0])}) holds NaN or infinite values")


@pytest.mark.parametrize(
    "case, box",
    [
        ("outside the frame", lambda b, w, h: [w + 5, h + 5, w + 20, h + 20]),
        ("inverted", lambda b, w, h: [b[2], b[1], b[0], b[3]]),
    ],
)
def test_degenerate_box_drops_its_instance_and_is_logged(dataset, tiny_config, tmp_path, case, box):
    video, frame = annotated_with_instances(dataset, 2)
    path = annotation_path(dataset, video, frame)
    ann = read_annotation(path)
    _, boxes, _ = read_fields(path)
    boxes[:, 0] = box(boxes[:, 0], ann.width, ann.height)
    rewrite_field(path, "reBBox", boxes)
    proc, out, log = extract(dataset, tiny_config, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert f"{path}: dropped instance 1 (id {ann.ids[0]}): its box lies outside the frame or is inverted" in log.read_text()
    with FrameStore(out) as store:
        record = store.read(video, frame)
    np.testing.assert_array_equal(record.instance_ids, ann.ids[1:])
    np.testing.assert_array_equal(record.instance_boxes, ann.boxes[1:])


def test_one_pixel_wide_box_keeps_its_instance(dataset, tiny_config, tmp_path):
    # MATLAB's box corners are inclusive: x1 == x2 is one pixel wide, and later stages box instances by their masks
    video, frame = annotated_with_instances(dataset, 2)
    path = annotation_path(dataset, video, frame)
    ann = read_annotation(path)
    _, boxes, _ = read_fields(path)
    boxes[2, 0] = boxes[0, 0]  # x2 = x1
    rewrite_field(path, "reBBox", boxes)
    proc, out, log = extract(dataset, tiny_config, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "dropped instance" not in log.read_text()
    with FrameStore(out) as store:
        record = store.read(video, frame)
    np.testing.assert_array_equal(record.instance_ids, ann.ids)
    assert record.instance_boxes[0, 0] == record.instance_boxes[0, 2]


def test_box_partly_outside_is_clipped_and_its_disagreement_with_the_mask_logged(dataset, tiny_config, tmp_path):
    video, frame = first_annotated(dataset)
    path = annotation_path(dataset, video, frame)
    ann = read_annotation(path)
    _, boxes, _ = read_fields(path)
    boxes[:, 0] = [-30, -30, ann.width + 30, boxes[3, 0]]  # x1, y1, x2 beyond the frame
    rewrite_field(path, "reBBox", boxes)
    proc, out, log = extract(dataset, tiny_config, tmp_path)
    assert proc.returncode == 0, proc.stderr
    clipped = [0.0, 0.0, float(ann.width), float(boxes[3, 0])]
    assert f"{path}: instance 1 (id {ann.ids[0]}): box {clipped} differs from its mask's extent" in log.read_text()
    with FrameStore(out) as store:
        np.testing.assert_array_equal(store.read(video, frame).instance_boxes[0], clipped)


def test_stage2_ground_truth_regions_are_boxed_by_their_masks(dataset, tiny_config, tmp_path):
    from a2dpipe.dataset.frames import masks_to_boxes
    from a2dpipe.segmentation.samples import StoreSamples

    video, frame = annotated_with_instances(dataset, 1)
    path = annotation_path(dataset, video, frame)
    _, boxes, _ = read_fields(path)
    boxes[:, 0] += [1, 1, -1, -1]  # a stored box that cuts into its mask
    rewrite_field(path, "reBBox", boxes)
    proc, out, _ = extract(dataset, tiny_config, tmp_path)
    assert proc.returncode == 0, proc.stderr
    with FrameStore(out) as store:
        record = store.read(video, frame)
    samples = StoreSamples([out], split=record.split, gt_regions=True)
    sample = samples.load(samples.keys().index((video, frame)))
    samples.close()
    np.testing.assert_array_equal(sample["boxes"], masks_to_boxes(record.instance_masks))
    assert not np.array_equal(sample["boxes"][0], record.instance_boxes[0])


def test_distractor_index_of_another_size(dataset, tiny_config, tmp_path):
    import cv2

    from a2dpipe.dataset.synthetic import distractor_path

    video, frame = first_annotated(dataset)
    path = distractor_path(dataset, video, frame)
    cv2.imwrite(str(path), np.zeros((7, 5), np.uint8))
    proc, out, _ = extract(dataset, tiny_config, tmp_path)
    assert_clear_failure(proc, out, path, "distractor index is 5x7")


# --------------------------------------------------------------------------------------------------------------
# Damaged intermediate artifacts: an error naming the file and the rule that rebuilds it
# --------------------------------------------------------------------------------------------------------------


@pytest.fixture
def clean_shard(dataset, tiny_config, tmp_path):
    proc, out, _ = extract(dataset, tiny_config, tmp_path)
    assert proc.returncode == 0, proc.stderr
    return out


def flow_of(shard, tiny_config, tmp_path):
    out = tmp_path / "flow" / "shard-000.h5"
    return a2dpipe("flow", "--config", tiny_config, "--frames", shard, "--out", out), out


def test_bit_flip_in_a_frames_shard(clean_shard, tiny_config, tmp_path):
    with h5py.File(clean_shard, "r") as f:
        video = sorted(f)[0]
        rgb = f[video][sorted(f[video])[0]]["rgb"]
        chunk = rgb.id.get_chunk_info(0)
    data = bytearray(clean_shard.read_bytes())
    data[chunk.byte_offset + chunk.size // 2] ^= 0x10
    clean_shard.write_bytes(bytes(data))
    proc, out = flow_of(clean_shard, tiny_config, tmp_path)
    assert_clear_failure(proc, out, clean_shard, "cannot read frame", "snakemake --forcerun extract_frames")


def test_truncated_frames_shard(clean_shard, tiny_config, tmp_path):
    clean_shard.write_bytes(clean_shard.read_bytes()[: clean_shard.stat().st_size // 2])
    proc, out = flow_of(clean_shard, tiny_config, tmp_path)
    assert_clear_failure(proc, out, clean_shard, "not a readable HDF5 file", "snakemake --forcerun extract_frames")


# --------------------------------------------------------------------------------------------------------------
# Model files: damaged or crafted (every loader is tested in tests/test_checkpoint.py; here, through a command)
# --------------------------------------------------------------------------------------------------------------


class _Payload:
    """Pickles as a call that creates ``marker``: what a crafted checkpoint would run when unpickled in full."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def region_masks(shard, tiny_config, model, tmp_path):
    out = tmp_path / "masks" / "shard-000.h5"
    return a2dpipe("region-masks", "--config", tiny_config, "--source", "dataset", "--frames", shard,
                   "--model", model, "--out", out), out


def test_crafted_mask_model_is_refused_without_running_it(clean_shard, tiny_config, tmp_path):
    import torch

    marker, model = tmp_path / "PWNED", tmp_path / "model.pt"
    torch.save({"model": _Payload(marker), "arch": {}, "source": "dataset"}, model)
    proc, out = region_masks(clean_shard, tiny_config, model, tmp_path)
    assert_clear_failure(proc, out, model, "refused", "would run code")
    assert not marker.exists(), "loading the crafted file ran its code"


def test_truncated_mask_model_is_named(clean_shard, tiny_config, tmp_path):
    import torch

    model = tmp_path / "model.pt"
    torch.save({"model": {"w": torch.zeros(1000)}, "arch": {}, "source": "dataset"}, model)
    model.write_bytes(model.read_bytes()[: model.stat().st_size // 2])
    proc, out = region_masks(clean_shard, tiny_config, model, tmp_path)
    assert_clear_failure(proc, out, model, "not a readable torch checkpoint")


# --------------------------------------------------------------------------------------------------------------
# Writers: two commands writing one output by hand
# --------------------------------------------------------------------------------------------------------------

HOLD_OUTPUT = """
import sys
from a2dpipe.io import atomic_path
with atomic_path(sys.argv[1]) as tmp:
    tmp.write_text("first writer")
    print(tmp, flush=True)
    sys.stdin.readline()  # hold the temporary until told to finish
"""


def test_second_writer_leaves_the_first_writers_temporary_alone(dataset, tiny_config, tmp_path):
    out = tmp_path / "out" / "index.csv"
    first = subprocess.Popen([sys.executable, "-c", HOLD_OUTPUT, str(out)], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    try:
        live = first.stdout.readline().strip()
        assert live, "the first writer did not start"
        proc = a2dpipe("index", "--config", tiny_config, "--root", dataset, "--out", out)
        assert proc.returncode == 0, proc.stderr
        assert (tmp_path / "out" / live.rsplit("/", 1)[-1]).read_text() == "first writer"
        assert out.read_text().startswith("video,frame,split")
        first.communicate("\n", timeout=60)
    finally:
        first.kill()
    assert first.returncode == 0
    assert out.read_text() == "first writer"  # the last to finish wins, whole
    assert [p.name for p in out.parent.iterdir()] == ["index.csv"]


def test_videoset_size_that_disagrees_with_the_clip_names_the_clip(dataset, tiny_config, tmp_path):
    videoset = pd.read_csv(dataset / "videoset.csv", header=None, dtype=str, keep_default_na=False)
    videoset.iloc[0, 5] = str(int(videoset.iloc[0, 5]) + 16)  # the width of the first video
    videoset.to_csv(dataset / "videoset.csv", header=False, index=False)
    proc, out, log = extract(dataset, tiny_config, tmp_path)
    message = assert_clear_failure(proc, out, f"{videoset.iloc[0, 0]}.mp4: frames are", "but videoset.csv says",
                                   "dataset.exclude_videos")
    assert message in log.read_text()  # the job's log holds its error too


def test_one_frame_clip_and_an_empty_shard_name_the_videos_and_the_fix(dataset, tiny_config, tmp_path):
    from a2dpipe.dataset.frames import extract_shard
    from a2dpipe.dataset.index import read_index

    index = read_index(index_of(dataset, tiny_config, tmp_path))
    video = index["video"].iloc[0]
    one = index[index["video"] == video].head(1).assign(frame=1, num_frames=1)
    with pytest.raises(A2DError, match=rf"{video}\.mp4: a clip of 1 frame\(s\) has no flow partner.*list {video} in "
                                       r"config dataset.exclude_videos"):
        extract_shard(dataset, one, one["shard"].iloc[0], tmp_path / "one.h5")
    last = index["video"].iloc[-1]
    shard = index["shard"].iloc[-1]
    trailing = index[index["shard"] != shard]  # the last shard's videos lost their annotated frames
    with pytest.raises(A2DError, match=rf"videoset.csv: shard '{shard}' has no annotated frame: videoset.csv lists "
                                       rf"\d+ video\(s\) without one \(.*{last}.*\); list them in config "
                                       r"dataset.exclude_videos"):
        extract_shard(dataset, trailing, shard, tmp_path / "empty.h5")
