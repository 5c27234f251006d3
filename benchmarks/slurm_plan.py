"""What the SLURM profile submits for every job of a target, without a cluster.

    python benchmarks/slurm_plan.py all --configfile config/paper.yaml [--a2d-metadata DIR]

Runs ``snakemake -n TARGET --workflow-profile workflow/profiles/slurm`` (a dry run: nothing is submitted), reads each
planned job's rule, threads and resources from its output, and builds the job's ``sbatch`` command with the
installed snakemake-executor-plugin-slurm's own functions (``get_submit_command``, ``set_gres_string``), as the
plugin does on submission. ``--a2d-metadata`` plans the configuration over an A2D-sized synthetic dataset (the real
``videoset.csv`` and ``annotated-frames.csv`` in DIR: every video, A2D's shards), so that a configuration whose
dataset is not on this machine (the paper preset) can be planned.

Prints per rule the number of jobs and their sbatch arguments, then the jobs that break the rule of the profile: a
job that asks for a GPU outside the GPU partition, a job without one inside it, a job without a runtime or memory.
Exits non-zero when there is one. tests/test_slurm.py runs :func:`plan` on the tiny and seeds presets.
"""

from __future__ import annotations

import argparse
import re
import shlex
import subprocess
import sys
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import yaml

REPO = Path(__file__).resolve().parents[1]
PROFILE = REPO / "workflow" / "profiles" / "slurm"


class _Resources(dict):
    """A job's resources as the plugin reads them: ``.get(name)`` and ``.name``."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError as e:
            raise AttributeError(name) from e


@dataclass
class PlannedJob:
    rule: str
    wildcards: dict
    threads: int
    resources: dict
    sbatch: str

    def argument(self, pattern: str) -> str | None:
        m = re.search(pattern, self.sbatch)
        return m[1] if m else None

    @property
    def partition(self) -> str | None:
        return self.argument(r" -p '?([^ ']+)'?")

    @property
    def gpus(self) -> int:
        return int(self.argument(r"--gpus=(\d+)") or 0)

    @property
    def cpus(self) -> int | None:
        value = self.argument(r"--cpus-per-task=(\d+)")
        return int(value) if value else None


def _value(text: str):
    try:
        return int(text)
    except ValueError:
        return text


def _jobs(dry_run: str) -> list[tuple[str, dict, int, dict]]:
    """(rule, wildcards, threads, resources) of every job with a command that a dry run's output lists (a rule
    without one, such as `all`, is no job for the cluster)."""
    blocks = re.split(r"^(?:local)?rule (\w+):$", dry_run, flags=re.M)[1:]
    jobs = []
    for rule, body in zip(blocks[::2], blocks[1::2]):
        resources = re.search(r"^    resources: (.*)$", body, re.M)
        command = re.search(r"^Shell command: (.*)$", body, re.M)
        if resources is None or command is None or command[1] == "None":
            continue
        threads = re.search(r"^    threads: (\d+)$", body, re.M)
        wildcards = re.search(r"^    wildcards: (.*)$", body, re.M)
        wildcards = dict(item.split("=", 1) for item in wildcards[1].split(", ")) if wildcards else {}
        pairs = (item.split("=", 1) for item in resources[1].split(", "))
        jobs.append((rule, wildcards, int(threads[1]) if threads else 1, {k: _value(v) for k, v in pairs}))
    return jobs


def sbatch_command(rule: str, threads: int, resources: dict) -> str:
    """The plugin's sbatch command for a job of ``rule`` (without the wrapped Snakemake call)."""
    from snakemake_executor_plugin_slurm.submit_string import get_submit_command
    from snakemake_executor_plugin_slurm.utils import set_gres_string

    job = SimpleNamespace(name=rule, threads=threads, resources=_Resources(resources))
    partition = resources.get("slurm_partition")
    params = {
        "run_uuid": "plan", "slurm_logfile": f".snakemake/slurm_logs/rule_{rule}/%j.log", "comment_str": f"rule_{rule}",
        "account": f"-A {shlex.quote(str(resources['slurm_account']))}" if "slurm_account" in resources else "",
        "partition": f" -p {shlex.quote(str(partition))}" if partition else "", "workdir": ".",
    }
    return get_submit_command(job, params) + set_gres_string(job)


