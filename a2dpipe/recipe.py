"""The training recipe: the optimiser and learning-rate schedule every trainer builds, in one place.

Stage 1, stage 2 (:mod:`a2dpipe.segmentation.train`) and the mask models (:mod:`a2dpipe.masks.train`) build them
here, and so do the benchmarks that time a training step, so what a benchmark times is what a trainer runs.

- :func:`build_optimizer`: ``sgd`` (with momentum: the paper's, and torchvision's fine-tuning recipe), ``adam`` or
  ``adamw`` (fused kernels), over parameter groups that each carry their learning rate, so a model's parts can
  learn at different rates (the paper's front-end and back-end).
- :func:`poly_schedule`: DeepLab's poly decay, the segmentation network's (stages 1 and 2).
- :func:`warmup_cosine_schedule`: linear warm-up over the first tenth of the steps, then cosine decay to zero, the
  mask models' (torchvision's detection references warm up too).

Schedules are ``LambdaLR`` over a plain function of the step, so a resumed run's scheduler is its state dict alone
(:mod:`a2dpipe.checkpoint`).

Example:
    >>> import torch
    >>> weight = torch.nn.Parameter(torch.zeros(2))
    >>> optimizer = build_optimizer("sgd", [{"params": [weight], "lr": 0.1}], momentum=0.9, weight_decay=1e-4)
    >>> scheduler = poly_schedule(optimizer, iterations=10, power=1.0)
    >>> [round(scheduler.lr_lambdas[0](step), 2) for step in (0, 5, 10)]
    [1.0, 0.5, 0.0]
"""

from __future__ import annotations

import math

import torch

from a2dpipe.errors import A2DError

__all__ = ["OPTIMIZERS", "build_optimizer", "poly_schedule", "warmup_cosine_schedule"]

OPTIMIZERS = ("sgd", "adam", "adamw")


def build_optimizer(name: str, groups: list[dict], *, momentum: float, weight_decay: float) -> torch.optim.Optimizer:
    """Optimiser ``name`` (one of :data:`OPTIMIZERS`) over ``groups`` (``[{"params": [...], "lr": peak}, ...]``);
    ``momentum`` is read by ``sgd`` only."""
    if name == "sgd":
        return torch.optim.SGD(groups, momentum=momentum, weight_decay=weight_decay)
    if name == "adam":
        return torch.optim.Adam(groups, weight_decay=weight_decay, fused=True)
    if name == "adamw":
        return torch.optim.AdamW(groups, weight_decay=weight_decay, fused=True)
    raise A2DError(f"optimizer {name!r}: expected one of {', '.join(OPTIMIZERS)}")


def poly_schedule(optimizer: torch.optim.Optimizer, iterations: int,
                  power: float) -> torch.optim.lr_scheduler.LambdaLR:
    """Learning rate at step t: peak x (1 - t / iterations) ^ power (``power`` 0 keeps it constant)."""
    def factor(step: int) -> float:
        return max(0.0, 1.0 - step / iterations) ** power

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def warmup_cosine_schedule(optimizer: torch.optim.Optimizer, iterations: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Learning rate rising linearly from a tenth of the peak over the first tenth of the steps (at least one), then
    falling to zero along a half cosine."""
    warmup = max(1, iterations // 10)

    def factor(step: int) -> float:
        if step < warmup:
            return 0.1 + 0.9 * step / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, iterations - warmup)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
