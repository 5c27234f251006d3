"""Where the main job's time goes: wall time, CPU time, share and peak memory per rule.

    python benchmarks/main_job.py [--results results]     # read the benchmark files of a finished run
    python benchmarks/main_job.py --run --workdir DIR        # run the main job in a fresh DIR first, then read

Every rule writes a Snakemake benchmark file (``results/benchmarks/<rule>/...tsv``: wall seconds ``s``,
``cpu_time``, ``max_rss`` in MB). This sums them per rule, sorted by wall time, with each rule's share of the
total, so that the cost of a change is visible rule by rule. With ``--run`` it first runs the README's main command
(``snakemake tables --cores 1 --resources gpu=1`` on ``config.yaml``; ``--cores N`` to compare) with ``DIR`` as its
working directory, so its results land in ``DIR/results``, and also prints the command's own wall time, which includes Snakemake's
start-up and scheduling, and its exact CPU time, Snakemake's and every job's (the operating system's account of
all the processes it waited for).

The per-rule CPU column is a lower bound: Snakemake samples a job's CPU time (twice a second for its first 15
seconds, then every 30 seconds) and records the last sample, so a job of 16-45 s shows about 15 s. Wall times and
the ``--run`` total are exact.
"""

from __future__ import annotations

import argparse
import csv
import resource
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run_main_job(workdir: Path, cores: int = 1) -> tuple[float, float]:
    """Run the main job in ``workdir`` (which must not exist, so that every job runs); its wall and CPU seconds."""
    if workdir.exists():
        sys.exit(f"{workdir} exists: --run needs a fresh folder, so that every job runs")
    workdir.mkdir(parents=True)
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory", str(workdir),
           "tables", "--cores", str(cores), "--resources", "gpu=1", "--configfile", str(REPO / "config.yaml")]
    return timed(cmd)


def timed(cmd: list[str]) -> tuple[float, float]:
    """Run ``cmd`` from the repository; its wall seconds and the exact CPU seconds of all its processes."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(cmd, cwd=REPO, check=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)


def read_benchmarks(results: Path) -> dict[str, dict[str, float]]:
    """Per rule: jobs, wall seconds, CPU seconds (summed over its jobs) and peak RSS in MB (max over them)."""
    folder = results / "benchmarks"
    files = sorted(folder.rglob("*.tsv"))
    if not files:
        sys.exit(f"{folder}: no benchmark files (run the main job first, or pass --run)")
    rules: dict[str, dict[str, float]] = defaultdict(lambda: dict(jobs=0, wall=0.0, cpu=0.0, rss=0.0))
    for path in files:
        rule = path.relative_to(folder).parts[0].removesuffix(".tsv")
        with path.open() as f:
            row = next(csv.DictReader(f, delimiter="\t"))
        entry = rules[rule]
        entry["jobs"] += 1
        entry["wall"] += float(row["s"])
        entry["cpu"] += _number(row.get("cpu_time"))
        entry["rss"] = max(entry["rss"], _number(row.get("max_rss")))
    return dict(rules)


def _number(text: str | None) -> float:
    return float(text) if text not in (None, "", "NA", "-") else 0.0


def format_table(rules: dict[str, dict[str, float]]) -> str:
    wall = sum(r["wall"] for r in rules.values())
    cpu = sum(r["cpu"] for r in rules.values())
    lines = ["| rule | jobs | wall s | CPU s (sampled, a lower bound) | share of wall | peak RSS MB |", "|---|---:|---:|---:|---:|---:|"]
    for name, r in sorted(rules.items(), key=lambda item: -item[1]["wall"]):
        lines.append(f"| {name} | {r['jobs']} | {r['wall']:.1f} | {r['cpu']:.1f} | {100 * r['wall'] / wall:.1f} % "
                     f"| {r['rss']:.0f} |")
    lines.append(f"| **all jobs** | {sum(r['jobs'] for r in rules.values())} | {wall:.1f} | {cpu:.1f} | 100 % "
                 f"| {max(r['rss'] for r in rules.values()):.0f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=REPO / "results", help="results folder of a finished run")
    parser.add_argument("--run", action="store_true", help="run the main job in --workdir first")
    parser.add_argument("--workdir", type=Path, help="with --run: a fresh working directory for the run")
    parser.add_argument("--cores", type=int, default=1, help="with --run: Snakemake's --cores (the README's: 1)")
    args = parser.parse_args()
    if args.run and args.workdir is None:
        parser.error("--run needs --workdir")
    command = run_main_job(args.workdir.resolve(), args.cores) if args.run else None
    results = args.workdir.resolve() / "results" if args.run else args.results.resolve()
    print(format_table(read_benchmarks(results)))
    if command is not None:
        wall, cpu = command
        print(f"\nmain command (Snakemake's start-up and scheduling included): {wall:.0f} s wall, {cpu:.0f} s CPU")


if __name__ == "__main__":
    main()
