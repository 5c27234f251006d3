"""``a2dpipe train-mask-model``: train the Mask R-CNN behind the ``dataset`` or ``generic`` mask source.

- ``generic``: with ``masks.coco_checkpoint`` set, that COCO model used as is (no training: the paper's COCO-trained
  FCIS), loaded strictly (a tensor missing, unused or of another shape is an error naming it); otherwise (synthetic
  benchmark) one "object" class trained from scratch for ``masks.iterations`` steps on every object of the train
  split, actors and non-actor distractors alike, so it proposes irrelevant objects too. Its regions carry no actor
  label (0). A real-format dataset without a COCO file has no generic source (:mod:`a2dpipe.variants`).
- ``dataset``: actor classes (8 with background) on the train split's actor instances, fine-tuned for
  ``masks.finetune_iterations`` steps from the generic model (``--start``; class heads re-initialised), as the
  paper fine-tunes its COCO FCIS on A2D. On the synthetic benchmark the generic model plays COCO's part: 200 steps
  from it match 300 from scratch on validation at two thirds of the CPU (docs/validation.md). Without ``--start`` (the
  workflow gives none when the run has no generic source): from ``masks.coco_checkpoint`` when one is given, else
  from ImageNet weights (``masks.fcis_imagenet_weights``) or from scratch, for ``masks.iterations`` steps.

Writes ``--out``, a ``mask model`` of :func:`a2dpipe.checkpoint.save_model_file` (``builder``: the keyword arguments
of :func:`a2dpipe.masks.model.build_mask_model`; ``model``, ``source``, ``class_agnostic``, ``steps``, ``start``,
``final_loss``, ``provenance``; read it with :func:`a2dpipe.masks.model.load_mask_model`). Beside it:
``checkpoint.pt`` every ``masks.checkpoint_every`` steps (model, optimiser, scheduler, step, RNG states, loss
history, a fingerprint of the recipe; see :mod:`a2dpipe.checkpoint`), from which a killed run resumes with the same
result (removed once the model is written), and ``loss.csv`` (the loss curve of :mod:`a2dpipe.trainer`: step, total
loss, lr, each Mask R-CNN loss). The loop is the shared :class:`a2dpipe.trainer.Trainer`.

Recipe: ``masks.optimizer`` (AdamW for the from-scratch CPU default; SGD with momentum 0.9 for fine-tuning from
COCO, as torchvision's reference scripts do; weight decay 1e-4 for both), linear warm-up over the first 10% of the
steps, cosine decay (:func:`mask_model_recipe`); each step draws ``batch_size`` train frames from a generator
seeded by (seed, step) and flips half of them (:func:`training_batch`). With ``masks.amp`` the steps run under
autocast at the precision the GPU supports, as the segmenter's (:func:`a2dpipe.accelerator.autocast_dtype`:
bfloat16, or float16 with a loss scaler; float32 on the CPU).

Frames (``--threads``, the rule's threads: the loader's workers + 1, as the segmenter's training): with
``segmentation.loader_workers`` > 0, that many worker processes read and convert the coming steps' frames
(``loader_prefetch`` steps each) while the device runs this one; with none (the CPU default), one thread reads the
next step's. A step's frames depend on (seed, step) alone, so the batches, and the weights, are the same either
way; neither key is recorded in the model file or the resume fingerprint.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing, contextmanager
from pathlib import Path

import numpy as np
import torch

from a2dpipe.accelerator import autocast_dtype
from a2dpipe.checkpoint import (fingerprint, load_model_file, load_resume, load_state_partial, remove_resume,
                                save_model_file, write_curve)
from a2dpipe.config import check_consistent, check_inputs, read_stamp, training_splits
from a2dpipe.settings import add_config_arguments, plain, read_settings
from a2dpipe.integrity import file_digest
from a2dpipe.devices import select_device
from a2dpipe.errors import A2DError
from a2dpipe.masks.cache import model_provenance
from a2dpipe.masks.data import InstanceReader, list_frames, masks_to_boxes
from a2dpipe.masks.model import build_mask_model, coco_class_count, load_coco_checkpoint, mask_model_options
from a2dpipe.recipe import build_optimizer, warmup_cosine_schedule
from a2dpipe.trainer import PeriodicCheckpointer, Progress, Trainer, columns_of, tensorboard_hooks

__all__ = ["NUM_CLASSES", "configure_parser", "run", "train_mask_model", "model_arch", "mask_model_recipe",
           "training_batch", "training_frames", "as_inputs"]

log = logging.getLogger("a2dpipe.masks")

LOSS_KEYS = (  # Mask R-CNN's; another model's losses get their own columns
    "loss_classifier", "loss_box_reg", "loss_mask", "loss_objectness", "loss_rpn_box_reg")
NUM_CLASSES = {"dataset": 8, "generic": 2}


def configure_parser(parser) -> None:
    add_config_arguments(parser, "train-mask-model")
    parser.add_argument("--source", required=True, choices=("dataset", "generic"), help="mask source to train")
    parser.add_argument("--frames", required=True, nargs="+", help="frames stores (every shard)")
    parser.add_argument("--start", nargs="*", default=[],
                        help="mask model to fine-tune from (the pipeline's dataset model: the generic one)")
    parser.add_argument("--out", required=True, help="model checkpoint to write (model.pt)")
    parser.add_argument("--threads", type=int, default=0,
                        help="CPUs of the job: loader workers + torch in this process (0: torch's default)")


def run(args) -> None:
    settings = read_settings(args, "train-mask-model")
    # the loader's keys only: no result depends on them, so the model file does not record them
    loader = settings.pop("segmentation")
    workers = loader["loader_workers"]
    if args.threads:  # each worker reads on one thread; this process drives the device with what they leave
        torch.set_num_threads(max(args.threads - workers, 1))
    if len(args.start) > 1:
        raise A2DError(f"--start takes one mask model, got {len(args.start)}")
    check_inputs(settings, {"frames shard": args.frames})
    train_mask_model(settings, args.source, args.frames, args.out, start=args.start[0] if args.start else None,
                     workers=workers, prefetch=loader["loader_prefetch"])


def model_arch(cfg: dict, source: str, num_classes: int, finetune: bool = False) -> dict:
    """The :func:`a2dpipe.masks.model.build_mask_model` arguments of the ``source`` model (``cfg``: config
    ``masks``), recorded in the model file as ``arch``; ``finetune``: it starts from trained weights (``--start``)."""
    arch = dict(
        backbone=cfg["backbone"],
        num_classes=num_classes,
        min_size=cfg["min_size"],
        max_size=cfg["max_size"],
        pretrained_layout=cfg["backbone"] == "resnet50_fpn" and cfg["coco_checkpoint"] is not None,
        box_detections_per_img=cfg["max_regions"],
        **mask_model_options(cfg),
    )
    if arch["model"] == "fcis":  # FCIS fine-tunes with frozen batch norm, stem and first stage
        starts_trained = finetune or cfg["coco_checkpoint"] is not None or cfg["fcis_imagenet_weights"] is not None
        arch["frozen_layers"] = bool(cfg["fcis_freeze_when_finetuning"] and starts_trained)
    return arch


def mask_model_recipe(model, cfg: dict, iterations: int):
    """``(optimizer, scheduler)`` of a mask model's training (``cfg``: config ``masks``) over its trainable
    parameters: ``masks.optimizer`` at ``masks.lr``, weight decay 1e-4, momentum 0.9 (sgd), warm-up then cosine
    decay over ``iterations`` steps (:mod:`a2dpipe.recipe`)."""
    groups = [{"params": [p for p in model.parameters() if p.requires_grad], "lr": cfg["lr"]}]
    optimizer = build_optimizer(cfg["optimizer"], groups, momentum=0.9, weight_decay=1e-4)
    return optimizer, warmup_cosine_schedule(optimizer, iterations)


def train_mask_model(config: dict, source: str, frames: list[str], out: str | Path,
                     start: str | Path | None = None, *, workers: int = 0, prefetch: int = 2) -> dict:
    """Train (or, for ``generic`` with a COCO checkpoint, wrap) the mask model; return the saved checkpoint dict.

    ``start``: a mask model of the same architecture whose weights, class heads aside, begin the training, which
    then runs ``masks.finetune_iterations`` steps (``masks.iterations`` without it). ``workers`` processes read
    the frames, ``prefetch`` steps each ahead (0: one thread beside this one); the weights do not depend on
    either. Any model with torchvision's
    detection contract (train: ``model(images, targets) -> loss dict``) trains here: the step returns the model's
    losses as they come, and the curve has one column per loss.
    """
    cfg, out = config["masks"], Path(out)
    if source == "generic" and cfg["coco_checkpoint"]:
        return _save_coco_as_generic(config, out)
    seed, device = int(config["seed"]), select_device(config["device"])
    amp = autocast_dtype(device, bool(cfg["amp"]))  # bf16, fp16 (scaled) or None (float32) for this GPU
    arch = model_arch(cfg, source, NUM_CLASSES[source], finetune=bool(start))
    iterations = cfg["finetune_iterations"] if start else cfg["iterations"]
    start_provenance = model_provenance(start)  # hashed once: the resume fingerprint and the checkpoint record it
    splits = training_splits(config)
    refs = list_frames(frames, split=splits)
    if not refs:
        raise A2DError(f"{frames[0]}: no {'/'.join(splits)} frames in the frames stores to train the mask model on")
    # what a resume checkpoint must have been made from: these settings and frames shards (by content)
    recipe = {"settings": _fingerprint(arch, cfg, source, seed, refs, iterations, start_provenance, amp),
              **{str(path): file_digest(path) for path in frames}}
    log.info("training the %s mask model (%s) on %d %s frames, %d steps from %s", source, cfg["backbone"],
             len(refs), " + ".join(splits), iterations, start or cfg["coco_checkpoint"] or "scratch")

    torch.manual_seed(seed)
    model = _initial_model(arch, config, start).to(device).train()
    optimizer, scheduler = mask_model_recipe(model, cfg, iterations)
    resume_path, curve_path = out.with_name("checkpoint.pt"), out.with_name("loss.csv")
    first_step, history = load_resume(resume_path, recipe, model, optimizer, scheduler) or (0, [])

    with _step_batches(_StepFrames(frames, refs, source, seed, cfg["batch_size"]), iterations, device, workers,
                       prefetch) as batches:
        def step_fn(step: int) -> dict:
            return model(*batches(step))

        hooks = [Progress(f"{source} mask model"),
                 PeriodicCheckpointer(resume_path, recipe, cfg["checkpoint_every"], curve_path),
                 *tensorboard_hooks(curve_path)]
        trainer = Trainer(model, optimizer, scheduler, step_fn, iterations=iterations, start=first_step,
                          history=history, hint=f"; lower config masks.lr={cfg['lr']}", hooks=hooks,
                          amp_device=device.type if amp else None, amp_dtype=amp or torch.bfloat16)
        trainer.train()

    history = trainer.history
    write_curve(curve_path, history, columns_of(history))
    final_loss = float(np.mean([h["loss"] for h in history[-20:]])) if history else float("nan")
    checkpoint = save_model_file(out, "mask model", builder=arch, weights=model.state_dict(), settings=plain(config),
                                 meta=_meta(source, iterations, start_provenance, final_loss))
    remove_resume(resume_path)  # finished: a forced rerun trains afresh
    return checkpoint


# architecture keys a start model must share (the class count, input size and detection cap may differ)
_SHARED_ARCH = ("model", "backbone", "pretrained_layout", "k", "tiny_stride", "layout")


def _initial_model(arch: dict, config: dict, start: str | Path | None):
    """The mask model before its first step: ``start``'s weights, else the COCO checkpoint's, else fresh ones."""
    if not start:
        return build_mask_model(**arch, coco_checkpoint=config["masks"]["coco_checkpoint"])
    model = build_mask_model(**arch)
    _load_start(model, start, arch, config)
    return model


def _load_start(model, start: str | Path, arch: dict, config: dict) -> None:
    """Load the weights of mask model ``start`` into ``model`` (built with ``arch``), class heads aside; A2DError
    when ``start`` is not a mask model of the same architecture or was made with settings that disagree with
    ``config``."""
    checkpoint = load_model_file(start, "mask model")
    check_consistent({"this job": config, str(start): read_stamp(checkpoint["provenance"])})
    theirs = checkpoint["builder"]
    differ = [f"{k} {theirs.get(k)!r}, not {arch.get(k)!r}" for k in _SHARED_ARCH if theirs.get(k) != arch.get(k)]
    if differ:
        raise A2DError(f"{start}: a mask model of another architecture ({'; '.join(differ)}): it cannot start "
                       "this one")
    load_state_partial(model, checkpoint["model"], start, type(model).__name__)  # the file read once


def _save_coco_as_generic(config: dict, out: Path) -> dict:
    """The generic source on real data: the COCO checkpoint as is (91 COCO classes, regions labelled 0)."""
    cfg = config["masks"]
    arch = model_arch(cfg, "generic", coco_class_count(cfg))
    if "frozen_layers" in arch:  # used as is, nothing trains: the layout of the file, unfrozen
        arch["frozen_layers"] = False
    model = build_mask_model(**arch)
    load_coco_checkpoint(model, cfg["coco_checkpoint"], strict=True)  # untrained: nothing may stay random
    log.info("generic mask source: COCO checkpoint %s used as is (no training)", cfg["coco_checkpoint"])
    return save_model_file(out, "mask model", builder=arch, weights=model.state_dict(), settings=plain(config),
                           meta=_meta("generic", 0, "", float("nan")))


def _meta(source: str, steps: int, start: str, final_loss: float) -> dict:
    """What a mask model file says the model is (beside its builder arguments, weights and provenance)."""
    return {"source": source, "class_agnostic": source == "generic", "steps": steps, "start": start,
            "final_loss": final_loss}


def training_frames(reader, refs, source, seed, step, batch_size) -> list[tuple]:
    """The frames of one step as arrays, ``(rgb (H, W, 3) uint8, masks (N, H, W) uint8, labels (N,) int64, boxes
    (N, 4) float32)`` each, half of them mirrored; deterministic in (seed, step) so a resumed run draws the same."""
    return list(_step_frames(reader, refs, source, seed, step, batch_size))


def _step_frames(reader, refs, source, seed, step, batch_size):
    rng = np.random.default_rng([seed, step])
    picks = rng.choice(len(refs), size=batch_size, replace=len(refs) < batch_size)
    flips = rng.random(batch_size) < 0.5
    for index, flip in zip(picks, flips):
        rgb, masks, labels = reader.read(refs[index], source)
        if flip:
            rgb, masks = rgb[:, ::-1], masks[:, :, ::-1]
        rgb, masks = np.ascontiguousarray(rgb), np.ascontiguousarray(masks)
        yield rgb, masks, labels, masks_to_boxes(masks)


def as_inputs(frames, device) -> tuple[list, list]:
    """torchvision's ``(images, targets)`` on ``device`` from :func:`training_frames`' arrays: the images cross to
    the device as bytes and become (3, H, W) floats in [0, 1] there."""
    images, targets = [], []
    for rgb, masks, labels, boxes in frames:
        images.append(torch.from_numpy(rgb).to(device).permute(2, 0, 1).float().div(255))
        targets.append({"boxes": torch.from_numpy(boxes).to(device), "labels": torch.from_numpy(labels).to(device),
                        "masks": torch.from_numpy(masks).to(device)})
    return images, targets


def training_batch(reader, refs, source, seed, step, batch_size, device):
    """Frames of one step as torchvision inputs on ``device`` (:func:`training_frames`, :func:`as_inputs`), each
    frame converted as it is read (while it is in the cache)."""
    return as_inputs(_step_frames(reader, refs, source, seed, step, batch_size), device)


class _ReadAhead:
    """``read(step)`` of each step, the next step's read on a thread of its own while the device runs this one:
    a step's frames depend on (seed, step) alone, so reading ahead changes no batch, and a resumed run reads from
    its first step. Frames read and converted in the job's one process would otherwise add their CPU time to every
    step's GPU time."""

    def __init__(self, read, iterations: int):
        self._read, self._iterations = read, iterations
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="mask-batches")
        self._ahead = None  # (step, future)

    def __call__(self, step: int):
        ahead, self._ahead = self._ahead, None
        future = ahead[1] if ahead and ahead[0] == step else self._pool.submit(self._read, step)
        if step + 1 < self._iterations:
            self._ahead = step + 1, self._pool.submit(self._read, step + 1)
        return future.result()

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


