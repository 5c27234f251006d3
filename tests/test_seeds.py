"""Seeds: the aggregate of per-seed tables (mean, sample standard deviation, count), its command, and the DAG of a
seeds run (one job set per seed in its own folder, the data made once). Dry runs only: a seeds run is not run here."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pandas as pd
import pytest
import yaml

from a2dpipe.cli import main
from a2dpipe.evaluation import aggregate
from a2dpipe.evaluation.aggregate import AGGREGATE, SeedRun, aggregate_claims, aggregate_table
from a2dpipe.evaluation.claims import CLAIMS
from a2dpipe.evaluation.tables import THIS_RUN
from a2dpipe.evaluation.writers import markdown_table
from conftest import REPO

# --- the maths on hand-made per-seed tables --------------------------------------------------------------------


def seed_table(a: float, b: float, extra: float | None = None) -> pd.DataFrame:
    """A table in the layout of a2dpipe.evaluation.tables: labels, source, metrics with interval companions."""
    rows = [["Baseline", "paper", 50.0, math.nan, math.nan, 20.0],
            ["Baseline", THIS_RUN, a, a - 1, a + 1, b]]
    if extra is not None:
        rows.append(["Ours", THIS_RUN, extra, extra - 1, extra + 1, 2 * extra])
    return pd.DataFrame(rows, columns=["method", "source", "acc", "acc low", "acc high", "iou"])


def test_mean_standard_deviation_and_count_across_seeds():
    per_seed = [seed_table(10.0, 1.0, extra=30.0), seed_table(12.0, 4.0, extra=34.0), seed_table(14.0, 7.0)]
    out = aggregate_table(per_seed)

    assert list(out.columns) == ["method", "source", "seeds", "acc", "acc sd", "iou", "iou sd"]
    assert out[["method", "source"]].values.tolist() == [["Baseline", "paper"], ["Baseline", AGGREGATE],
                                                         ["Ours", AGGREGATE]]
    paper, baseline, ours = (out.iloc[k] for k in range(3))
    assert paper["acc"] == 50.0 and paper["iou"] == 20.0 and math.isnan(paper["acc sd"]) and pd.isna(paper["seeds"])
    assert baseline["seeds"] == 3 and baseline["acc"] == pytest.approx(12.0) and baseline["iou"] == pytest.approx(4.0)
    assert baseline["acc sd"] == pytest.approx(np.std([10, 12, 14], ddof=1)) == pytest.approx(2.0)
    assert baseline["iou sd"] == pytest.approx(3.0)
    # a row two seeds have is averaged over those two, and says so
    assert ours["seeds"] == 2 and ours["acc"] == pytest.approx(32.0) and ours["acc sd"] == pytest.approx(8 ** 0.5)


def test_one_seed_has_a_mean_and_no_deviation():
    out = aggregate_table([seed_table(10.0, 1.0)])
    row = out[out["source"] == AGGREGATE].iloc[0]
    assert row["seeds"] == 1 and row["acc"] == 10.0 and math.isnan(row["acc sd"])


def test_markdown_shows_mean_plus_minus_deviation():
    text = markdown_table(aggregate_table([seed_table(10.0, 1.0), seed_table(12.0, 4.0)]))
    assert f"| Baseline | {AGGREGATE} | 2 | 11.0 ± 1.4 | 2.5 ± 2.1 |" in text
    assert "| Baseline | paper | - | 50.0 | 20.0 |" in text


def evaluation(variant: str, score: float) -> dict:
    """An evaluation document with every metric of every setting equal to ``score`` (in [0, 1])."""
    settings = {s: {m: score for m in ("global_accuracy", "mean_class_accuracy", "mean_iou")}
                for s in ("actor", "action", "actor_action")}
    return {"variant": variant, "split": "test", "metrics": {"whole": settings, "non_boundary": settings},
            "provenance": {"a2dpipe_version": "test", "settings": {"evaluation": {"boundary_width": 15}}}}


def claim_run(seed: int, gain: float, verdict: str) -> SeedRun:
    """A seed in which the first claim's second variant beats its first by ``gain`` (fractions)."""
    second = CLAIMS[0][3][1]
    variants = {v for *_, vs in CLAIMS for v in vs}
    evaluations = {v: evaluation(v, 0.5) for v in variants}
    evaluations[second] = evaluation(second, 0.5 + gain)
    return SeedRun(seed, evaluations, {claim: "not resolved" for claim, *_ in CLAIMS} | {CLAIMS[0][0]: verdict})


