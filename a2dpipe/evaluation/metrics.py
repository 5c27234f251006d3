"""Segmentation metrics of the paper (section 4): confusion matrices, the three scores, the non-boundary band.

Everything is counted in confusion matrices, one per evaluation setting (``a2dpipe.labels.SETTINGS``), rows =
ground truth class, columns = predicted class, accumulated over all test frames with one ``np.bincount`` per
frame and setting. Ground-truth pixels whose id is not background or a valid pair (``IGNORE`` after
``labels.to_setting``) are left out; a prediction must always name a class of the setting.

Conventions of the scores (all fractions in [0, 1]; ``nan`` where undefined):

* **global pixel accuracy** = trace / sum over all counted pixels.
* **class accuracy** of class k = C[k, k] / (pixels of k in ground truth); defined only for classes with
  ground-truth pixels. **Mean class accuracy** averages it over those classes (a class that only appears in
  predictions has no defined accuracy; its false positives already lower the other classes' IoU).
* **class IoU** of class k = C[k, k] / (ground truth of k + predictions of k - C[k, k]); defined for classes that
  appear in ground truth or prediction (a class predicted but absent from ground truth gets IoU 0).
  **Mean class IoU** averages over those classes.
* Classes absent from both ground truth and prediction are excluded from both means.

Non-boundary band (Table 2): a pixel is a *label change* when its raw ground-truth id differs from that of the
pixel to its right or the pixel below it (so each change marks the pixel on its top/left side; the image border
is not a change; ids that are ignored count as labels like any other). The boundary band is the dilation of the
change map by a ``width`` x ``width`` square (``cv2.dilate``, anchor at the centre): every pixel within Chebyshev
distance ``width // 2`` of a marked pixel. Across a straight boundary the band is therefore exactly ``width``
pixels wide for odd widths (7 + 1 + 7 for the default 15). ``width = 0`` draws no band.

Example:
    >>> gt = np.array([[0, 0, 11, 11]], dtype=np.uint8)
    >>> cms = confusion_matrices(gt, {"actor": np.array([[0, 1, 1, 1]]), "action": np.array([[0, 0, 1, 1]]),
    ...                               "actor_action": np.array([[0, 1, 1, 1]])})
    >>> round(scores(cms["actor"])["global_accuracy"], 2), round(scores(cms["action"])["global_accuracy"], 2)
    (0.75, 1.0)
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import cv2
import numpy as np

from a2dpipe.labels import IGNORE, NUM_CLASSES, SETTINGS, VALID_PAIRS, class_names, to_setting

__all__ = [
    "REGIONS",
    "confusion_matrix",
    "confusion_matrices",
    "prediction_classes",
    "boundary_band",
    "ConfusionAccumulator",
    "scores",
    "metrics",
    "per_category_accuracy",
]

REGIONS: tuple[str, ...] = ("whole", "non_boundary")


def confusion_matrix(gt: np.ndarray, pred: np.ndarray, num_classes: int, where: np.ndarray | None = None) -> np.ndarray:
    """(K, K) int64 counts of (ground truth, prediction) class pairs; ``IGNORE`` ground truth left out.

    ``gt`` and ``pred`` are class maps of one setting (same shape, any integer dtype); ``where`` optionally
    restricts the count to the pixels where it is True. Raises ``ValueError`` when a counted prediction is not
    a class of the setting.
    """
    gt = np.asarray(gt)
    pred = np.asarray(pred)
    if gt.shape != pred.shape:
        raise ValueError(f"ground truth {gt.shape} and prediction {pred.shape} differ in shape")
    keep = gt != IGNORE
    if where is not None:
        keep &= np.asarray(where, dtype=bool)
    g = gt[keep].astype(np.int64)
    p = pred[keep].astype(np.int64)
    if p.size and (p.min() < 0 or p.max() >= num_classes):
        raise ValueError(f"prediction holds class {int(p.max())}, outside 0..{num_classes - 1}")
    return np.bincount(g * num_classes + p, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def prediction_classes(pred: Mapping[str, np.ndarray] | np.ndarray) -> dict[str, np.ndarray]:
    """Class maps per setting from a prediction.

    ``pred`` is either a joint A2D id map (every setting is derived from it with ``to_setting``) or a mapping
    with keys ``actor`` (classes 0..7), ``action`` (0..9) and ``joint`` (A2D ids) — the layout of a prediction
    group — or already ``actor_action`` (classes 0..43).
    """
    if not isinstance(pred, Mapping):
        return {s: to_setting(pred, s) for s in SETTINGS}
    out = {"actor": np.asarray(pred["actor"]), "action": np.asarray(pred["action"])}
    if "actor_action" in pred:
        out["actor_action"] = np.asarray(pred["actor_action"])
    else:
        out["actor_action"] = to_setting(pred["joint"], "actor_action")
    return out


def confusion_matrices(gt_ids: np.ndarray, pred, where: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Confusion matrix per setting of one frame: ``{setting: (K, K) int64}`` (see ``prediction_classes``)."""
    classes = prediction_classes(pred)
    return {
        s: confusion_matrix(to_setting(gt_ids, s), classes[s], NUM_CLASSES[s], where)
        for s in SETTINGS
    }


