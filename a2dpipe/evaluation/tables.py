"""Tables stage: the paper's Tables 1-5 from this run's evaluations, each beside the paper's own figures.

Command::

    a2dpipe tables --config C --evaluations results/evaluation/test/*/*/*/*.json \
        --per-video results/evaluation/test/*/*/*/*.videos.npz --mask-quality results/masks/quality.csv \
        --timing results/timing/timing.csv --out-dir results/tables

Every table has a ``source`` column (``paper`` or ``this run``) and is written three times: ``<name>.csv``
(full precision, percentages), ``<name>.md`` and ``<name>.tex`` (one decimal, ``-`` where there is no value):

=============  ===========================================================================================
``table1``     Baseline vs Mask vote vs Ours x RGB vs RGB + flow (variants ``baseline-<input>``,
               ``maskvote-<input>-dataset``, ``ours-<input>-dataset-dataset``); mask vote is this run's control
``table2``     the same on non-boundary pixels, RGB + flow (Baseline, Ours)
``table3``     mask sources, RGB + flow: (training, test) = (generic, generic), (dataset, dataset), (dataset, gt)
``table4``     earlier published results (reference rows) and Ours, from the paper, beside this run's Ours
``table5``     per-category accuracy (background + 43 pairs + average), Baseline / Ours x RGB / RGB + flow
``claims``     the paper's qualitative claims (and the control's) and whether this run resolves them
``timing``     copy of the timing table (``a2dpipe timing``), when given
``mask_quality``  copy of the mask-quality table (``a2dpipe mask-quality``), when given
=============  ===========================================================================================

Uncertainty (:mod:`.claims`, on :mod:`.bootstrap`; files written by :mod:`.writers`): with ``--per-video`` files
every metric of this run in Tables 1-4 gets a 95% paired-bootstrap interval over test videos
(``evaluation.bootstrap_resamples`` resamples, seeded by ``seed``; the normal interval over the point estimate's
classes): the CSV has ``<metric> low`` and ``<metric> high`` columns beside each metric, Markdown and LaTeX show
``15.8 [13.9, 17.6]``. A claim compares variants through the interval of their difference, each step a one-sided
test at 2.5% or at the family-wise level of ``evaluation.claims_correction`` (none | holm | bonferroni): ``yes``
when the whole interval lies above zero, ``no`` when it lies below, ``not resolved`` otherwise (``n/a`` when a
variant or its per-video matrices are missing); the caption says what the verdicts control and what not.

A row of this run whose variant was not evaluated (not configured in ``experiments``) is left out with a warning.
``DIR/done`` is written last, so its presence means every table is complete.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import pandas as pd

from a2dpipe.config import check_resamples, write_made_from
from a2dpipe.settings import add_config_arguments, read_settings
from a2dpipe.evaluation import paper_results as paper
from a2dpipe.evaluation.claims import Intervals, claims, claims_caption, load_intervals, percent
from a2dpipe.evaluation.writers import HIGH, LOW, write_table
from a2dpipe.integrity import checked_json
from a2dpipe.errors import A2DError, unreadable_artifact
from a2dpipe.io import atomic_path
from a2dpipe.labels import class_names
from a2dpipe.variants import Variant, variant_name, variant_of

__all__ = [
    "METRIC_HEADERS",
    "load_evaluations",
    "read_csv_table",
    "table1",
    "table2",
    "table3",
    "table4",
    "table5",
    "run_row",
    "bootstrap_intervals",
    "configure_parser",
    "run",
]

log = logging.getLogger(__name__)

PAPER, THIS_RUN = "paper", "this run"
_METRIC_NAMES = {"global_accuracy": "global acc.", "mean_class_accuracy": "mean class acc.", "mean_iou": "mean IoU"}
_SETTING_NAMES = {"actor": "actor", "action": "action", "actor_action": "actor-action"}
METRIC_HEADERS = [f"{_METRIC_NAMES[m]} {_SETTING_NAMES[s]}" for m, s in paper.METRIC_COLUMNS]
INTERVAL_HEADERS = [c for h in METRIC_HEADERS for c in (h, f"{h} {LOW}", f"{h} {HIGH}")]
INPUT_NAMES = {"rgb": "RGB only", "rgbflow": "RGB + flow"}
METHOD_NAMES = {"baseline": "Baseline", "maskvote": "Mask vote", "ours": "Ours"}

TITLES = {"table1": "Table 1", "table2": "Table 2", "table3": "Table 3", "table4": "Table 4", "table5": "Table 5",
          "claims": "Claims"}
CAPTIONS = {
    "table1": "Baseline (ASPP back-end, no region masks) against Ours (region back-end) with RGB or RGB + flow "
    "input; region masks from the dataset-trained mask model for training and testing. Mask vote (this run only, "
    "not in the paper) is the control: the Baseline's probabilities averaged inside each test region mask, no "
    "region head. Percentages; this run's in brackets: 95% bootstrap interval over test videos.",
    "table2": "Baseline against Ours (RGB + flow) on the pixels outside a band of {width} px around "
    "ground-truth label changes. Percentages; this run's in brackets: 95% bootstrap interval over test videos.",
    "table3": "Region-mask sources (RGB + flow). Training masks: a source plus ground-truth masks; generic = "
    "the paper's COCO-trained model, dataset = the paper's A2D-trained model, gt = ground-truth masks. "
    "Percentages; this run's in brackets: 95% bootstrap interval over test videos.",
    "table4": "Earlier published results as printed in the paper (best of several where a work gave several; "
    "method names are not in the available copy; the paper cites {cited}), the paper's Ours, and this run's Ours "
    "(in brackets: 95% bootstrap interval over test videos).",
    "table5": "Per-category accuracy (actor-action setting): background, the 43 actor-action pairs and their "
    "average (the mean class accuracy). The paper's table has no dog-none column. Percentages.",
    "timing": "Milliseconds per frame of each stage on this run's device, beside the paper's (one Nvidia K80). "
    "The paper's baseline network time is its baseline total minus its flow time.",
    "mask_quality": "Quality of the region masks of each source on the test split (COCO-style mask AP); a source "
    "without figures is not part of this run, its note says why.",
}


# --- inputs ---------------------------------------------------------------------------------------------------


def load_evaluations(paths) -> dict[str, dict]:
    """``{variant: evaluation JSON}`` (format of ``a2dpipe.evaluation.evaluate``)."""
    out = {}
    for path in paths:
        try:
            doc = json.loads(Path(path).read_bytes())
        except FileNotFoundError:
            raise A2DError(f"{path}: evaluation not found; run `snakemake {path}` to make it") from None
        except (OSError, ValueError) as err:  # ValueError: not JSON, or not UTF-8 (a flipped high bit)
            raise unreadable_artifact(path, "evaluation", f"cannot read it: {err}") from None
        doc = checked_json(doc, path, "evaluation")
        if "variant" not in doc or "metrics" not in doc:
            raise unreadable_artifact(path, "evaluation", "not an evaluation file (no 'variant' or 'metrics')")
        out[doc["variant"]] = doc
    return out


def run_row(evaluation: dict, region: str = "whole", intervals: Intervals | None = None) -> list[float]:
    """This run's metric cells: value, low, high per metric (percentages; intervals nan without a bootstrap)."""
    m = evaluation["metrics"][region]
    variant = evaluation["variant"]
    cells = []
    for metric, s in paper.METRIC_COLUMNS:
        low, high = (intervals.interval(variant, metric, s, region) if intervals and intervals.has(variant)
                     else (math.nan, math.nan))
        cells += [percent(m[s][metric]), 100.0 * low, 100.0 * high]
    return cells


