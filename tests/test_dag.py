"""The workflow itself: its DAG builds at A2D scale, `snakemake --lint` is clean, snakefmt agrees."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from conftest import REPO

REAL_METADATA = Path(__file__).resolve().parents[2] / "shared" / "real-data" / "a2d-metadata"


def test_dag_of_the_full_a2d_builds(tmp_path, tiny_config, snakemake_run):
    """Dry run to `tables` over the real A2D video set (3,782 videos, 473 shards of 8) builds the whole DAG (no COCO
    file: no generic source, so no region run on it)."""
    if not (REAL_METADATA / "videoset.csv").is_file():
        pytest.skip(f"real A2D metadata not found at {REAL_METADATA}")
    config = yaml.safe_load(tiny_config.read_text())
    config["dataset"].update(root=str(REAL_METADATA), synthetic=False, shard_size=8, exclude_videos=[])
    config["experiments"]["regions"] = [r for r in config["experiments"]["regions"] if "generic" not in r]
    path = tmp_path / "a2d.yaml"
    path.write_text(yaml.safe_dump(config))

    start = time.monotonic()
    proc = snakemake_run(tmp_path, "tables", "--dry-run", "--quiet", "rules", config=path)
    seconds = time.monotonic() - start
    counts = {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)$", proc.stdout, re.M)}
    assert counts["extract_frames"] == 473 and counts["flow"] == 473, counts  # ceil(3782 / 8) shards
    assert counts["region_masks"] == counts["gt_region_masks"] == 473, counts  # dataset's and ground truth's
    assert counts["train_mask_model"] == 1 and counts["tables"] == 1, counts
    # The time is reported, not asserted: a loaded CI machine must not fail a correct DAG (target: < 10 s).
    print(f"dry run of {counts['total']} jobs: {seconds:.1f} s")


def test_local_profile_plans_the_main_job(tmp_path, tiny_config, snakemake_run):
    """The profile of one machine is valid Snakemake profile syntax and plans `tables` (it is not run here: the
    session's shared tiny run and the SLURM test already run the whole DAG)."""
    proc = snakemake_run(tmp_path, "--workflow-profile", REPO / "workflow/profiles/local", "tables", "--dry-run", "--quiet",
                         "rules", config=tiny_config)
    assert re.search(r"^tables\s+1$", proc.stdout, re.M), proc.stdout[-2000:]


def parsed_command_line(monkeypatch, *argv):
    """Snakemake's options for ``snakemake *argv`` typed in the repository's root, profiles included."""
    from snakemake.cli import parse_args

    monkeypatch.chdir(REPO)
    return parse_args([str(a) for a in argv])[1]


def test_default_profile_makes_the_target_alone_the_main_job(monkeypatch):
    """`snakemake tables` reads profiles/default: one core, one accelerator slot, as the documented command
    `snakemake tables --cores 1 --resources gpu=1` says; the command line still wins over the profile."""
    plain = parsed_command_line(monkeypatch, "tables")
    card = parsed_command_line(monkeypatch, "tables", "--cores", "1", "--resources", "gpu=1")
    for args in (plain, card):
        assert args.targets == ["tables"] and args.cores == 1 and args.resources["gpu"].value == 1
        assert args.rerun_incomplete and not args.keep_going  # the first failure stops a run
    wider = parsed_command_line(monkeypatch, "tables", "--cores", "2", "--resources", "gpu=2")
    assert wider.cores == 2 and wider.resources["gpu"].value == 2


def test_other_profiles_replace_the_default_one(monkeypatch):
    """--workflow-profile replaces profiles/default: the SLURM profile's jobs are not capped at one core."""
    local = parsed_command_line(monkeypatch, "tables", "--workflow-profile", REPO / "workflow/profiles/local")
    assert local.cores != 1 and local.keep_going
    slurm = parsed_command_line(monkeypatch, "tables", "--workflow-profile", REPO / "workflow/profiles/slurm")
    assert slurm.executor == "slurm" and slurm.cores is None and "gpu" not in slurm.resources


def test_default_profile_runs_a_target_given_alone(tmp_path, tiny_config, snakemake_run):
    """No --cores: the default profile supplies it (Snakemake refuses to run locally without one)."""
    snakemake_run(tmp_path, "index", config=tiny_config)
    assert (tmp_path / "results" / "index.csv").is_file()


def test_compare_masks_runs_the_other_mask_model_on_this_runs_data_and_stage1(tmp_path, tiny_config, tiny_run,
                                                                             snakemake_run):
    """Target `compare_masks` on a copy of the shared run: the comparison module trains its own mask models,
    region caches, stage 2 and Table 3's predictions with the other mask model, and nothing else. The copy then
    runs on to `all` (the comparison, the estimate, the validation metrics), after which the bare report shows
    what `all` adds (tests/test_report.py checks it after `tables`)."""
    work = tmp_path / "run"
    shutil.copytree(tiny_run, work, symlinks=True)
    proc = snakemake_run(work, "compare_masks", "--dry-run", "--quiet", "rules", config=tiny_config)
    counts = {m[1]: int(m[2]) for m in re.finditer(r"^(\w+)\s+(\d+)$", proc.stdout, re.M) if m[1] != "total"}
    module = {"train_mask_model": 2, "region_masks": 4, "mask_quality": 1, "train_stage2": 2, "predict": 3,
              "evaluate": 3}  # 2 shards x (dataset, generic): gt's are this run's; Table 3's three variants
    assert counts == {**{f"compare_masks_{rule}": n for rule, n in module.items()}, "compare_masks": 1}

    snakemake_run(work, "all", "--cores", "2", "--resources", "gpu=1", config=tiny_config)
    results = work / "results"
    assert not (results / "compare-masks" / "models" / "stage1").exists()  # stage 1 is this run's
    other = yaml.safe_load(tiny_config.read_text())["experiments"]["compare_masks"]
    assert other["model"] == "maskrcnn"
    for folder, model in ((results, "fcis"), (results / "compare-masks", "maskrcnn")):
        for source in ("dataset", "generic"):
            checkpoint = torch.load(folder / "masks" / "models" / source / "model.pt", weights_only=True)
            assert checkpoint["builder"]["model"] == model
    table = pd.read_csv(results / "tables" / "mask_models.csv")
    assert table["mask model"].tolist() == (["lr=0.01, model=fcis, score_threshold=0.0"] * 3
                                            + ["lr=0.01, model=maskrcnn, score_threshold=0.0"] * 3)
    for folder, rows in ((results, table[:3]), (results / "compare-masks", table[3:])):
        quality = pd.read_csv(folder / "masks" / "quality.csv")
        agnostic = quality[quality["categories"] == "agnostic"].set_index("source")["AP"]
        for _, row in rows.iterrows():
            if row["test masks"] != "gt":
                assert row["test mask AP"] == pytest.approx(agnostic[row["test masks"]], abs=0.01)

    # after `all`, the bare report shows the comparison and the validation metrics too
    from test_report import ALL_PAGES, TABLES_PAGES, bare_report, check_page_contents, page_text

    pages = bare_report(snakemake_run, work, tiny_config, tmp_path / "report.html")
    assert set(pages) == set(TABLES_PAGES) | set(ALL_PAGES)
    check_page_contents(pages)
    assert "maskrcnn" in page_text(pages["mask_models.html"]) and "<td>val</td>" in page_text(pages["metrics.html"])


def test_a_compare_masks_key_that_masks_lacks_is_named(tmp_path, tiny_config, snakemake_run):
    config = yaml.safe_load(tiny_config.read_text())
    config["experiments"]["compare_masks"] = {"modle": "maskrcnn"}
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(config))
    proc = snakemake_run(tmp_path, "compare_masks", "--dry-run", config=path, check=False)
    assert proc.returncode != 0 and "experiments.compare_masks: modle is not a masks key" in proc.stdout