def boundary_band(gt_ids: np.ndarray, width: int) -> np.ndarray:
    """(H, W) bool: True inside the band of ``width`` pixels around ground-truth label changes (module doc)."""
    ids = np.asarray(gt_ids)
    if ids.ndim != 2:
        raise ValueError(f"expected an (H, W) label map, got shape {ids.shape}")
    if width < 0:
        raise ValueError(f"boundary width must be >= 0, got {width}")
    change = np.zeros(ids.shape, dtype=np.uint8)
    if width == 0:
        return change.astype(bool)
    change[:, :-1] |= ids[:, :-1] != ids[:, 1:]
    change[:-1, :] |= ids[:-1, :] != ids[1:, :]
    kernel = np.ones((width, width), dtype=np.uint8)
    return cv2.dilate(change, kernel, borderType=cv2.BORDER_CONSTANT, borderValue=0).astype(bool)


def _zero_matrices() -> dict[str, dict[str, np.ndarray]]:
    return {r: {s: np.zeros((NUM_CLASSES[s],) * 2, dtype=np.int64) for s in SETTINGS} for r in REGIONS}


class ConfusionAccumulator:
    """Sums confusion matrices over frames for the whole image and for the non-boundary pixels.

    ``matrices[region][setting]`` is a (K, K) int64 array, region in ``REGIONS``. Whole-image and non-boundary
    counts of a setting come from a single ``bincount`` (the band flag is folded into the bin index).
    Frames added with a ``video`` are also summed per video (``video_matrices``: what the bootstrap resamples).
    """

    def __init__(self, boundary_width: int = 15):
        if boundary_width < 0:
            raise ValueError(f"boundary width must be >= 0, got {boundary_width}")
        self.boundary_width = int(boundary_width)
        self.frames = 0
        self.matrices = _zero_matrices()
        self.by_video: dict[str, dict[str, dict[str, np.ndarray]]] = {}

    def video_matrices(self) -> tuple[list[str], dict[str, dict[str, np.ndarray]]]:
        """(videos sorted, ``{region: {setting: (V, K, K) int64}}``) of the frames added with a ``video``."""
        videos = sorted(self.by_video)
        stacks = {
            r: {s: np.stack([self.by_video[v][r][s] for v in videos]) if videos
                else np.zeros((0, NUM_CLASSES[s], NUM_CLASSES[s]), dtype=np.int64) for s in SETTINGS}
            for r in REGIONS
        }
        return videos, stacks

    def add(self, gt_ids: np.ndarray, pred, video: str | None = None) -> None:
        """Count one frame: ``gt_ids`` (H, W) raw A2D ids, ``pred`` as accepted by ``prediction_classes``.

        Every predicted pixel must hold a class of its setting (ignored ground truth included). With ``video``
        the frame's counts are also added to that video's matrices.
        """
        gt_ids = np.asarray(gt_ids, dtype=np.uint8)
        classes = prediction_classes(pred)
        band = boundary_band(gt_ids, self.boundary_width).astype(np.uint16)
        per_video = None if video is None else self.by_video.setdefault(str(video), _zero_matrices())
        for s in SETTINGS:
            k = NUM_CLASSES[s]
            p = np.asarray(classes[s])
            if p.shape != gt_ids.shape:
                raise ValueError(f"{s}: prediction has shape {p.shape}, ground truth {gt_ids.shape}")
            if p.size and (int(p.min()) < 0 or int(p.max()) >= k):
                raise ValueError(f"{s}: prediction holds class {int(p.max())}, outside 0..{k - 1}")
            # One uint16 bin index per pixel, no boolean indexing (the slow part at A2D frame sizes):
            # ignored ground truth goes to an extra row k that is dropped; band pixels to the second block.
            idx = _GT_ROWS[s][gt_ids]
            idx *= k
            idx += p.astype(np.uint16, copy=False)
            idx += band * np.uint16((k + 1) * k)
            counts = np.bincount(idx.ravel(), minlength=2 * (k + 1) * k).reshape(2, k + 1, k)[:, :k]
            self.matrices["non_boundary"][s] += counts[0]
            self.matrices["whole"][s] += counts[0] + counts[1]
            if per_video is not None:
                per_video["non_boundary"][s] += counts[0]
                per_video["whole"][s] += counts[0] + counts[1]
        self.frames += 1


