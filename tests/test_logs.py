"""What a run tells its user: progress bars (rate and time left, redrawn in place on a terminal, one plain line per
update elsewhere) and rerun reasons that name the changed settings keys."""

from __future__ import annotations

import io
import json
import re

import numpy as np
import pytest
import yaml

from a2dpipe.progress import LOG_INTERVAL, progress
from a2dpipe.rerun import describe_params_change, settings_changes


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _run(stream, steps: int = 5) -> str:
    with progress(total=steps, desc="predict x", file=stream, mininterval=0) as bar:
        for _ in range(steps):
            bar.update(1)
    return stream.getvalue()


def test_off_a_terminal_each_update_is_a_line_with_rate_and_time_left():
    text = _run(io.StringIO())
    assert "\r" not in text
    lines = text.splitlines()
    assert len(lines) >= 6 and lines[0].startswith("predict x:   0%") and "0/5" in lines[0]
    # [elapsed<left, rate] on every line once a rate is known; plain ASCII bars
    for line in lines[1:]:
        assert re.search(r"\[\d\d:\d\d<\d\d:\d\d, +[\d.]+frame/s\]$", line), line
        assert line.isascii()
    assert "5/5" in lines[-1]


def test_on_a_terminal_the_bar_redraws_in_place():
    text = _run(Terminal())
    assert text.count("\r") >= 5 and text.count("\n") <= 1


def test_off_a_terminal_updates_are_spaced_for_log_files():
    bar = progress(total=3, desc="x", file=io.StringIO())
    assert bar.mininterval == LOG_INTERVAL >= 10
    bar.close()


# -- rerun reasons ------------------------------------------------------------------------------------------------


def _record(settings: dict) -> str:
    """A settings param as Snakemake records it: the repr of the rule's JSON string."""
    return repr(json.dumps(settings, sort_keys=True))


def test_settings_changes_name_each_changed_key_with_both_values():
    before = {"seed": 0, "segmentation": {"stage1": {"lr_front": 0.001, "iterations": 4}, "crop": [48, 64]}}
    now = {"seed": 0, "segmentation": {"stage1": {"lr_front": 0.002, "iterations": 4}, "crop": [48, 80]},
           "flow": {"wheel_max": 20.0}}
    assert settings_changes(before, now) == ["flow.wheel_max: (not read) -> 20.0",
                                             "segmentation.crop: [48, 64] -> [48, 80]",
                                             "segmentation.stage1.lr_front: 0.001 -> 0.002"]


def test_a_params_change_is_described_by_its_keys_and_other_params_by_their_value():
    old = {_record({"masks": {"lr": 0.01, "iterations": 4}}), repr("model=fcis")}
    new = {_record({"masks": {"lr": 0.02, "iterations": 4}}), repr("model=maskrcnn")}
    text = describe_params_change(old, new)
    assert text == "masks.lr: 0.01 -> 0.02; other params: 'model=fcis' -> 'model=maskrcnn'"
    assert describe_params_change({repr("a")}, {repr("b")}) is None  # no settings: Snakemake's own words


def test_a_dry_run_after_a_change_names_the_key_in_each_params_reason(tiny_run, tiny_config, snakemake_run, tmp_path):
    config = yaml.safe_load(tiny_config.read_text())
    assert config["segmentation"]["stage2"]["fc_dim"] == 16
    config["segmentation"]["stage2"]["fc_dim"] = 32
    changed = tmp_path / "changed.yaml"
    changed.write_text(yaml.safe_dump(config))
    proc = snakemake_run(tiny_run, "tables", "--dry-run", config=changed)
    reasons = [line.strip() for line in proc.stdout.splitlines() if "Params have changed" in line]
    assert len(reasons) == 3  # the three stage-2 models; what reads them reruns for its updated input
    for reason in reasons:
        assert reason == "reason: Params have changed since last execution: segmentation.stage2.fc_dim: 16 -> 32"


# -- TensorBoard ----------------------------------------------------------------------------------------------------


def _train(folder, start: int, history: list, stop: int | None = None):
    """A two-loss trainer over a one-weight model, steps ``start ..`` 4 (or up to ``stop``), with event files."""
    import torch

    from a2dpipe.trainer import TensorBoard, Trainer

    torch.manual_seed(0)
    weight = torch.nn.Parameter(torch.ones(1))
    optimizer = torch.optim.SGD([weight], lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 / (1 + step))
    trainer = Trainer(torch.nn.Module(), optimizer, scheduler,
                      lambda step: {"loss_a": (weight * (step + 1)) ** 2, "loss_b": weight.abs()},
                      iterations=4, start=start, history=history, hooks=[TensorBoard(folder)])
    trainer.train(stop)
    return trainer.history


def _scalars(folder) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def test_tensorboard_events_hold_each_loss_and_the_learning_rate_per_step_once_across_a_resume(tmp_path):
    pytest.importorskip("tensorboard", reason="the tensorboard package is not installed (pip install "
                        "'a2dpipe[tensorboard]'): its event files cannot be written or read")
    folder = tmp_path / "tensorboard"
    killed = _train(folder, 0, [], stop=3)  # steps 1-3 written, then a kill
    full = _train(folder, 2, killed[:2])  # resumed from the checkpoint of step 2: steps 3-4 again
    scalars = _scalars(folder)
    assert set(scalars) == {"train/loss", "train/loss_a", "train/loss_b", "lr"}
    for tag, column in (("train/loss", "loss"), ("train/loss_a", "loss_a"), ("lr", "lr")):
        assert [step for step, _ in scalars[tag]] == [1, 2, 3, 4], tag  # the killed run's step 3 dropped
        np.testing.assert_allclose([v for _, v in scalars[tag]], [row[column] for row in full], rtol=1e-6)
    _train(folder, 0, [], stop=1)  # a run from scratch replaces the earlier events
    assert [step for step, _ in _scalars(folder)["train/loss"]] == [1]


def test_tensorboard_is_off_unless_asked_and_a_missing_package_is_named(monkeypatch, tmp_path):
    import importlib.util

    from a2dpipe.errors import A2DError
    from a2dpipe.trainer import TensorBoard, tensorboard_hooks

    monkeypatch.delenv("A2DPIPE_TENSORBOARD", raising=False)
    assert tensorboard_hooks(tmp_path / "loss.csv") == []
    monkeypatch.setenv("A2DPIPE_TENSORBOARD", "yes")
    with pytest.raises(A2DError, match="A2DPIPE_TENSORBOARD='yes': expected 1"):
        tensorboard_hooks(tmp_path / "loss.csv")
    monkeypatch.setenv("A2DPIPE_TENSORBOARD", "1")
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "tensorboard" else find_spec(name, *a))
    with pytest.raises(A2DError, match=r"pip install 'a2dpipe\[tensorboard\]'"):
        tensorboard_hooks(tmp_path / "loss.csv")
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object())
    (hook,) = tensorboard_hooks(tmp_path / "loss.csv")
    assert isinstance(hook, TensorBoard) and hook.folder == tmp_path / "tensorboard"
