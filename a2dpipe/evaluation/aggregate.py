"""Aggregate stage: Tables 1-3 and the claims across the runs of several seeds (config ``seeds``).

Command (rule ``aggregate`` of a seeds run, ``workflow/rules/seeds.smk``)::

    a2dpipe aggregate --seed 0 --claims results/seed-0/tables/claims.csv --evaluations results/seed-0/evaluation/... \
                      --seed 1 --claims results/seed-1/tables/claims.csv --evaluations results/seed-1/evaluation/... \
                      --out-dir results/aggregate

Each ``--seed`` opens one seed's run: the evaluation files its tables were made from and its claims table (the
verdicts of its own bootstrap). Written into DIR as CSV, Markdown and LaTeX (:mod:`.writers`), then ``done``:

=======================  ======================================================================================
``table1`` .. ``table3``  the paper's rows as in each seed's table; per row of this run its mean across seeds
                         (``<metric>``), sample standard deviation (``<metric> sd``; ddof 1, so none with one
                         seed) and how many seeds have the row (``seeds``); Markdown and LaTeX show ``15.8 ± 1.2``
``claims``               per claim: each compared value's mean, each step's difference as mean ± sd across seeds,
                         how many seeds resolve the claim ``yes`` (each by its own claims table) and whether the
                         seeds agree (``yes in 3 of 3 seeds``, ``split: yes 2, not resolved 1 (of 3 seeds)``)
=======================  ======================================================================================

Seeds that share the data (as a seeds run does) differ only in training (mask models, stage 1, stage 2) and in
the bootstrap's draws, so the spread measures training noise; one seed's bootstrap interval measures the choice of
test videos. A claim that holds for every seed's interval is robust to both: the aggregate is the test of training
noise that one run's claims table (conditional on its models) cannot be.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd

from a2dpipe.config import check_consistent, read_stamp
from a2dpipe.evaluation import tables
from a2dpipe.evaluation.claims import CLAIMS, percent
from a2dpipe.evaluation.writers import HIGH, LOW, SD, spread_text, write_table
from a2dpipe.errors import A2DError
from a2dpipe.io import atomic_path

__all__ = ["AGGREGATE", "SeedRun", "read_verdicts", "load_runs", "aggregate_table", "aggregate_claims",
           "make_aggregate", "configure_parser", "run"]

log = logging.getLogger(__name__)

AGGREGATE = "this run, mean ± sd over seeds"  # source of an aggregated row
TABLES = {"table1": tables.table1, "table2": tables.table2, "table3": tables.table3}
DESCRIPTIONS = {
    "table1": "Baseline, Mask vote (this run's control) and Ours with RGB or RGB + flow input, region masks from "
    "the dataset-trained mask model.",
    "table2": "Baseline and Ours (RGB + flow) on the pixels away from ground-truth label changes.",
    "table3": "Region-mask sources (RGB + flow) for training and testing.",
    "claims": "The paper's qualitative claims and the mask-vote control: the mean over seeds of each compared "
    "value, each step's difference as mean ± sample standard deviation over seeds, how many seeds resolve the "
    "claim yes (by that seed's own claims table: intervals over test videos, conditional on its models) and "
    "whether the seeds agree. This table is the test of training noise (mask models, stage 1, stage 2 and the "
    "bootstrap's draws change with the seed; the data do not): a claim is robust to it when every seed says yes. "
    "Thread counts and kinds of CPU move results by amounts of the same order, so a claim split across seeds "
    "can also go either way from one machine to another.",
}


class SeedRun(NamedTuple):
    """What the aggregate reads of one seed's run."""

    seed: int
    evaluations: dict  # {variant: evaluation document} (a2dpipe.evaluation.evaluate)
    verdicts: dict  # {claim: verdict} from the run's claims table


# --- inputs ---------------------------------------------------------------------------------------------------


