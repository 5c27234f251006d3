"""Two-stage training of the segmentation network (paper 3.4): ``a2dpipe train --stage 1|2 ...``.

Stage 1 trains the front-end with the ASPP baseline back-end (two learning rates: front-end and back-end
parameter groups). Stage 2 loads the stage-1 checkpoint, freezes the front-end by module (``requires_grad_(False)``
and eval mode, so batch-norm statistics stay put) and trains the region back-end on a mask source's regions plus
the ground-truth instances. Optimiser SGD (paper) or Adam, poly learning-rate decay (:func:`stage_recipe`, built by
:mod:`a2dpipe.recipe`), everything from the config's ``segmentation`` section.

Stage 2 with ``stage2.cache_features`` computes the frozen front-end's features once per training frame and its
mirror image (in batches of one size, config ``segmentation.inference_batch``) and then trains on full frames from
that cache: what a frozen front-end would compute every step, at a fraction of the cost (the CPU default). Without
it, stage 2 takes random crops like stage 1.

Data: a ``DataLoader`` over the shards (:mod:`.loader`; config ``segmentation.loader_workers`` and
``loader_prefetch``) reads, crops and mirrors the frames, in worker processes when asked; the frames of a step and
their crops are drawn in the main process, so the workers change the speed, never the result.

Outputs: ``--out model.pt``, a ``stage-1 model`` or ``stage-2 model`` of :func:`a2dpipe.checkpoint.save_model_file`
(builder arguments, weights, ``stage``, ``input``, ``mask_source``, ``steps``, ``amp``, ``curve``, provenance), and
``loss.csv`` beside it (step, loss, lr, loss_actor, loss_action). The loop is
the shared :class:`a2dpipe.trainer.Trainer`; a step is a :class:`CropStep` or a :class:`CachedStep`.

Resuming: every ``checkpoint_every`` steps ``checkpoint.pt`` beside the output holds model, optimiser, scheduler,
step, RNG states and the loss history (:mod:`a2dpipe.checkpoint`). A rerun with the same settings (loader settings
aside) continues from it (or from the one before, if it is unreadable). Batch composition and crops are functions of (seed, step)
alone -- the data sampler's state *is* the step -- so a killed and resumed run ends with exactly the weights of an
uninterrupted one (CPU). A checkpoint written under other settings is ignored.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path

import numpy as np
import torch

from a2dpipe.checkpoint import fingerprint, load_model_file, load_resume, remove_resume, save_model_file, write_curve
from a2dpipe.segmentation.loader import (StepStream, collate, collate_each, loader_options, make_loader,
                                         network_threads, same_size_batches, to_device)
from a2dpipe.segmentation.samples import StoreSamples, View, plan_view
from a2dpipe.accelerator import autocast, autocast_dtype
from a2dpipe.config import check_consistent, check_inputs, read_stamp, training_splits
from a2dpipe.settings import add_config_arguments, plain, read_settings, recorded
from a2dpipe.integrity import file_digest
from a2dpipe.devices import select_device
from a2dpipe.errors import A2DError
from a2dpipe.progress import progress
from a2dpipe.recipe import build_optimizer, poly_schedule
from a2dpipe.segmentation.models import build_segmenter, segmentation_loss, segmenter_arguments
from a2dpipe.trainer import (PeriodicCheckpointer, Progress, Trainer, curve_columns, grad_scaler,
                             tensorboard_hooks)

__all__ = ["configure_parser", "run", "train", "load_checkpoint", "stage_recipe", "flow_encoding_settings",
           "CropStep", "CachedStep", "cache_features", "CURVE_COLUMNS"]

log = logging.getLogger(__name__)

CURVE_COLUMNS = curve_columns(("loss_actor", "loss_action"))


def configure_parser(parser) -> None:
    add_config_arguments(parser, "train")
    parser.add_argument("--stage", type=int, choices=(1, 2), required=True)
    parser.add_argument("--input", choices=("rgb", "rgbflow"), required=True)
    parser.add_argument("--mask-source", choices=("dataset", "generic"), default="dataset",
                        help="stage 2: mask source whose regions (plus ground truth) train the region back-end")
    parser.add_argument("--frames", nargs="+", required=True, help="frames stores (shard-NNN.h5)")
    parser.add_argument("--flow", nargs="*", default=[], help="flow stores of the same shards (rgbflow)")
    parser.add_argument("--masks", nargs="*", default=[], help="stage 2: region-mask caches of the same shards")
    parser.add_argument("--stage1", help="stage 2: the stage-1 checkpoint")
    parser.add_argument("--out", required=True, help="model checkpoint to write")
    parser.add_argument("--threads", type=int, default=0,
                        help="CPUs of the job: loader workers + torch in this process (0: torch's default)")


def run(args) -> None:
    config = read_settings(args, "train")
    if args.threads:
        torch.set_num_threads(network_threads(args.threads, config["segmentation"]["loader_workers"]))
    if args.input == "rgbflow" and not args.flow:
        raise A2DError("--input rgbflow needs --flow stores")
    if args.stage == 2 and not args.stage1:
        raise A2DError("--stage 2 needs --stage1 CHECKPOINT")
    check_inputs(config, {"frames shard": args.frames, "flow cache": args.flow, "region-mask cache": args.masks})
    splits = training_splits(config)
    samples = StoreSamples(
        args.frames, split=splits, flow=args.flow if args.input == "rgbflow" else None,
        masks=args.masks if args.stage == 2 else None, gt_regions=args.stage == 2,
        **flow_encoding_settings(config, args.input),
    )
    if not len(samples):
        raise A2DError(f"{args.frames[0]}: no {'/'.join(splits)} frames in the frames stores to train on")
    log.info("training on the %s frames (dataset.final_fit)", " + ".join(splits))
    inputs = [*args.frames, *(args.flow if args.input == "rgbflow" else []), *(args.masks if args.stage == 2 else [])]
    train(config, stage=args.stage, input=args.input, samples=samples, out=args.out, stage1=args.stage1,
          mask_source=args.mask_source, inputs={str(path): file_digest(path) for path in inputs})


# -- helpers -----------------------------------------------------------------------------------------------------


def flow_encoding_settings(config: dict, input: str) -> dict:
    """``flow_encoding`` and ``wheel_max`` of the flow-as-RGB images (config ``flow``); read only for rgbflow."""
    if input != "rgbflow":
        return {"flow_encoding": "xym", "wheel_max": None}  # no flow image is made
    flow = config["flow"]
    return {"flow_encoding": flow["encoding"], "wheel_max": flow["wheel_max"] if flow["encoding"] == "wheel" else None}


@functools.lru_cache(maxsize=4)
def _epoch_order(n: int, seed: int, stage: int, epoch: int) -> np.ndarray:
    return np.random.default_rng([seed, stage, epoch]).permutation(n)


def _positions(n: int, seed: int, stage: int, step: int, batch_size: int) -> list[int]:
    """Indices of the step's batch: consecutive slices of per-epoch permutations, a pure function of the step."""
    out = []
    for p in range(step * batch_size, (step + 1) * batch_size):
        epoch, offset = divmod(p, n)
        out.append(int(_epoch_order(n, seed, stage, epoch)[offset]))
    return out


