"""The project installs as documented: dependency lists agree, the command line answers, the caps hold."""

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