def plan(target: str, configfiles: list[Path], workdir: Path, extra: tuple[str, ...] = ()) -> list[PlannedJob]:
    """Every job of ``target`` as the SLURM profile would submit it (a dry run in ``workdir``)."""
    # --cores: a dry run caps threads at the local cores; on SLURM every job gets its rule's threads
    cmd = [sys.executable, "-m", "snakemake", "-n", target, "--workflow-profile", str(PROFILE), "--snakefile",
           str(REPO / "Snakefile"), "--directory", str(workdir), "--cores", "1024", *extra,
           "--configfile", *map(str, configfiles)]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stdout[-4000:]}{proc.stderr[-4000:]}")
    return [PlannedJob(rule, wildcards, threads, res, sbatch_command(rule, threads, res))
            for rule, wildcards, threads, res in _jobs(proc.stdout)]


def problems(jobs: list[PlannedJob], gpu_partition: str) -> list[str]:
    """Jobs that break the profile's rule: GPU jobs in the GPU partition only, every job with runtime and memory."""
    out = []
    for job in jobs:
        if job.gpus and job.partition != gpu_partition:
            out.append(f"{job.rule}: asks for {job.gpus} GPU(s) outside the GPU partition: {job.sbatch}")
        if not job.gpus and job.partition == gpu_partition:
            out.append(f"{job.rule}: no GPU, yet in the GPU partition: {job.sbatch}")
        if " -t " not in job.sbatch or "--mem " not in job.sbatch or job.cpus is None:
            out.append(f"{job.rule}: no runtime, memory or CPU count: {job.sbatch}")
    return out


def a2d_sized(configfile: Path, metadata: Path, folder: Path) -> Path:
    """``configfile`` with its dataset swapped for the A2D-shaped synthetic one made from ``metadata`` (every video)."""
    config = yaml.safe_load(configfile.read_text())
    results = config.get("results", "results")
    config["dataset"] = {**config.get("dataset", {}), "root": f"{results}/a2d-shaped", "synthetic": True}
    config["synthetic"] = {**config.get("synthetic", {}), "metadata": str(metadata.resolve()), "fraction": 1.0}
    path = folder / f"a2d-sized-{configfile.name}"
    path.write_text(yaml.safe_dump(config))
    return path


def summary(jobs: list[PlannedJob]) -> str:
    """Per rule: jobs, and the distinct sbatch arguments that matter (partition, GPUs, CPUs, runtime, memory)."""
    rows = Counter()
    for job in jobs:
        rows[(job.rule, job.partition, job.gpus, job.cpus, job.argument(r" -t '?(\d+)"),
              job.argument(r"--mem (\d+)"))] += 1
    lines = ["| rule | jobs | partition | GPUs | CPUs | runtime (min) | memory (MB) |", "|---|---|---|---|---|---|---|"]
    lines += [f"| {r} | {n} | {p} | {g} | {c} | {t} | {m} |" for (r, p, g, c, t, m), n in sorted(rows.items())]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("target")
    parser.add_argument("--configfile", nargs="+", type=Path, default=[REPO / "config.yaml"])
    parser.add_argument("--a2d-metadata", type=Path, help="plan over an A2D-sized dataset made from this metadata")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        configs = list(args.configfile)
        if args.a2d_metadata:
            configs[-1] = a2d_sized(configs[-1], args.a2d_metadata, Path(tmp))
        merged = {}
        for path in [REPO / "config.yaml", *configs]:
            merged.update(yaml.safe_load(path.read_text()) or {})
        gpu_partition = merged.get("cluster", {}).get("gpu_partition", "gpu")
        jobs = plan(args.target, configs, Path(tmp) / "work")
    print(summary(jobs))
    bad = problems(jobs, gpu_partition)
    gpu_jobs = sum(1 for j in jobs if j.gpus)
    print(f"\n{len(jobs)} jobs: {gpu_jobs} with a GPU, {len(jobs) - gpu_jobs} without; {len(bad)} misplaced or "
          "without runtime, memory or CPUs")
    for line in bad:
        print(line)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