def _gt_rows() -> dict[str, np.ndarray]:
    # raw id -> confusion row (uint16): the setting's class, or K (a dump row) for ignored ids
    rows = {}
    for s in SETTINGS:
        table = to_setting(np.arange(256, dtype=np.uint8), s).astype(np.uint16)
        table[table == IGNORE] = NUM_CLASSES[s]
        rows[s] = table
    return rows


_GT_ROWS = _gt_rows()


def _nan_mean(values: np.ndarray) -> float:
    return float(values[~np.isnan(values)].mean()) if np.any(~np.isnan(values)) else math.nan


def scores(cm: np.ndarray) -> dict:
    """Scores of one confusion matrix (module doc for the conventions).

    Returns ``{"global_accuracy", "mean_class_accuracy", "mean_iou": float, "class_accuracy", "class_iou":
    list[float] (nan where undefined), "pixels": int}``.
    """
    cm = np.asarray(cm, dtype=np.float64)
    tp = np.diag(cm)
    gt = cm.sum(axis=1)
    pr = cm.sum(axis=0)
    union = gt + pr - tp
    total = cm.sum()
    with np.errstate(invalid="ignore", divide="ignore"):
        acc = np.where(gt > 0, tp / gt, np.nan)
        iou = np.where(union > 0, tp / union, np.nan)
    return {
        "global_accuracy": float(tp.sum() / total) if total > 0 else math.nan,
        "mean_class_accuracy": _nan_mean(acc),
        "mean_iou": _nan_mean(iou),
        "class_accuracy": acc.tolist(),
        "class_iou": iou.tolist(),
        "pixels": int(total),
    }


def metrics(matrices: Mapping[str, np.ndarray]) -> dict[str, dict]:
    """The paper's three metrics per setting: ``{setting: scores(cm) | {"classes": names}}``."""
    return {s: {**scores(matrices[s]), "classes": class_names(s)} for s in SETTINGS}


def per_category_accuracy(cm_actor_action: np.ndarray) -> dict[str, float]:
    """Table 5: accuracy of background and each of the 43 pairs (``nan`` if absent from ground truth)."""
    cm = np.asarray(cm_actor_action)
    if cm.shape != (len(VALID_PAIRS) + 1,) * 2:
        raise ValueError(f"expected a 44 x 44 actor-action confusion matrix, got {cm.shape}")
    return dict(zip(class_names("actor_action"), scores(cm)["class_accuracy"]))
