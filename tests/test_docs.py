"""The documentation: a short README, a configuration reference that matches the schema, no dead relative link,
and LICENSE, CITATION.cff and ``a2dpipe --version`` in step with the package."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib

import pytest
import yaml

from a2dpipe import __version__
from a2dpipe.config_reference import COMMAND, render, undescribed
from conftest import REPO

PAGES = sorted([REPO / "README.md", *(REPO / "docs").rglob("*.md")])
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
FENCE = re.compile(r"^(```|~~~).*?^\1", re.M | re.S)


def test_every_config_key_has_a_description():
    assert undescribed() == [], "describe these keys in workflow/schemas/config.schema.yaml"


def test_undescribed_keys_are_found():
    tree = {"properties": {"a": {"type": "object", "description": "x", "properties": {"b": {"type": "integer"}}},
                           "c": {"type": "string", "description": " "}}}
    assert undescribed(tree) == ["a.b", "c"]


def test_configuration_reference_is_current():
    page = (REPO / "docs" / "configuration.md").read_text()
    assert page == render(), f"docs/configuration.md is stale: run `{COMMAND}`"


def test_configuration_reference_names_every_key_with_its_default():
    page = render()
    assert "| `root` | path | required |" in page
    assert "| `iterations` | integer >= 1 | `400` | training steps" in page  # segmentation.stage2
    assert "| `wheel_max` | number > 0 or null | `null` |" in page
    assert "## `segmentation.stage2`" in page and "[`segmentation.stage2`](#segmentationstage2)" in page


def test_config_reference_command_checks_the_page(tmp_path):
    page = tmp_path / "configuration.md"
    cmd = [sys.executable, "-m", "a2dpipe", "config-reference"]
    assert subprocess.run([*cmd, "--out", page], cwd=REPO).returncode == 0 and page.read_text() == render()
    assert subprocess.run([*cmd, "--check", page], cwd=REPO).returncode == 0
    page.write_text(render().replace("training steps", "steps of training"))
    proc = subprocess.run([*cmd, "--check", page], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 1 and "stale" in proc.stderr and COMMAND in proc.stderr


def slug(heading: str) -> str:
    """GitHub's anchor of a Markdown heading: lower case, punctuation dropped, spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(path) -> set[str]:
    text = FENCE.sub("", path.read_text())
    return {slug(m.group(1)) for m in re.finditer(r"^#{1,6}\s+(.+?)\s*#*$", text, re.M)}


def links(path) -> list[str]:
    """Relative link targets of a page (code blocks left out)."""
    text = FENCE.sub("", path.read_text())
    return [t for t in LINK.findall(text) if not re.match(r"^[a-z][a-z0-9+.-]*:", t, re.I)]


def test_slug_and_links_read_markdown_as_github_does(tmp_path):
    assert slug("`segmentation.stage2`") == "segmentationstage2" and slug("Real A2D and weights") == "real-a2d-and-weights"
    page = tmp_path / "p.md"
    page.write_text("# Top\n[a](b.md) ![i](img/x.png) [w](https://x.org)\n```\n[c](d.md)\n```\n[e](#top)\n")
    assert links(page) == ["b.md", "img/x.png", "#top"] and anchors(page) == {"top"}


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_relative_links_resolve(page):
    dead = []
    for target in links(page):
        file, _, anchor = target.partition("#")
        path = (page.parent / file).resolve() if file else page
        if not path.exists():
            dead.append(f"{target}: no such file")
        elif anchor and path.suffix == ".md" and anchor not in anchors(path):
            dead.append(f"{target}: no heading with that anchor")
    assert not dead, f"{page.relative_to(REPO)}: " + "; ".join(dead)


def test_readme_is_a_short_front_door():
    readme = (REPO / "README.md").read_text()
    assert len(readme.splitlines()) <= 150
    first_block = re.search(r"```bash\n(.*?)```", readme, re.S).group(1)
    assert "snakemake tables" in first_block  # the main job is the first command shown
    for page in ("docs/README.md", "docs/configuration.md", "docs/troubleshooting.md"):
        assert f"]({page})" in readme


def test_every_docs_page_is_in_the_index():
    index = (REPO / "docs" / "README.md").read_text()
    for page in (REPO / "docs").glob("*.md"):
        assert page.name == "README.md" or f"]({page.name})" in index, f"docs/README.md does not link {page.name}"


def test_version_licence_and_citation_agree_with_the_package():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert project["version"] == __version__
    proc = subprocess.run([sys.executable, "-m", "a2dpipe", "--version"], capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout.strip() == f"a2dpipe {__version__}"
    assert project["license"]["text"] == "MIT" and (REPO / "LICENSE").read_text().startswith("MIT License")
    citation = yaml.safe_load((REPO / "CITATION.cff").read_text())
    assert citation["cff-version"] == "1.2.0" and citation["version"] == __version__ and citation["license"] == "MIT"
    paper = citation["preferred-citation"]
    assert paper["title"] == "Actor-Action Semantic Segmentation with Region Masks" and paper["year"] == 2018
    assert [a["family-names"] for a in paper["authors"]] == ["Dang", "Zhou", "Tu", "Hoy", "Dauwels", "Yuan"]
