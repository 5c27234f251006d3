"""Fixtures shared by the test files: the repository, the tiny preset and a Snakemake runner."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def complete(config: dict) -> dict:
    """A test's partial ``config`` validated and completed with the schema's defaults, as a ``--config`` file is
    when a command reads it: the code under test reads each key it needs and has no default of its own."""
    from a2dpipe.config import resolve

    return resolve({"dataset": {}, **config}, "test config", partial=True)  # dataset's own default: none


def segmenter(config: dict, **options):
    """``build_segmenter`` of ``config``'s ``segmentation`` section, completed (:func:`complete`); ``options``:
    ``segmenter_arguments``' input, pretrained, regions."""
    from a2dpipe.segmentation.models import build_segmenter, segmenter_arguments

    return build_segmenter(**segmenter_arguments(complete(config)["segmentation"], **options))


def schema_section(name: str, values: dict | None = None) -> dict:
    """Config section ``name``: ``values`` completed with the schema's defaults (:func:`complete`)."""
    return complete({name: dict(values or {})})[name]


@pytest.fixture(autouse=True, scope="session")
def interpreter_on_path(tmp_path_factory):
    """Put this interpreter's folder first on PATH, as an activated environment would, after a folder whose
    ``scontrol`` answers "no controller" at once.

    Workflow rules call ``python -m a2dpipe`` and some tests call ``snakemake``: both must be the ones installed
    beside the interpreter running the tests, even when the environment was not activated. The SLURM executor
    plugin runs ``scontrol show config`` whenever Snakemake starts, whichever executor is used; where the SLURM
    client is installed but no controller answers, that waits ~10 s, once per Snakemake start of the suite. Only
    the SLURM test needs the real one (its fixture takes the stand-in off PATH: :func:`real_slurm_client`).
    """
    no_controller = tmp_path_factory.mktemp("no-slurm-controller")
    scontrol = no_controller / "scontrol"
    scontrol.write_text("#!/bin/sh\necho 'scontrol: no SLURM controller (test stand-in)' >&2\nexit 1\n")
    scontrol.chmod(0o755)
    old = os.environ.get("PATH", "")
    os.environ["PATH"] = os.pathsep.join([str(no_controller), str(Path(sys.executable).parent), old])
    yield no_controller
    os.environ["PATH"] = old


@pytest.fixture(scope="module")
def real_slurm_client(interpreter_on_path):
    """PATH without the ``scontrol`` stand-in of :func:`interpreter_on_path`, for tests that talk to SLURM."""
    old = os.environ["PATH"]
    os.environ["PATH"] = os.pathsep.join(p for p in old.split(os.pathsep) if p != str(interpreter_on_path))
    yield
    os.environ["PATH"] = old


@pytest.fixture(scope="session")
def tiny_config() -> Path:
    """The tiny preset (tests/config.tiny.yaml): every rule of the DAG on a few seconds of data."""
    return REPO / "tests" / "config.tiny.yaml"


@pytest.fixture(scope="session")
def snakemake_run():
    """``run(workdir, *args, config=None, timeout=900, check=True)``: the repository's Snakefile in ``workdir``.

    Runs ``python -m snakemake`` on one thread per job (``OMP_NUM_THREADS=1``) and returns the CompletedProcess,
    stdout and stderr merged into ``.stdout``; with ``check`` a non-zero exit fails the test and shows the output.
    """

    def run(workdir, *args, config=None, timeout=900, check=True):
        cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory", str(workdir)]
        cmd += [str(a) for a in args]
        if config is not None:  # last: --configfile (like --resources) takes every value that follows it
            cmd += ["--configfile", str(config)]
        env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
        proc = subprocess.run(
            cmd, cwd=REPO, env=env, text=True, timeout=timeout,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )
        if check and proc.returncode != 0:
            pytest.fail(f"snakemake {' '.join(map(str, args))} exited {proc.returncode}:\n{proc.stdout[-6000:]}")
        return proc

    return run


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, tiny_config, snakemake_run) -> Path:
    """Working folder of one complete run of the tiny preset to `tables` (artifacts under ``results/``).

    Made once per test session and shared by the end-to-end checks (the run costs a few minutes): treat it as
    read-only; dry runs (``-n``) against it are fine, anything that writes needs its own folder.

    Each job gets the threads its rule asks for (at most 2; synthesize 2, as the SLURM test sets it), as on a SLURM
    node, so the SLURM run can be compared with this one bit for bit (the thread count changes the order of
    floating-point sums in training). Four cores and two GPU slots let two jobs run side by side, as on the SLURM
    test's node: most jobs are short, and one job's start-up (imports) overlaps another's work.
    """
    workdir = tmp_path_factory.mktemp("tiny-run")
    snakemake_run(workdir, "tables", "--cores", "4", "--resources", "gpu=2", "--set-threads", "synthesize=2",
                  config=tiny_config, timeout=1800)
    return workdir


