"""The converted official FCIS against MXNet's outputs: this project's side of the converter's numerical check.

    <venv with mxnet==1.9.1 "numpy<1.24">/bin/python benchmarks/fcis_mxnet.py --fcis-repo FCIS --out DIR
    python benchmarks/fcis_mxnet_compare.py --out DIR [--tolerance 1e-4] [--dtype float32|float64]

Converts ``DIR/fcis_random-0000.params`` with ``a2dpipe convert-weights fcis-mxnet``'s function, loads it strictly
into the official-layout FCIS as the pipeline does (``masks.coco_checkpoint``), runs it on the images of
``DIR/reference.npz`` and prints, per output, the largest absolute and scaled difference from MXNet's (below):

- ``res4`` / ``res5``: the backbone's two outputs (RPN and head features);
- ``rpn_prob``: each anchor's foreground probability (MXNet's softmax, this network's sigmoid);
- ``score_maps`` / ``box_maps``: the position-sensitive maps, MXNet's in this project's channel order (box maps:
  the foreground deltas times the deviations and box-coder weights, as the converter scales them);
- ``proposals``: the RPN's boxes after NMS (MXNet's inclusive ends + 1);
- ``cls_prob_1`` / ``cls_prob_2``: class probabilities of the proposals and of their regressed boxes;
- ``boxes``: the regressed boxes (the second iteration's RoIs);
- ``masks_1`` / ``masks_2``: each RoI's 21 x 21 foreground probability for its best non-background class.

An output agrees when every element is within ``--tolerance`` times max(1, |MXNet's value|) (absolute for
probabilities, relative for features), box corners within ``--tolerance`` times the image's longer side. The
official pooling rounds each RoI's corners to pixels, so a corner that float32 places on the other side of a
half pixel (the two frameworks' features differ by ~1e-6 of their size) moves a whole pixel: the RoIs whose rounded
corners differ are counted and left out of what was pooled at them (a proposal's: its class probabilities, masks
and regressed box; a regressed box's: its class probabilities and masks). Exit status 1 when an output
disagrees. Inference after these (per-class thresholds, NMS, mask voting) is
the official tester's Python, not part of the network, and not compared here.

``--dtype`` (default: the reference's, ``fcis_mxnet.py --dtype``) converts and runs this side in float32 or
float64. Both sides in float64 tell an implementation difference (it stays) from float32 rounding (it shrinks);
one side in float64 against the other in float32 measures that side's own float32 rounding (the weights and images
are the same in both dtypes). Across dtypes, the RoIs whose pooling cells the two dtypes place differently are
left out too: the official pooling computes a cell's pixel span in the data type, so a RoI ending on a whole
feature pixel, exactly, gets one more pixel in its last cell in float32 (12.000001, ceil 13) than in float64.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from a2dpipe.masks import convert
from a2dpipe.masks.model import build_mask_model, load_coco_checkpoint

ONE_PAST = torch.tensor([0.0, 0.0, 1.0, 1.0])


def load_converted(params: Path, height: int, width: int, dtype: torch.dtype):
    """The official-layout FCIS from ``params``, converted in ``dtype`` and loaded strictly into the network in
    ``dtype``, sized not to resize the images."""
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "fcis.pt"
        arch = convert.convert_fcis_mxnet(params, out, dtype=str(dtype).removeprefix("torch."))["arch"]
        model = build_mask_model(**{**arch, "min_size": min(height, width), "max_size": max(height, width)})
        load_coco_checkpoint(model.to(dtype), out, strict=True)
    return model.eval()


def project_outputs(model, image: np.ndarray, dtype: torch.dtype) -> dict:
    """The network's outputs named as in ``reference.npz``, on one RGB uint8 image, in ``dtype``."""
    x = torch.from_numpy(image).permute(2, 0, 1).to(dtype) / 255
    batch, _ = model.transform([x])
    res4, res5 = model.backbone(batch.tensors)
    logits, _ = model.rpn.head([res4])
    proposals, _ = model.rpn(batch, {"0": res4})
    heads = model.roi_heads
    hidden = heads.reduce(res5)
    maps = heads.inside_outside(hidden), heads.box_maps(hidden)
    logits1, masks1, deltas = heads.roi_outputs(maps, proposals)
    refined = heads.box_coder.decode_single(deltas, proposals[0]).reshape(-1, 4)
    refined = [refined.clamp(min=0).minimum(torch.tensor(batch.image_sizes[0][::-1] * 2, dtype=refined.dtype))]
    logits2, masks2, _ = heads.roi_outputs(maps, refined)
    out = {"res4": res4, "res5": res5, "rpn_prob": logits[0].sigmoid(), "score_maps": maps[0], "box_maps": maps[1],
           "proposals": proposals[0], "boxes": refined[0], "cls_prob_1": logits1.softmax(1),
           "cls_prob_2": logits2.softmax(1)}
    for name, class_logits, mask_logits in (("masks_1", logits1, masks1), ("masks_2", logits2, masks2)):
        best = class_logits.softmax(1)[:, 1:].argmax(1) + 1
        out[name] = mask_logits[torch.arange(len(best)), best].sigmoid()
    return {name: value.detach() for name, value in out.items()}


