"""Batches for the segmentation stage: a ``torch.utils.data.DataLoader`` over :class:`.samples.Samples`.

Every random choice is made in the main process before a frame is read: a step's views (which frames, mirrored or
not, which window: :func:`.samples.plan_view`) are a function of (seed, step) alone, and :class:`StepBatches`, the
loader's batch sampler, hands them out in step order. Workers only read, crop and mirror, and the loader returns
batches in sampler order, so the batches -- and the trained weights -- are the same for any number of workers.

Batches cross the process boundary as compact CPU tensors (:func:`collate`: uint8 images and labels, pinned when the
device is CUDA) and become network inputs on the device (:func:`to_device`: ImageNet normalisation, class maps).

Inference (prediction, stage 2's feature cache) runs whole frames in batches of one size (:func:`same_size_batches`):
A2D's frames are 320 pixels high but of several widths, and only frames of one size stack into one tensor.

Settings (config ``segmentation``): ``loader_workers`` worker processes (0: read in the main process),
``loader_prefetch`` batches each worker prepares ahead. Neither changes a result, so neither is recorded in an
artifact's provenance nor in a training run's resume fingerprint (their commands declare them ``unrecorded``:
:mod:`a2dpipe.settings`). ``inference_batch``, frames per forward pass at inference, is: a batch may add floats up
in another order.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator

import numpy as np
import torch

from a2dpipe.labels import to_setting
from a2dpipe.segmentation.samples import Samples, View

__all__ = ["StepBatches", "StepStream", "collate", "collate_each", "to_device", "make_loader", "loader_options",
           "same_size_batches", "network_threads", "MEAN", "STD"]

MEAN = np.array([0.485, 0.456, 0.406], np.float32) * 255
STD = np.array([0.229, 0.224, 0.225], np.float32) * 255


class StepBatches(torch.utils.data.Sampler):
    """Batch sampler of a loader: ``views(step)`` (a list of :class:`View`) for steps ``start .. stop - 1``."""

    def __init__(self, views: Callable[[int], list[View]], start: int, stop: int):
        self.views, self.start, self.stop = views, start, stop

    def __iter__(self) -> Iterator[list[View]]:
        return (self.views(step) for step in range(self.start, self.stop))

    def __len__(self) -> int:
        return max(self.stop - self.start, 0)


def collate(samples: list[dict]) -> dict:
    """Same-size samples -> a batch of CPU tensors: ``rgb``, ``flow`` (or None) (B, H, W, 3) uint8, ``label``
    (B, H, W) uint8 A2D ids, ``regions`` (list of {"boxes", "masks"}, or None), ``keys`` [(video, frame)]."""
    batch = {
        "keys": [(s["video"], int(s["frame"])) for s in samples],
        "rgb": torch.from_numpy(np.stack([s["rgb"] for s in samples])),
        "flow": torch.from_numpy(np.stack([s["flow_rgb"] for s in samples])) if "flow_rgb" in samples[0] else None,
        "label": torch.from_numpy(np.stack([s["label"] for s in samples])),
        "regions": None,
    }
    if "boxes" in samples[0]:
        batch["regions"] = [{"boxes": torch.from_numpy(s["boxes"]), "masks": torch.from_numpy(s["masks"])}
                            for s in samples]
    return batch


def same_size_batches(samples: Samples, views: list[View], batch_size: int) -> list[list[View]]:
    """``views`` of whole frames in batches of at most ``batch_size`` views of one frame size (``samples.size``:
    dataset shapes, nothing decoded). Sizes come in the order of their first view, views keep their order within a
    size, so the batches are a function of ``views`` alone. Example: frames 0-3 of sizes (320, 568), (320, 426),
    (320, 568), (320, 568) and ``batch_size`` 2 give [[View(0), View(2)], [View(3)], [View(1)]].
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, not {batch_size}")
    by_size: dict[tuple[int, int], list[View]] = {}
    for view in views:
        by_size.setdefault(tuple(samples.size(view.index)), []).append(view)
    return [same[k:k + batch_size] for same in by_size.values() for k in range(0, len(same), batch_size)]


def collate_each(samples: list[dict]) -> list[dict]:
    """One batch per sample (frames of different sizes, processed one by one)."""
    return [collate([sample]) for sample in samples]


