"""The prepared GPU check (benchmarks/gpu_check.py), run with ``--tiny`` on the CPU: every check measures finite
figures, the killed and resumed training ends with the uninterrupted weights, and the budget stops it early."""

import csv
import math
import re

import pytest

from conftest import REPO


@pytest.fixture(scope="module")
def gpu_check():
    """The script as a module (it imports ``random_regions`` from its neighbour benchmarks/backends.py)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(REPO / "benchmarks"))
        import gpu_check

        yield gpu_check


def test_tiny_check_measures_every_stage_and_resumes_to_the_same_weights(gpu_check, tmp_path, capsys):
    out = tmp_path / "check.csv"
    rows = gpu_check.main(["--tiny", "--device", "cpu", "--start-method", "fork", "--warmup", "1", "--steps", "2",
                           "--repeats", "2", "--out", str(out)])
    checks = {r["check"]: r for r in rows}
    assert list(checks) == ["stage 1 step", "stage 1 per frame", "stage 2 step", "stage 2 per frame",
                            "baseline inference per frame", "ours inference per frame", "data path", "FCIS step",
                            "FCIS per frame", "FlowNet2 per frame", "region-mask cache write per frame",
                            "region masks cropped on the device per frame", "two-job device assignment",
                            "kill and resume", "elapsed"]
    assert all(math.isfinite(r["value"]) and r["ok"] is True for r in rows), rows
    assert all(r["value"] > 0 for r in rows if r["unit"] == "ms")
    assert checks["stage 1 per frame"]["value"] == pytest.approx(checks["stage 1 step"]["value"] / 10)  # batch 10
    assert "50 regions per frame, boxes at roi_align: float32" in checks["stage 2 step"]["note"]
    # the real data path with loader workers, against what the stage-1 step consumes
    assert "2 loader worker(s)" in checks["data path"]["note"] and "keeps up" in checks["data path"]["note"]
    assert "read back equal: yes" in checks["region-mask cache write per frame"]["note"]
    assert "the writer's bytes: yes" in checks["region masks cropped on the device per frame"]["note"]
    devices = checks["two-job device assignment"]  # torch.cuda faked to report 2 GPUs: one each
    assert devices["value"] == 2 and "cuda:0 and cuda:1" in devices["note"]
    resume = checks["kill and resume"]
    assert resume["value"] == 0.0
    assert re.search(r"step [2-6] of 8, resumed there in a new forked process: yes; bitwise equal weights: yes, "
                     r"loss curves equal", resume["note"]), resume["note"]
    with open(out) as f:
        assert [r["check"] for r in csv.DictReader(f)] == list(checks)
    printed = capsys.readouterr().out
    assert "| check | value | unit | ok | note |" in printed and "autocast bfloat16" in printed


def test_budget_stops_the_check_early_and_still_reports(gpu_check, capsys):
    rows = gpu_check.main(["--tiny", "--device", "cpu", "--budget", "0.5"])
    assert rows[-1]["check"] == "elapsed" and rows[-1]["value"] < 5
    assert any(r["ok"] is False and "budget" in r["note"] for r in rows[:-1]), rows
    assert "| elapsed |" in capsys.readouterr().out