def read_verdicts(path) -> dict[str, str]:
    """``{claim: verdict}`` of a claims table (``claims.csv`` of ``a2dpipe tables``)."""
    try:
        table = pd.read_csv(path)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as err:
        raise A2DError(f"{path}: cannot read the claims table: {err}") from None
    if not {"claim", "holds"} <= set(table.columns):
        raise A2DError(f"{path}: not a claims table (no 'claim' or 'holds' column)")
    return dict(zip(table["claim"], table["holds"]))


def load_runs(seeds, claims_paths, evaluation_lists) -> list[SeedRun]:
    """One :class:`SeedRun` per seed, from aligned lists (the i-th claims table and evaluation files are the i-th
    seed's). A2DError when the lists differ in length, a seed repeats, or the evaluations were made with different
    evaluation settings (they would not be comparable)."""
    if not len(seeds) == len(claims_paths) == len(evaluation_lists) or not seeds:
        raise A2DError(f"aggregate: every seed needs one --claims and one --evaluations list (got {len(seeds)} "
                       f"seeds, {len(claims_paths)} claims tables, {len(evaluation_lists)} evaluation lists)")
    repeated = sorted({s for s in seeds if list(seeds).count(s) > 1})
    if repeated:
        raise A2DError(f"aggregate: seed(s) {repeated} given more than once")
    runs, stamps = [], {}
    for seed, claims_path, paths in zip(seeds, claims_paths, evaluation_lists):
        evaluations = tables.load_evaluations(paths)
        stamps.update({str(p): read_stamp(e.get("provenance")) for p, e in zip(paths, evaluations.values())})
        runs.append(SeedRun(int(seed), evaluations, read_verdicts(claims_path)))
    check_consistent(stamps)
    return runs


# --- the maths ------------------------------------------------------------------------------------------------


