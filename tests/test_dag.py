"""The workflow itself: its DAG builds at A2D scale, `snakemake --lint` is clean, snakefmt agrees."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from conftest import REPO

REAL_METADATA = Path(__file__).resolve().parents[2] / "shared" / "real-data" / "a2d-metadata"


def test_dag_of_the_full_a2d_builds(tmp_path, tiny_config, snakemake_run):
    """Dry run to `tables` over the real A2D video set (3,782 videos, 473 shards of 8) builds the whole DAG."""
    if not (REAL_METADATA / "videoset.csv").is_file():
        pytest.skip(f"real A2D metadata not found at {REAL_METADATA}")
    config = yaml.safe_load(tiny_config.read_text())
    config["dataset"].update(root=str(REAL_METADATA), synthetic=False, shard_size=8, exclude_videos=[])
    path = tmp_path / "a2d.yaml"
    path.write_text(yaml.safe_dump(config))

    start = time.monotonic()
    proc = snakemake_run(tmp_path, "tables", "--dry-run", "--quiet", "rules", config=path)
    seconds = time.monotonic() - start
    counts = {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)$", proc.stdout, re.M)}
    assert counts["extract_frames"] == 473 and counts["flow"] == 473, counts  # ceil(3782 / 8) shards
    assert counts["region_masks"] == 3 * 473 and counts["tables"] == 1, counts
    # The time is reported, not asserted: a loaded CI machine must not fail a correct DAG (target: < 10 s).
    print(f"dry run of {counts['total']} jobs: {seconds:.1f} s")


def test_lint_reports_nothing():
    proc = subprocess.run([sys.executable, "-m", "snakemake", "--lint"], cwd=REPO, capture_output=True, text=True)
    lints = [line.strip() for line in (proc.stdout + proc.stderr).splitlines() if line.startswith(("Lints for", "    *"))]
    assert proc.returncode == 0 and not lints, "\n".join(lints) or proc.stderr[-3000:]


def test_snakefiles_are_snakefmt_formatted():
    cmd = [sys.executable, "-m", "snakefmt", "--check", "Snakefile", "workflow/"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr + proc.stdout