def load_checkpoint(path: str | Path, stage: int) -> dict:
    """Read a stage-``stage`` model file written by ``train`` (tensors on the CPU: ``load_state_dict`` moves them);
    A2DError naming the file and its rebuilding rule when it is not one (:func:`a2dpipe.checkpoint.load_model_file`)."""
    return load_model_file(path, f"stage-{stage} model")


def _load_stage1(model, stage1: str | Path | None, input: str, config: dict) -> str:
    """Front-end and baseline of the stage-1 model into ``model``; returns the file's digest (for the fingerprint).

    A stage-1 model made with other settings than this job's (say another backbone) is refused by name.
    """
    if stage1 is None:
        raise ValueError("stage 2 needs the stage-1 checkpoint")
    ckpt = load_checkpoint(stage1, 1)
    check_consistent({"this job": config, str(stage1): read_stamp(ckpt["provenance"])})
    if ckpt["input"] != input:
        raise A2DError(f"{stage1}: a stage-1 model for input {ckpt['input']!r}, not {input!r}")
    # front-end and baseline from stage 1; the region back-end starts fresh (its config may have changed)
    state = {k: v for k, v in ckpt["model"].items() if not k.startswith("region.")}
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as err:
        raise A2DError(f"{stage1}: does not fit the configured front-end: {err}") from None
    if unexpected or any(not k.startswith("region.") for k in missing):
        raise A2DError(f"{stage1}: does not fit the configured front-end (missing {missing[:3]}, "
                       f"unexpected {unexpected[:3]})")
    return file_digest(stage1)


def _param_groups(model, stage: int, opts: dict) -> list[dict]:
    """Stage 1: front-end and baseline at their two learning rates; stage 2: the region back-end alone, the
    front-end and baseline frozen by module."""
    if stage == 1:
        return [{"params": list(model.front_end.parameters()), "lr": opts["lr_front"]},
                {"params": list(model.baseline.parameters()), "lr": opts["lr_back"]}]
    model.front_end.requires_grad_(False)
    model.baseline.requires_grad_(False)
    return [{"params": list(model.region.parameters()), "lr": opts["lr"]}]


