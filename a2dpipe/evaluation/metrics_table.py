"""Metrics table: every evaluated variant's metrics, one row per variant and pixel region (whole image,
non-boundary), with 95% paired-bootstrap intervals over its videos: the validate target's table of the validation
split, where settings are chosen (never on test).

Command::

    a2dpipe metrics-table --settings S --evaluations results/evaluation/val/*/*/*/*.json \
        --per-video results/evaluation/val/*/*/*/*.videos.npz --out-dir results/validation

writes ``DIR/metrics.{csv,md,tex,html}``; the intervals and their settings are the tables' (:mod:`.tables`).
"""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from a2dpipe.settings import add_config_arguments, read_settings
from a2dpipe.evaluation.claims import Intervals
from a2dpipe.evaluation.tables import INTERVAL_HEADERS, bootstrap_intervals, load_evaluations, run_row
from a2dpipe.evaluation.writers import write_table

__all__ = ["metrics_table", "make_metrics_table", "configure_parser", "run"]

log = logging.getLogger(__name__)


def metrics_table(evals: dict, intervals: Intervals | None = None) -> pd.DataFrame:
    """Every evaluated variant's metrics, whole image and non-boundary, with intervals."""
    rows = [[variant, region, evals[variant].get("split", "test"), *run_row(evals[variant], region, intervals)]
            for variant in sorted(evals) for region in ("whole", "non_boundary")]
    return pd.DataFrame(rows, columns=["variant", "pixels", "split", *INTERVAL_HEADERS])


def make_metrics_table(evals: dict, out_dir, intervals: Intervals | None = None) -> list[Path]:
    """``out_dir/metrics.*``: :func:`metrics_table`; returns the paths written."""
    splits = sorted({e.get("split", "test") for e in evals.values()})
    caption = (f"Metrics of every variant on the {'/'.join(splits)} split (percentages); in brackets: 95% "
               "bootstrap interval over its videos.")
    return write_table(metrics_table(evals, intervals), Path(out_dir), "metrics", caption)


def configure_parser(parser) -> None:
    add_config_arguments(parser, "metrics-table")
    parser.add_argument("--evaluations", nargs="+", required=True, help="evaluation JSON files of every variant")
    parser.add_argument("--per-video", nargs="*", default=[],
                        help="per-video confusion matrices (.npz) of the variants: bootstrap intervals")
    parser.add_argument("--out-dir", required=True, help="folder of DIR/metrics.{csv,md,tex,html}")


def run(args) -> None:
    evals = load_evaluations(args.evaluations)
    intervals = bootstrap_intervals(args.per_video, evals, read_settings(args, "metrics-table"))
    written = make_metrics_table(evals, args.out_dir, intervals)
    log.info("wrote %s", ", ".join(map(str, written)))
