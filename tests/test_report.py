"""The HTML report of a run: the bare ``snakemake --report report.html`` after ``tables`` (the session's shared run;
after ``all``: tests/test_dag.py), its pages, its description, and the pages shown in headless Chromium."""

from __future__ import annotations

import base64
import re
from pathlib import Path

import jinja2
import pytest
import yaml

from conftest import REPO
from report_browser import MIN_SIZE, check_pages, find_browser, readable, report_pages, screenshot

# What the report of a run of `tables` holds (the tiny preset: both trained mask sources, so mask quality too)
TABLES_PAGES = {"table1.html": "Table 1", "table2.html": "Table 2", "table3.html": "Table 3", "table4.html": "Table 4",
                "table5.html": "Table 5", "claims.html": "Claims", "timing.html": "Timing",
                "mask_quality.html": "Mask quality", "per_category.png": "Per-category accuracy",
                "qualitative.png": "Qualitative results", "loss_curves.png": "Training curves"}
# ... and what `all` adds
ALL_PAGES = {"metrics.html": "Validation metrics", "mask_models.html": "Mask models"}


def bare_report(snakemake_run, workdir: Path, config: Path, out: Path) -> dict[str, dict]:
    """``snakemake --report`` (no target) in ``workdir``; the report's pages by file name."""
    snakemake_run(workdir, "--report", out, config=config)
    return {Path(path).name: entry for path, entry in report_pages(out).items()}


def page_text(entry: dict) -> str:
    return base64.b64decode(entry["data_uri"].split(",", 1)[1]).decode()


def check_page_contents(pages: dict[str, dict]) -> None:
    """Every page is labelled by its title; a table page holds the table with its intervals."""
    for name, entry in pages.items():
        assert entry["labels"] == {"page": {**TABLES_PAGES, **ALL_PAGES}[name]}, name
    table1 = page_text(pages["table1.html"])
    assert "<h2>Table 1</h2>" in table1 and "<td>this run</td>" in table1
    assert re.search(r'<td class="num">\d+\.\d<br><span class="ci">\[\d+\.\d, \d+\.\d\]</span></td>', table1)
    assert 'download="table1.csv"' in table1


@pytest.fixture(scope="module")
def tables_report(tiny_run, tiny_config, snakemake_run, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("report") / "report.html"
    pages = bare_report(snakemake_run, tiny_run, tiny_config, out)
    assert set(pages) == set(TABLES_PAGES)  # no CSV download in place of a table, nothing `tables` did not make
    check_page_contents(pages)
    return out


def test_the_bare_report_after_tables_shows_each_table_and_figure_as_a_page(tables_report, tiny_config):
    text = tables_report.read_text()
    description = re.search(r'<script id="workflow-desc">(.*?)</script>', text, re.S).group(1)
    config = yaml.safe_load(tiny_config.read_text())
    assert "segmentation:" in description and f"bootstrap_resamples: {config['evaluation']['bootstrap_resamples']}" \
        in description


def test_the_description_renders_the_configuration_as_yaml():
    """The landing page's configuration, rendered as Snakemake renders it (Jinja, then docutils), reads back as
    the config itself."""
    import html

    from docutils.core import publish_parts

    from a2dpipe.config import load_config

    config = load_config(REPO / "config.yaml")

    class Snakemake:  # what the report gives the description
        pass

    Snakemake.config = config
    env = jinja2.Environment(trim_blocks=True, lstrip_blocks=True)  # as snakemake.report
    rst = env.from_string((REPO / "workflow/report/workflow.rst").read_text()).render(snakemake=Snakemake)
    body = publish_parts(rst, writer="html")["html_body"]
    block = re.search(r'<pre class="literal-block">\n?(.*?)</pre>', body, re.S).group(1)
    assert yaml.safe_load(html.unescape(block)) == config
    assert "system-message" not in body  # docutils found nothing to complain about


def test_the_report_pages_show_in_headless_chromium(tables_report, tmp_path):
    browser = find_browser()
    if browser is None:
        pytest.skip("no Chromium on PATH (chromium, chromium-browser, google-chrome): the report cannot be opened "
                    "in a browser here; on Debian: apt-get install chromium")
    pages = report_pages(tables_report)
    checks = check_pages(tables_report, list(pages), browser)
    assert [c["path"] for c in checks] == list(pages)
    assert all(readable(c) for c in checks), [c for c in checks if not readable(c)]

    # what a reader sees of Table 1: the frame's area holds text (dark pixels on many rows), not a blank page
    import matplotlib.image

    table1 = next(path for path in pages if path.endswith("tables/table1.html"))
    box = next(c for c in checks if c["path"] == table1)
    png = tmp_path / "table1.png"
    screenshot(tables_report, table1, png, browser)
    pixels = matplotlib.image.imread(png)[..., :3]
    top, left = int(box["top"]), int(box["left"])
    frame = pixels[top:top + MIN_SIZE[1] * 2, left:left + MIN_SIZE[0] * 2]
    dark_rows = (frame.mean(axis=2) < 0.4).any(axis=1).sum()
    assert dark_rows > 40, f"Table 1's frame looks empty ({dark_rows} rows with text) in {png}"
