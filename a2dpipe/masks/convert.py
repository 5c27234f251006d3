"""``a2dpipe convert-weights fcis-mxnet IN.params OUT.pt``: the official FCIS's published MXNet weights
(msracver/FCIS, ``fcis_coco-0000.params``: ResNet-101, COCO) as this project's mask model file, read with numpy
(:mod:`a2dpipe.masks.mxnet_params`; no MXNet needed).

The file holds the FCIS of :func:`a2dpipe.masks.fcis.fcis` with ``layout="official"``
(:mod:`a2dpipe.masks.fcis_official`), written as ``a2dpipe train-mask-model`` writes a mask model (``model``,
``arch``, ``source`` generic, ``class_agnostic``, ``config``) with ``converted_from`` (file name and digest); point
``masks.coco_checkpoint`` at it with ``masks.fcis_layout: official``. Every official tensor has one place, and
every tensor of the network one source (batch norm counters aside); the parameter names map as:

- ``conv1``, ``bn_conv1`` -> ``backbone.body.conv1``, ``bn1`` (``conv1``'s input channels reversed: BGR to RGB);
- ``res<s><b>_branch2{a,b,c}``, ``bn<s><b>_branch2{a,b,c}`` -> ``layer<s-1>.<i>.conv{1,2,3}``, ``bn{1,2,3}``
  (blocks ``a, b, c`` or ``a, b1, b2, ...``), ``res<s>a_branch1`` / ``bn<s>a_branch1`` -> ``downsample.0`` / ``.1``;
  ``gamma, beta, moving_mean, moving_var`` -> ``weight, bias, running_mean, running_var``;
- ``rpn_conv_3x3`` -> ``rpn.head.conv.0``, ``rpn_bbox_pred`` -> ``rpn.head.bbox_pred``; ``rpn_cls_score`` (a
  background and a foreground score per anchor, softmaxed) -> ``rpn.head.cls_logits``, foreground minus background
  (the sigmoid of which is that softmax);
- ``conv_new_1`` -> ``roi_heads.reduce.0``; ``fcis_cls_seg`` -> ``roi_heads.inside_outside`` with its channels
  reordered from (class, outside/inside, row, column) to this project's (inside/outside, class, row, column);
  ``fcis_bbox`` (class-agnostic: background and foreground deltas) -> ``roi_heads.box_maps``, the foreground's,
  scaled by the official deltas' deviations times the network's box-coder weights.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from a2dpipe.integrity import file_digest
from a2dpipe.errors import A2DError
from a2dpipe.io import atomic_path
from a2dpipe.masks import fcis_official as official
from a2dpipe.masks.model import build_mask_model
from a2dpipe.masks.mxnet_params import read_params

__all__ = ["configure_parser", "run", "convert_fcis_mxnet", "fcis_state_dict", "FORMATS", "score_map_order",
           "box_map_order"]

log = logging.getLogger("a2dpipe.masks")

FORMATS = ("fcis-mxnet",)
RESNET101_BLOCKS = (3, 4, 23, 3)
BN_FIELDS = {"gamma": "weight", "beta": "bias", "moving_mean": "running_mean", "moving_var": "running_var"}
# the official test scale: frames resized to 600 px on the short side, at most 1000 on the long one
MIN_SIZE, MAX_SIZE = 600, 1000


def configure_parser(parser) -> None:
    parser.add_argument("format", choices=FORMATS, help="the published weights' format: fcis-mxnet, the official "
                        "FCIS's MXNet .params (msracver/FCIS)")
    parser.add_argument("input", help="published weights file (e.g. fcis_coco-0000.params)")
    parser.add_argument("output", help="mask model file to write (e.g. weights/fcis_coco_official.pt)")


def run(args) -> None:
    convert_fcis_mxnet(args.input, args.output)


def convert_fcis_mxnet(source: str | Path, out: str | Path, dtype=np.float32) -> dict:
    """Convert the official FCIS ``.params`` file ``source`` into the mask model file ``out``; return what was
    saved. ``A2DError`` naming ``source`` for a file that is not MXNet's, truncated, or not FCIS's ResNet-101.
    ``dtype``: of the saved tensors (float64 only for the numerical check against MXNet run in float64)."""
    source = Path(source)
    if not source.is_file():
        raise A2DError(f"{source}: weights file not found")
    params = {_strip(name, source): value for name, value in read_params(source).items()}
    k = 7
    if "fcis_cls_seg_weight" not in params:
        raise A2DError(f"{source}: no fcis_cls_seg_weight: not the official FCIS's weights")
    num_classes = params["fcis_cls_seg_weight"].shape[0] // (2 * k * k)
    arch = dict(model="fcis", backbone="resnet101", num_classes=num_classes, min_size=MIN_SIZE, max_size=MAX_SIZE,
                k=k, layout="official", pretrained_layout=True)
    model = build_mask_model(**arch)
    state = fcis_state_dict(params, model, source, dtype)
    model.load_state_dict(state)
    checkpoint = {"model": state, "arch": arch, "source": "generic", "class_agnostic": True, "config": {},
                  "steps": 0, "converted_from": {"file": source.name, "digest": file_digest(source),
                                                 "format": "fcis-mxnet"}}
    with atomic_path(out) as tmp:
        torch.save(checkpoint, tmp)
    log.info("%s: official FCIS (%d classes) converted into %s", source, num_classes, out)
    return checkpoint


def _strip(name: str, source: Path) -> str:
    kind, sep, rest = name.partition(":")
    if not sep or kind not in ("arg", "aux"):
        raise A2DError(f"{source}: array name {name!r} lacks MXNet's arg: / aux: prefix")
    return rest


def fcis_state_dict(params: dict[str, np.ndarray], model: torch.nn.Module, source: Path, dtype=np.float32) -> dict:
    """The state dict of ``model`` (an official-layout FCIS) from the official FCIS's arrays ``params`` (names
    without ``arg:`` / ``aux:``), converted in ``dtype``; ``A2DError`` naming every official array without a place,
    every tensor without a source, and every shape that differs."""
    own = model.state_dict()
    state, used = {}, set()
    for official_name, (key, convert) in _name_map(model).items():
        if official_name not in params:
            continue
        used.add(official_name)
        state[key] = torch.from_numpy(np.ascontiguousarray(convert(params[official_name].astype(dtype))))
    unknown = sorted(set(params) - used)
    missing = sorted(k for k in own if k not in state and not k.endswith("num_batches_tracked"))
    wrong = [f"{k} {tuple(state[k].shape)} (the network wants {tuple(own[k].shape)})" for k in state
             if k in own and state[k].shape != own[k].shape]
    problems = [f"{len(unknown)} arrays this network has no place for: {', '.join(unknown[:8])}" if unknown else "",
                f"{len(missing)} tensors of the network it lacks: {', '.join(missing[:8])}" if missing else "",
                f"arrays of another shape: {'; '.join(wrong[:8])}" if wrong else ""]
    problems = [p for p in problems if p]
    if problems:
        raise A2DError(f"{source}: not the official FCIS ResNet-101's weights: {'; '.join(problems)}")
    for key in own:  # batch norm counters, if the network keeps them
        state.setdefault(key, own[key])
    return state


def _name_map(model) -> dict:
    """official name -> (state dict key, array conversion)."""
    keep = _identity
    names = {"conv1_weight": ("backbone.body.conv1.weight", lambda w: w[:, ::-1])}
    names.update(_bn("bn_conv1", "backbone.body.bn1"))
    for stage, blocks in enumerate(RESNET101_BLOCKS, start=2):
        for index in range(blocks):
            block = "a" if index == 0 else ("bcdefghijklmnopqrstuvwxyz"[index - 1] if blocks <= 3 else f"b{index}")
            ours = f"backbone.body.layer{stage - 1}.{index}"
            for branch, number in zip("abc", "123"):
                names[f"res{stage}{block}_branch2{branch}_weight"] = (f"{ours}.conv{number}.weight", keep)
                names.update(_bn(f"bn{stage}{block}_branch2{branch}", f"{ours}.bn{number}"))
            if index == 0:
                names[f"res{stage}a_branch1_weight"] = (f"{ours}.downsample.0.weight", keep)
                names.update(_bn(f"bn{stage}a_branch1", f"{ours}.downsample.1"))
    heads = model.roi_heads
    layers = {"rpn_conv_3x3": ("rpn.head.conv.0", keep), "rpn_bbox_pred": ("rpn.head.bbox_pred", keep),
              "rpn_cls_score": ("rpn.head.cls_logits", _foreground_minus_background),
              "conv_new_1": ("roi_heads.reduce.0", keep),
              "fcis_cls_seg": ("roi_heads.inside_outside", score_map_order(heads.num_classes, heads.k)),
              "fcis_bbox": ("roi_heads.box_maps", box_map_order(heads.k, heads.box_coder.weights))}
    for name, (key, convert) in layers.items():
        names[f"{name}_weight"] = (f"{key}.weight", convert)
        names[f"{name}_bias"] = (f"{key}.bias", convert)
    return names


def _identity(array: np.ndarray) -> np.ndarray:
    return array


def _bn(official_name: str, ours: str) -> dict:
    return {f"{official_name}_{field}": (f"{ours}.{mine}", _identity) for field, mine in BN_FIELDS.items()}


def _foreground_minus_background(array: np.ndarray) -> np.ndarray:
    anchors = len(array) // 2  # the official scores: all background channels, then all foreground ones
    return array[anchors:] - array[:anchors]


def score_map_order(num_classes: int, k: int):
    """Official channel ((c * 2 + o) * k + i) * k + j, o = 0 outside / 1 inside, to this project's
    ((part * C + c) * k + i) * k + j, part = 0 inside / 1 outside (:mod:`a2dpipe.masks.position_sensitive`)."""
    part, cls, cell = np.meshgrid(np.arange(2), np.arange(num_classes), np.arange(k * k), indexing="ij")
    order = ((cls * 2 + (1 - part)) * k * k + cell).reshape(-1)
    return lambda array: array[order] if len(array) == len(order) else array


def box_map_order(k: int, coder_weights):
    """The class-agnostic foreground deltas (official channels (4 + d) * k^2 + cell) in this project's order
    d * k^2 + cell, scaled so that this network's box coder decodes them as the official deltas x stds."""
    scale = np.repeat(np.array(official.BOX_STDS) * np.array(coder_weights), k * k)
    order = (4 * k * k + np.arange(4 * k * k))

    def convert(array: np.ndarray) -> np.ndarray:
        if len(array) != 8 * k * k:
            return array  # reported as a shape mismatch
        picked = array[order]
        return (picked * scale.reshape((-1,) + (1,) * (picked.ndim - 1))).astype(array.dtype)
    return convert
