"""Report figures for ``snakemake --report``: per-category accuracy, training loss curves, qualitative overlays.

Command::

    a2dpipe report --config C --evaluations results/evaluation/*/*/*/*.json \
        --checkpoints results/models/.../model.pt ... \
        --frames results/frames/shard-*.h5 --baseline results/predictions/baseline/rgbflow/none/none.h5 \
        --ours results/predictions/ours/rgbflow/dataset/dataset.h5 --out-dir results/figures

Writes three PNG files (matplotlib, Agg back-end) into the output folder:

* ``per_category.png`` — per-category accuracy (background + 43 pairs) of the Baseline and Ours variants of
  Table 5 that were evaluated, with the paper's Ours (RGB + flow) as black ticks;
* ``loss_curves.png`` — every ``*.csv`` training curve found beside the given checkpoints (the trainers write
  ``loss.csv``: ``step``, the total ``loss``, ``lr`` and each loss term): every loss column, and the learning
  rate on a second axis, against whole-number steps;
* ``qualitative.png`` — ``evaluation.qualitative_frames`` test frames evenly spread over the sorted test frames
  (not chosen by score), one row each: frame, ground truth, Baseline, Ours (columns titled by variant,
  :func:`variant_title`), labels blended over the frame in
  the A2D palette (``a2dpipe.labels.PALETTE``), with a legend of the pairs shown.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from a2dpipe.dataset.frames import FrameStore
from a2dpipe.evaluation import paper_results
from a2dpipe.settings import add_config_arguments, read_settings
from a2dpipe.errors import A2DError
from a2dpipe.io import atomic_path
from a2dpipe.labels import BACKGROUND, IGNORE, PALETTE, VALID_PAIRS, class_names, pair_name
from a2dpipe.evaluation.tables import INPUT_NAMES, METHOD_NAMES, load_evaluations
from a2dpipe.segmentation.predictions import PredictionStore
from a2dpipe.stores import group_key
from a2dpipe.variants import INPUTS, Variant, check_variant, variant_name, variant_of

__all__ = ["per_category_figure", "loss_curves_figure", "qualitative_figure", "overlay", "variant_title",
           "configure_parser", "run"]

log = logging.getLogger(__name__)

TABLE5_VARIANTS = {  # display name -> title, as Table 5 orders them
    variant_name(variant_of(kind, inp)): f"{METHOD_NAMES[kind]} ({INPUT_NAMES[inp]})"
    for kind in ("baseline", "ours") for inp in INPUTS
}
ALPHA = 0.6  # label colour over the frame: the actor stays visible through it


def _save(fig, path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100, bbox_inches="tight")


def per_category_figure(evals: dict, path) -> None:
    """Grouped bars of per-category accuracy (percent), one colour per evaluated Table 5 variant."""
    import matplotlib.pyplot as plt

    names = class_names("actor_action")
    present = [v for v in TABLE5_VARIANTS if v in evals]
    fig, ax = plt.subplots(figsize=(18, 5))
    x = np.arange(len(names))
    width = 0.8 / max(1, len(present))
    for k, variant in enumerate(present):
        per = evals[variant]["per_category_accuracy"]
        values = [np.nan if per.get(n) is None else 100 * per[n] for n in names]
        ax.bar(x - 0.4 + (k + 0.5) * width, values, width, label=f"{TABLE5_VARIANTS[variant]}, this run")
    ref = paper_results.TABLE5[("ours", "rgbflow")]
    ax.scatter(x, [np.nan if ref[n] is None else ref[n] for n in names], marker="_", s=120, color="black",
               label="Ours (RGB + flow), paper", zorder=3)
    ax.set_xticks(x, names, rotation=90, fontsize=8)
    ax.set_xlim(-0.6, len(names) - 0.4)
    ax.set_ylim(0, 100)
    ax.set_ylabel("accuracy (%)")
    ax.set_title("Per-category accuracy, actor-action setting (no bar: category absent from the test ground truth)")
    ax.legend(fontsize=8, ncol=5, loc="upper center", bbox_to_anchor=(0.5, -0.32), frameon=False)
    _save(fig, path)
    plt.close(fig)


def _curve_files(checkpoints) -> list[Path]:
    files = []
    for ckpt in checkpoints:
        files += sorted(Path(ckpt).parent.glob("*.csv"))
    return list(dict.fromkeys(files))


def _curve_label(path: Path) -> str:
    parts = path.parent.parts
    return "/".join(parts[-3:]) if "masks" in parts else "/".join(parts[-2:])


def _read_curve(csv_path: Path) -> pd.DataFrame | None:
    """A training curve: ``step``, then ``loss`` (or ``total``), ``lr`` and each loss term when written."""
    try:
        df = pd.read_csv(csv_path)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as err:
        raise A2DError(f"{csv_path}: cannot read the training curve: {err}") from None
    if "step" not in df.columns or not {"loss", "total"} & set(df.columns):
        log.warning("%s: no 'step' and 'loss'/'total' columns; not drawn", csv_path)
        return None
    return df


def _draw_curve(ax, label: str, df: pd.DataFrame) -> None:
    """Every loss column against the step (the total drawn thickest), the learning rate on a second axis."""
    from matplotlib.ticker import MaxNLocator

    losses = [c for c in df.columns if c not in ("step", "lr")]
    total = next(c for c in ("loss", "total") if c in losses)
    for column in [total, *(c for c in losses if c != total)]:
        ax.plot(df["step"], df[column], lw=1.6 if column == total else 0.9, label=column)
    ax.set_title(label, fontsize=9)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    handles, names = ax.get_legend_handles_labels()
    if "lr" in df.columns:
        lr_ax = ax.twinx()
        (line,) = lr_ax.plot(df["step"], df["lr"], color="grey", ls="--", lw=0.9, label="learning rate")
        lr_ax.set_ylabel("learning rate", fontsize=8)
        lr_ax.tick_params(labelsize=7)
        lr_ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
        handles, names = handles + [line], names + ["learning rate"]
    ax.legend(handles, names, fontsize=7, loc="upper right")


def loss_curves_figure(checkpoints, path) -> int:
    """One panel per training-curve CSV beside the checkpoints: each loss term and the total against the step,
    and the learning rate on a second axis; returns the number of curves drawn."""
    import matplotlib.pyplot as plt

    curves = [(_curve_label(p), df) for p in _curve_files(checkpoints) if (df := _read_curve(p)) is not None]
    cols = min(3, max(1, len(curves)))
    rows = max(1, -(-len(curves) // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(5.5 * cols, 3.4 * rows), squeeze=False)
    for ax, (label, df) in zip(axes.flat, curves):
        _draw_curve(ax, label, df)
    for ax in axes.flat[len(curves):]:
        ax.axis("off")
    if not curves:
        axes.flat[0].text(0.5, 0.5, "no training curves found beside the checkpoints", ha="center", va="center")
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)
    return len(curves)


def overlay(rgb: np.ndarray, ids: np.ndarray, alpha: float = ALPHA) -> np.ndarray:
    """(H, W, 3) uint8: ``rgb`` with the palette colour of every non-background id blended in."""
    colour = PALETTE[np.asarray(ids, dtype=np.uint8)].astype(np.float32)
    out = rgb.astype(np.float32)
    fg = (np.asarray(ids) != BACKGROUND)[..., None]
    return np.where(fg, (1 - alpha) * out + alpha * colour, out).round().astype(np.uint8)


def _test_keys(frame_paths) -> list[tuple[Path, str, int]]:
    """(frames shard, video, frame) of every test frame, sorted by group key."""
    keys = []
    for path in frame_paths:
        with FrameStore(path) as store:
            keys += [(Path(path), video, frame) for video, frame in store.keys("test")]
    return sorted(keys, key=lambda k: group_key(k[1], k[2]))


def variant_title(predictions) -> str:
    """Display name of a prediction file's variant, as the tables name it: ``Ours (RGB + flow), masks: dataset ->
    dataset``. The variant comes from the workflow's layout (``<kind>/<input>/<train>/<test>.h5``), else from
    the file's ``variant`` attribute (the joined name, shown as it is)."""
    path = Path(predictions)
    try:
        variant = check_variant(Variant(*path.parts[-4:-1], path.stem))
    except (A2DError, TypeError):
        with PredictionStore(path) as store:
            return store.variant
    title = f"{METHOD_NAMES[variant.kind]} ({INPUT_NAMES[variant.input]})"
    if variant.kind == "ours":
        return f"{title}, masks: {variant.train_source} -> {variant.test_source}"
    return f"{title}, {variant.test_source} masks" if variant.kind == "maskvote" else title


