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

from a2dpipe.checkpoint import MODEL_FILES, load_model_file, load_resume, read_checkpoint
from a2dpipe.flow.estimators import build_estimator
from a2dpipe.errors import A2DError
from a2dpipe.masks import train as mask_train
from a2dpipe.masks.model import build_mask_model, load_coco_checkpoint, load_mask_model
from a2dpipe.segmentation import train as seg_train
from a2dpipe.segmentation.models import build_front_end, build_segmenter
from a2dpipe.trainer import PeriodicCheckpointer, Trainer
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
    assert load_model_file(written["stage 2 model"], "stage-2 model")["stage"] == 2
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
        "model": lambda p: seg_train.load_checkpoint(p, 1),
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


# -- model files --------------------------------------------------------------------------------------------------

MODEL_NAMES = {"stage 1 model": "stage-1 model", "stage 2 model": "stage-2 model", "mask model": "mask model"}
REBUILT_BY = {"stage-1 model": "train_stage1", "stage-2 model": "train_stage2", "mask model": "train_mask_model"}


def test_a_model_file_holds_its_format_builder_arguments_metadata_weights_and_one_stamp(written):
    for name, what in MODEL_NAMES.items():
        content = load_model_file(written[name], what)
        model_format, meta = MODEL_FILES[what]
        assert content["format"] == model_format.schema and content["format"].endswith("/1"), name
        assert set(content) == {"format", "builder", "model", "provenance", *meta}, name
        assert set(content["provenance"]) == {"a2dpipe_version", "settings", "code"}, name
    # the builder's arguments rebuild the network the weights fit, whatever the caller's settings
    for stage in (1, 2):
        content = load_model_file(written[f"stage {stage} model"], f"stage-{stage} model")
        network = build_segmenter(**content["builder"])
        network.load_state_dict(content["model"])  # strict: every tensor in place
        assert (network.region is not None) == (stage == 2)
    network, content = load_mask_model(written["mask model"])  # strict, as load_state_dict is
    assert not network.training and content["builder"]["num_classes"] == 8


def _rewritten(path: pathlib.Path, out: pathlib.Path, change) -> pathlib.Path:
    content = torch.load(path, map_location="cpu", weights_only=True)
    change(content)
    torch.save(content, out)
    return out


def test_a_model_file_of_another_version_or_without_one_is_refused_with_its_rebuilding_rule(written, tmp_path):
    for name, what in MODEL_NAMES.items():
        rule = REBUILT_BY[what]
        unversioned = _rewritten(written[name], tmp_path / "unversioned.pt", lambda c: c.pop("format"))
        with pytest.raises(A2DError, match=rf"unversioned.pt: not a {what} of format .*has no format version.*"
                                           rf"snakemake --forcerun {rule}"):
            load_model_file(unversioned, what)
        schema = MODEL_FILES[what][0].schema
        newer = schema.replace("/1", "/2")
        other = _rewritten(written[name], tmp_path / "other.pt", lambda c: c.update(format=newer))
        with pytest.raises(A2DError, match=rf"other.pt: .*written with format '{newer}'; this version reads "
                                           rf"'{schema}'.*--forcerun {rule}"):
            load_model_file(other, what)
    # the layout written before model files had a version: settings twice, the builder's arguments in "arch"
    stage1 = load_model_file(written["stage 1 model"], "stage-1 model")
    old = {"model": stage1["model"], "stage": 1, "input": "rgb", "mask_source": None, "config": CONFIG,
           "segmentation": CONFIG["segmentation"], "curve": stage1["curve"], "provenance": stage1["provenance"]}
    torch.save(old, tmp_path / "old.pt")
    with pytest.raises(A2DError, match="old.pt: .*no format version.*--forcerun train_stage1"):
        seg_train.load_checkpoint(tmp_path / "old.pt", 1)
    mask = torch.load(written["mask model"], weights_only=True)
    torch.save({**{k: v for k, v in mask.items() if k not in ("format", "builder")}, "arch": mask["builder"]},
               tmp_path / "old-mask.pt")
    with pytest.raises(A2DError, match="old-mask.pt: .*no format version.*--forcerun train_mask_model"):
        load_mask_model(tmp_path / "old-mask.pt")


def test_a_model_file_of_another_kind_or_stage_is_refused_by_name(written):
    with pytest.raises(A2DError, match=r"model.pt: a stage-2 model, not the stage-1 model expected here"):
        load_model_file(written["stage 2 model"], "stage-1 model")
    with pytest.raises(A2DError, match=r"not a mask model of format 'a2dpipe.mask-model/1' \(it is an "
                                       r"'a2dpipe.segmentation-model/1' file\)"):
        load_mask_model(written["stage 1 model"])


# -- float16 loss scaling across a resume -----------------------------------------------------------------------


def _scaled_run(folder: pathlib.Path, max_steps: int | None = None):
    """A float16 CPU run of 8 steps whose loss scale backs off in its first steps (a scale of 2^20 overflows
    float16 gradients), checkpointed every 2 steps into ``folder``; resumes from there when a checkpoint exists."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 20, growth_interval=3)
    resume = folder / "checkpoint.pt"
    start, history = load_resume(resume, "float16 run", model, optimizer, scheduler, scaler) or (0, [])

    def step_fn(step: int) -> dict:
        x = torch.randn(16, 4, generator=torch.Generator().manual_seed(step))
        return {"loss": model(x).float().pow(2).mean()}

    trainer = Trainer(model, optimizer, scheduler, step_fn, iterations=8, start=start, history=history,
                      amp_device="cpu", amp_dtype=torch.float16, scaler=scaler,
                      hooks=[PeriodicCheckpointer(resume, "float16 run", 2, folder / "loss.csv")])
    trainer.train(max_steps)
    return trainer


# a step whose scaled gradients overflow skips the optimiser, not the schedule: torch warns of that order
@pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step\\(\\)` before")
def test_a_resumed_float16_run_keeps_its_loss_scale_and_ends_bit_identical(tmp_path):
    straight = _scaled_run(tmp_path / "straight")
    _scaled_run(tmp_path / "run", max_steps=5)  # killed after step 5: the checkpoint of step 4 remains
    saved = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    assert saved["step"] == 4 and saved["scaler"]["scale"] < 2.0 ** 20  # the scale has moved: restoring matters
    resumed = _scaled_run(tmp_path / "run")
    assert resumed.start == 4 and resumed.scaler.get_scale() == straight.scaler.get_scale()
    assert resumed.history == straight.history
    assert _equal(resumed.model.state_dict(), straight.model.state_dict())


@pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step\\(\\)` before")
def test_a_resume_checkpoint_of_another_precision_is_set_aside(tmp_path, caplog):
    _scaled_run(tmp_path, max_steps=2)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    with caplog.at_level(logging.WARNING):  # a float32 (or bfloat16) run has no scale to continue from
        assert load_resume(tmp_path / "checkpoint.pt", "float16 run", model, optimizer, scheduler) is None
    assert "does not fit" in caplog.text