def _paper_row(values) -> list[float]:
    return [x for v in values for x in (math.nan if v is None else v, math.nan, math.nan)]


def _missing(variant: str, table: str) -> None:
    log.warning("%s: variant %s was not evaluated; its row is left out", table, variant)


def _this_run(table: str, labels: list[str], evals: dict, variant: Variant, region: str = "whole",
              intervals: Intervals | None = None) -> list[list]:
    """This run's row of ``variant`` in ``table`` (``labels``, source, metric cells), or none when it was not
    evaluated (:func:`_missing` says so)."""
    name = variant_name(variant)
    if name not in evals:
        _missing(name, table)
        return []
    return [[*labels, THIS_RUN, *run_row(evals[name], region, intervals)]]


# --- the tables -----------------------------------------------------------------------------------------------


def table1(evals: dict, intervals: Intervals | None = None) -> pd.DataFrame:
    rows = []
    for inp in ("rgb", "rgbflow"):
        for method in ("baseline", "maskvote", "ours"):
            label = f"{METHOD_NAMES[method]} ({INPUT_NAMES[inp]})"
            if (method, inp) in paper.TABLE1:
                rows.append([label, PAPER, *_paper_row(paper.TABLE1[(method, inp)])])
            rows += _this_run("table1", [label], evals, variant_of(method, inp), "whole", intervals)
    return pd.DataFrame(rows, columns=["method", "source", *INTERVAL_HEADERS])


