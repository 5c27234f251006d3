"""Inference: ``a2dpipe predict --variant V --model M --frames ... [--flow ...] [--masks ...] --out P.h5``.

Variants: ``baseline-<input>`` (stage-1 model, ASPP back-end) and ``ours-<input>-<train source>-<test source>``
(stage-2 model, region back-end on the test source's regions: ``--masks`` caches of that source).

Output: a predictions file (Predictions contract), written by :class:`.predictions.PredictionWriter`, whose
module describes the layout: ``actor``, ``action`` and ``joint`` maps per test frame, ``seconds_per_frame``.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import torch

from a2dpipe.segmentation.predictions import PredictionWriter
from a2dpipe.segmentation.samples import StoreSamples, to_tensors
from a2dpipe.io import A2DError, load_config, select_device
from a2dpipe.segmentation.models import build_segmenter, joint_prediction
from a2dpipe.segmentation.train import load_checkpoint

__all__ = ["configure_parser", "run", "predict", "parse_variant"]

log = logging.getLogger(__name__)


def configure_parser(parser) -> None:
    parser.add_argument("--config", required=True)
    parser.add_argument("--variant", required=True, help="baseline-<input> or ours-<input>-<train>-<test>")
    parser.add_argument("--model", required=True, help="stage-1 (baseline) or stage-2 (ours) checkpoint")
    parser.add_argument("--frames", nargs="+", required=True)
    parser.add_argument("--flow", nargs="*", default=[])
    parser.add_argument("--masks", nargs="*", default=[], help="region-mask caches of the test source (ours)")
    parser.add_argument("--out", required=True)
    parser.add_argument("--threads", type=int, default=0)


def parse_variant(variant: str) -> dict:
    """``{"kind": "baseline"|"ours", "input", "train_source", "test_source"}``; ValueError on anything else."""
    parts = variant.split("-")
    if parts[0] == "baseline" and len(parts) == 2 and parts[1] in ("rgb", "rgbflow"):
        return {"kind": "baseline", "input": parts[1], "train_source": None, "test_source": None}
    if (parts[0] == "ours" and len(parts) == 4 and parts[1] in ("rgb", "rgbflow")
            and parts[2] in ("dataset", "generic") and parts[3] in ("dataset", "generic", "gt")):
        return {"kind": "ours", "input": parts[1], "train_source": parts[2], "test_source": parts[3]}
    raise ValueError(f"unknown variant {variant!r}: expected baseline-<input> or ours-<input>-<train>-<test>")


def run(args) -> None:
    config = load_config(args.config)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        v = parse_variant(args.variant)
    except ValueError as err:
        raise A2DError(str(err)) from None
    if v["input"] == "rgbflow" and not args.flow:
        raise A2DError(f"variant {args.variant} needs --flow stores")
    if v["kind"] == "ours" and not args.masks:
        raise A2DError(f"variant {args.variant} needs --masks caches of the {v['test_source']} source")
    flow_cfg = config.get("flow") or {}
    samples = StoreSamples(args.frames, split="test", flow=args.flow if v["input"] == "rgbflow" else None,
                           masks=args.masks if v["kind"] == "ours" else None,
                           flow_encoding=flow_cfg.get("encoding", "xym"), wheel_max=flow_cfg.get("wheel_max"))
    predict(config, variant=args.variant, model=args.model, samples=samples, out=args.out)


def predict(config: dict, *, variant: str, model: str | Path, samples, out: str | Path) -> float:
    """Write the predictions of every sample to ``out``; returns seconds per frame."""
    v = parse_variant(variant)
    device = select_device(config.get("device", "auto"))
    ckpt = load_checkpoint(model, device)
    want_stage = 1 if v["kind"] == "baseline" else 2
    if ckpt["stage"] != want_stage or ckpt["input"] != v["input"]:
        raise A2DError(f"{model}: a stage-{ckpt['stage']} {ckpt['input']} model, but variant {variant} needs a "
                       f"stage-{want_stage} {v['input']} model")
    # the architecture is the one the checkpoint was trained with, whatever the current config says
    net = build_segmenter(ckpt["config"], input=v["input"], pretrained=False).to(device).eval()
    net.load_state_dict(ckpt["model"])
    amp = bool(ckpt["segmentation"]["amp"]) and device.type == "cuda"
    seconds = 0.0
    with PredictionWriter(out, variant=variant, model=Path(model).name) as writer:
        for i in range(len(samples)):
            sample = samples.load(i)
            batch = to_tensors([sample], device, with_flow=net.uses_flow)
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                outputs = net(batch["rgb"], batch["flow"], batch["regions"] if v["kind"] == "ours" else None)
                actor, action = outputs["actor"].float(), outputs["action"].float()
                maps = {"actor": actor.argmax(1), "action": action.argmax(1), "joint": joint_prediction(actor, action)}
            if device.type == "cuda":
                torch.cuda.synchronize()
            seconds += time.perf_counter() - start
            maps = {name: value[0].to(torch.uint8).cpu().numpy() for name, value in maps.items()}
            writer.write(sample["video"], sample["frame"], maps)
        per_frame = seconds / max(len(samples), 1)
        writer.seconds_per_frame = per_frame
    log.info("%s: %d test frames, %.4f s per frame", variant, len(samples), per_frame)
    return per_frame
