"""Bad input gives a clear error naming the file or config key, and leaves nothing that looks finished.

Each case corrupts one thing in a tiny synthetic dataset (or config) and runs the command a rule would run. Known
defects of the real A2D release (duplicated instances, more masks than ids) are repaired and logged, not fatal.
"""

from __future__ import annotations

import shutil
import subprocess
import sys

import h5py
import numpy as np
import pandas as pd
import pytest
import yaml

from a2dpipe.dataset.a2d import annotation_path, read_annotation, video_path
from a2dpipe.dataset.frames import FrameStore


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
    assert f"On instance['{section}']['{key}']" in proc.stdout, proc.stdout[-3000:]  # names the key
    assert not (tmp_path / "results").exists()  # rejected before any job