def table2(evals: dict, intervals: Intervals | None = None) -> pd.DataFrame:
    rows = []
    for method in ("baseline", "ours"):
        label = f"{METHOD_NAMES[method]} (non-boundary)"
        rows.append([label, PAPER, *_paper_row(paper.TABLE2[method])])
        rows += _this_run("table2", [label], evals, variant_of(method, "rgbflow"), "non_boundary", intervals)
    return pd.DataFrame(rows, columns=["method", "source", *INTERVAL_HEADERS])


def table3(evals: dict, intervals: Intervals | None = None) -> pd.DataFrame:
    rows = []
    for (train, test), values in paper.TABLE3.items():
        labels = [f"{train} + gt", test]
        rows.append([*labels, PAPER, *_paper_row(values)])
        rows += _this_run("table3", labels, evals, variant_of("ours", "rgbflow", train, test), "whole", intervals)
    return pd.DataFrame(rows, columns=["training masks", "test masks", "source", *INTERVAL_HEADERS])


def table4(evals: dict, intervals: Intervals | None = None) -> pd.DataFrame:
    rows = [[f"published method {k}", PAPER, *_paper_row(v)] for k, v in enumerate(paper.TABLE4_PUBLISHED, 1)]
    rows.append(["Ours", PAPER, *_paper_row(paper.TABLE4_OURS)])
    rows += _this_run("table4", ["Ours"], evals, variant_of("ours", "rgbflow"), "whole", intervals)
    return pd.DataFrame(rows, columns=["method", "source", *INTERVAL_HEADERS])


def table5(evals: dict) -> pd.DataFrame:
    names = [*class_names("actor_action"), "average"]
    rows = []
    for method in ("baseline", "ours"):
        for inp in ("rgb", "rgbflow"):
            label = f"{METHOD_NAMES[method]} ({INPUT_NAMES[inp]})"
            ref = paper.TABLE5[(method, inp)]
            rows.append([label, PAPER, *(math.nan if ref[n] is None else ref[n] for n in names)])
            variant = variant_name(variant_of(method, inp))
            if variant not in evals:
                _missing(variant, "table5")
                continue
            per = evals[variant]["per_category_accuracy"]
            avg = evals[variant]["metrics"]["whole"]["actor_action"]["mean_class_accuracy"]
            rows.append([label, THIS_RUN, *(percent(per.get(n)) for n in names[:-1]), percent(avg)])
    return pd.DataFrame(rows, columns=["method", "source", *names])


# --- writing every table --------------------------------------------------------------------------------------


def read_csv_table(path, what: str) -> pd.DataFrame:
    """The CSV table at ``path``; ``A2DError`` naming the file and ``what`` it should hold when it cannot be read."""
    try:
        return pd.read_csv(path)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as err:
        raise A2DError(f"{path}: cannot read the {what} table: {err}") from None


FINAL_FIT = {
    "train": "Models trained on the train split, the validation videos held out (dataset.final_fit: train).",
    "train+val": "Models trained on the train and validation splits, after settings were chosen on validation "
    "(dataset.final_fit: train+val).",
}