# Run-dependent parts of otherwise deterministic outputs: measured times and the folders of logs and benchmarks.
_VOLATILE_DIRS = {"logs", "benchmarks", "timing", "a2d-synthetic"}
_VOLATILE_KEY = ("second", "time", "_ms", "elapsed", "host")


def _volatile(key: str) -> bool:
    # "rng": generator states saved for resuming, which include unseeded global generators nothing draws from;
    # "sha256": a JSON artifact's digest of its own content (a2dpipe.integrity), measured seconds included
    return key in ("rng", "sha256") or any(word in key.lower() for word in _VOLATILE_KEY)


def _differences(a: Path, b: Path) -> list[str]:
    """Differences between two artifacts of the same name, ignoring measured times (empty list: equal)."""
    import json

    import h5py
    import numpy as np

    if a.suffix == ".h5":
        out = []
        with h5py.File(a, "r") as fa, h5py.File(b, "r") as fb:
            names_a, names_b = [], []
            fa.visit(names_a.append)
            fb.visit(names_b.append)
            if sorted(names_a) != sorted(names_b):
                return [f"{a.name}: groups differ"]
            for name in ["/", *names_a]:
                attrs_a = {k: v for k, v in fa[name].attrs.items() if not _volatile(k)}
                attrs_b = {k: v for k, v in fb[name].attrs.items() if not _volatile(k)}
                if attrs_a.keys() != attrs_b.keys() or any(np.any(attrs_a[k] != attrs_b[k]) for k in attrs_a):
                    out.append(f"{a.name}:{name}: attributes differ")
                if isinstance(fa[name], h5py.Dataset) and not np.array_equal(fa[name][()], fb[name][()]):
                    out.append(f"{a.name}:{name}: data differ")
        return out
    if a.suffix == ".json":
        def strip(x):
            if isinstance(x, dict):
                return {k: strip(v) for k, v in x.items() if not _volatile(k)}
            return [strip(v) for v in x] if isinstance(x, list) else x
        return [] if strip(json.loads(a.read_text())) == strip(json.loads(b.read_text())) else [f"{a}: differs"]
    if a.suffix == ".pt":
        import torch

        def equal(x, y):
            if isinstance(x, torch.Tensor):
                return isinstance(y, torch.Tensor) and x.shape == y.shape and bool(torch.equal(x, y))
            if isinstance(x, dict):
                keys = {k for k in x if not _volatile(str(k))}
                return keys == {k for k in y if not _volatile(str(k))} and all(equal(x[k], y[k]) for k in keys)
            if isinstance(x, (list, tuple)):
                return len(x) == len(y) and all(equal(u, v) for u, v in zip(x, y))
            return bool(np.all(x == y)) if isinstance(x, np.ndarray) else x == y
        load = dict(map_location="cpu", weights_only=True)  # every checkpoint the project writes is plain data
        return [] if equal(torch.load(a, **load), torch.load(b, **load)) else [f"{a}: tensors differ"]
    return [] if a.read_bytes() == b.read_bytes() else [f"{a}: bytes differ"]


@pytest.fixture(scope="session")
def assert_same_outputs():
    """``check(results_a, results_b)``: both results folders hold the same artifacts with the same contents.

    Logs, benchmarks, timings, measured seconds and hidden temporaries of killed writers are left out; HDF5 is compared dataset by dataset, JSON and
    checkpoints value by value, everything else byte for byte. Returns the relative paths compared.
    """

    def check(results_a: Path, results_b: Path) -> list[str]:
        def listing(root: Path) -> set[str]:
            return {
                str(p.relative_to(root))
                for p in root.rglob("*")
                if p.is_file() and not _VOLATILE_DIRS & set(p.relative_to(root).parts)
                and not (p.name.startswith(".") and ".tmp-" in p.name)  # a killed writer's hidden temporary
                and p.stem != "timing"  # the timing table (tables/timing.*) holds measured milliseconds
            }

        files_a, files_b = listing(results_a), listing(results_b)
        assert files_a == files_b, f"artifacts differ: only in first {files_a - files_b}, only in second {files_b - files_a}"
        problems = [d for rel in sorted(files_a) for d in _differences(results_a / rel, results_b / rel)]
        assert not problems, "outputs differ:\n" + "\n".join(problems)
        return sorted(files_a)

    return check
