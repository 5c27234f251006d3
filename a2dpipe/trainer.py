"""One training loop for every trainer (stage 1, stage 2, the mask models), shaped like detectron2's
``SimpleTrainer`` with hooks, without a registry.

A trainer supplies ``step_fn(step) -> {"loss_x": tensor, ...}``: the losses of optimiser step ``step`` (0-based),
drawn deterministically from ``step`` alone. :class:`Trainer` does the rest, the same way for all of them:

- sums the losses (in the dict's order), ``zero_grad``, ``backward``, then reads the total and every loss back
  together (the step's one host sync), refuses a non-finite total naming the step and each loss (no weight has
  changed yet), then ``optimizer.step``, ``scheduler.step``;
- records one loss-curve row per step, ``{"step", "loss", "lr", <each loss>}`` (``lr``: the first parameter
  group's learning rate *used by* the step), written as ``loss.csv`` with :data:`STEP_COLUMNS` + loss names;
- hooks: :class:`Progress` (a progress bar, :mod:`a2dpipe.progress`, and a closing log line) and :class:`PeriodicCheckpointer` (every
  ``every`` steps the resumable state of :mod:`a2dpipe.checkpoint` and the curve so far), and with
  ``A2DPIPE_TENSORBOARD=1`` :class:`TensorBoard` (event files of the curve beside ``loss.csv``).

Exact resume: :func:`a2dpipe.checkpoint.load_resume` restores model, optimiser, scheduler, the float16 gradient
scaler (:func:`grad_scaler`), RNG states and curve; ``Trainer(start=step, history=curve, scaler=scaler)`` continues
from there, and since a step's data depend on the step alone the run ends with the weights of an uninterrupted one.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import math
import operator
import os
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from a2dpipe.checkpoint import save_resume, write_curve
from a2dpipe.errors import A2DError
from a2dpipe.progress import progress

__all__ = ["Trainer", "grad_scaler", "HookBase", "Progress", "PeriodicCheckpointer", "TensorBoard",
           "tensorboard_hooks", "STEP_COLUMNS", "curve_columns", "columns_of"]

log = logging.getLogger(__name__)

STEP_COLUMNS = ("step", "loss", "lr")  # the columns every loss curve starts with


def curve_columns(loss_keys: Sequence[str]) -> tuple[str, ...]:
    """The loss-curve header of a trainer whose step returns ``loss_keys``."""
    return (*STEP_COLUMNS, *loss_keys)


def columns_of(history: Sequence[dict]) -> tuple[str, ...]:
    """The loss-curve header of recorded rows (the losses a model returned, in its order)."""
    return curve_columns([k for k in history[0] if k not in STEP_COLUMNS]) if history else STEP_COLUMNS


def grad_scaler(amp_device: str | None, amp_dtype: torch.dtype | None) -> torch.amp.GradScaler:
    """The loss scaler of a run under autocast on ``amp_device`` (None: no autocast) in ``amp_dtype``: enabled for
    float16 only, whose range would flush small gradients to zero; disabled, a pass-through. Its state is part of
    a resumable run: the scale decides which steps are skipped."""
    scaled = amp_device is not None and amp_dtype == torch.float16
    return torch.amp.GradScaler(amp_device or "cpu", enabled=scaled)


class HookBase:
    """Called by :class:`Trainer` around the loop; ``self.trainer`` is set before ``before_train``, and
    ``after_train`` runs however the loop ends (finished, stopped, or a step raised)."""

    trainer: Trainer

    def before_train(self) -> None:
        pass

    def after_step(self) -> None:
        pass

    def after_train(self) -> None:
        pass


class Trainer:
    """Runs steps ``start .. iterations - 1`` of ``step_fn`` (module docstring).

    Args:
        model, optimizer, scheduler: what the steps train (the scheduler steps once per optimiser step).
        step_fn: ``step -> dict`` of scalar losses.
        iterations: total optimiser steps of the run.
        start, history: where a resumed run continues (step done, curve rows so far).
        hint: what to tell the user when the loss stops being finite (e.g. the config key of the learning rate).
        amp_device: device type to run ``step_fn`` under autocast on; None: no autocast.
        amp_dtype: the autocast precision (:func:`a2dpipe.accelerator.autocast_dtype`); float16 scales the loss
            with a ``GradScaler`` (float16's range would flush small gradients to zero).
        scaler: that ``GradScaler`` when a resumed run restored it (:func:`a2dpipe.checkpoint.load_resume`);
            default a new one (:func:`grad_scaler`).
        hooks: :class:`HookBase` instances, called in order.
    """

    def __init__(self, model: torch.nn.Module, optimizer, scheduler, step_fn: Callable[[int], dict], *,
                 iterations: int, start: int = 0, history: list | None = None, hint: str = "",
                 amp_device: str | None = None, amp_dtype: torch.dtype = torch.bfloat16,
                 scaler: torch.amp.GradScaler | None = None, hooks: Sequence[HookBase] = ()):
        self.model, self.optimizer, self.scheduler = model, optimizer, scheduler
        self.step_fn = step_fn
        self.iterations = iterations
        self.step = start
        self.start = start
        self.history = list(history or [])
        self.hint = hint
        self.amp_device, self.amp_dtype = amp_device, amp_dtype
        self.scaler = scaler if scaler is not None else grad_scaler(amp_device, amp_dtype)
        self.hooks = list(hooks)
        for hook in self.hooks:
            hook.trainer = self

    def train(self, max_steps: int | None = None) -> bool:
        """Run to ``iterations``; False when stopped before, after step ``max_steps`` (simulates a kill)."""
        for hook in self.hooks:
            hook.before_train()
        try:  # as detectron2's: hooks close what they opened even when a step fails
            while self.step < self.iterations:
                if max_steps is not None and self.step >= max_steps:
                    return False
                self.history.append(self.run_step())
                self.step += 1
                for hook in self.hooks:
                    hook.after_step()
            return True
        finally:
            for hook in self.hooks:
                hook.after_train()

    def run_step(self) -> dict:
        """One optimiser step; returns its curve row.

        The host waits for the device once per step: the losses come back together, after the backward pass is
        queued and before the optimiser changes a weight, so a non-finite loss still leaves the weights as they
        were.
        """
        with torch.autocast(self.amp_device or "cpu", dtype=self.amp_dtype, enabled=self.amp_device is not None):
            losses = self.step_fn(self.step)
        total = functools.reduce(operator.add, losses.values())
        self.optimizer.zero_grad(set_to_none=True)
        if total.requires_grad:  # a stage-2 batch without regions has nothing to learn from
            self.scaler.scale(total).backward()
        # one host sync for every number; reshape: a one-element loss (shape [1]) is a scalar too
        numbers = torch.stack([v.detach().float().reshape(()) for v in (total, *losses.values())]).tolist()
        values = dict(zip(losses, numbers[1:]))
        if not math.isfinite(numbers[0]):
            named = ", ".join(f"{k}={v:.4g}" for k, v in values.items())
            raise A2DError(f"the loss is not finite at step {self.step + 1} ({named}){self.hint}")
        lr = self.optimizer.param_groups[0]["lr"]
        if total.requires_grad:
            self.scaler.step(self.optimizer)  # skipped when a scaled gradient overflowed
            self.scaler.update()
        else:
            self.optimizer.step()
        self.scheduler.step()
        return {"step": self.step + 1, "loss": numbers[0], "lr": lr, **values}


class Progress(HookBase):
    """A tqdm progress bar with the last loss, and a log line with the steps, time and loss at the end."""

    def __init__(self, desc: str):
        self.desc = desc

    def before_train(self) -> None:
        t = self.trainer
        self.bar = progress(total=t.iterations, initial=t.step, desc=self.desc, unit="it")
        self.started = time.perf_counter()

    def after_step(self) -> None:
        self.bar.set_postfix(loss=f"{self.trainer.history[-1]['loss']:.3f}", refresh=False)  # drawn by update
        self.bar.update(1)

    def after_train(self) -> None:
        self.bar.close()
        t = self.trainer
        first = t.history[0]["loss"] if t.history else float("nan")
        last = t.history[-1]["loss"] if t.history else float("nan")
        log.info("%s: %d steps in %.1f s this run; loss %.4f -> %.4f", self.desc, t.step - t.start,
                 time.perf_counter() - self.started, first, last)


TENSORBOARD_ENV = "A2DPIPE_TENSORBOARD"  # "1": the trainers also write TensorBoard event files
TENSORBOARD_FOLDER = "tensorboard"


class TensorBoard(HookBase):
    """TensorBoard event files of the loss curve in ``folder``: per step the total loss, each loss term and the
    learning rate (the columns of ``loss.csv``), as they are recorded.

    A run from step 0 replaces the folder's earlier events; a resumed run drops those after the step it resumes
    from (``purge_step``), so that the curve has each step once.
    """

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)

    def before_train(self) -> None:
        from torch.utils.tensorboard import SummaryWriter

        t = self.trainer
        if t.step == 0:
            shutil.rmtree(self.folder, ignore_errors=True)
        self.writer = SummaryWriter(str(self.folder), purge_step=t.step + 1 if t.step else None)

    def after_step(self) -> None:
        row = self.trainer.history[-1]
        for key, value in row.items():
            if key != "step":
                self.writer.add_scalar(key if key == "lr" else f"train/{key}", value, row["step"])

    def after_train(self) -> None:
        self.writer.close()


def tensorboard_hooks(curve: str | Path) -> list[HookBase]:
    """``[TensorBoard]`` writing into ``tensorboard/`` beside the curve file when the environment variable
    ``A2DPIPE_TENSORBOARD`` is ``1``, else none. Event files are for watching training, not a result: no config key,
    so that turning them on or off reruns nothing. A2DError with the fix when the package is missing."""
    if os.environ.get(TENSORBOARD_ENV, "0") in ("", "0"):
        return []
    if os.environ[TENSORBOARD_ENV] != "1":
        raise A2DError(f"environment variable {TENSORBOARD_ENV}={os.environ[TENSORBOARD_ENV]!r}: expected 1 (write "
                       "TensorBoard event files) or 0")
    if importlib.util.find_spec("tensorboard") is None:
        raise A2DError(f"{TENSORBOARD_ENV}=1 asks for TensorBoard event files, but the tensorboard package is not "
                       "installed: pip install 'a2dpipe[tensorboard]', or unset the variable")
    return [TensorBoard(Path(curve).with_name(TENSORBOARD_FOLDER))]


class PeriodicCheckpointer(HookBase):
    """Every ``every`` steps (not after the last) the resume checkpoint at ``path`` and the curve so far."""

    def __init__(self, path: str | Path, fingerprint: str | dict, every: int, curve: str | Path):
        self.path, self.fingerprint, self.every, self.curve = Path(path), fingerprint, every, Path(curve)

    def after_step(self) -> None:
        t = self.trainer
        if t.step % self.every == 0 and t.step < t.iterations:
            save_resume(self.path, self.fingerprint, t.step, t.model, t.optimizer, t.scheduler, t.history,
                        scaler=t.scaler)
            write_curve(self.curve, t.history, columns_of(t.history))
