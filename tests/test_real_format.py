"""A real-format dataset (``dataset.synthetic: false``) with only what a user can download: no COCO file, no
distractor sidecar. The generic mask source does not exist there; the workflow says so when it builds the DAG, and
the rest runs to `tables` with the dataset mask model trained without a start."""

from __future__ import annotations

import math
import re
import shutil
from pathlib import Path

import h5py
import pandas as pd
import pytest
import torch
import yaml

from a2dpipe.dataset.synthetic import MARKER
from a2dpipe.errors import A2DError
from a2dpipe.variants import check_region_runs, unavailable_sources
from conftest import REPO

REAL_METADATA = Path(__file__).resolve().parents[2] / "shared" / "real-data" / "a2d-metadata"
WITHOUT_GENERIC = [["rgb", "dataset", "dataset"], ["rgbflow", "dataset", "dataset"], ["rgbflow", "dataset", "gt"]]


def _config(synthetic: bool, coco=None) -> dict:
    return {"dataset": {"synthetic": synthetic}, "masks": {"coco_checkpoint": coco}}


def test_generic_needs_a_coco_file_or_the_synthetic_benchmark():
    assert unavailable_sources(_config(True)) == {} and unavailable_sources(_config(False, "coco.pth")) == {}
    assert set(unavailable_sources(_config(False))) == {"generic"}
    check_region_runs(WITHOUT_GENERIC, _config(False))
    runs = [*WITHOUT_GENERIC, ["rgbflow", "generic", "generic"], ["rgb", "dataset", "generic"]]
    with pytest.raises(A2DError) as err:
        check_region_runs(runs, _config(False))
    assert str(err.value).startswith("config experiments.regions: [rgbflow, generic, generic], [rgb, dataset, "
                                     "generic] use the generic mask source, which this run lacks (generic: "
                                     "dataset.synthetic is false and masks.coco_checkpoint is null")
    assert "Remove those entries or set masks.coco_checkpoint" in str(err.value)


@pytest.fixture(scope="module")
def real_format(tiny_run, tmp_path_factory) -> Path:
    """The session run's synthetic dataset as a real A2D copy would be: no distractor sidecar, no synthetic marker."""
    root = tmp_path_factory.mktemp("real-format") / "a2d"
    shutil.copytree(tiny_run / "results" / "a2d-synthetic", root,
                    ignore=shutil.ignore_patterns("distractors", MARKER))
    assert not (root / "Annotations" / "distractors").exists() and (root / "videoset.csv").is_file()
    return root


def _write_config(tiny_config, path: Path, root: Path, **masks) -> Path:
    config = yaml.safe_load(tiny_config.read_text())
    config["dataset"].update(root=str(root), synthetic=False)
    config["masks"].update(masks)
    path.write_text(yaml.safe_dump(config))
    return path


def _planned(proc) -> dict[str, int]:
    return {m[1]: int(m[2]) for m in re.finditer(r"^(\w+)\s+(\d+)$", proc.stdout, re.M) if m[1] != "total"}


def test_a_region_run_on_the_missing_generic_source_fails_when_the_dag_is_built(real_format, tiny_config, tmp_path,
                                                                               snakemake_run):
    config = _write_config(tiny_config, tmp_path / "config.yaml", real_format)  # the preset's regions name generic
    proc = snakemake_run(tmp_path, "tables", "--dry-run", config=config, check=False)
    assert proc.returncode != 0
    assert "config experiments.regions: [rgbflow, generic, generic] uses the generic mask source" in proc.stdout
    assert "set masks.coco_checkpoint" in proc.stdout and "train_mask_model" not in proc.stdout
    # asked for by path, its mask model or caches are refused as well, before any job runs
    without = yaml.safe_load(config.read_text())
    without["experiments"]["regions"] = WITHOUT_GENERIC
    config.write_text(yaml.safe_dump(without))
    proc = snakemake_run(tmp_path, "results/masks/generic/shard-000.h5", "--dry-run", config=config, check=False)
    assert proc.returncode != 0 and "no generic mask model in this run: dataset.synthetic is false" in proc.stdout

    # with a COCO file the generic source is that model as is, and the dataset model starts from it
    coco = _write_config(tiny_config, tmp_path / "coco.yaml", real_format, coco_checkpoint="coco.pth")
    proc = snakemake_run(tmp_path, "tables", "--dry-run", "--quiet", "rules", config=coco)
    counts = _planned(proc)
    assert counts["train_mask_model"] == 2 and counts["region_masks"] == 4 and counts["gt_region_masks"] == 2, counts


