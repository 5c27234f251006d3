"""The tiny pipeline through the `slurm` profile on a real (single-node) SLURM gives what a local run gives.

Needs a SLURM controller. When none answers and the tests run as root, the fixture starts one with
``tests/slurm/start_slurm.sh`` (Debian's slurm-wlm, one node, a fake `gpu` GRES) and stops it afterwards with
``tests/slurm/stop_slurm.sh``. Elsewhere the test is skipped, except under CI (``CI`` set), where it must run.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time

import pytest

from conftest import REPO

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

TARGET = "tables"


def _slurm_answers() -> str | None:
    """None when `sinfo` reaches a controller with an idle node, else why not."""
    if shutil.which("sinfo") is None:
        return "SLURM is not installed (no `sinfo`); start one with tests/slurm/start_slurm.sh"
    try:
        proc = subprocess.run(["sinfo", "-h", "-o", "%P %t"], capture_output=True, text=True, timeout=15)
    except subprocess.TimeoutExpired:
        return "`sinfo` did not answer within 15 s; start SLURM with tests/slurm/start_slurm.sh"
    if proc.returncode != 0:
        return f"`sinfo` failed ({proc.stderr.strip()}); start SLURM with tests/slurm/start_slurm.sh"
    partitions = dict(line.split()[:2] for line in proc.stdout.splitlines() if line.strip())
    if not {"cpu*", "gpu"} <= partitions.keys() and not {"cpu", "gpu"} <= partitions.keys():
        return f"SLURM lacks the `cpu` and `gpu` partitions the slurm profile uses (has {sorted(partitions)})"
    return None


SCRIPTS = REPO / "tests" / "slurm"


@pytest.fixture(scope="module")
def slurm(real_slurm_client):
    if _slurm_answers() is None:
        yield
        return
    if os.geteuid() != 0:
        _skip_or_fail("no SLURM answers and starting one needs root")
    started = subprocess.run(["bash", SCRIPTS / "start_slurm.sh"], capture_output=True, text=True, timeout=900)
    try:
        reason = _slurm_answers()
        if started.returncode != 0 or reason:
            _skip_or_fail(f"could not start SLURM ({reason}): {started.stdout[-2000:]}{started.stderr[-2000:]}")
        yield
    finally:
        subprocess.run(["bash", SCRIPTS / "stop_slurm.sh"], capture_output=True, text=True, timeout=120)


def _skip_or_fail(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"CI must run the SLURM test: {reason}")
    pytest.skip(reason)


def _submitted_jobs(run_id: str) -> list[dict]:
    """Jobs of one Snakemake run as SLURM saw them (kept visible for MinJobAge after they end)."""
    fields = ("JobID", "Partition", "Comment", "tres-per-job", "State")
    out = subprocess.run(
        ["squeue", "-h", "-t", "all", "--name", run_id, "-O", ",".join(f"{f}:|" for f in fields)],
        capture_output=True, text=True, check=True,
    ).stdout
    return [dict(zip(fields, (v.strip() for v in line.split("|")))) for line in out.splitlines() if line.strip()]


def test_slurm_profile_matches_local_run(slurm, tmp_path, tiny_config, tiny_run, snakemake_run, assert_same_outputs):
    # the local run is the session's shared one (tiny_run): the same config, so the same artifacts
    cluster = tmp_path / "slurm"
    cluster.mkdir()

    start = time.monotonic()
    # Poll soon after submission: tiny jobs end in seconds (the profile's 20 s suits real clusters). The test node
    # offers two job slots per core (start_slurm.sh): a job asking for more CPUs than it has (synthesize's 8 workers
    # on a 2-core machine) would stay PENDING (PartitionConfig) for ever.
    proc = snakemake_run(
        cluster, "--workflow-profile", REPO / "workflow/profiles/slurm", "--slurm-init-seconds-before-status-checks", "2",
        "--latency-wait", "10", TARGET, "--set-threads", "synthesize=2", config=tiny_config, timeout=1500,
    )
    print(f"SLURM end-to-end run of `{TARGET}`: {time.monotonic() - start:.0f} s")

    run_id = re.search(r"SLURM run ID: (\S+)", proc.stdout).group(1)
    jobs = _submitted_jobs(run_id)
    assert jobs and all(job["State"] == "COMPLETED" for job in jobs), jobs
    for job in jobs:  # GPU jobs went to the gpu partition; the cpu partition got only jobs without a GPU
        wants_gpu = job["tres-per-job"] not in ("", "N/A")
        assert job["Partition"] == "gpu" if wants_gpu else job["Partition"] in ("cpu", "gpu"), job
    assert any(job["Partition"] == "cpu" for job in jobs), "no job ran on the cpu partition"
    assert any(job["tres-per-job"].endswith("gpu:1") for job in jobs), "no job asked SLURM for a GPU"

    compared = assert_same_outputs(tiny_run / "results", cluster / "results")
    assert any(name.startswith("tables") for name in compared), compared
