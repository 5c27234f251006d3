"""Tables stage: the paper's Tables 1-5 from this run's evaluations, each beside the paper's own figures.

Command::

    a2dpipe tables --config C --evaluations results/evaluation/*.json --mask-quality results/masks/quality.csv \
        --timing results/timing/timing.csv --out-dir results/tables

Every table has a ``source`` column (``paper`` or ``this run``) and is written three times: ``<name>.csv``
(full precision, percentages), ``<name>.md`` and ``<name>.tex`` (one decimal, ``-`` where there is no value):

=============  ===========================================================================================
``table1``     Baseline vs Ours x RGB vs RGB + flow (variants ``baseline-<input>``, ``ours-<input>-dataset-dataset``)
``table2``     the same on non-boundary pixels, RGB + flow
``table3``     mask sources, RGB + flow: (training, test) = (generic, generic), (dataset, dataset), (dataset, gt)
``table4``     earlier published results (reference rows) and Ours, from the paper, beside this run's Ours
``table5``     per-category accuracy (background + 43 pairs + average), Baseline / Ours x RGB / RGB + flow
``claims``     the paper's qualitative claims and whether this run shows them
``timing``     copy of the timing table (``a2dpipe timing``), when given
``mask_quality``  copy of the mask-quality table (``a2dpipe mask-quality``), when given
=============  ===========================================================================================

A row of this run whose variant was not evaluated (not configured in ``experiments``) is left out with a warning.
``DIR/done`` is written last, so its presence means every table is complete.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import pandas as pd

from a2dpipe.config import write_made_from
from a2dpipe.evaluation import paper_results as paper
from a2dpipe.io import A2DError, atomic_path
from a2dpipe.labels import class_names

__all__ = [
    "METRIC_HEADERS",
    "load_evaluations",
    "table1",
    "table2",
    "table3",
    "table4",
    "table5",
    "claims",
    "markdown_table",
    "latex_table",
    "write_table",
    "configure_parser",
    "run",
]

log = logging.getLogger(__name__)

PAPER, THIS_RUN = "paper", "this run"
_METRIC_NAMES = {"global_accuracy": "global acc.", "mean_class_accuracy": "mean class acc.", "mean_iou": "mean IoU"}
_SETTING_NAMES = {"actor": "actor", "action": "action", "actor_action": "actor-action"}
METRIC_HEADERS = [f"{_METRIC_NAMES[m]} {_SETTING_NAMES[s]}" for m, s in paper.METRIC_COLUMNS]
INPUT_NAMES = {"rgb": "RGB only", "rgbflow": "RGB + flow"}
METHOD_NAMES = {"baseline": "Baseline", "ours": "Ours"}
MAIN_SOURCE = "dataset"  # the paper's default: region masks of a model trained on the target dataset

TITLES = {"table1": "Table 1", "table2": "Table 2", "table3": "Table 3", "table4": "Table 4", "table5": "Table 5",
          "claims": "Claims"}
CAPTIONS = {
    "table1": "Baseline (ASPP back-end, no region masks) against Ours (region back-end) with RGB or RGB + flow "
    "input; region masks from the dataset-trained mask model for training and testing. Percentages.",
    "table2": "Baseline against Ours (RGB + flow) on the pixels outside a band of {width} px around "
    "ground-truth label changes. Percentages.",
    "table3": "Region-mask sources (RGB + flow). Training masks: a source plus ground-truth masks; generic = "
    "the paper's COCO-trained model, dataset = the paper's A2D-trained model, gt = ground-truth masks. Percentages.",
    "table4": "Earlier published results as printed in the paper (best of several where a work gave several; "
    "method names are not in the available copy; the paper cites {cited}), the paper's Ours, and this run's Ours.",
    "table5": "Per-category accuracy (actor-action setting): background, the 43 actor-action pairs and their "
    "average (the mean class accuracy). The paper's table has no dog-none column. Percentages.",
    "claims": "The paper's qualitative claims, checked on this run's numbers.",
    "timing": "Milliseconds per frame of each stage on this run's device, beside the paper's (one Nvidia K80). "
    "The paper's baseline network time is its baseline total minus its flow time.",
    "mask_quality": "Quality of the region masks of each source on the test split (COCO-style mask AP).",
}


# --- inputs ---------------------------------------------------------------------------------------------------


def load_evaluations(paths) -> dict[str, dict]:
    """``{variant: evaluation JSON}`` (format of ``a2dpipe.evaluation.evaluate``)."""
    out = {}
    for path in paths:
        try:
            doc = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise A2DError(f"{path}: cannot read the evaluation: {err}") from None
        if not isinstance(doc, dict) or "variant" not in doc or "metrics" not in doc:
            raise A2DError(f"{path}: not an evaluation file (no 'variant' or 'metrics')")
        out[doc["variant"]] = doc
    return out


def _pct(value) -> float:
    return math.nan if value is None else 100.0 * float(value)


def _run_row(evaluation: dict, region: str = "whole") -> list[float]:
    m = evaluation["metrics"][region]
    return [_pct(m[s][metric]) for metric, s in paper.METRIC_COLUMNS]


def _paper_row(values) -> list[float]:
    return [math.nan if v is None else v for v in values]


def _variant(method: str, inp: str, train: str = MAIN_SOURCE, test: str = MAIN_SOURCE) -> str:
    return f"baseline-{inp}" if method == "baseline" else f"ours-{inp}-{train}-{test}"


def _missing(variant: str, table: str) -> None:
    log.warning("%s: variant %s was not evaluated; its row is left out", table, variant)


# --- the tables -----------------------------------------------------------------------------------------------


def table1(evals: dict) -> pd.DataFrame:
    rows = []
    for inp in ("rgb", "rgbflow"):
        for method in ("baseline", "ours"):
            label = f"{METHOD_NAMES[method]} ({INPUT_NAMES[inp]})"
            rows.append([label, PAPER, *_paper_row(paper.TABLE1[(method, inp)])])
            variant = _variant(method, inp)
            if variant in evals:
                rows.append([label, THIS_RUN, *_run_row(evals[variant])])
            else:
                _missing(variant, "table1")
    return pd.DataFrame(rows, columns=["method", "source", *METRIC_HEADERS])


def table2(evals: dict) -> pd.DataFrame:
    rows = []
    for method in ("baseline", "ours"):
        label = f"{METHOD_NAMES[method]} (non-boundary)"
        rows.append([label, PAPER, *_paper_row(paper.TABLE2[method])])
        variant = _variant(method, "rgbflow")
        if variant in evals:
            rows.append([label, THIS_RUN, *_run_row(evals[variant], "non_boundary")])
        else:
            _missing(variant, "table2")
    return pd.DataFrame(rows, columns=["method", "source", *METRIC_HEADERS])


def table3(evals: dict) -> pd.DataFrame:
    rows = []
    for (train, test), values in paper.TABLE3.items():
        labels = [f"{train} + gt", test]
        rows.append([*labels, PAPER, *_paper_row(values)])
        variant = _variant("ours", "rgbflow", train, test)
        if variant in evals:
            rows.append([*labels, THIS_RUN, *_run_row(evals[variant])])
        else:
            _missing(variant, "table3")
    return pd.DataFrame(rows, columns=["training masks", "test masks", "source", *METRIC_HEADERS])


def table4(evals: dict) -> pd.DataFrame:
    rows = [[f"published method {k}", PAPER, *_paper_row(v)] for k, v in enumerate(paper.TABLE4_PUBLISHED, 1)]
    rows.append(["Ours", PAPER, *_paper_row(paper.TABLE4_OURS)])
    variant = _variant("ours", "rgbflow")
    if variant in evals:
        rows.append(["Ours", THIS_RUN, *_run_row(evals[variant])])
    else:
        _missing(variant, "table4")
    return pd.DataFrame(rows, columns=["method", "source", *METRIC_HEADERS])


def table5(evals: dict) -> pd.DataFrame:
    names = [*class_names("actor_action"), "average"]
    rows = []
    for method in ("baseline", "ours"):
        for inp in ("rgb", "rgbflow"):
            label = f"{METHOD_NAMES[method]} ({INPUT_NAMES[inp]})"
            ref = paper.TABLE5[(method, inp)]
            rows.append([label, PAPER, *(math.nan if ref[n] is None else ref[n] for n in names)])
            variant = _variant(method, inp)
            if variant not in evals:
                _missing(variant, "table5")
                continue
            per = evals[variant]["per_category_accuracy"]
            avg = evals[variant]["metrics"]["whole"]["actor_action"]["mean_class_accuracy"]
            rows.append([label, THIS_RUN, *(_pct(per.get(n)) for n in names[:-1]), _pct(avg)])
    return pd.DataFrame(rows, columns=["method", "source", *names])


def _metric(evals, variant, metric, setting, region="whole"):
    if variant not in evals:
        return math.nan
    return _pct(evals[variant]["metrics"][region][setting][metric])


def claims(evals: dict) -> pd.DataFrame:
    """Each claim with the two (or three) numbers it compares and whether this run shows it.

    ``holds`` is ``yes`` (strictly increasing), ``no (tie)`` (equal somewhere, never decreasing), ``no``, or
    ``n/a`` when a variant it needs was not evaluated.
    """
    mca = "mean_class_accuracy"
    checks = [
        ("Ours beats Baseline in actor-action mean class accuracy (RGB + flow)",
         [_metric(evals, "baseline-rgbflow", mca, "actor_action"), _metric(evals, _variant("ours", "rgbflow"), mca, "actor_action")]),
        ("flow improves action mean class accuracy (Baseline)",
         [_metric(evals, "baseline-rgb", mca, "action"), _metric(evals, "baseline-rgbflow", mca, "action")]),
        ("flow improves action mean class accuracy (Ours)",
         [_metric(evals, _variant("ours", "rgb"), mca, "action"), _metric(evals, _variant("ours", "rgbflow"), mca, "action")]),
        ("test masks: gt > dataset > generic (actor-action mean class accuracy)",
         [_metric(evals, _variant("ours", "rgbflow", "generic", "generic"), mca, "actor_action"),
          _metric(evals, _variant("ours", "rgbflow", "dataset", "dataset"), mca, "actor_action"),
          _metric(evals, _variant("ours", "rgbflow", "dataset", "gt"), mca, "actor_action")]),
        ("test masks: gt > dataset > generic (actor-action mean IoU)",
         [_metric(evals, _variant("ours", "rgbflow", "generic", "generic"), "mean_iou", "actor_action"),
          _metric(evals, _variant("ours", "rgbflow", "dataset", "dataset"), "mean_iou", "actor_action"),
          _metric(evals, _variant("ours", "rgbflow", "dataset", "gt"), "mean_iou", "actor_action")]),
    ]
    rows = []
    for claim, values in checks:
        pairs = list(zip(values, values[1:]))
        if any(math.isnan(v) for v in values):
            holds = "n/a"
        elif all(a < b for a, b in pairs):
            holds = "yes"
        else:
            holds = "no (tie)" if all(a <= b for a, b in pairs) else "no"
        rows.append([claim, " / ".join("-" if math.isnan(v) else f"{v:.1f}" for v in values), holds])
    return pd.DataFrame(rows, columns=["claim", "this run (expected to increase left to right)", "holds"])


# --- writers --------------------------------------------------------------------------------------------------


def _cell(value, digits: int) -> str:
    if isinstance(value, float):
        return "-" if math.isnan(value) else f"{value:.{digits}f}"
    if value is None:
        return "-"
    return str(value)


def markdown_table(df: pd.DataFrame, digits: int = 1, caption: str | None = None) -> str:
    """GitHub-flavoured Markdown; numbers with ``digits`` decimals, missing as ``-``."""
    lines = [f"{caption}\n"] if caption else []
    lines.append("| " + " | ".join(map(str, df.columns)) + " |")
    lines.append("|" + "|".join("---:" if pd.api.types.is_numeric_dtype(df[c]) else "---" for c in df.columns) + "|")
    for row in df.itertuples(index=False):
        lines.append("| " + " | ".join(_cell(v, digits) for v in row) + " |")
    return "\n".join(lines) + "\n"


_LATEX_SPECIAL = {"&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{", "}": r"\}",
                  "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "\\": r"\textbackslash{}"}


def _tex(text: str) -> str:
    return "".join(_LATEX_SPECIAL.get(ch, ch) for ch in str(text))


def latex_table(df: pd.DataFrame, digits: int = 1, caption: str | None = None, label: str | None = None) -> str:
    """A ``table`` environment with a booktabs ``tabular`` (needs ``\\usepackage{booktabs}``)."""
    align = "".join("r" if pd.api.types.is_numeric_dtype(df[c]) else "l" for c in df.columns)
    lines = [r"\begin{table}[t]", r"\centering", r"\resizebox{\linewidth}{!}{%", rf"\begin{{tabular}}{{{align}}}",
             r"\toprule", " & ".join(_tex(c) for c in df.columns) + r" \\", r"\midrule"]
    for row in df.itertuples(index=False):
        lines.append(" & ".join(_tex(_cell(v, digits)) for v in row) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}}"]
    if caption:
        lines.append(rf"\caption{{{_tex(caption)}}}")
    if label:
        lines.append(rf"\label{{{label}}}")
    lines.append(r"\end{table}")
    return "\n".join(lines) + "\n"


def write_table(df: pd.DataFrame, out_dir: Path, name: str, caption: str | None = None, digits: int = 1) -> list[Path]:
    """``out_dir/<name>.csv``, ``.md`` and ``.tex``, each written atomically; returns the paths."""
    paths = []
    for suffix, render in (
        (".csv", lambda: df.to_csv(index=False, float_format="%.2f")),
        (".md", lambda: markdown_table(df, digits, caption)),
        (".tex", lambda: latex_table(df, digits, caption, f"tab:{name}")),
    ):
        path = out_dir / f"{name}{suffix}"
        with atomic_path(path) as tmp:
            Path(tmp).write_text(render())
        paths.append(path)
    return paths


def _read_csv(path, what: str) -> pd.DataFrame:
    try:
        return pd.read_csv(path)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as err:
        raise A2DError(f"{path}: cannot read the {what} table: {err}") from None


def make_tables(evals: dict, out_dir, timing=None, mask_quality=None) -> list[Path]:
    """Write every table into ``out_dir``, then ``done``; returns the paths written (``done`` last)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    done = out_dir / "done"
    done.unlink(missing_ok=True)  # a rerun must not look finished before it is
    widths = sorted({e.get("boundary_width") for e in evals.values()} - {None})
    captions = dict(CAPTIONS)
    captions["table2"] = captions["table2"].format(width="/".join(map(str, widths)) or "?")
    captions["table4"] = captions["table4"].format(cited=paper.TABLE4_CITED)
    builders = {"table1": table1, "table2": table2, "table3": table3, "table4": table4, "table5": table5,
                "claims": claims}
    written = []
    for name, build in builders.items():
        written += write_table(build(evals), out_dir, name, f"{TITLES[name]}. {captions[name]}")
    if timing:
        written += write_table(_read_csv(timing, "timing"), out_dir, "timing", f"Timing. {captions['timing']}")
    if mask_quality:
        written += write_table(_read_csv(mask_quality, "mask quality"), out_dir, "mask_quality",
                               f"Mask quality. {captions['mask_quality']}", digits=2)
    with atomic_path(done) as tmp:
        Path(tmp).write_text("\n".join(p.name for p in written) + "\n")
    return [*written, done]


def configure_parser(parser) -> None:
    parser.add_argument("--config", help="unused: the tables have no settings (accepted for uniformity)")
    parser.add_argument("--evaluations", nargs="+", required=True, help="evaluation JSON files of every variant")
    parser.add_argument("--mask-quality", nargs="?", help="mask-quality CSV (optional)")
    parser.add_argument("--timing", help="timing CSV (optional)")
    parser.add_argument("--out-dir", required=True, help="folder of the tables; DIR/done is written last")


def run(args) -> None:
    evals = load_evaluations(args.evaluations)
    write_made_from(Path(args.out_dir, "provenance.json"),
                    {p: e.get("provenance") for p, e in zip(args.evaluations, evals.values())})
    written = make_tables(evals, args.out_dir, timing=args.timing, mask_quality=args.mask_quality)
    log.info("wrote %d table files into %s", len(written), args.out_dir)
    claims_md = Path(args.out_dir, "claims.md").read_text()
    log.info("claims:\n%s", claims_md)