def _read(reader, path, video: str, frame: int, dataset: str) -> np.ndarray:
    with reader(path) as store:
        return store.read_arrays(video, frame, (dataset,))[dataset]


def qualitative_figure(frame_paths, baseline, ours, count: int, path) -> list[str]:
    """Rows of (frame, ground truth, Baseline, Ours) overlays for ``count`` evenly spread test frames."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    keys = _test_keys(frame_paths)
    if not keys:
        raise A2DError(f"{frame_paths[0]}: no test frames to show")
    picks = [keys[i] for i in np.unique(np.linspace(0, len(keys) - 1, min(count, len(keys))).round().astype(int))]
    columns = [("frame", None), ("ground truth", None), (variant_title(baseline), baseline),
               (variant_title(ours), ours)]
    fig, axes = plt.subplots(len(picks), 4, figsize=(14, 2.9 * len(picks)), squeeze=False)
    shown: set[int] = set()
    for row, (frames_path, video, frame) in enumerate(picks):
        rgb = _read(FrameStore, frames_path, video, frame, "rgb")
        gt = _read(FrameStore, frames_path, video, frame, "label")
        maps = [None, gt] + [_read(PredictionStore, p, video, frame, "joint") for p in (baseline, ours)]
        for col, ((title, _), ids) in enumerate(zip(columns, maps)):
            ax = axes[row, col]
            if ids is None:
                ax.imshow(rgb)
            else:
                ax.imshow(overlay(rgb, ids))
                shown.update(int(v) for v in np.unique(ids) if v not in (BACKGROUND, IGNORE))
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(title, fontsize=10)
            if col == 0:
                ax.set_ylabel(group_key(video, frame), fontsize=8)
    valid = sorted(v for v in shown if v in VALID_PAIRS)  # ignored ids get no legend entry
    handles = [Patch(color=PALETTE[v] / 255.0, label=pair_name(v)) for v in valid]
    if handles:
        fig.legend(handles=handles, loc="lower center", ncol=min(6, len(handles)), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.04 * (1 + len(handles) // 6), 1, 1))
    _save(fig, path)
    plt.close(fig)
    return [group_key(video, frame) for _, video, frame in picks]


def configure_parser(parser) -> None:
    add_config_arguments(parser, "report")
    parser.add_argument("--evaluations", nargs="+", required=True, help="evaluation JSON files")
    parser.add_argument("--checkpoints", nargs="*", default=[], help="model checkpoints; curves are read beside them")
    parser.add_argument("--frames", nargs="+", required=True, help="frame stores (every shard)")
    parser.add_argument("--baseline", required=True, help="Baseline prediction file shown in the overlays")
    parser.add_argument("--ours", required=True, help="Ours prediction file shown in the overlays")
    parser.add_argument("--out-dir", required=True, help="folder of the PNG files")


def run(args) -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only; no display on cluster nodes
    section = read_settings(args, "report")["evaluation"]
    out = Path(args.out_dir)
    per_category_figure(load_evaluations(args.evaluations), out / "per_category.png")
    n = loss_curves_figure(args.checkpoints, out / "loss_curves.png")
    picks = qualitative_figure(args.frames, args.baseline, args.ours, int(section["qualitative_frames"]),
                               out / "qualitative.png")
    log.info("figures in %s: %d training curves, overlays of %s", out, n, ", ".join(picks))