RUN_TABLES = ("table1", "table2", "table3", "table4", "table5", "claims")  # this run's results (not copied ones)


def make_tables(evals: dict, out_dir, timing=None, mask_quality=None, intervals: Intervals | None = None,
                correction: str = "none", final_fit: str = "train") -> list[Path]:
    """Write every table into ``out_dir``, then ``done``; returns the paths written (``done`` last). ``correction``:
    the claims' family-wise correction (:func:`.claims.claim_levels`); ``final_fit``: the splits the models trained
    on (config ``dataset.final_fit``), said in every caption of this run's results."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    done = out_dir / "done"
    done.unlink(missing_ok=True)  # a rerun must not look finished before it is
    widths = sorted({e.get("boundary_width") for e in evals.values()} - {None})
    captions = dict(CAPTIONS)
    captions["table2"] = captions["table2"].format(width="/".join(map(str, widths)) or "?")
    captions["table4"] = captions["table4"].format(cited=paper.TABLE4_CITED)
    captions["claims"] = claims_caption(correction)
    for name in RUN_TABLES:
        captions[name] = f"{captions[name]} {FINAL_FIT[final_fit]}"
    builders = {"table1": table1, "table2": table2, "table3": table3, "table4": table4, "table5": table5,
                "claims": claims}
    written = []
    for name, build in builders.items():
        if build is table5:
            table = build(evals)
        else:
            table = build(evals, intervals, correction) if build is claims else build(evals, intervals)
        written += write_table(table, out_dir, name, f"{TITLES[name]}. {captions[name]}")
    if timing:
        written += write_table(read_csv_table(timing, "timing"), out_dir, "timing", f"Timing. {captions['timing']}")
    if mask_quality:
        written += write_table(read_csv_table(mask_quality, "mask quality"), out_dir, "mask_quality",
                               f"Mask quality. {captions['mask_quality']}", digits=2)
    with atomic_path(done) as tmp:
        Path(tmp).write_text("\n".join(p.name for p in written) + "\n")
    return [*written, done]


def configure_parser(parser) -> None:
    add_config_arguments(parser, "tables")
    parser.add_argument("--evaluations", nargs="+", required=True, help="evaluation JSON files of every variant")
    parser.add_argument("--per-video", nargs="*", default=[],
                        help="per-video confusion matrices (.npz) of the variants: bootstrap intervals and claims")
    parser.add_argument("--mask-quality", nargs="?", help="mask-quality CSV (optional)")
    parser.add_argument("--timing", help="timing CSV (optional)")
    parser.add_argument("--out-dir", required=True, help="folder of the tables; DIR/done is written last")


def bootstrap_intervals(per_video: list, evals: dict, config: dict) -> Intervals | None:
    """The paired-bootstrap intervals of ``evals`` from their ``per_video`` matrices (config ``seed`` and
    ``evaluation.bootstrap_resamples``); None, with a warning, without matrices."""
    resamples = int(config["evaluation"]["bootstrap_resamples"])
    check_resamples(resamples, "--settings")
    if not per_video:
        log.warning("no --per-video matrices: no intervals, and every claim is n/a")
        return None
    intervals = load_intervals(per_video, evals, resamples=resamples, seed=int(config["seed"]))
    log.info("bootstrap: %d resamples of %d videos", resamples, len(intervals.bootstrap.videos))
    return intervals


def run(args) -> None:
    evals = load_evaluations(args.evaluations)
    config = read_settings(args, "tables")
    intervals = bootstrap_intervals(args.per_video, evals, config)
    write_made_from(Path(args.out_dir, "provenance.json"),
                    {p: e.get("provenance") for p, e in zip(args.evaluations, evals.values())})
    written = make_tables(evals, args.out_dir, timing=args.timing, mask_quality=args.mask_quality,
                          intervals=intervals,
                          correction=config["evaluation"]["claims_correction"],
                          final_fit=config["dataset"]["final_fit"])
    log.info("wrote %d table files into %s", len(written), args.out_dir)
    claims_md = Path(args.out_dir, "claims.md").read_text()
    log.info("claims:\n%s", claims_md)