class _StepFrames:
    """A step's frames by step: ``batch(step, device)`` the device's inputs (:func:`training_batch`), read in this
    process; ``frames[step]`` the arrays (:func:`training_frames`), for a DataLoader's worker processes, each of
    which opens the frames stores itself (an open HDF5 file does not survive a fork)."""

    def __init__(self, frames, refs, source: str, seed: int, batch_size: int):
        self.frames, self.refs, self.source, self.seed, self.batch_size = list(frames), refs, source, seed, batch_size
        self._reader = None

    def _open(self) -> InstanceReader:
        if self._reader is None:
            self._reader = InstanceReader(self.frames)
        return self._reader

    def batch(self, step: int, device):
        return training_batch(self._open(), self.refs, self.source, self.seed, step, self.batch_size, device)

    def __getitem__(self, step: int) -> list[tuple]:
        return training_frames(self._open(), self.refs, self.source, self.seed, step, self.batch_size)

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None


@contextmanager
def _step_batches(frames: _StepFrames, iterations: int, device: torch.device, workers: int, prefetch: int):
    """``batches(step)``: the device's inputs of each step, read by ``workers`` processes (:class:`_Loaded`), or
    without workers on one thread beside this one (:class:`_ReadAhead`, the CPU default); the same batches either
    way."""
    if workers:
        with closing(_Loaded(frames, iterations, device, workers, prefetch)) as batches:
            yield batches
        return
    with closing(frames), closing(_ReadAhead(lambda step: frames.batch(step, device), iterations)) as batches:
        yield batches