def test_claims_across_seeds_count_the_seeds_that_say_yes():
    out = aggregate_claims([claim_run(0, 0.02, "yes"), claim_run(1, 0.04, "yes"), claim_run(2, 0.00, "no")])
    first = out.iloc[0]
    assert first["claim"] == CLAIMS[0][0]
    assert first["mean over seeds (expected to increase left to right)"] == "50.0 / 52.0"
    assert first["difference (mean ± sd over seeds)"] == "+2.0 ± 2.0"
    assert first["seeds"] == 3 and first["seeds saying yes"] == 2
    assert first["verdict across seeds"] == "split: yes 2, no 1 (of 3 seeds)"
    assert (out["verdict across seeds"].iloc[1:] == "not resolved in 3 of 3 seeds").all()
    assert first["verdict of each seed"] == "seed 0: yes; seed 1: yes; seed 2: no"
    assert (out["seeds saying yes"].iloc[1:] == 0).all()


def test_a_claims_table_without_a_claim_is_refused():
    run = claim_run(0, 0.02, "yes")
    del run.verdicts[CLAIMS[0][0]]
    with pytest.raises(aggregate.A2DError, match="claims table of seed 0 lacks the claim"):
        aggregate_claims([run])


# --- the command ------------------------------------------------------------------------------------------------


def write_seed(folder, seed: int, shift: float, width: int = 15) -> list[str]:
    """One seed's evaluation files and claims table; every score is 0.5 + shift, Ours' 0.1 higher."""
    folder.mkdir(parents=True)
    args = ["--seed", str(seed), "--claims", str(folder / "claims.csv"), "--evaluations"]
    variants = sorted({v for *_, vs in CLAIMS for v in vs})
    for k, variant in enumerate(variants):
        doc = evaluation(variant, 0.5 + shift + (0.1 if variant.startswith("ours") else 0.0))
        doc["provenance"]["settings"]["evaluation"]["boundary_width"] = width
        (folder / f"{k}.json").write_text(json.dumps(doc))
        args.append(str(folder / f"{k}.json"))
    pd.DataFrame({"claim": [c for c, *_ in CLAIMS], "holds": "yes"}).to_csv(folder / "claims.csv", index=False)
    return args


def test_aggregate_command_writes_every_table(tmp_path):
    args = [*write_seed(tmp_path / "s0", 0, 0.0), *write_seed(tmp_path / "s1", 1, 0.02)]
    out = tmp_path / "aggregate"
    assert main(["aggregate", *args, "--out-dir", str(out)]) == 0
    names = {"table1", "table2", "table3", "claims"}
    assert {p.name for p in out.iterdir()} == {f"{n}.{s}" for n in names for s in ("csv", "md", "tex", "html")} | {"done"}
    table1 = pd.read_csv(out / "table1.csv")
    ours = table1[(table1["method"] == "Ours (RGB + flow)") & (table1["source"] == AGGREGATE)].iloc[0]
    assert ours["seeds"] == 2 and ours["mean IoU actor-action"] == pytest.approx(61.0)
    assert ours["mean IoU actor-action sd"] == pytest.approx(np.std([60, 62], ddof=1), abs=0.01)
    assert "61.0 ± 1.4" in (out / "table1.md").read_text() and r"61.0 $\pm$ 1.4" in (out / "table1.tex").read_text()
    assert '<td class="num">61.0 ± 1.4</td>' in (out / "table1.html").read_text()  # the report's page
    claims = pd.read_csv(out / "claims.csv")
    assert (claims["seeds saying yes"] == 2).all() and (claims["seeds"] == 2).all()


@pytest.mark.parametrize("problem", ["repeated seed", "evaluation settings", "no claims"])
def test_aggregate_command_refuses_inconsistent_seeds(tmp_path, problem, capsys):
    first = write_seed(tmp_path / "s0", 0, 0.0)
    second = write_seed(tmp_path / "s1", 0 if problem == "repeated seed" else 1, 0.02,
                        width=10 if problem == "evaluation settings" else 15)
    if problem == "no claims":
        second.remove("--claims")
        second.remove(str(tmp_path / "s1" / "claims.csv"))
    out = tmp_path / "aggregate"
    assert main(["aggregate", *first, *second, "--out-dir", str(out)]) == 1
    message = {"repeated seed": "seed(s) [0] given more than once",
               "evaluation settings": "made with evaluation.boundary_width = 10",
               "no claims": "every seed needs one --claims"}[problem]
    assert message in capsys.readouterr().err
    assert not (out / "done").exists()


# --- the DAG of a seeds run (dry runs) ----------------------------------------------------------------------------


