"""How long Snakemake takes to build the whole DAG (to `tables`) of an A2D-sized dataset.

    python benchmarks/dag.py [--videoset ../shared/real-data/a2d-metadata/videoset.csv] [--repeats 3]

Dry-runs the workflow over the given videoset.csv (by default the real A2D one: 3,782 videos, 11,926 annotated
frames) and prints the median wall time of the dry run, process start included. Target: under 10 s on 2 cores.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videoset", type=Path, default=REPO.parent / "shared/real-data/a2d-metadata/videoset.csv")
    parser.add_argument("--shard-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        config = yaml.safe_load((REPO / "config.yaml").read_text())
        config["results"] = str(Path(tmp, "results"))
        config["dataset"].update(root=str(args.videoset.resolve().parent), synthetic=False, shard_size=args.shard_size)
        config_path = Path(tmp, "config.yaml")
        config_path.write_text(yaml.safe_dump(config))
        cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory", tmp,
               "tables", "--dry-run", "--quiet", "rules", "--configfile", str(config_path)]
        seconds = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            proc = subprocess.run(cmd, capture_output=True, text=True)
            seconds.append(time.perf_counter() - start)
            if proc.returncode != 0:
                sys.exit(proc.stdout + proc.stderr)
        total = next(line.split()[-1] for line in proc.stdout.splitlines() if line.startswith("total"))
    print(f"dry run to `tables`: {total} jobs, median {statistics.median(seconds):.2f} s "
          f"(runs: {', '.join(f'{s:.2f}' for s in seconds)})")


if __name__ == "__main__":
    main()
