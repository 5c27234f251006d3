"""The tables' bootstrap intervals beside the earlier percentile intervals, from a finished run's evaluations.

    python benchmarks/interval_methods.py --results results [--resamples 1000] [--seed 0] [--setting actor_action]

For every variant with per-video confusion matrices (``<results>/evaluation/test/**/*.videos.npz``) and each mean over
classes (mean class accuracy, mean IoU) of ``--setting``, prints the point estimate, then

- ``before``: the percentile interval of resamples scored by the metrics module's own rule (a class whose ground
  truth a resample did not draw, but which a drawn video predicts, counts with IoU 0), and the share of those
  resamples below the point;
- ``after``: the tables' interval (normal interval over the point estimate's classes, ``a2dpipe.evaluation.
  bootstrap``), and the share of its resamples below the point;

on the same draws (``--seed``, ``--resamples``: the tables use ``seed`` and ``evaluation.bootstrap_resamples``).
Then every step of the claims (``a2dpipe.evaluation.claims.CLAIMS``) whose variants were evaluated: the difference
with the earlier interval and the tables' 95% interval (no family-wise correction). Percentages. Reads files
only; trains and predicts nothing.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

from a2dpipe.evaluation.bootstrap import (Bootstrap, normal_interval, per_video_key, percentile_interval,
                                          point_score, read_per_video)
from a2dpipe.evaluation.claims import CLAIMS

SCORES = ("mean_class_accuracy", "mean_iou")


def compare(doc: dict, boot: Bootstrap, setting: str) -> list[dict]:
    per_video = doc[per_video_key("whole", setting)]
    plain = boot.score_samples(per_video, point_classes=False)
    matched = boot.score_samples(per_video)
    rows = []
    for score in SCORES:
        point, low, high = boot.interval(per_video, score)
        before_low, before_high = percentile_interval(plain[score])
        rows.append({"variant": doc["variant"], "score": score, "point": 100 * point,
                     "before low": 100 * before_low, "before high": 100 * before_high,
                     "before below point": 100 * float(np.mean(plain[score] < point)),
                     "after low": 100 * low, "after high": 100 * high,
                     "after below point": 100 * float(np.mean(matched[score] < point))})
    return rows


def claim_steps(docs: dict, boot: Bootstrap) -> list[dict]:
    """Each claim step's difference (second - first) with the earlier and the tables' interval."""
    rows = []
    for claim, score, setting, variants in CLAIMS:
        for first, second in zip(variants, variants[1:]):
            if first not in docs or second not in docs:
                continue
            a, b = (docs[v][per_video_key("whole", setting)] for v in (first, second))
            point = point_score(b, score) - point_score(a, score)
            plain = [boot.score_samples(m, point_classes=False)[score] for m in (a, b)]
            matched = [boot.score_samples(m)[score] for m in (a, b)]
            before, after = percentile_interval(plain[1] - plain[0]), normal_interval(point, matched[1] - matched[0])
            rows.append({"claim": claim[:60], "step": f"{first} -> {second}", "difference": 100 * point,
                         "before low": 100 * before[0], "before high": 100 * before[1],
                         "after low": 100 * after[0], "after high": 100 * after[1]})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", default="results", help="results folder of a finished run")
    parser.add_argument("--resamples", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--setting", default="actor_action", choices=("actor", "action", "actor_action"))
    args = parser.parse_args()
    docs = [read_per_video(p) for p in sorted(Path(args.results, "evaluation", "test").glob("**/*.videos.npz"))]
    if not docs:
        raise SystemExit(f"{args.results}/evaluation: no per-video confusion files (run the tables first)")
    boot = Bootstrap(docs[0]["videos"], resamples=args.resamples, seed=args.seed)  # the tables' draws
    rows = [row for doc in docs for row in compare(doc, boot, args.setting)]
    print(pd.DataFrame(rows).to_string(index=False, float_format="%.2f"))
    steps = claim_steps({doc["variant"]: doc for doc in docs}, boot)
    if steps:
        print(pd.DataFrame(steps).to_string(index=False, float_format="%.2f"))


if __name__ == "__main__":
    main()