@functools.cache
def _class_lookup(setting: str, device: torch.device = torch.device("cpu")) -> torch.Tensor:
    """(256,) int64 on ``device``: A2D id -> class of ``setting`` (:func:`a2dpipe.labels.to_setting`). Made once per
    device: copying a table from pageable memory to a GPU every step would make the host wait for the device."""
    table = torch.from_numpy(to_setting(np.arange(256, dtype=np.uint8), setting).astype(np.int64))
    return table.to(device)


@functools.cache
def _normalisation(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """ImageNet mean and std (1, 3, 1, 1) on ``device``, made once per device (see :func:`_class_lookup`)."""
    return (torch.from_numpy(MEAN).to(device).view(1, 3, 1, 1), torch.from_numpy(STD).to(device).view(1, 3, 1, 1))


def _image(images: torch.Tensor, device: torch.device) -> torch.Tensor:
    x = images.to(device, non_blocking=True).permute(0, 3, 1, 2).contiguous().float()
    mean, std = _normalisation(device)
    return (x - mean) / std


def to_device(batch: dict, device: torch.device | str, *, with_flow: bool = True) -> dict:
    """Network inputs on ``device`` from a :func:`collate` batch: ``rgb``, ``flow`` (None without flow, or when
    ``with_flow`` is False) ImageNet-normalised (B, 3, H, W) float32 (the flow stream starts from RGB ImageNet
    weights too); ``actor``, ``action`` (B, H, W) int64 class maps; ``regions`` on the device; ``keys``."""
    device = torch.device(device)
    label = batch["label"].to(device, non_blocking=True).long()
    regions = batch["regions"]
    if regions is not None:
        regions = [{k: v.to(device, non_blocking=True) for k, v in r.items()} for r in regions]
    return {
        "keys": batch["keys"],
        "rgb": _image(batch["rgb"], device),
        "flow": _image(batch["flow"], device) if with_flow and batch["flow"] is not None else None,
        "actor": _class_lookup("actor", device)[label],
        "action": _class_lookup("action", device)[label],
        "regions": regions,
    }


def make_loader(samples: Samples, batches, *, collate_fn, device: torch.device, workers: int = 0,
                prefetch: int = 2) -> torch.utils.data.DataLoader:
    """A DataLoader of ``samples`` whose batch sampler ``batches`` yields lists of views; pinned memory on CUDA."""
    return torch.utils.data.DataLoader(
        samples, batch_sampler=batches, collate_fn=collate_fn, num_workers=workers,
        pin_memory=torch.device(device).type == "cuda", prefetch_factor=prefetch if workers else None,
        persistent_workers=workers > 0,
    )


class StepStream:
    """The batches of steps in order, from one loader started at the first step asked for.

    ``stream.batch(step)`` is the :func:`collate_fn` batch of ``views(step)``; asking for a step out of order (a
    test, a restart) starts a new loader there. ``loader``: ``{"workers", "prefetch"}`` (:func:`loader_options`).
    """

    def __init__(self, samples: Samples, views: Callable[[int], list[View]], *, stop: int, collate_fn,
                 device: torch.device, loader: dict | None = None):
        self.samples, self.views, self.stop, self.collate_fn = samples, views, stop, collate_fn
        self.device, self.loader = device, dict(loader or {})
        self._iterator, self._next = None, None

    def batch(self, step: int):
        if step != self._next:
            batches = StepBatches(self.views, step, self.stop)
            loader = make_loader(self.samples, batches, collate_fn=self.collate_fn, device=self.device,
                                 **self.loader)
            self._iterator = iter(loader)
        self._next = step + 1
        return next(self._iterator)


def loader_options(segmentation: dict) -> dict:
    """``{"workers", "prefetch"}`` of :func:`make_loader` from a config's ``segmentation`` section (its
    ``loader_workers`` and ``loader_prefetch``)."""
    return {"workers": segmentation["loader_workers"], "prefetch": segmentation["loader_prefetch"]}


def network_threads(threads: int, workers: int) -> int:
    """Torch threads of a job's main process given the job's ``threads`` (its rule's, the CPUs SLURM grants) and
    the loader's ``workers``: what the worker processes leave, at least 1. Each worker reads on one thread (a torch
    DataLoader worker runs torch on one)."""
    return max(threads - workers, 1)