def test_lint_reports_nothing():
    proc = subprocess.run([sys.executable, "-m", "snakemake", "--lint"], cwd=REPO, capture_output=True, text=True)
    lints = [line.strip() for line in (proc.stdout + proc.stderr).splitlines() if line.startswith(("Lints for", "    *"))]
    assert proc.returncode == 0 and not lints, "\n".join(lints) or proc.stderr[-3000:]


def test_snakefiles_are_snakefmt_formatted():
    cmd = [sys.executable, "-m", "snakefmt", "--check", "Snakefile", "workflow/"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr + proc.stdout


def shell_commands(text: str) -> list[str]:
    """The command text of every `shell:` directive in a snakefmt-formatted workflow file (its string literals)."""
    import ast

    commands, lines = [], text.splitlines()
    for i, line in enumerate(lines):
        if line.strip() != "shell:":
            continue
        indent, body = len(line) - len(line.lstrip()), []
        for following in lines[i + 1:]:
            if following.strip() and len(following) - len(following.lstrip()) <= indent:
                break
            body.append(following.strip())
        commands.append(ast.literal_eval("(" + "\n".join(body).rstrip(",") + ")"))
    return commands


def unquoted_substitutions(command: str) -> list[str]:
    """`{...}` substitutions of a shell command that Snakemake would not shell-quote (no `:q`); `{{` escapes skipped."""
    fields = re.findall(r"(?<!\{)\{([^{}]+)\}(?!\})", command)
    return [f"{{{field}}}" for field in fields if not field.endswith(":q")]


def test_shell_substitutions_are_quoted():
    """Every path and value put into a `shell:` command is quoted (`{input.x:q}`), so spaces and `$(...)` in a
    config path stay data."""
    files = [REPO / "Snakefile", *sorted((REPO / "workflow" / "rules").glob("*.smk"))]
    commands = {f"{path.name}: {cmd}": cmd for path in files for cmd in shell_commands(path.read_text())}
    assert len(commands) >= 14, f"found only {len(commands)} shell commands: is the parser still in step?"
    unquoted = {name: unquoted_substitutions(cmd) for name, cmd in commands.items() if unquoted_substitutions(cmd)}
    assert not unquoted, unquoted


def test_the_quoting_lint_sees_an_unquoted_substitution():
    rule = 'rule x:\n    shell:\n        "tool --in {input.a:q} --out {output}"\n        " --opt {params.b} {{literal}}"\n'
    (command,) = shell_commands(rule)
    assert unquoted_substitutions(command) == ["{output}", "{params.b}"]