def test_tiny_preset_runs_to_tables_on_a_real_format_copy_without_coco_file(real_format, tiny_config, tmp_path,
                                                                           snakemake_run):
    """The tiny preset on the copy, to `tables`, with one region run and one shard (the session's run covers the
    rest: only what a missing generic source changes is run again, to keep CI's budget)."""
    config = yaml.safe_load(tiny_config.read_text())
    config["dataset"].update(root=str(real_format), synthetic=False, shard_size=8)  # one shard: fewer jobs
    config["experiments"].update(inputs=["rgb"], regions=[["rgb", "dataset", "dataset"]])
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    snakemake_run(tmp_path, "tables", "--cores", "4", "--resources", "gpu=2", config=path)

    results = tmp_path / "results"
    assert (results / "tables" / "done").is_file()
    assert (results / "evaluation" / "test" / "ours" / "rgb" / "dataset" / "dataset.json").is_file()
    assert not (results / "masks" / "models" / "generic").exists() and not (results / "masks" / "generic").exists()
    for shard in (results / "frames").glob("shard-*.h5"):
        with h5py.File(shard) as f:
            groups = []
            f.visit(lambda name: groups.append(name) if name.endswith("distractor_masks") else None)
            assert not groups, shard
    # the dataset mask model trained without a start, for `iterations` steps (`finetune_iterations` is a start's)
    checkpoint = torch.load(results / "masks" / "models" / "dataset" / "model.pt", weights_only=True)
    assert checkpoint["start"] == "" and checkpoint["steps"] == config["masks"]["iterations"]
    quality = pd.read_csv(results / "masks" / "quality.csv")
    generic = quality[quality["source"] == "generic"].iloc[0]
    assert math.isnan(generic["AP"]) and "masks.coco_checkpoint is null" in generic["note"]
    assert quality[quality["source"] == "dataset"]["AP"].notna().all() and len(quality) == 3
    assert "not measured" in (results / "tables" / "mask_quality.md").read_text()
    table3 = pd.read_csv(results / "tables" / "table3.csv")
    assert (table3["source"] == "paper").all()  # the paper's rows only: no generic row of this run


@pytest.mark.parametrize("overlays, generic", [((), False), (("paper-coco.yaml",), True), (("paper-fcis.yaml",), True)],
                         ids=["no-coco", "coco", "official-fcis"])
def test_paper_preset_plans_tables_without_a_coco_file_and_with_torchvisions(tmp_path, snakemake_run, overlays,
                                                                             generic):
    """The paper preset as shipped (no COCO file) and with its torchvision COCO Mask R-CNN overlay plan `tables`
    over the real A2D video set (weights are not inputs: a dry run needs none of them)."""
    if not (REAL_METADATA / "videoset.csv").is_file():
        pytest.skip(f"real A2D metadata not found at {REAL_METADATA}")
    where = tmp_path / "root.yaml"
    where.write_text(yaml.safe_dump({"dataset": {"root": str(REAL_METADATA)}}))
    files = [REPO / "config" / "paper.yaml", *(REPO / "config" / name for name in overlays), where]
    counts = _planned(snakemake_run(tmp_path, "tables", "--dry-run", "--quiet", "rules", "--configfile", *files))
    shards = 60  # 3,781 videos (one excluded), 64 per shard
    assert counts["train_mask_model"] == (2 if generic else 1), counts
    assert counts["region_masks"] == (2 if generic else 1) * shards and counts["gt_region_masks"] == shards, counts
    assert counts["tables"] == 1, counts
