"""Writers of the tables: CSV (full precision), Markdown, LaTeX and HTML (rounded, intervals folded into their
metric). The HTML page is what the Snakemake report shows: the table itself, its caption, and its CSV as a download.

A column ``<h>`` with companions ``<h> low`` and ``<h> high`` is shown as one cell, ``15.8 [13.9, 17.6]``
(:func:`interval_text`); one with a companion ``<h> sd`` (a standard deviation) as ``15.8 ± 1.2``
(:func:`spread_text`); a missing value is ``-``.
"""

from __future__ import annotations

import base64
import html
import math
from pathlib import Path

import pandas as pd

from a2dpipe.io import atomic_path

__all__ = ["LOW", "HIGH", "SD", "interval_text", "spread_text", "markdown_table", "latex_table", "html_table",
           "write_table"]

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


# A page shown inside the report's frame: readable without the report's style sheet; wide tables scroll.
_HTML_STYLE = """
body { font-family: system-ui, sans-serif; font-size: 14px; margin: 12px; color: #222; }
p.caption { max-width: 70em; line-height: 1.4; }
div.scroll { overflow-x: auto; }
table { border-collapse: collapse; }
th, td { border: 1px solid #ccc; padding: 3px 7px; white-space: nowrap; }
th { background: #f0f0f0; white-space: normal; vertical-align: bottom; min-width: 5em; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
span.ci { color: #666; font-size: 85%; }
tbody tr:nth-child(even) { background: #fafafa; }
"""


def _html_cell(text: str, numeric: bool) -> str:
    """One ``<td>``; an interval ``15.8 [13.9, 17.6]`` as the value over its bracket (muted), so that a wide table
    such as Table 1 fits the report's frame."""
    value, bracket, rest = text.partition(" [")
    body = html.escape(value) + (f'<br><span class="ci">[{html.escape(rest)}</span>' if bracket else "")
    return f'<td class="num">{body}</td>' if numeric else f"<td>{body}</td>"


def _csv_text(df: pd.DataFrame) -> str:
    return df.to_csv(index=False, float_format="%.2f")


def html_table(df: pd.DataFrame, digits: int = 1, caption: str | None = None, title: str | None = None,
               csv_name: str | None = None) -> str:
    """A self-contained HTML page: ``title``, ``caption``, the table (intervals folded in, as in Markdown) and,
    with ``csv_name``, a link that downloads the CSV (embedded, so that the page works on its own)."""
    headers, numeric, rows = _display(df, digits)
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in headers)
    body = "\n".join("<tr>" + "".join(_html_cell(v, n) for v, n in zip(row, numeric)) + "</tr>" for row in rows)
    parts = ['<!DOCTYPE html>\n<html><head><meta charset="utf-8">',
             f"<title>{html.escape(title or csv_name or 'table')}</title><style>{_HTML_STYLE}</style></head><body>"]
    if title:
        parts.append(f"<h2>{html.escape(title)}</h2>")
    if caption:
        parts.append(f'<p class="caption">{html.escape(caption)}</p>')
    parts.append(f'<div class="scroll"><table>\n<thead><tr>{head}</tr></thead>\n<tbody>\n{body}\n</tbody>'
                 "</table></div>")
    if csv_name:
        data = base64.b64encode(_csv_text(df).encode()).decode()
        parts.append(f'<p><a download="{html.escape(csv_name)}" href="data:text/csv;base64,{data}">'
                     f"{html.escape(csv_name)}</a>: every column, intervals as separate low and high columns</p>")
    parts.append("</body></html>\n")
    return "\n".join(parts)


def _title(caption: str | None) -> tuple[str | None, str | None]:
    """(title, rest) of a caption that opens with a short title sentence (``"Table 1. Baseline ..."``)."""
    title, _, rest = (caption or "").partition(". ")
    return (title, rest) if rest and len(title) <= 40 else (None, caption)


def write_table(df: pd.DataFrame, out_dir: Path, name: str, caption: str | None = None, digits: int = 1) -> list[Path]:
    """``out_dir/<name>.csv``, ``.md``, ``.tex`` and ``.html`` (:func:`html_table`, headed by the caption's title
    sentence), each written atomically; returns the paths."""
    title, text = _title(caption)
    paths = []
    for suffix, render in (
        (".csv", lambda: _csv_text(df)),
        (".md", lambda: markdown_table(df, digits, caption)),
        (".tex", lambda: latex_table(df, digits, caption, f"tab:{name}")),
        (".html", lambda: html_table(df, digits, text, title, f"{name}.csv")),
    ):
        path = out_dir / f"{name}{suffix}"
        with atomic_path(path) as tmp:
            Path(tmp).write_text(render())
        paths.append(path)
    return paths
