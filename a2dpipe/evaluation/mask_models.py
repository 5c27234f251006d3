"""Mask-model comparison: Table 3 of two runs that differ only in their mask model, beside their masks' quality.

Command::

    a2dpipe compare-masks --config C \
        --model "model=fcis" --quality results/masks/quality.csv \
        --evaluations results/evaluation/ours/rgbflow/*/*.json --per-video results/evaluation/ours/rgbflow/*/*.npz \
        --model "model=maskrcnn" --quality results/compare-masks/masks/quality.csv \
        --evaluations ... --per-video ... \
        --out results/tables/mask_models.csv

Each ``--model`` starts a run's group of options: its label, its mask-quality table (``a2dpipe mask-quality``),
and its evaluations and per-video matrices of Table 3's variants. The table (written as ``.csv``, ``.md`` and
``.tex``, as the other tables) has one row per run and Table 3 row: ``mask model``, ``training masks``, ``test
masks``, ``test mask AP`` (class-agnostic COCO mask AP of the test masks on the test split; none for ``gt``) and
Table 3's metrics with their 95% bootstrap intervals over the test videos, each run bootstrapped on its own.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import pandas as pd

from a2dpipe.config import check_consistent, code_of
from a2dpipe.settings import add_config_arguments, read_settings
from a2dpipe.evaluation.claims import Intervals, load_intervals
from a2dpipe.evaluation.tables import THIS_RUN, load_evaluations, read_csv_table, table3
from a2dpipe.evaluation.writers import write_table
from a2dpipe.errors import A2DError

__all__ = ["mask_models_table", "configure_parser", "run"]

log = logging.getLogger(__name__)

CAPTION = ("Mask models. Table 3 (RGB + flow) of runs that differ only in their mask model (label: the mask "
           "settings they differ in), beside the class-agnostic mask AP of the test masks on the test split. "
           "Percentages; in brackets: 95% bootstrap interval over test videos.")


def _test_mask_ap(quality: pd.DataFrame, path) -> dict[str, float]:
    """``{source: class-agnostic mask AP}`` of a mask-quality table."""
    if not {"source", "categories", "AP"} <= set(quality.columns):
        raise A2DError(f"{path}: not a mask-quality table (expected columns source, categories, AP)")
    agnostic = quality[quality["categories"] == "agnostic"]
    return dict(zip(agnostic["source"], agnostic["AP"]))


def mask_models_table(runs: list[tuple[str, dict[str, float], dict, Intervals | None]]) -> pd.DataFrame:
    """One row per (run, Table 3 row of this run): ``runs`` holds (label, {source: mask AP}, evaluations,
    intervals) per run."""
    tables = []
    for label, mask_ap, evals, intervals in runs:
        rows = table3(evals, intervals)
        rows = rows[rows["source"] == THIS_RUN].drop(columns="source")
        rows.insert(0, "mask model", label)
        rows.insert(3, "test mask AP", [mask_ap.get(test, math.nan) for test in rows["test masks"]])
        tables.append(rows)
    return pd.concat(tables, ignore_index=True)


def configure_parser(parser) -> None:
    add_config_arguments(parser, "compare-masks")
    parser.add_argument("--model", action="append", required=True,
                        help="label of a run; starts its group of the options below")
    parser.add_argument("--quality", action="append", required=True, help="the run's mask-quality CSV")
    parser.add_argument("--evaluations", action="append", nargs="+", required=True,
                        help="the run's evaluation JSON files of Table 3's variants")
    parser.add_argument("--per-video", action="append", nargs="+", required=True,
                        help="the run's per-video confusion matrices (.npz) of those variants")
    parser.add_argument("--out", required=True, help="CSV to write (.md and .tex beside it)")


def run(args) -> None:
    groups = [args.model, args.quality, args.evaluations, args.per_video]
    if len({len(g) for g in groups}) != 1:
        raise A2DError("compare-masks: give --quality, --evaluations and --per-video once after each --model")
    config = read_settings(args, "compare-masks")
    resamples, seed = int(config["evaluation"]["bootstrap_resamples"]), int(config["seed"])
    runs, code = [], {}
    for label, quality, evaluations, per_video in zip(*groups):
        evals = load_evaluations(evaluations)
        # the two runs differ in their mask settings by design, never in the code that scored them
        code.update({path: {"code": code_of(e.get("provenance"))} for path, e in zip(evaluations, evals.values())})
        intervals = load_intervals(per_video, evals, resamples=resamples, seed=seed)
        runs.append((label, _test_mask_ap(read_csv_table(quality, "mask quality"), quality), evals, intervals))
    check_consistent(code)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    written = write_table(mask_models_table(runs), out.parent, out.stem, CAPTION)
    log.info("wrote %s", ", ".join(map(str, written)))