def reference_outputs(ref: dict, model, index: int, count: int) -> dict:
    """MXNet's outputs of image ``index`` in this project's layout, the first ``count`` RoIs of each iteration."""
    get = {name: ref[f"{index}/{name}"] for name in ("res4", "res5", "rpn_prob", "score_maps", "box_maps", "rois",
                                                     "cls_prob", "seg_pred")}
    heads, post = model.roi_heads, len(get["rois"]) // 2
    anchors = get["rpn_prob"].shape[1] // 2
    score_order = convert.score_map_order(heads.num_classes, heads.k)
    box_order = convert.box_map_order(heads.k, heads.box_coder.weights)
    first, second = slice(0, count), slice(post, post + count)
    rois = torch.from_numpy(get["rois"][:, 1:]) + ONE_PAST
    out = {"res4": get["res4"][0], "res5": get["res5"][0], "rpn_prob": get["rpn_prob"][0, anchors:],
           "score_maps": score_order(get["score_maps"][0]), "box_maps": box_order(get["box_maps"][0]),
           "proposals": rois[first], "boxes": rois[second], "cls_prob_1": get["cls_prob"][0, first],
           "cls_prob_2": get["cls_prob"][0, second], "masks_1": get["seg_pred"][first, 1],
           "masks_2": get["seg_pred"][second, 1]}
    out = {name: torch.as_tensor(np.asarray(value)) for name, value in out.items()}
    out["res4"], out["res5"], out["score_maps"], out["box_maps"] = (
        out[k][None] for k in ("res4", "res5", "score_maps", "box_maps"))
    out["rpn_prob"] = out["rpn_prob"][None]
    return out


def _round(boxes: torch.Tensor) -> torch.Tensor:
    """Box corners as the official pooling rounds them (halves up: corners are not negative)."""
    return torch.floor(boxes.double() + 0.5)


def _cells(boxes: torch.Tensor, dtype: torch.dtype, scale: float = 1 / 16, cells: int = 21) -> torch.Tensor:
    """Each RoI's first and one-past-last feature pixel of every pooling cell, (R, 2, 2, cells), as the official
    pooling computes them in ``dtype`` from the rounded corners (unclipped)."""
    start, end = _round(boxes[:, :2]).to(dtype) * scale, _round(boxes[:, 2:]).to(dtype) * scale
    step = ((end - start).clamp(min=0.1) / cells)[..., None]
    index, start = torch.arange(cells, dtype=dtype), start[..., None]
    return torch.stack([torch.floor(index * step + start), torch.ceil((index + 1) * step + start)], 2)


def compare_image(ours: dict, theirs: dict, longer_side: int, cross: bool) -> dict[str, tuple[float, float]]:
    """Per output: the largest absolute difference and the largest scaled one (see the module), printed; ``cross``:
    the two sides in different dtypes."""
    same = {boxes: (_round(ours[boxes][:len(theirs[boxes])]) == _round(theirs[boxes])).all(1)
            for boxes in ("proposals", "boxes")}
    for boxes in same if cross else ():  # and pooled the same way in both dtypes
        agree = _cells(theirs[boxes], torch.float32) == _cells(theirs[boxes], torch.float64)
        same[boxes] = same[boxes] & agree.flatten(1).all(1)
    # what each RoI output was pooled at: the boxes from deltas pooled at the proposals
    keep = {"_1": same["proposals"], "boxes": same["proposals"], "_2": same["proposals"] & same["boxes"]}
    out = {}
    for name, value in theirs.items():
        mine = ours[name][:len(value)] if name.startswith(("proposals", "boxes", "cls_", "masks")) else ours[name]
        note = ""
        if name == "boxes" or name.startswith(("cls_", "masks")):
            kept = keep[name if name == "boxes" else name[-2:]]
            mine, value, note = mine[kept], value[kept], f", {int((~kept).sum())} RoIs pooled apart"
        diff = (mine.double() - value.double()).abs()
        scale = longer_side if name in ("proposals", "boxes") else 1.0
        out[name] = float(diff.max()), float((diff / value.double().abs().clamp(min=scale)).max())
        print(f"  {name:11s} {tuple(value.shape)!s:16s} max |diff| {out[name][0]:.2e}, scaled {out[name][1]:.2e} "
              f"(max |value| {float(value.abs().max()):.3g}{note})")
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path, help="the folder fcis_mxnet.py wrote")
    parser.add_argument("--tolerance", type=float, default=1e-4)
    parser.add_argument("--dtype", choices=("float32", "float64"), help="of this side (default: the reference's)")
    args = parser.parse_args()
    ref = dict(np.load(args.out / "reference.npz"))
    images = sorted({int(key.split("/")[0]) for key in ref})
    height, width = ref["0/image"].shape[:2]
    reference_dtype = str(ref["0/res5"].dtype)
    dtype = getattr(torch, args.dtype or reference_dtype)
    print(f"MXNet in {reference_dtype}, this network in {args.dtype or reference_dtype}")
    model = load_converted(args.out / "fcis_random-0000.params", height, width, dtype)
    worst: dict[str, tuple[float, float]] = {}
    with torch.no_grad():
        for index in images:
            ours = project_outputs(model, ref[f"{index}/image"], dtype)
            count, kept = len(ours["proposals"]), int(ref[f"{index}/kept"])
            print(f"image {index}" + (f": {count} proposals here, {kept} in MXNet" if count != kept else ""))
            theirs = reference_outputs(ref, model, index, min(count, kept))
            diffs = compare_image(ours, theirs, max(height, width), dtype != getattr(torch, reference_dtype))
            worst = {name: tuple(map(max, worst.get(name, (0.0, 0.0)), diff)) for name, diff in diffs.items()}
    print("worst over images, max |diff| / scaled:")
    for name, (absolute, scaled) in worst.items():
        print(f"  {name:11s} {absolute:.2e} / {scaled:.2e}")
    failed = [name for name, (_, scaled) in worst.items() if not scaled <= args.tolerance]
    print("within tolerance" if not failed else f"above {args.tolerance}: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