def stage_recipe(model, stage: int, opts: dict):
    """``(optimizer, scheduler)`` of stage ``stage`` (``opts``: config ``segmentation.stage<stage>``) over the
    parts of ``model`` that stage trains, freezing the others (:mod:`a2dpipe.recipe`: poly decay)."""
    optimizer = build_optimizer(opts["optimizer"], _param_groups(model, stage, opts), momentum=opts["momentum"],
                                weight_decay=opts["weight_decay"])
    return optimizer, poly_schedule(optimizer, opts["iterations"], opts["poly_power"])


# -- steps -------------------------------------------------------------------------------------------------------


class CropStep:
    """Losses of one step on random crops: stage 1 (front-end + baseline) or stage 2 without a feature cache
    (frozen front-end, region back-end). Batch and crops are functions of (seed, stage, step) alone (:meth:`views`);
    the batches of steps ``start .. iterations - 1`` come from one loader (``loader``: :func:`.loader_options`)."""

    def __init__(self, model, samples, *, stage: int, seed: int, batch_size: int, crop: tuple[int, int], device,
                 iterations: int, loader: dict | None = None):
        self.model, self.samples, self.stage, self.seed = model, samples, stage, seed
        self.batch_size, self.crop, self.device = batch_size, crop, device
        self.stream = StepStream(samples, self.views, stop=iterations, collate_fn=collate, device=device,
                                 loader=loader)

    def views(self, step: int) -> list[View]:
        """The step's frames and their crops, drawn in the main process."""
        rng = np.random.default_rng([self.seed, self.stage, step, 1])
        positions = _positions(len(self.samples), self.seed, self.stage, step, self.batch_size)
        return [plan_view(i, self.samples.size(i), self.crop, rng, flow=self.model.uses_flow) for i in positions]

    def __call__(self, step: int) -> dict[str, torch.Tensor]:
        batch = to_device(self.stream.batch(step), self.device, with_flow=self.model.uses_flow)
        if self.stage == 1:
            outputs = self.model.forward_baseline(batch["rgb"], batch["flow"])
        else:
            with torch.no_grad():
                features = self.model.front_end(batch["rgb"], batch["flow"])
            outputs = self.model.region_heads(features, tuple(batch["rgb"].shape[-2:]), batch["regions"])
        return segmentation_loss(outputs, batch["actor"], batch["action"])


class CachedStep:
    """Stage-2 losses of one step on cached full-frame features of the frozen front-end (:func:`cache_features`):
    the region back-end per frame (sizes differ), mean over the batch. Labels and regions come from a loader."""

    def __init__(self, model, samples, cache: dict, *, seed: int, batch_size: int, device, iterations: int,
                 loader: dict | None = None):
        self.model, self.samples, self.cache, self.items = model, samples, cache, sorted(cache)
        self.seed, self.batch_size, self.device = seed, batch_size, device
        self.stream = StepStream(samples, self.views, stop=iterations, collate_fn=collate_each, device=device,
                                 loader=loader)

    def views(self, step: int) -> list[View]:
        """The step's (frame, mirrored) items, whole frames without flow (the features hold the motion stream)."""
        positions = _positions(len(self.cache), self.seed, 2, step, self.batch_size)
        return [View(i, flipped, flow=False) for i, flipped in (self.items[p] for p in positions)]

    def __call__(self, step: int) -> dict[str, torch.Tensor]:
        frames = [to_device(frame, self.device) for frame in self.stream.batch(step)]
        outputs = self.model.region_heads_each([self.cache[(v.index, v.flip)] for v in self.views(step)],
                                               [tuple(f["actor"].shape[-2:]) for f in frames],
                                               [f["regions"][0] for f in frames])
        totals = {}
        for frame, out in zip(frames, outputs):
            for key, value in segmentation_loss(out, frame["actor"], frame["action"]).items():
                totals[key] = totals.get(key, 0) + value / len(frames)
        return totals


def cache_features(model, samples, device, amp: torch.dtype | None, loader: dict | None = None, *,
                   batch_size: int) -> dict[tuple[int, bool], torch.Tensor]:
    """Frozen front-end features (1, C, h, w) of every training frame and of its mirror image, by (index, flipped),
    computed ``batch_size`` views of one size at a time (:func:`.loader.same_size_batches`), under autocast to
    ``amp`` (None: float32)."""
    views = [View(i, flipped, flow=model.uses_flow) for i in range(len(samples)) for flipped in (False, True)]
    batches = same_size_batches(samples, views, batch_size)
    loaded = make_loader(samples, batches, collate_fn=collate, device=device, **(loader or {}))
    cache = {}
    with (torch.no_grad(), autocast(device.type, amp),
          progress(total=len(views), desc="front-end features", unit="view") as bar):
        for group, batch in zip(batches, loaded):
            batch = to_device(batch, device, with_flow=model.uses_flow)
            features = model.front_end(batch["rgb"], batch["flow"]).float()
            for view, one in zip(group, features.split(1)):
                cache[(view.index, view.flip)] = one
            bar.update(len(group))
    return cache


