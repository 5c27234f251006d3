"""The converted official FCIS against MXNet's outputs: this project's side of the converter's numerical check.

    <venv with mxnet==1.9.1 "numpy<1.24">/bin/python benchmarks/fcis_mxnet.py --fcis-repo FCIS --out DIR
    python benchmarks/fcis_mxnet_compare.py --out DIR [--tolerance 1e-4]

Converts ``DIR/fcis_random-0000.params`` with ``a2dpipe convert-weights fcis-mxnet``'s function, loads it strictly
into the official-layout FCIS as the pipeline does (``masks.coco_checkpoint``), runs it on the images of
``DIR/reference.npz`` and prints, per output, the largest absolute difference from MXNet's:

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
corners differ are counted and left out of their class probabilities and masks. Exit status 1 when an output
disagrees. Inference after these (per-class thresholds, NMS, mask voting) is
the official tester's Python, not part of the network, and not compared here.
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


def load_converted(params: Path, height: int, width: int):
    """The official-layout FCIS from ``params``, converted and loaded strictly, sized not to resize the images."""
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "fcis.pt"
        arch = convert.convert_fcis_mxnet(params, out)["arch"]
        model = build_mask_model(**{**arch, "min_size": min(height, width), "max_size": max(height, width)})
        load_coco_checkpoint(model, out, strict=True)
    return model.eval()


def project_outputs(model, image: np.ndarray) -> dict:
    """The network's outputs named as in ``reference.npz``, on one RGB uint8 image."""
    x = torch.from_numpy(image).permute(2, 0, 1).float() / 255
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path, help="the folder fcis_mxnet.py wrote")
    parser.add_argument("--tolerance", type=float, default=1e-4)
    args = parser.parse_args()
    ref = dict(np.load(args.out / "reference.npz"))
    images = sorted({int(key.split("/")[0]) for key in ref})
    height, width = ref["0/image"].shape[:2]
    model = load_converted(args.out / "fcis_random-0000.params", height, width)
    worst: dict[str, float] = {}
    with torch.no_grad():
        for index in images:
            ours = project_outputs(model, ref[f"{index}/image"])
            count = len(ours["proposals"])
            if count != int(ref[f"{index}/kept"]):
                print(f"image {index}: {count} proposals here, {int(ref[f'{index}/kept'])} in MXNet")
            theirs = reference_outputs(ref, model, index, min(count, int(ref[f"{index}/kept"])))
            same_pixels = {suffix: (_round(ours[boxes][:len(theirs[boxes])]) == _round(theirs[boxes])).all(1)
                           for suffix, boxes in (("_1", "proposals"), ("_2", "boxes"))}
            for name, value in theirs.items():
                mine = ours[name][:len(value)] if name.startswith(("proposals", "boxes", "cls_", "masks")) \
                    else ours[name]
                note = ""
                if name.startswith(("cls_", "masks")):
                    keep = same_pixels[name[-2:]]
                    mine, value, note = mine[keep], value[keep], f", {int((~keep).sum())} RoIs rounded apart"
                diff = (mine.double() - value.double()).abs()
                scale = max(ref[f"{index}/image"].shape[:2]) if name in ("proposals", "boxes") else 1.0
                scaled = float((diff / value.double().abs().clamp(min=scale)).max())
                worst[name] = max(worst.get(name, 0.0), scaled)
                print(f"image {index} {name:11s} {tuple(value.shape)!s:16s} max |diff| {float(diff.max()):.2e}, "
                      f"scaled {scaled:.2e} (max |value| {float(value.abs().max()):.3g}{note})")
    failed = [name for name, diff in worst.items() if not diff <= args.tolerance]
    print("worst scaled difference over images:", ", ".join(f"{k} {v:.2e}" for k, v in worst.items()))
    print("within tolerance" if not failed else f"above {args.tolerance}: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
