"""The rehearsal at A2D scale: per-rule cost at fractions of the real dataset, and its extrapolation to the whole.

    python benchmarks/rehearsal.py --run DIR --fraction 0.015625 --metadata M    # run the preset to `tables` in DIR
    python benchmarks/rehearsal.py DIR1 DIR2 ...                                 # tabulate and extrapolate runs

A run is ``snakemake tables --cores N --resources gpu=1`` (``--cores``, default 1) on ``config/rehearsal.yaml`` with ``synthetic.fraction``
and ``synthetic.metadata`` (the folder holding the real videoset.csv and annotated-frames.csv) overridden, in the
working folder DIR (its artifacts land in ``DIR/results-rehearsal``). For each run it prints the dataset (videos,
frames, annotated frames, size on disk, frames per second of ``synthesize``) and, per rule, jobs, wall seconds, CPU
seconds (summed over the rule's jobs; Snakemake samples it, so a lower bound) and peak RSS (max over them), from
Snakemake's benchmark files; ``--run`` also prints the run's exact CPU time.

With two complete runs or more (``tables`` finished), each rule's wall time, CPU time and peak RSS are fitted as ``a + b * n`` over the runs
(least squares; ``n`` = annotated frames, or all frames for ``synthesize``) and evaluated at the whole metadata:
a linear extrapolation, marked as such. Training rules have a fixed number of iterations, so their fitted slope
is mostly noise; a peak RSS with a clear slope is a job whose memory grows with the data.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from main_job import read_benchmarks, timed  # the sibling script (this folder is on sys.path when run as a script)

REPO = Path(__file__).resolve().parents[1]

RESULTS = "results-rehearsal"
LIMIT_MB = 4096


def run(workdir: Path, fraction: float, metadata: Path, timeout: int, cores: int) -> tuple[float, float]:
    """Run the preset to `tables` in ``workdir`` at ``fraction`` on ``cores``; its wall and exact CPU seconds."""
    workdir.mkdir(parents=True, exist_ok=True)
    override = workdir / "fraction.yaml"
    override.write_text(yaml.safe_dump({"synthetic": {"metadata": str(metadata.resolve()), "fraction": fraction}}))
    cmd = ["timeout", str(timeout), sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"),
           "--directory", str(workdir), "tables", "--cores", str(cores), "--resources", "gpu=1",
           "--configfile", str(REPO / "config" / "rehearsal.yaml"), str(override)]
    return timed(cmd)


def dataset_facts(results: Path) -> dict[str, float]:
    """Videos, frames, annotated frames and size on disk (MB) of the dataset a run wrote."""
    root = yaml.safe_load((REPO / "config" / "rehearsal.yaml").read_text())["dataset"]["root"]
    root = results.parent / root
    videos = pd.read_csv(root / "videoset.csv", header=None)
    size = sum(p.stat().st_size for p in root.rglob("*") if p.is_file())
    return {"videos": len(videos), "frames": int(videos[6].sum()), "annotated": int(videos[7].sum()),
            "size_mb": size / 2**20}


def table(results: Path) -> pd.DataFrame:
    rules = read_benchmarks(results)
    frame = pd.DataFrame.from_dict(rules, orient="index").sort_values("wall", ascending=False)
    frame.index.name = "rule"
    return frame.astype({"jobs": int})


def whole_metadata(metadata: Path) -> dict[str, float]:
    videos = pd.read_csv(metadata / "videoset.csv", header=None)
    return {"frames": int(videos[6].sum()), "annotated": int(videos[7].sum()), "videos": len(videos)}


def extrapolate(runs: list[tuple[dict, pd.DataFrame]], whole: dict) -> pd.DataFrame:
    """Per rule, wall / CPU / peak RSS fitted linearly in the run size and evaluated at the whole dataset."""
    rows = {}
    for rule in runs[-1][1].index:
        size_key = "frames" if rule == "synthesize" else "annotated"
        n = np.array([facts[size_key] for facts, t in runs if rule in t.index], float)
        if len(n) < 2 or np.ptp(n) == 0:
            continue
        row = {}
        for column in ("wall", "cpu", "rss"):
            y = np.array([t.loc[rule, column] for _, t in runs if rule in t.index], float)
            slope, intercept = np.polyfit(n, y, 1)
            row[column] = max(intercept + slope * whole[size_key], 0.0)
            if column == "rss":
                row["rss_per_1k_frames"] = slope * 1000
        rows[rule] = row
    out = pd.DataFrame.from_dict(rows, orient="index")
    out.index.name = "rule"
    out["over_4GB"] = out["rss"] > LIMIT_MB
    return out.sort_values("wall", ascending=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("workdirs", nargs="*", type=Path, help="working folders of finished rehearsal runs")
    parser.add_argument("--run", type=Path, help="working folder to run the rehearsal in first")
    parser.add_argument("--fraction", type=float, default=1 / 64)
    parser.add_argument("--metadata", type=Path, default=REPO.parent / "shared" / "real-data" / "a2d-metadata")
    parser.add_argument("--timeout", type=int, default=3 * 3600, help="seconds before the run is stopped")
    parser.add_argument("--cores", type=int, default=1, help="Snakemake --cores: with 2, two jobs run at once "
                        "(per-job CPU and memory stay comparable; wall times grow under contention)")
    args = parser.parse_args()
    workdirs = list(args.workdirs)
    if args.run is not None:
        wall, cpu = run(args.run, args.fraction, args.metadata, args.timeout, args.cores)
        print(f"rehearsal at fraction {args.fraction:g}, --cores {args.cores}: {wall:.0f} s wall, {cpu:.0f} s CPU "
              f"(exact, Snakemake and every job)")
        workdirs.append(args.run)
    if not workdirs:
        parser.error("give finished runs' folders, or --run")
    runs = []
    pd.set_option("display.width", 200)
    for workdir in workdirs:
        results = workdir / RESULTS
        facts, rules = dataset_facts(results), table(results)
        wall, cpu = (rules.loc["synthesize", c] if "synthesize" in rules.index else float("nan") for c in ("wall", "cpu"))
        print(f"\n## {workdir}: {facts['videos']} videos, {facts['frames']} frames, {facts['annotated']} annotated, "
              f"{facts['size_mb']:.0f} MB on disk; synthesize {facts['frames'] / wall:.1f} frames/s of wall time, "
              f"{facts['frames'] / cpu:.1f} per CPU second")
        print(rules.to_markdown(floatfmt=(".0f", ".0f", ".1f", ".1f", ".0f")))
        print(f"total: {rules['wall'].sum():.0f} s wall, {rules['cpu'].sum():.0f} s CPU, "
              f"peak RSS {rules['rss'].max():.0f} MB ({rules['rss'].idxmax()})")
        if (results / "tables" / "done").is_file():
            runs.append((facts, rules))
        else:
            print("(incomplete run: `tables` has not finished; left out of the extrapolation)")
    if len(runs) >= 2:
        whole = whole_metadata(args.metadata)
        runs.sort(key=lambda r: r[0]["annotated"])
        print(f"\n## Linear extrapolation to the whole metadata ({whole['videos']} videos, {whole['frames']} frames, "
              f"{whole['annotated']} annotated): an estimate from {len(runs)} runs, not a measurement")
        facts = [r[0] for r in runs]
        size = np.polyfit([f["annotated"] for f in facts], [f["size_mb"] for f in facts], 1)
        print(f"dataset size on disk: {np.polyval(size, whole['annotated']) / 1024:.1f} GB (by annotated frames); "
              f"{facts[-1]['size_mb'] / facts[-1]['frames'] * whole['frames'] / 1024:.1f} GB (by frames)")
        print(extrapolate(runs, whole).to_markdown(floatfmt=".1f"))


if __name__ == "__main__":
    main()