def _mean_sd(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and sample standard deviation (ddof 1) over axis 0; the deviation is nan for fewer than two rows."""
    mean = values.mean(axis=0)
    if len(values) < 2:
        return mean, np.full_like(mean, math.nan)
    return mean, values.std(axis=0, ddof=1)


def aggregate_table(per_seed: list[pd.DataFrame]) -> pd.DataFrame:
    """Rows of one table across seeds: the paper's rows once, each row of this run as mean and sd over seeds.

    ``per_seed`` holds one table per seed in the layout of :mod:`.tables` (label columns, ``source``, metric
    columns, optionally their ``low``/``high`` interval columns, which are dropped). A row of this run is matched
    across seeds by its labels; the result has its label columns, ``source`` (:data:`AGGREGATE` for this run's
    rows), ``seeds`` (how many seeds have the row; missing for the paper's rows), then each metric ``<m>`` (mean)
    with ``<m> sd`` beside it. Rows keep the order of their first appearance.
    """
    if not per_seed:
        raise A2DError("aggregate: no seed's table to aggregate")
    columns = list(per_seed[0].columns)
    if "source" not in columns:
        raise A2DError("aggregate: a table without a 'source' column")
    keys = columns[: columns.index("source")]
    metrics = [c for c in columns[len(keys) + 1:] if not c.endswith((f" {LOW}", f" {HIGH}"))]
    stacked = pd.concat(per_seed, ignore_index=True)
    rows = []
    for (*labels, source), group in stacked.groupby([*keys, "source"], sort=False, dropna=False):
        values = group[metrics].to_numpy(dtype=float)
        if source == tables.THIS_RUN:
            (mean, sd), source, count = _mean_sd(values), AGGREGATE, len(group)
        else:  # the paper's figures: the same in every seed's table
            mean, sd, count = values[0], np.full(len(metrics), math.nan), pd.NA
        rows.append([*labels, source, count, *(x for pair in zip(mean, sd) for x in pair)])
    out = pd.DataFrame(rows, columns=[*keys, "source", "seeds", *(c for m in metrics for c in (m, f"{m} {SD}"))])
    out["seeds"] = out["seeds"].astype("Int64")
    return out


def _claim_value(evaluations: dict, variant: str, metric: str, setting: str) -> float:
    if variant not in evaluations:
        return math.nan
    return percent(evaluations[variant]["metrics"]["whole"][setting][metric])


def agreement(verdicts: list[str]) -> str:
    """``yes in 3 of 3 seeds`` when the seeds agree; ``split: yes 2, not resolved 1 (of 3 seeds)`` otherwise, the
    most common verdict first: a claim that only some seeds resolve rests on training noise, whatever one run
    says."""
    counts = Counter(verdicts).most_common()
    if len(counts) == 1:
        return f"{counts[0][0]} in {len(verdicts)} of {len(verdicts)} seeds"
    return f"split: {', '.join(f'{v} {n}' for v, n in counts)} (of {len(verdicts)} seeds)"


def aggregate_claims(runs: list[SeedRun]) -> pd.DataFrame:
    """Each claim (:data:`.claims.CLAIMS`) across seeds: the mean of each compared value, each step's difference
    as mean ± sd, and the verdicts of the seeds' own claims tables (how many say ``yes``, whether they agree
    (:func:`agreement`), and each one's)."""
    rows = []
    for claim, metric, setting, variants in CLAIMS:
        values = np.array([[_claim_value(run.evaluations, v, metric, setting) for v in variants] for run in runs])
        means, _ = _mean_sd(values)
        step_mean, step_sd = _mean_sd(np.diff(values, axis=1))
        verdicts = []
        for run in runs:
            if claim not in run.verdicts:
                raise A2DError(f"claims table of seed {run.seed} lacks the claim {claim!r} (made by another "
                               "version? rerun its tables)")
            verdicts.append(run.verdicts[claim])
        rows.append([
            claim,
            " / ".join("-" if math.isnan(m) else f"{m:.1f}" for m in means),
            "; ".join(spread_text(m, s, 1, signed=True) for m, s in zip(step_mean, step_sd)),
            len(runs),
            verdicts.count("yes"),
            agreement(verdicts),
            "; ".join(f"seed {run.seed}: {v}" for run, v in zip(runs, verdicts)),
        ])
    return pd.DataFrame(rows, columns=["claim", "mean over seeds (expected to increase left to right)",
                                       "difference (mean ± sd over seeds)", "seeds", "seeds saying yes",
                                       "verdict across seeds", "verdict of each seed"])


# --- writing --------------------------------------------------------------------------------------------------


def make_aggregate(runs: list[SeedRun], out_dir) -> list[Path]:
    """Write the aggregated Tables 1-3 and claims into ``out_dir``, then ``done``; returns the paths (``done``
    last)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    done = out_dir / "done"
    done.unlink(missing_ok=True)  # a rerun must not look finished before it is
    seeds = ", ".join(str(run.seed) for run in runs)
    written = []
    for name, build in TABLES.items():
        table = aggregate_table([build(run.evaluations) for run in runs])
        caption = (f"{tables.TITLES[name]} over seeds {seeds}. {DESCRIPTIONS[name]} This run's rows: mean ± sample "
                   "standard deviation over the seeds (column seeds: how many); percentages.")
        written += write_table(table, out_dir, name, caption)
    caption = f"{tables.TITLES['claims']} over seeds {seeds}. {DESCRIPTIONS['claims']}"
    written += write_table(aggregate_claims(runs), out_dir, "claims", caption)
    with atomic_path(done) as tmp:
        Path(tmp).write_text("\n".join(p.name for p in written) + "\n")
    return [*written, done]


def configure_parser(parser) -> None:
    parser.add_argument("--seed", type=int, action="append", required=True,
                        help="a seed's number; opens its group (give --claims and --evaluations after it)")
    parser.add_argument("--claims", action="append", required=True, help="that seed's claims table (claims.csv)")
    parser.add_argument("--evaluations", nargs="+", action="append", required=True,
                        help="that seed's evaluation JSON files (those its tables were made from)")
    parser.add_argument("--out-dir", required=True, help="folder of the aggregated tables; DIR/done is written last")


def run(args) -> None:
    runs = load_runs(args.seed, args.claims, args.evaluations)
    written = make_aggregate(runs, args.out_dir)
    log.info("wrote %d table files into %s", len(written), args.out_dir)
    log.info("claims over seeds:\n%s", Path(args.out_dir, "claims.md").read_text())
