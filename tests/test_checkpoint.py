"""Checkpoints: every kind the project writes is plain data, a file that would run code is refused by every loader,
a corrupt resume checkpoint is set aside, and a checkpoint written on another device resumes."""

from __future__ import annotations

import copy
import logging
import pathlib
import shutil

import numpy as np
import pytest
import torch
from test_masks import _config as mask_config, make_frames_shard
from test_train import make_samples

from a2dpipe.checkpoint import load_model_file, load_resume, read_checkpoint
from a2dpipe.flow.estimators import build_estimator
from a2dpipe.io import A2DError
from a2dpipe.masks import train as mask_train
from a2dpipe.masks.model import build_mask_model, load_coco_checkpoint, load_mask_model
from a2dpipe.segmentation import train as seg_train
from a2dpipe.segmentation.models import build_front_end
from conftest import complete, segmenter

torch.set_num_threads(1)

CONFIG = complete({
    "seed": 0,
    "device": "cpu",
    "segmentation": {
        "width": 8,
        "aspp_rates": [1, 2],
        "crop": [40, 56],
        "stage1": {"iterations": 6, "batch_size": 2, "checkpoint_every": 2},
        "stage2": {"iterations": 4, "batch_size": 2, "checkpoint_every": 2, "fc_dim": 16, "roi_size": 3},
    },
})


class RunsCode:
    """Unpickling this creates ``marker``: what a hostile checkpoint would do with ``os.system`` instead."""

    def __init__(self, marker: pathlib.Path):
        self.marker = marker

    def __reduce__(self):
        return pathlib.Path.touch, (self.marker,)


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    """Every kind of file the trainers write, by name: models of both stages and of a mask source, and the
    resume checkpoints of both trainers (kept by skipping their removal at the end)."""
    root = tmp_path_factory.mktemp("written")
    files = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(seg_train, "remove_resume", lambda path: None)
        mp.setattr(mask_train, "remove_resume", lambda path: None)
        s1 = root / "s1" / "model.pt"
        seg_train.train(CONFIG, stage=1, input="rgb", samples=make_samples(), out=s1)
        s2 = root / "s2" / "model.pt"
        seg_train.train(CONFIG, stage=2, input="rgb", samples=make_samples(), out=s2, stage1=s1)
        shard = make_frames_shard(root / "shard-000.h5", videos=2, frames=2)
        masks = root / "masks" / "model.pt"
        mask_train.train_mask_model(mask_config(iterations=4, checkpoint_every=2), "dataset", [shard], masks)
    for name, path in {"stage 1": s1, "stage 2": s2, "mask": masks}.items():
        files[f"{name} model"] = path
        files[f"{name} resume"] = path.with_name("checkpoint.pt")
    files["stage 1 previous resume"] = s1.with_name("checkpoint.prev.pt")  # six steps: checkpoints at 2 and 4
    return files


def test_every_checkpoint_the_project_writes_loads_as_plain_data(written):
    for name, path in written.items():
        assert path.is_file(), name
        state = torch.load(path, map_location="cpu", weights_only=True)  # tensors, numbers, strings, lists, dicts
        assert isinstance(state, dict) and "model" in state, name
    assert load_model_file(written["stage 2 model"], "segmentation")["stage"] == 2
    model, checkpoint = load_mask_model(written["mask model"])
    assert checkpoint["source"] == "dataset"
    resumed = torch.load(written["stage 1 resume"], weights_only=True)
    assert resumed["step"] == 4 and isinstance(resumed["rng"]["numpy"]["keys"], torch.Tensor)


def _hostile(path: pathlib.Path, marker: pathlib.Path, wrap: bool = True) -> pathlib.Path:
    payload = RunsCode(marker)
    torch.save({"model": {"weight": torch.zeros(2)}, "config": payload} if wrap else payload, path)
    return path


def test_a_pickle_that_would_run_code_is_refused_by_every_loader(tmp_path, caplog):
    marker = tmp_path / "code-ran"
    bare, wrapped = _hostile(tmp_path / "bare.pt", marker, False), _hostile(tmp_path / "wrapped.pt", marker)
    loaders = {
        "model": lambda p: seg_train.load_checkpoint(p),
        "mask model": lambda p: load_mask_model(p),
        "imagenet": lambda p: build_front_end(backbone="tiny", width=8, rgb_weights=str(p)),
        "coco": lambda p: load_coco_checkpoint(build_mask_model(num_classes=2, min_size=48, max_size=64), p),
        "flownet": lambda p: build_estimator("flownets", weights=p, device="cpu"),
        "raft": lambda p: build_estimator("raft", weights=p, device="cpu"),
    }
    for name, load in loaders.items():
        for path in (bare, wrapped):
            with pytest.raises(A2DError, match=rf"{path.name}: .*refused: .*run code"):
                load(path)
            assert not marker.exists(), f"the {name} loader ran the file's code"
    # the resume loader sets it aside and starts afresh
    model = segmenter(CONFIG, input="rgb", pretrained=False)
    optimizer = torch.optim.Adam(model.parameters())
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    resume = shutil.copy(wrapped, tmp_path / "checkpoint.pt")
    with caplog.at_level(logging.WARNING):
        assert load_resume(resume, "any", model, optimizer, scheduler) is None
    assert not marker.exists() and (tmp_path / "checkpoint.pt.corrupt").is_file()
    assert "checkpoint.pt" in caplog.text and "refused" in caplog.text


