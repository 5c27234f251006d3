"""A killed run resumes: only unfinished work reruns, training continues from its checkpoint, same final outputs.

The tiny preset with a longer stage-1 schedule is run three ways in separate working folders: uninterrupted; and
interrupted twice -- an `extract_frames` job killed (SIGTERM) while it writes its shard, then the `train_stage1`
job killed (SIGKILL) after its first checkpoint -- and rerun each time. To hit a job mid-way without racing it, the
job is run in short slices (SIGSTOP/SIGCONT) until the state to interrupt is reached, then signalled.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

import psutil
import pytest
import yaml

from conftest import REPO

pytestmark = pytest.mark.slow

TARGET = "results/models/stage1/rgb/model.pt"


@pytest.fixture(scope="module")
def resume_config(tmp_path_factory, tiny_config):
    """The tiny preset with a stage-1 schedule long enough to be killed between checkpoints."""
    config = yaml.safe_load(tiny_config.read_text())
    config["segmentation"]["stage1"].update(iterations=12, checkpoint_every=3)
    path = tmp_path_factory.mktemp("config") / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def snakemake_cmd(workdir, config):
    return [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory", str(workdir),
            TARGET, "--cores", "1", "--resources", "gpu=1", "--configfile", str(config)]


def job_counts(stdout: str) -> dict[str, int]:
    """Rule -> number of jobs, from the 'Job stats' table Snakemake prints before running."""
    table = stdout.split("Job stats:", 1)[1]
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)$", table, re.M) if m.group(1) != "total"}


def run_and_interrupt(workdir, config, command: str, reached, sig) -> str:
    """Run the workflow; when a job whose command line holds ``command`` reaches ``reached()``, send it ``sig``.

    The job runs in 20 ms slices (SIGCONT ... SIGSTOP) while it is watched, so the interruption lands inside the
    window however short it is. Returns Snakemake's output; the run must fail because of the killed job.
    """
    env = dict(os.environ, OMP_NUM_THREADS="1")
    snake = subprocess.Popen(snakemake_cmd(workdir, config), cwd=REPO, env=env, text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    parent, victim, deadline = psutil.Process(snake.pid), None, time.monotonic() + 300
    try:
        while victim is None and snake.poll() is None and time.monotonic() < deadline:
            for proc in parent.children(recursive=True):
                try:
                    if command in " ".join(proc.cmdline()) and "python" in proc.name():
                        proc.suspend()
                        victim = proc
                        break
                except psutil.NoSuchProcess:
                    continue
            time.sleep(0.005)
        assert victim is not None, f"no job ran `{command}`"
        while not reached():
            victim.resume()
            time.sleep(0.02)
            victim.suspend()
            assert victim.is_running() and victim.status() != psutil.STATUS_ZOMBIE, f"`{command}` ended unhit"
        victim.send_signal(sig)
        if sig != signal.SIGKILL:
            victim.resume()  # a stopped process acts on SIGTERM only once it runs again
        out, _ = snake.communicate(timeout=300)
    finally:
        if snake.poll() is None:
            snake.kill()
    assert snake.returncode != 0, out[-3000:]
    return out


def test_killed_jobs_resume_to_the_uninterrupted_result(tmp_path, resume_config, snakemake_run, assert_same_outputs):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    snakemake_run(straight, TARGET, "--cores", "1", "--resources", "gpu=1", config=resume_config)

    # 1. Kill frame extraction of whichever shard runs second, while it writes its HDF5 file.
    frames = resumed / "results" / "frames"
    out = run_and_interrupt(
        resumed, resume_config, "extract-frames",
        reached=lambda: frames.is_dir() and any(p.name.startswith(".shard-") for p in frames.iterdir()),
        sig=signal.SIGTERM,
    )
    first_done = sorted(frames.glob("shard-*.h5"))
    assert len(first_done) <= 1, "the killed shard looks finished"
    assert all(p.name.startswith(".shard-") for p in frames.iterdir() if p not in first_done)  # hidden temporaries
    assert "extract_frames" in out

    # 2. Rerun: only the unfinished shards (and what follows) run; kill training after its first checkpoint.
    finished = {p: p.stat().st_mtime_ns for p in [resumed / "results" / "index.csv", *first_done]}
    model = resumed / TARGET
    checkpoint = model.with_name("checkpoint.pt")
    out = run_and_interrupt(resumed, resume_config, "--stage 1", reached=checkpoint.is_file, sig=signal.SIGKILL)
    assert job_counts(out) == {"extract_frames": 2 - len(first_done), "train_stage1": 1}, out[-3000:]
    assert {p: p.stat().st_mtime_ns for p in finished} == finished, "finished outputs were rewritten"
    assert checkpoint.is_file() and not model.exists(), "the killed training job left a model"

    # 3. Rerun: training alone, continuing from the checkpoint, to the same weights as the uninterrupted run.
    proc = snakemake_run(resumed, TARGET, "--cores", "1", "--resources", "gpu=1", config=resume_config)
    assert job_counts(proc.stdout) == {"train_stage1": 1}, proc.stdout[-3000:]
    log = (resumed / "results" / "logs" / "train_stage1" / "rgb.log").read_text()
    step = int(re.search(r"resuming from \S+checkpoint\.pt at step (\d+)", log).group(1))
    assert 3 <= step < 12, log
    compared = assert_same_outputs(straight / "results", resumed / "results")
    assert "models/stage1/rgb/model.pt" in compared and "frames/shard-001.h5" in compared
