"""The project installs as documented: dependency lists agree, the command line answers, the caps hold."""

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import yaml
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]


def _pyproject_requirements():
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())
    return {Requirement(r).name: Requirement(r).specifier for r in meta["project"]["dependencies"]}


def _conda_requirements():
    env = yaml.safe_load((ROOT / "envs" / "a2dpipe.yaml").read_text())
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    return {Requirement(r).name: Requirement(r).specifier for r in pip_section}


def test_conda_env_matches_pyproject():
    assert _conda_requirements() == _pyproject_requirements()


def test_torch_is_capped():
    reqs = _pyproject_requirements()
    assert "2.14.2" not in reqs["torch"] and "2.14.1" in reqs["torch"]
    assert "0.29.2" not in reqs["torchvision"] and "0.29.1" in reqs["torchvision"]


def test_command_line_lists_every_stage():
    out = subprocess.run([sys.executable, "-m", "a2dpipe", "--help"], capture_output=True, text=True, check=True)
    for command in ("synthesize", "index", "extract-frames", "flow", "train", "predict", "evaluate", "tables"):
        assert command in out.stdout


def test_unknown_command_is_an_error():
    out = subprocess.run([sys.executable, "-m", "a2dpipe", "no-such-stage"], capture_output=True, text=True)
    assert out.returncode == 2 and "invalid choice" in out.stderr


_DEFERRED_DYNAMO = """import sys
import torch
from a2dpipe.cli import dynamo_deferred, import_command
with dynamo_deferred():
    for command in ("train-mask-model", "region-masks", "train", "predict"):
        import_command(command)
    import a2dpipe.masks.model  # region-masks imports its model only when it runs one
    assert "torch._dynamo" not in sys.modules, "a stage imported the compiler"
    from torchvision.ops import roi_align
    pooled = roi_align(torch.ones(1, 2, 8, 8), [torch.tensor([[0.0, 0.0, 4.0, 4.0]])], 2)
    assert pooled.shape == (1, 2, 2, 2) and bool((pooled == 1).all())
    helper = sys.modules["torchvision.ops.roi_align"].is_compile_supported
    assert helper("cpu") is True and "torch._dynamo" in sys.modules  # the real helper, imported on first call
import torch._dynamo.utils as utils
assert utils.is_compile_supported is not helper and sys.modules["torch._dynamo.utils"] is utils
"""

_COMPILER_INSIDE = """import sys
import torch
from a2dpipe.cli import dynamo_deferred
with dynamo_deferred():
    import torchvision.ops
    import torch._dynamo  # code that needs the compiler gets all of it
    from torch._dynamo.utils import counters
    assert sys.modules["torch._dynamo.utils"].counters is counters
    assert torch.compile(lambda x: x + 1, backend="eager")(torch.ones(2)).tolist() == [2.0, 2.0]
"""


def test_stage_modules_load_torchvision_without_the_compiler():
    # torchvision imports torch._dynamo for one rarely called helper: ~3 CPU-s in each torch job
    subprocess.run([sys.executable, "-c", _DEFERRED_DYNAMO], check=True)
    subprocess.run([sys.executable, "-c", _COMPILER_INSIDE], check=True)


# The only way a job's `python` finds a2dpipe here is PYTHONPATH: -S skips the environment's .pth files (the
# editable install is one) and the environment's packages are added back by hand.
_SHIM = """import os, runpy, sys
sys.path[0] = os.getcwd()  # as `python -m` does
sys.path += {site!r}
if sys.argv[1:2] != ["-m"]:
    sys.exit("this python only runs modules: python -m MODULE ...")
module, sys.argv = sys.argv[2], [sys.argv[0], *sys.argv[3:]]
runpy.run_module(module, run_name="__main__", alter_sys=True)
"""


def _python_without_the_package(folder: Path) -> Path:
    """A folder whose ``python`` has this environment's packages but not a2dpipe, unless PYTHONPATH holds it."""
    import shlex
    import site

    folder.mkdir()
    (folder / "shim.py").write_text(_SHIM.format(site=site.getsitepackages()))
    python = folder / "python"
    python.write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} -S {shlex.quote(str(folder / "shim.py"))} "$@"\n')
    python.chmod(0o755)
    return folder


def test_jobs_import_the_workflows_package_from_any_folder(tmp_path, tiny_config, snakemake_run, monkeypatch):
    """Rules' `python -m a2dpipe` works with an interpreter that lacks the package, run from another folder."""
    bin_dir = _python_without_the_package(tmp_path / "bin")
    monkeypatch.delenv("PYTHONPATH", raising=False)
    monkeypatch.setenv("PATH", os.pathsep.join([str(bin_dir), os.environ["PATH"]]))
    bare = subprocess.run(["python", "-m", "a2dpipe", "--help"], cwd=tmp_path, capture_output=True, text=True)
    assert bare.returncode != 0 and "No module named a2dpipe" in bare.stderr, bare.stderr[-2000:]

    config = yaml.safe_load(tiny_config.read_text())
    config["synthetic"].update(videos=2, frames=4, annotated_frames=1)
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(config))
    snakemake_run(tmp_path / "work", "index", "--cores", "1", config=path)
    assert (tmp_path / "work" / "results" / "index.csv").read_text().startswith("video,")