def planned(proc) -> dict[str, int]:
    return {m[1]: int(m[2]) for m in re.finditer(r"^(\w+)\s+(\d+)$", proc.stdout, re.M) if m[1] != "total"}


def shell_commands(proc) -> list[tuple[str, str]]:
    """(rule, shell command) of every job with a command that a dry run with --printshellcmds plans, sorted."""
    blocks = re.split(r"^(?:local)?rule (\w+):$", proc.stdout, flags=re.M)[1:]
    return sorted((rule, m[1]) for rule, body in zip(blocks[::2], blocks[1::2])
                  for m in [re.search(r"^Shell command: (.*)$", body, re.M)] if m and m[1] != "None")


def test_a_seeds_run_plans_one_job_set_per_seed_in_its_own_folder(tmp_path, tiny_config, snakemake_run):
    config = yaml.safe_load(tiny_config.read_text())
    config["seeds"] = [0, 1]
    path = tmp_path / "seeds.yaml"
    path.write_text(yaml.safe_dump(config))
    proc = snakemake_run(tmp_path, "aggregate", "--dry-run", "--printshellcmds", config=path)
    jobs = planned(proc)
    # the data once, at the top of results/; everything trained or scored once per seed, under results/seed-<N>/
    assert {r: jobs[r] for r in ("synthesize", "index", "extract_frames", "flow", "gt_region_masks")} == \
        {"synthesize": 1, "index": 1, "extract_frames": 2, "flow": 2, "gt_region_masks": 2}
    for seed in (0, 1):
        assert {r: jobs[f"seed_{seed}_{r}"] for r in ("train_mask_model", "train_stage1", "train_stage2", "predict",
                                                        "evaluate", "tables")} == \
            {"train_mask_model": 2, "train_stage1": 2, "train_stage2": 3, "predict": 8, "evaluate": 8, "tables": 1}
        outputs = re.findall(rf"^rule seed_{seed}_\w+:\n(?:    .*\n)*?    output: (.*)$", proc.stdout, re.M)
        assert outputs and all(o.startswith(f"results/seed-{seed}/") for out in outputs for o in out.split(", "))
        assert re.search(rf'train --settings .*"seed": {seed}, .* --frames results/frames/shard-000.h5 .*'
                         rf"--out results/seed-{seed}/models/stage1/rgb/model.pt", proc.stdout)
    assert jobs["aggregate"] == 1 and not any(r.startswith("seed_2") for r in jobs)
    # ground truth's regions are the data's (above): a seed's run caches its mask models' only, 2 shards x 2 sources
    assert jobs["seed_0_region_masks"] == 4 and not any(r.endswith("_gt_region_masks") for r in jobs)
    assert re.search(r"a2dpipe aggregate --seed 0 --claims results/seed-0/tables/claims.csv --evaluations "
                     r"results/seed-0/evaluation/test/\S+\.json .* --seed 1 --claims results/seed-1/tables/claims.csv "
                     r".* --out-dir results/aggregate", proc.stdout)


    # seed 0's jobs and the shared ones are the one-seed run's, command for command, but for the results folder:
    # the same settings and inputs, hence (the workflow being deterministic) the same models and tables
    one_seed = snakemake_run(tmp_path / "one", "tables", "--dry-run", "--printshellcmds", config=tiny_config)
    seed_0 = sorted((rule.removeprefix("seed_0_"), command.replace("results/seed-0/", "results/"))
                    for rule, command in shell_commands(proc) if not rule.startswith(("seed_1_", "aggregate")))
    assert seed_0 == shell_commands(one_seed) and len(seed_0) == sum(planned(one_seed).values()) == 39


def test_the_seeds_preset_plans_three_seeds(tmp_path, snakemake_run):
    proc = snakemake_run(tmp_path, "aggregate", "--dry-run", "--quiet", "rules", config=REPO / "config" / "seeds.yaml")
    jobs = planned(proc)
    assert {r for r in jobs if r.startswith("seed_")} == \
        {f"seed_{s}_{r}" for s in (0, 1, 2) for r in ("train_mask_model", "region_masks", "mask_quality",
                                                      "train_stage1", "train_stage2", "predict", "evaluate",
                                                      "timing", "report_figures", "tables")}
    # one frames shard (the embedded default's 128 videos) and its ground-truth regions, shared by the seeds
    assert jobs["extract_frames"] == jobs["gt_region_masks"] == 1 and jobs["seed_2_region_masks"] == 2
    assert jobs["seed_2_train_stage2"] == 3 and jobs["aggregate"] == 1