def _as_is(batch):
    return batch


class _Loaded:
    """``loaded(step)`` of each step from a DataLoader whose ``workers`` processes read the coming steps' arrays
    (``prefetch`` each), in step order, made the device's inputs here (:func:`as_inputs`); a step out of order
    starts a new loader there. Arrays, not tensors, cross from the workers: a tensor would cross as a shared-memory
    file of its own, a handshake per tensor that cost this process more than the arrays' bytes. The loader seeds
    its workers from a generator of its own: a draw from torch's global one would change the proposals the model
    samples, and so the weights."""

    def __init__(self, frames: _StepFrames, iterations: int, device: torch.device, workers: int, prefetch: int):
        self.frames, self.iterations, self.device = frames, iterations, torch.device(device)
        self.workers, self.prefetch = workers, prefetch
        self._batches, self._next = None, None

    def __call__(self, step: int):
        if step != self._next:
            self.close()
            self._batches = iter(torch.utils.data.DataLoader(
                self.frames, batch_size=None, sampler=range(step, self.iterations), collate_fn=_as_is,
                num_workers=self.workers, prefetch_factor=self.prefetch, generator=torch.Generator(),
                pin_memory=self.device.type == "cuda"))  # on a GPU a thread receives the arrays, beside its step
        self._next = step + 1
        return as_inputs(next(self._batches), self.device)

    def close(self) -> None:
        self._batches, self._next = None, None  # the iterator, dropped, stops its workers


def _fingerprint(arch: dict, cfg: dict, source: str, seed: int, refs, iterations: int, start: str,
                 amp: torch.dtype | None) -> str:
    """What a resumable checkpoint must agree on (inference-only keys such as score_threshold are left out), the
    precision the device gave included."""
    training = {k: cfg[k] for k in ("coco_checkpoint", "batch_size", "optimizer", "lr")}
    return fingerprint(arch=arch, training=training, iterations=iterations, start=start, precision=str(amp),
                       source=source, seed=seed, frames=[(r.video, r.frame) for r in refs])