# -- training ----------------------------------------------------------------------------------------------------


def _step_function(model, samples, config: dict, stage: int, device, amp: torch.dtype | None):
    seg = config["segmentation"]
    opts = seg[f"stage{stage}"]
    common = {"seed": int(config["seed"]), "batch_size": opts["batch_size"], "device": device,
              "iterations": opts["iterations"], "loader": loader_options(seg)}
    if stage == 2 and opts["cache_features"]:
        cache = cache_features(model, samples, device, amp, common["loader"], batch_size=seg["inference_batch"])
        return CachedStep(model, samples, cache, **common)
    return CropStep(model, samples, stage=stage, crop=tuple(seg["crop"]), **common)


def train(config: dict, *, stage: int, input: str, samples, out: str | Path, stage1: str | Path | None = None,
          mask_source: str = "dataset", max_steps: int | None = None, inputs: dict | None = None) -> dict | None:
    """Train one stage; returns the written model dict, or None when stopped early by ``max_steps``.

    ``samples``: ``StoreSamples`` or ``ArraySamples`` of the training split (with regions for stage 2).
    ``max_steps`` stops after that many steps without writing the model (simulates a kill; tests use it).
    ``inputs``: ``{file: content digest}`` of the files ``samples`` reads; a resume checkpoint made from other
    inputs (or settings, or another stage-1 model) is ignored, and the log names what changed.
    """
    out = Path(out)
    seg = config["segmentation"]
    opts = seg[f"stage{stage}"]
    seed = int(config["seed"])
    device = select_device(config["device"])
    amp = autocast_dtype(device, bool(seg["amp"]))  # bf16, fp16 or None (float32) for this GPU
    torch.manual_seed(seed)
    model = build_segmenter(**segmenter_arguments(seg, input=input, pretrained=stage == 1, regions=stage == 2))
    model = model.to(device)
    s1_digest = _load_stage1(model, stage1, input, config) if stage == 2 else None
    optimizer, scheduler = stage_recipe(model, stage, opts)

    # the declared settings, less the loader's, which change no result
    made_with = recorded("train", config, {"stage": stage, "input": input})
    recorded_seg = made_with["segmentation"]
    recipe = {"settings": fingerprint(stage=stage, input=input, mask_source=mask_source, seed=seed,
                                      seg=recorded_seg, device=device.type),
              "frame list": fingerprint(frames=samples.keys()), **(inputs or {})}
    if stage1 is not None:
        recipe[f"stage-1 model {stage1}"] = s1_digest
    resume, curve_path = out.with_name("checkpoint.pt"), out.with_name("loss.csv")
    scaler = grad_scaler(device.type if amp else None, amp)
    start, curve = load_resume(resume, recipe, model, optimizer, scheduler, scaler) or (0, [])

    model.train()
    if stage == 2:  # frozen parts keep their batch-norm statistics
        model.front_end.eval()
        model.baseline.eval()
    step_fn = _step_function(model, samples, config, stage, device, amp)
    hooks = [Progress(f"stage {stage} {input}"),
             PeriodicCheckpointer(resume, recipe, opts["checkpoint_every"], curve_path),
             *tensorboard_hooks(curve_path)]
    trainer = Trainer(model, optimizer, scheduler, step_fn, iterations=opts["iterations"], start=start,
                      history=curve, hint=f"; lower the learning rates of config segmentation.stage{stage}",
                      amp_device=device.type if amp else None, amp_dtype=amp or torch.bfloat16, scaler=scaler,
                      hooks=hooks)
    if not trainer.train(max_steps):
        return None
    write_curve(curve_path, trainer.history, CURVE_COLUMNS)
    # the builder's arguments: the network these weights fit, whatever settings a later job has
    builder = plain(segmenter_arguments(recorded_seg, input=input, pretrained=False, regions=stage == 2))
    meta = {"stage": stage, "input": input, "mask_source": mask_source if stage == 2 else None,
            "steps": opts["iterations"], "amp": bool(seg["amp"]), "curve": trainer.history}
    result = save_model_file(out, f"stage-{stage} model", builder=builder, weights=model.state_dict(), meta=meta,
                             settings=made_with)
    remove_resume(resume)
    return result
