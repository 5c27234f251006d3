"""``a2dpipe mask-quality``: COCO-style mask AP of the mask sources on the test split (pycocotools).

Ground truth: the test frames' actor instances from the frames stores. Detections: the cached regions (masks
thresholded at 0.5, scored by their region score), i.e. the regions as the segmentation network receives them
(already cut at ``masks.score_threshold`` and ``masks.max_regions``).

Two ways of counting, one row each in ``results/masks/quality.csv``:

- ``actor``: categories are the 7 actors; a region must carry the right actor label. Only sources with actor labels
  (``dataset``) get this row: the ``generic`` source has no actor classes.
- ``agnostic``: one category "actor instance"; any region may match any actor instance. Every source gets this
  row, so ``dataset`` and ``generic`` are compared on equal terms; a generic region on a non-actor object is a false
  positive, which is exactly the cost of generic masks.

Columns: ``source, categories, AP, AP50, AP75, frames, regions_per_frame, note`` (AP in percent, COCO's
AP@[.5:.95], 100 detections per frame). A trained source the run leaves out (``--left-out "generic: why"``: no
generic source on a real-format dataset without a COCO file, or no region run tests with it) gets one ``agnostic``
row without figures, its ``note`` saying why; measured rows have an empty note.
"""

from __future__ import annotations

import contextlib
import io
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from a2dpipe.errors import A2DError
from a2dpipe.io import atomic_path
from a2dpipe.labels import ACTORS
from a2dpipe.masks.cache import MaskCache, Regions
from a2dpipe.masks.data import InstanceReader, list_frames
from a2dpipe.stores import group_key

__all__ = ["COLUMNS", "EncodedFrame", "mask_quality", "coco_mask_ap", "configure_parser", "run"]

log = logging.getLogger("a2dpipe.masks")

COLUMNS = ["source", "categories", "AP", "AP50", "AP75", "frames", "regions_per_frame", "note"]


def configure_parser(parser) -> None:
    parser.add_argument("--config", help="unused: the mask AP has no settings (accepted for uniformity)")
    parser.add_argument("--frames", required=True, nargs="+", help="frames stores (every shard)")
    parser.add_argument("--dataset", nargs="*", default=[], help="dataset-source caches (every shard)")
    parser.add_argument("--generic", nargs="*", default=[], help="generic-source caches (every shard)")
    parser.add_argument("--left-out", nargs="*", default=[], metavar="SOURCE: WHY",
                        help="a source not measured and why: a row without figures that says so")
    parser.add_argument("--out", required=True, help="CSV table to write (results/masks/quality.csv)")


def run(args) -> None:
    table = mask_quality(args.frames, {"dataset": args.dataset, "generic": args.generic}, left_out=args.left_out)
    with atomic_path(args.out) as tmp:
        table.to_csv(tmp, index=False, float_format="%.2f")
    log.info("mask quality:\n%s", table.to_string(index=False))


def mask_quality(frames: list[str | Path], caches: dict[str, list[str | Path]], split: str = "test",
                 left_out: list[str] = ()) -> pd.DataFrame:
    """AP table of the given sources (see the module docstring) over the ``split`` frames of ``frames``, and a row
    without figures for each ``left_out`` note (``"source: why"``).

    Streams frame by frame: each frame's instances and regions are read, run-length encoded at once and dropped, so
    memory holds only the compact encodings (a full-size A2D test split as float masks would need tens of GB).
    """
    refs = list_frames(frames, split=split)
    if not refs:
        raise A2DError(f"{frames[0]}: no {split}-split frames to measure mask quality on")
    sources = {source: paths for source, paths in caches.items() if paths}
    truth, found = _encode_frames(frames, refs, sources)
    rows = []
    for source, detections in found.items():
        for categories in (("agnostic",) if source == "generic" else ("actor", "agnostic")):
            ap = coco_mask_ap(truth, detections, agnostic=categories == "agnostic")
            rows.append({"source": source, "categories": categories, **ap, "frames": len(refs),
                         "regions_per_frame": float(np.mean([len(d) for d in detections])), "note": ""})
    for note in left_out:
        source, _, why = note.partition(":")
        if not why.strip() or source.strip() in sources:
            raise A2DError(f"--left-out {note!r}: expected 'source: why' for a source not measured")
        rows.append({"source": source.strip(), "categories": "agnostic", "frames": len(refs),
                     "note": f"not measured: {why.strip()}"})
    return pd.DataFrame(rows, columns=COLUMNS)


