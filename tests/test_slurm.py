"""The `slurm` profile: every job's sbatch arguments (a dry run, no cluster needed), and the tiny pipeline through
the profile on a real (single-node) SLURM, which gives what a local run gives.

The end-to-end test needs a SLURM controller. When none answers and the tests run as root, the fixture starts one with
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

import yaml

from conftest import REPO

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


@pytest.mark.slurm
@pytest.mark.slow
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
    for job in jobs:  # GPU jobs went to the gpu partition, jobs without a GPU to the cpu partition
        wants_gpu = job["tres-per-job"] not in ("", "N/A")
        assert job["Partition"] == ("gpu" if wants_gpu else "cpu"), job
    assert any(job["Partition"] == "cpu" for job in jobs), "no job ran on the cpu partition"
    assert any(job["tres-per-job"].endswith("gpu:1") for job in jobs), "no job asked SLURM for a GPU"

    compared = assert_same_outputs(tiny_run / "results", cluster / "results")
    assert any(name.startswith("tables") for name in compared), compared


# -- sbatch arguments of every job (benchmarks/slurm_plan.py builds them with the plugin's own functions) --------

# rules whose jobs use an accelerator in the tiny preset (DIS flow runs on the CPU; ground truth's region masks
# need no model)
GPU_RULES = {"train_mask_model", "region_masks", "train_stage1", "train_stage2", "predict"}
SIZES = {"synthesize": "pass", "index": "small", "extract_frames": "shard", "flow": "shard",
         "gt_region_masks": "shard", "train_mask_model": "train", "region_masks": "shard", "mask_quality": "pass",
         "train_stage1": "train", "train_stage2": "train", "predict": "pass", "evaluate": "small",
         "validate": "small", "timing": "small", "estimate": "small", "report_figures": "small", "tables": "small",
         "compare_masks": "small", "aggregate": "small"}
LOADER_RULES = {"train_mask_model", "train_stage1", "train_stage2", "predict"}


@pytest.fixture(scope="module")
def slurm_plan():
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(REPO / "benchmarks"))
        import slurm_plan

        yield slurm_plan


def _base_rule(rule: str) -> str:
    """The workflow rule behind a module's copy (compare_masks_predict, seed_2_predict: predict)."""
    return re.sub(r"^(compare_masks_|seed_\d+_)(?=.)", "", rule)


def _check_jobs(jobs, config: dict) -> None:
    cluster, workers = config["cluster"], config["segmentation"]["loader_workers"]
    for job in jobs:
        rule = _base_rule(job.rule)
        wants_gpu = rule in GPU_RULES
        assert job.gpus == int(wants_gpu), job
        assert job.partition == cluster["gpu_partition" if wants_gpu else "cpu_partition"], job
        size = cluster["sizes"][SIZES[rule]]
        assert re.search(rf" -t '?{size['runtime']}'? .*--mem {size['mem_mb']} ", job.sbatch), job
        assert job.cpus == job.threads, job
        if rule in LOADER_RULES:  # the loader's workers and the process that drives the accelerator
            assert job.threads == max(workers + 1, 2), job


def test_every_job_of_the_tiny_preset_asks_slurm_for_what_it_needs(tmp_path, tiny_config, slurm_plan):
    config = yaml.safe_load(tiny_config.read_text())
    config["segmentation"]["loader_workers"] = 3
    config["cluster"]["gpu_partition"] = "accel"
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(config))
    for target in ("tables", "all"):
        jobs = slurm_plan.plan(target, [path], tmp_path / target)
        assert not slurm_plan.problems(jobs, "accel")
        _check_jobs(jobs, config)
        rules = {job.rule for job in jobs}
        assert GPU_RULES <= rules and "extract_frames" in rules
        if target == "all":  # the mask-model comparison's rules are copies with the same needs
            assert {"compare_masks_region_masks", "compare_masks_train_stage2", "compare_masks_predict"} <= rules
        # ground truth's region masks use no model: CPU partition, once (not again in the comparison module); the
        # model sources' want the accelerator
        masks = {(job.rule, job.wildcards["source"], job.partition) for job in jobs if "region_masks" in job.rule}
        assert masks == {("gt_region_masks", "gt", "cpu"), ("region_masks", "dataset", "accel"),
                         ("region_masks", "generic", "accel")} | (
            {("compare_masks_region_masks", s, "accel") for s in ("dataset", "generic")} if target == "all" else set())
        assert {job.cpus for job in jobs if job.rule in LOADER_RULES} == {4}


def test_every_job_of_the_seeds_preset_asks_slurm_for_what_it_needs(tmp_path, slurm_plan):
    jobs = slurm_plan.plan("all", [REPO / "config" / "seeds.yaml"], tmp_path)
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    assert not slurm_plan.problems(jobs, config["cluster"]["gpu_partition"])
    _check_jobs(jobs, config)
    assert {_base_rule(j.rule) for j in jobs if j.rule.startswith("seed_2_") and j.gpus} == GPU_RULES  # all validates