def test_numpy_scalars_beside_flownet_weights_load_without_unpickling_code(tmp_path):
    """flownet2-pytorch's checkpoints keep numpy numbers beside the weights: they load as data, no conversion."""
    torch.manual_seed(0)
    source = build_estimator("flownets", random_init=True, device="cpu")
    path = tmp_path / "FlowNet2-S_checkpoint.pth.tar"
    torch.save({"epoch": np.int64(7), "best_EPE": np.float64(2.5), "state_dict": source.model.state_dict()}, path)
    assert read_checkpoint(path, "weights")["best_EPE"] == 2.5
    loaded = build_estimator("flownets", weights=path, device="cpu")
    for key, value in source.model.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[key], value), key


def _straight(tmp_path):
    return seg_train.train(CONFIG, stage=1, input="rgb", samples=make_samples(), out=tmp_path / "straight.pt")


def _equal(a, b):
    return set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)


def test_a_corrupt_resume_checkpoint_falls_back_to_the_previous_one_then_to_scratch(tmp_path, caplog):
    straight = _straight(tmp_path)
    out = tmp_path / "run" / "model.pt"
    assert seg_train.train(CONFIG, stage=1, input="rgb", samples=make_samples(), out=out, max_steps=5) is None
    latest, previous = out.with_name("checkpoint.pt"), out.with_name("checkpoint.prev.pt")
    assert torch.load(latest, weights_only=True)["step"] == 4 and torch.load(previous, weights_only=True)["step"] == 2
    latest.write_bytes(latest.read_bytes()[: latest.stat().st_size // 2])  # truncated, as by a full disk
    with caplog.at_level(logging.INFO):
        resumed = seg_train.train(CONFIG, stage=1, input="rgb", samples=make_samples(), out=out)
    assert "set aside as checkpoint.pt.corrupt" in caplog.text and "checkpoint.prev.pt at step 2" in caplog.text
    assert _equal(resumed["model"], straight["model"]) and resumed["curve"] == straight["curve"]
    assert not latest.exists() and not previous.exists()  # finished: both removed

    # both damaged: set aside, trained from scratch to the same weights
    seg_train.train(CONFIG, stage=1, input="rgb", samples=make_samples(), out=out.with_name("again.pt"), max_steps=5)
    for path in (latest, previous):
        path.write_bytes(b"\x00" * 64)
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        again = seg_train.train(CONFIG, stage=1, input="rgb", samples=make_samples(), out=out.with_name("again.pt"))
    assert caplog.text.count("set aside") == 2
    assert _equal(again["model"], straight["model"])


@pytest.fixture
def tagged_as_cuda():
    """While active, ``torch.save`` tags CPU tensors as ``cuda:0``: a file as written by a run on a GPU."""
    registry = torch.serialization._package_registry
    entry = (-100, lambda obj: "cuda:0" if obj.device.type == "cpu" else None, lambda obj, location: None)
    registry.append(entry)
    registry.sort(key=lambda e: e[0])
    try:
        yield
    finally:
        registry.remove(entry)


def test_resume_from_a_checkpoint_written_on_another_device(tmp_path, tagged_as_cuda):
    straight = _straight(tmp_path)
    out = tmp_path / "run" / "model.pt"
    seg_train.train(CONFIG, stage=1, input="rgb", samples=make_samples(), out=out, max_steps=3)
    tagged_as_cuda_file = out.with_name("checkpoint.pt")
    if not torch.cuda.is_available():  # the file really claims a GPU: a plain load fails here
        with pytest.raises(RuntimeError, match="CUDA"):
            torch.load(tagged_as_cuda_file, weights_only=True)
    # resume loads it on the CPU (RNG states must be CPU tensors) and the run ends as an uninterrupted one
    resumed = seg_train.train(CONFIG, stage=1, input="rgb", samples=make_samples(), out=out)
    assert _equal(resumed["model"], straight["model"]) and resumed["curve"] == straight["curve"]


def test_a_checkpoint_of_other_settings_is_ignored_not_set_aside(tmp_path):
    out = tmp_path / "model.pt"
    seg_train.train(CONFIG, stage=1, input="rgb", samples=make_samples(), out=out, max_steps=3)
    other = copy.deepcopy(CONFIG)
    other["seed"] = 1
    result = seg_train.train(other, stage=1, input="rgb", samples=make_samples(), out=out)
    assert len(result["curve"]) == 6 and not out.with_name("checkpoint.pt.corrupt").exists()
