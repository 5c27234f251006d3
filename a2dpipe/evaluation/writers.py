"""Writers of the tables: CSV (full precision), Markdown and LaTeX (rounded, intervals folded into their metric).

A column ``<h>`` with companions ``<h> low`` and ``<h> high`` is shown as one cell, ``15.8 [13.9, 17.6]``
(:func:`interval_text`); one with a companion ``<h> sd`` (a standard deviation) as ``15.8 ± 1.2``
(:func:`spread_text`); a missing value is ``-``.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from a2dpipe.io import atomic_path

__all__ = ["LOW", "HIGH", "SD", "interval_text", "spread_text", "markdown_table", "latex_table", "write_table"]

LOW, HIGH, SD = "low", "high", "sd"


def _cell(value, digits: int) -> str:
    if isinstance(value, float):
        return "-" if math.isnan(value) else f"{value:.{digits}f}"
    if value is None or value is pd.NA:
        return "-"
    return str(value)


def interval_text(value: float, low: float, high: float, digits: int, signed: bool = False) -> str:
    """``15.8 [13.9, 17.6]``; the value alone without an interval, ``-`` without a value."""
    if math.isnan(value):
        return "-"
    fmt = f"{{:+.{digits}f}}" if signed else f"{{:.{digits}f}}"
    if math.isnan(low) or math.isnan(high):
        return fmt.format(value)
    return f"{fmt.format(value)} [{low:.{digits}f}, {high:.{digits}f}]"


def spread_text(value: float, sd: float, digits: int, signed: bool = False) -> str:
    """``15.8 ± 1.2``; the value alone without a standard deviation, ``-`` without a value."""
    if math.isnan(value):
        return "-"
    text = f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"
    return text if math.isnan(sd) else f"{text} ± {sd:.{digits}f}"


def _display(df: pd.DataFrame, digits: int) -> tuple[list[str], list[bool], list[list[str]]]:
    """Headers, right-alignment flags and text rows, each ``<h>`` folded with ``<h> low`` / ``<h> high`` or with
    ``<h> sd``."""
    folded = {f"{c} {suffix}" for c in df.columns for suffix in (LOW, HIGH, SD)}
    shown = [c for c in df.columns if c not in folded]
    numeric = [pd.api.types.is_numeric_dtype(df[c]) for c in shown]
    rows = []
    for record in df.to_dict("records"):
        row = []
        for c in shown:
            if f"{c} {LOW}" in df.columns and f"{c} {HIGH}" in df.columns:
                row.append(interval_text(float(record[c]), float(record[f"{c} {LOW}"]),
                                          float(record[f"{c} {HIGH}"]), digits))
            elif f"{c} {SD}" in df.columns:
                row.append(spread_text(float(record[c]), float(record[f"{c} {SD}"]), digits))
            else:
                row.append(_cell(record[c], digits))
        rows.append(row)
    return shown, numeric, rows


def markdown_table(df: pd.DataFrame, digits: int = 1, caption: str | None = None) -> str:
    """GitHub-flavoured Markdown; numbers with ``digits`` decimals, intervals folded in, missing as ``-``."""
    headers, numeric, rows = _display(df, digits)
    lines = [f"{caption}\n"] if caption else []
    lines.append("| " + " | ".join(map(str, headers)) + " |")
    lines.append("|" + "|".join("---:" if n else "---" for n in numeric) + "|")
    for row in rows:
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


_LATEX_SPECIAL = {"&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{", "}": r"\}",
                  "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "\\": r"\textbackslash{}",
                  "±": r"$\pm$"}


def _tex(text: str) -> str:
    return "".join(_LATEX_SPECIAL.get(ch, ch) for ch in str(text))


def latex_table(df: pd.DataFrame, digits: int = 1, caption: str | None = None, label: str | None = None) -> str:
    """A ``table`` environment with a booktabs ``tabular`` (needs ``\\usepackage{booktabs}``); intervals folded in."""
    headers, numeric, rows = _display(df, digits)
    align = "".join("r" if n else "l" for n in numeric)
    lines = [r"\begin{table}[t]", r"\centering", r"\resizebox{\linewidth}{!}{%", rf"\begin{{tabular}}{{{align}}}",
             r"\toprule", " & ".join(_tex(c) for c in headers) + r" \\", r"\midrule"]
    for row in rows:
        lines.append(" & ".join(_tex(v) for v in row) + r" \\")
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