def _encode_frames(frames, refs, sources):
    """Ground truth and every source's regions of ``refs``, one frame at a time, as :class:`EncodedFrame` lists."""
    with contextlib.ExitStack() as stack:
        reader = stack.enter_context(InstanceReader(frames))
        caches = {s: [stack.enter_context(MaskCache(p)) for p in paths] for s, paths in sources.items()}
        truth, found = [], {source: [] for source in sources}
        for ref in refs:
            rgb, masks, labels = reader.read(ref, "dataset")
            size = rgb.shape[:2]
            truth.append(EncodedFrame.from_masks(masks, labels, size=size))
            for source, source_caches in caches.items():
                holder = next((c for c in source_caches if (ref.video, ref.frame) in c), None)
                if holder is None:
                    key = group_key(ref.video, ref.frame)
                    raise A2DError(f"{sources[source][0]}: no cached regions for test frame {key}")
                found[source].append(EncodedFrame.from_regions(holder.read(ref.video, ref.frame)))
    return truth, found


@dataclass(frozen=True)
class EncodedFrame:
    """One frame's instances or regions as COCO run-length encodings: size (H, W), rles, labels, scores."""

    size: tuple[int, int]
    rles: list[dict]
    labels: np.ndarray
    scores: np.ndarray

    @classmethod
    def from_masks(cls, masks: np.ndarray, labels, scores=None, *, size=None) -> "EncodedFrame":
        """From (N, H, W) binary masks (``size`` needed only when N is 0 and masks carry no H, W)."""
        labels = np.asarray(labels, np.int64)
        scores = np.ones(len(labels), np.float32) if scores is None else np.asarray(scores, np.float32)
        return cls(tuple(size or masks.shape[1:]), _rle(masks), labels, scores)

    @classmethod
    def from_regions(cls, regions: Regions) -> "EncodedFrame":
        """From cached regions, their soft masks cut at 0.5."""
        return cls.from_masks(regions.masks >= 0.5, regions.labels, regions.scores, size=regions.size)

    def __len__(self) -> int:
        return len(self.rles)


def _rle(masks: np.ndarray) -> list[dict]:
    if len(masks) == 0:
        return []
    encoded = mask_utils.encode(np.asfortranarray(masks.transpose(1, 2, 0).astype(np.uint8)))
    for e in encoded:
        e["counts"] = e["counts"].decode("ascii")
    return encoded


def coco_mask_ap(truth: list[EncodedFrame], regions: list[EncodedFrame], *, agnostic: bool) -> dict[str, float]:
    """Mask AP (percent) of ``regions`` against ``truth``, frame by frame (scores of ``truth`` are unused).

    ``agnostic``: one category; otherwise the 7 actor categories (regions labelled 0 can then match nothing).
    """
    categories = [{"id": 1, "name": "actor"}] if agnostic else [{"id": i + 1, "name": n} for i, n in enumerate(ACTORS)]
    images, annotations, detections = [], [], []
    for image_id, (gt, found) in enumerate(zip(truth, regions), start=1):
        height, width = found.size
        images.append({"id": image_id, "height": height, "width": width})
        for rle, label in zip(gt.rles, gt.labels):
            annotations.append({
                "id": len(annotations) + 1, "image_id": image_id, "category_id": 1 if agnostic else int(label),
                "segmentation": rle, "area": float(mask_utils.area(rle)), "bbox": list(mask_utils.toBbox(rle)),
                "iscrowd": 0,
            })
        for rle, label, score in zip(found.rles, found.labels, found.scores):
            detections.append({"image_id": image_id, "category_id": 1 if agnostic else int(label),
                               "segmentation": rle, "score": float(score)})
    if not annotations:
        raise A2DError("no actor instances in the test split: mask AP is undefined")
    detections = [d for d in detections if d["category_id"] >= 1]  # label 0 (actor unknown) matches no actor class
    if not detections:
        return {"AP": 0.0, "AP50": 0.0, "AP75": 0.0}
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
        gt = COCO()
        gt.dataset = {"images": images, "annotations": annotations, "categories": categories}
        gt.createIndex()
        evaluator = COCOeval(gt, gt.loadRes(detections), iouType="segm")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    stats = evaluator.stats
    return {"AP": 100 * max(0.0, stats[0]), "AP50": 100 * max(0.0, stats[1]), "AP75": 100 * max(0.0, stats[2])}
