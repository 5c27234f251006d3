"""Provenance: one source of defaults, settings from the rule's params, reruns that follow the config, stamped
artifacts, refusal to mix artifacts made with other settings, and a synthetic root that never replaces a real one."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import h5py
import pytest
import yaml

import a2dpipe
from a2dpipe.integrity import with_digest
from a2dpipe.config import check_consistent, load_config, resolve, settings_slice
from a2dpipe.settings import settings_json
from a2dpipe.dataset.synthetic import MARKER
from a2dpipe.errors import A2DError
from conftest import REPO


def _leaves(tree, prefix=""):
    if not isinstance(tree, dict):
        return {prefix: tree}
    return {k: v for key, value in tree.items()
            for k, v in _leaves(value, f"{prefix}.{key}" if prefix else key).items()}


def _write(config: dict, path: Path) -> Path:
    path.write_text(yaml.safe_dump(config))
    return path


def _a2dpipe(*args) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "a2dpipe", *map(str, args)], cwd=REPO, env=env, text=True,
                          capture_output=True, timeout=600)


# -- one source of defaults ----------------------------------------------------------------------------------------


def test_config_yaml_and_the_schema_agree_on_every_default():
    """Every key of config.yaml holds the schema's default; the root of the dataset is the one key without one."""
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    defaults = _leaves(resolve({"dataset": {"root": config["dataset"]["root"]}}, partial=True))
    shipped = _leaves(config)
    assert shipped.keys() == defaults.keys()
    disagree = {key: (shipped[key], defaults[key]) for key in shipped if shipped[key] != defaults[key]}
    assert not disagree, f"config.yaml vs schema default: {disagree}"


def test_a_command_run_by_hand_gets_the_schema_defaults_of_its_declared_keys(tmp_path):
    from argparse import Namespace

    from a2dpipe.settings import read_settings

    path = _write({"evaluation": {"boundary_width": 3}}, tmp_path / "c.yaml")
    config = load_config(path)
    defaults = resolve({}, partial=True)
    assert config["evaluation"] == {**defaults["evaluation"], "boundary_width": 3}
    assert config["segmentation"]["stage2"]["fc_dim"] == defaults["segmentation"]["stage2"]["fc_dim"]
    # the command sees only what it declares, the schema's defaults filled in once, when the file is read
    assert read_settings(Namespace(config=str(path), settings=None), "evaluate") == {
        "evaluation": {"boundary_width": 3, "settings_from": defaults["evaluation"]["settings_from"]}}


def test_settings_from_a_rule_gain_no_defaults_and_are_validated():
    from argparse import Namespace

    from a2dpipe.settings import read_settings

    def read(text):
        return read_settings(Namespace(settings=text, config=None), "extract-frames")

    assert read('{"frames": {"compression": "gzip"}}') == {"frames": {"compression": "gzip"}}
    with pytest.raises(A2DError, match="frames.compression"):
        read('{"frames": {"compression": "zip"}}')
    with pytest.raises(A2DError, match="--settings: not valid JSON"):
        read("{frames")
    with pytest.raises(A2DError, match="lacks config key.s. frames, which `a2dpipe extract-frames` reads"):
        read('{"seed": 0}')


def test_settings_slice_keeps_the_config_shape():
    config = resolve({"dataset": {"root": "r"}})
    got = settings_slice(config, ["seed", "segmentation.stage2.fc_dim", "flow.method"])
    assert got == {"seed": 0, "segmentation": {"stage2": {"fc_dim": 256}}, "flow": {"method": "dis"}}


@pytest.mark.parametrize("path", ["a\nb", "tab\there", "esc\x1b[0m"])
def test_control_characters_in_paths_are_refused(path):
    with pytest.raises(A2DError, match="dataset.root: .*control character"):
        resolve({"dataset": {"root": path}})
    with pytest.raises(A2DError, match="segmentation.rgb_weights: .*control character"):
        resolve({"dataset": {"root": "r"}, "segmentation": {"rgb_weights": path}})


def test_the_workflow_refuses_a_control_character_in_a_path(tmp_path, tiny_config, snakemake_run):
    config = yaml.safe_load(tiny_config.read_text())
    config["results"] = "res\nults"
    proc = snakemake_run(tmp_path, "index", "--dry-run", config=_write(config, tmp_path / "c.yaml"), check=False)
    assert proc.returncode != 0 and "results: 'res\\nults' holds a control character" in proc.stdout, proc.stdout


# -- mixing -----------------------------------------------------------------------------------------------------------


def test_check_consistent_names_the_key_both_values_and_both_sources():
    check_consistent({"job": {"flow": {"encoding": "xym"}}, "a.h5": {"flow": {"method": "dis"}}, "b.h5": None})
    with pytest.raises(A2DError, match=r"b.h5: made with flow.encoding = 'wheel', while job has flow.encoding = 'xym'"):
        check_consistent({"job": {"flow": {"encoding": "xym"}}, "b.h5": {"flow": {"encoding": "wheel"}}})


# -- synthesize never replaces what it did not write ------------------------------------------------------------------


def test_synthesize_never_replaces_a_folder_it_did_not_write(tmp_path, tiny_config, snakemake_run):
    real = tmp_path / "real-a2d"
    real.mkdir()
    (real / "videoset.csv").write_text("keep me\n")
    config = yaml.safe_load(tiny_config.read_text())
    config["dataset"]["root"] = str(real)  # synthetic: true, pointed at a real copy by mistake
    path = _write(config, tmp_path / "c.yaml")

    proc = snakemake_run(tmp_path, "synthesize", "--cores", "1", "--forceall", config=path, check=False)
    assert proc.returncode != 0 and str(real) in proc.stdout and MARKER in proc.stdout
    proc = _a2dpipe("synthesize", "--config", path, "--out", real)
    assert proc.returncode == 1 and f"{real}: exists and was not written by" in proc.stderr
    assert [p.name for p in real.iterdir()] == ["videoset.csv"] and (real / "videoset.csv").read_text() == "keep me\n"


def test_shell_commands_keep_hostile_paths_as_data(tmp_path, tiny_config, snakemake_run):
    """A root with a space and `$(...)` is written where it says, runs nothing, and synthesize may replace it
    (it wrote it)."""
    config = yaml.safe_load(tiny_config.read_text())
    config["dataset"]["root"] = "data dir/a2d$(touch pwned)"
    config["synthetic"].update(videos=2, frames=4, annotated_frames=1)
    path = _write(config, tmp_path / "c.yaml")
    snakemake_run(tmp_path, "synthesize", "--cores", "1", config=path)
    root = tmp_path / "data dir" / "a2d$(touch pwned)"
    marker = json.loads((root / MARKER).read_text())
    assert marker["settings"]["synthetic"]["videos"] == 2 and marker["a2dpipe_version"] == a2dpipe.__version__
    snakemake_run(tmp_path, "synthesize", "--cores", "1", "--forcerun", "synthesize", config=path)
    assert (root / "videoset.csv").is_file()
    assert not list(tmp_path.rglob("pwned")) and not (REPO / "pwned").exists()


# -- what a dry run can and cannot change -----------------------------------------------------------------------------


def test_parsing_the_workflow_writes_nothing(tmp_path, tiny_config, snakemake_run):
    snakemake_run(tmp_path, "tables", "--dry-run", config=tiny_config)
    assert {p.name for p in tmp_path.iterdir()} == {".snakemake"}


def test_a_dry_run_with_another_config_during_a_run_changes_nothing_the_run_reads(tmp_path, tiny_config, snakemake_run):
    """While `synthesize` runs (held stopped), a dry run with another shard size must not reach `index`, the job the
    run schedules next: the run's jobs read the settings they were scheduled with."""
    import psutil

    config = yaml.safe_load(tiny_config.read_text())
    run_config = _write(config, tmp_path / "run.yaml")
    config["dataset"]["shard_size"] = 2
    config["evaluation"]["boundary_width"] = 3
    other = _write(config, tmp_path / "other.yaml")
    workdir = tmp_path / "work"
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory", str(workdir),
           "index", "--cores", "1", "--configfile", str(run_config)]
    run = subprocess.Popen(cmd, cwd=REPO, env=dict(os.environ, OMP_NUM_THREADS="1"), text=True,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    job, deadline = None, time.monotonic() + 300
    try:
        while job is None:
            assert run.poll() is None and time.monotonic() < deadline, "the run did not start synthesize"
            for proc in psutil.Process(run.pid).children(recursive=True):
                try:
                    if "a2dpipe synthesize" in " ".join(proc.cmdline()) and "python" in proc.name():
                        job = proc
                        job.suspend()  # hold the run inside its first job while the dry run parses
                        break
                except psutil.NoSuchProcess:
                    continue
            time.sleep(0.005)
        snakemake_run(workdir, "index", "--dry-run", config=other, check=False)
        job.resume()
        output, _ = run.communicate(timeout=600)
    finally:
        run.kill()
    assert run.returncode == 0, output[-3000:]
    shards = {line.rsplit(",", 1)[1] for line in (workdir / "results" / "index.csv").read_text().splitlines()[1:]}
    assert shards == {"000", "001"}  # 8 videos in shards of 4, as scheduled (not 4 shards of 2)


# -- after a complete run: what reruns when a key changes -------------------------------------------------------------

EVERYTHING_FROM_FRAMES = {"extract_frames": 2, "flow": 2, "train_mask_model": 2, "region_masks": 4,
                          "gt_region_masks": 2, "mask_quality": 1, "train_stage1": 2, "train_stage2": 3, "predict": 8, "evaluate": 8,
                          "timing": 1, "report_figures": 1, "tables": 1}
FINAL = {"timing": 1, "report_figures": 1, "tables": 1}
# prediction sets: Baseline (2), Ours (4: three test dataset or generic masks, one gt), mask vote (2, dataset masks)
RERUNS = {
    # the dataset: every job downstream of the index (or of the benchmark itself)
    "synthetic.camera_motion": (1.0, {"synthesize": 1, "index": 1, **EVERYTHING_FROM_FRAMES}),
    "dataset.exclude_videos": (["no-such-video"], {"index": 1, **EVERYTHING_FROM_FRAMES}),
    "dataset.val_fraction": (0.5, {"index": 1, **EVERYTHING_FROM_FRAMES}),
    "frames.compression": ("gzip", EVERYTHING_FROM_FRAMES),
    # flow: only what uses the rgbflow input (Baseline, three Ours, one mask vote)
    "flow.dis_preset": ("fast", {"flow": 2, "train_stage1": 1, "train_stage2": 2, "predict": 5, "evaluate": 5,
                                 **FINAL}),
    # masks: training keys retrain the models, inference keys only recompute the model sources' caches
    "masks.lr": (0.02, {"train_mask_model": 2, "region_masks": 4, "mask_quality": 1, "train_stage2": 3, "predict": 6,
                        "evaluate": 6, **FINAL}),
    # the generic model's steps retrain both (the dataset model starts from it); the dataset model's, only its own
    # (its caches, the stage-2 models trained on them, two Ours and two mask votes that test on them, Ours on gt)
    "masks.iterations": (5, {"train_mask_model": 2, "region_masks": 4, "mask_quality": 1, "train_stage2": 3,
                             "predict": 6, "evaluate": 6, **FINAL}),
    "masks.finetune_iterations": (2, {"train_mask_model": 1, "region_masks": 2, "mask_quality": 1, "train_stage2": 2,
                                      "predict": 5, "evaluate": 5, **FINAL}),
    "masks.score_threshold": (0.1, {"region_masks": 4, "mask_quality": 1, "train_stage2": 3, "predict": 6,
                                    "evaluate": 6, **FINAL}),
    "segmentation.stage1.iterations": (5, {"train_stage1": 2, "train_stage2": 3, "predict": 8, "evaluate": 8, **FINAL}),
    "segmentation.stage2.fc_dim": (32, {"train_stage2": 3, "predict": 4, "evaluate": 4, **FINAL}),
    # frames per forward pass: every prediction and stage 2's feature cache, never stage 1
    "segmentation.inference_batch": (1, {"train_stage2": 3, "predict": 8, "evaluate": 8, **FINAL}),
    # the region-to-pixel settings are Ours' and the mask vote's
    "segmentation.stage2.uncovered_background": (0.5, {"train_stage2": 3, "predict": 6, "evaluate": 6, **FINAL}),
    "evaluation.boundary_width": (10, {"evaluate": 8, "report_figures": 1, "tables": 1}),
    "evaluation.qualitative_frames": (3, {"report_figures": 1, "tables": 1}),
    "evaluation.bootstrap_resamples": (300, {"tables": 1}),
    "evaluation.claims_correction": ("none", {"tables": 1}),
    # the final fit on train + val: every trained model and what follows it, never the index or the frames
    "dataset.final_fit": ("train+val", {"train_mask_model": 2, "region_masks": 4, "mask_quality": 1,
                                        "train_stage1": 2, "train_stage2": 3, "predict": 8, "evaluate": 8, **FINAL}),
    # read by no job of this configuration (DIS reads no RAFT size; the xym encoding no wheel saturation)
    "flow.raft_variant": ("large", {}),
    "flow.wheel_max": (20.0, {}),
}


def _planned_jobs(snakemake_run, workdir, config_path) -> dict[str, int]:
    proc = snakemake_run(workdir, "tables", "--dry-run", "--quiet", "rules", config=config_path)
    return {m[1]: int(m[2]) for m in re.finditer(r"^(\w+)\s+(\d+)$", proc.stdout, re.M) if m[1] != "total"}


def test_an_unchanged_config_reruns_nothing(tiny_run, tiny_config, snakemake_run):
    assert _planned_jobs(snakemake_run, tiny_run, tiny_config) == {}


@pytest.mark.parametrize("key", list(RERUNS))
def test_a_changed_key_reruns_exactly_what_depends_on_it(key, tiny_run, tiny_config, snakemake_run, tmp_path):
    value, expected = RERUNS[key]
    config = yaml.safe_load(tiny_config.read_text())
    *parents, last = key.split(".")
    section = config
    for part in parents:
        section = section[part]
    assert section[last] != value
    section[last] = value
    assert _planned_jobs(snakemake_run, tiny_run, _write(config, tmp_path / "changed.yaml")) == expected


# -- stamps in the artifacts of a complete run ------------------------------------------------------------------------


def _hdf5_settings(path: Path) -> dict:
    with h5py.File(path, "r") as f:
        assert f.attrs["a2dpipe_version"].decode() == a2dpipe.__version__, path
        return json.loads(f.attrs["settings"])


def test_every_artifact_records_its_settings_and_the_version(tiny_run, tiny_config):
    import torch

    config = yaml.safe_load(tiny_config.read_text())
    results = tiny_run / "results"
    marker = json.loads((results / "a2d-synthetic" / MARKER).read_text())
    assert marker["settings"] == {"seed": 0, "synthetic": config["synthetic"]}
    for path in results.glob("frames/*.h5"):
        assert _hdf5_settings(path) == {"frames": config["frames"]}
    for path in results.glob("flow/dis/*.h5"):
        assert _hdf5_settings(path) == {"flow": {"method": "dis", "dis_preset": "ultrafast", "encoding": "xym"}}
    for path in results.glob("masks/gt/*.h5"):
        assert _hdf5_settings(path) == {}
    for path in results.glob("masks/dataset/*.h5"):
        assert _hdf5_settings(path) == {"device": "cpu", "masks": {k: config["masks"][k] for k in
                                                                   ("batch_size", "score_threshold", "max_regions")}}
    for path in results.glob("predictions/test/*/*/*/*.h5"):  # {kind}/{input}/{train_source}/{test_source}.h5
        assert _hdf5_settings(path)["device"] == "cpu"
    models = sorted(results.glob("**/model.pt"))
    assert len(models) == 7  # 2 mask models, 2 stage-1 and 3 stage-2 models
    for path in models:
        stamp = torch.load(path, map_location="cpu", weights_only=True)["provenance"]
        assert stamp["a2dpipe_version"] == a2dpipe.__version__ and stamp["settings"]["seed"] == 0, path
        segmentation = stamp["settings"].get("segmentation", {})
        assert ("stage2" in segmentation) == ("stage2" in path.parts), path  # stage 1 reads no stage-2 setting
        assert ("inference_batch" in segmentation) == ("stage2" in path.parts), path  # nor the inference batch
    for path in results.glob("evaluation/test/*/*/*/*.json"):
        assert json.loads(path.read_text())["provenance"]["settings"] == {"evaluation": {
            "boundary_width": 15, "settings_from": "heads"}}
    made_from = json.loads((results / "tables" / "provenance.json").read_text())["made_from"]
    assert len(made_from) == 8 and all(s["settings"]["evaluation"]["boundary_width"] == 15 for s in made_from.values())


def test_stage2_refuses_a_stage1_model_made_with_other_settings(tiny_run, tiny_config, tmp_path):
    config = yaml.safe_load(tiny_config.read_text())
    config["segmentation"]["width"] = 12
    settings = json.loads(settings_json("train", config, {"stage": 2, "input": "rgb"}))
    results = tiny_run / "results"
    out = tmp_path / "model.pt"
    proc = _a2dpipe("train", "--settings", json.dumps(settings), "--stage", "2", "--input", "rgb",
                    "--frames", *sorted(results.glob("frames/*.h5")),
                    "--masks", *sorted(results.glob("masks/dataset/*.h5")),
                    "--stage1", results / "models/stage1/rgb/model.pt", "--out", out)
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "models/stage1/rgb/model.pt: made with segmentation.width = 8, while this job has segmentation.width = 12" \
        in proc.stderr
    assert not out.exists()


def test_predict_refuses_flow_made_with_another_encoding(tiny_run, tiny_config, tmp_path):
    results = tiny_run / "results"
    config = yaml.safe_load(tiny_config.read_text())
    config["flow"].update(encoding="wheel", wheel_max=None)
    settings = json.loads(settings_json("predict", config, {"kind": "baseline", "input": "rgbflow"}))
    out = tmp_path / "p.h5"
    proc = _a2dpipe("predict", "--settings", json.dumps(settings), "--kind", "baseline", "--input", "rgbflow",
                    "--model", results / "models/stage1/rgbflow/model.pt",
                    "--frames", *sorted(results.glob("frames/*.h5")),
                    "--flow", *sorted(results.glob("flow/dis/*.h5")), "--out", out)
    assert proc.returncode == 1
    assert re.search(r"flow/dis/shard-000.h5: made with flow.encoding = 'xym', while this job has flow.encoding = "
                     r"'wheel'", proc.stderr), proc.stderr[-2000:]
    assert not out.exists()


def test_tables_refuse_evaluations_made_with_different_settings(tiny_run, tmp_path):
    evaluations = []
    for k, path in enumerate(sorted((tiny_run / "results" / "evaluation" / "test").glob("*/*/*/*.json"))):
        evaluations.append(tmp_path / f"{k}.json")
        evaluations[-1].write_text(path.read_text())
    doc = json.loads(evaluations[-1].read_text())
    doc.pop("sha256")  # rewritten below, as an evaluation made with another width would carry its own
    doc["provenance"]["settings"]["evaluation"]["boundary_width"] = 10
    evaluations[-1].write_text(json.dumps(with_digest(doc)))
    settings = {"seed": 0, "dataset": {"final_fit": "train"},
                "evaluation": {"bootstrap_resamples": 200, "claims_correction": "holm"}}
    proc = _a2dpipe("tables", "--settings", json.dumps(settings), "--evaluations", *evaluations,
                    "--out-dir", tmp_path / "tables")
    assert proc.returncode == 1
    assert f"{evaluations[-1]}: made with evaluation.boundary_width = 10, while {evaluations[0]} has " \
           f"evaluation.boundary_width = 15" in proc.stderr
    assert not (tmp_path / "tables" / "done").exists()


# -- the final fit on train + val -------------------------------------------------------------------------------------


def test_a_final_fit_trains_on_train_and_val_and_cannot_be_validated(tiny_run, tmp_path):
    import torch

    from a2dpipe.segmentation.samples import StoreSamples

    results = tiny_run / "results"
    frames = sorted(results.glob("frames/*.h5"))
    counts = {split: len(StoreSamples(frames, split=split)) for split in ("train", "val")}
    assert counts["train"] and counts["val"]
    assert len(StoreSamples(frames, split=("train", "val"))) == counts["train"] + counts["val"]
    # a model whose settings say it trained on train + val is refused on the validation split, not on test
    model = torch.load(results / "models/stage1/rgb/model.pt", weights_only=True)
    model["provenance"]["settings"]["dataset"] = {"final_fit": "train+val"}
    torch.save(model, tmp_path / "final.pt")
    settings = {"device": "cpu", "segmentation": {"loader_workers": 0, "loader_prefetch": 2, "inference_batch": 2}}
    args = ["predict", "--settings", json.dumps(settings), "--kind", "baseline", "--input", "rgb",
            "--model", tmp_path / "final.pt", "--frames", *frames]
    proc = _a2dpipe(*args, "--split", "val", "--out", tmp_path / "val.h5")
    assert proc.returncode == 1 and "trained on train + val" in proc.stderr, proc.stderr[-2000:]
    assert not (tmp_path / "val.h5").exists()
    proc = _a2dpipe(*args, "--out", tmp_path / "test.h5")
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_the_validate_target_refuses_a_final_fit_on_train_and_val(tmp_path, tiny_config, snakemake_run):
    config = yaml.safe_load(tiny_config.read_text())
    config["dataset"]["final_fit"] = "train+val"
    proc = snakemake_run(tmp_path, "validate", "--dry-run", config=_write(config, tmp_path / "c.yaml"), check=False)
    assert proc.returncode != 0 and "the validate target cannot score them" in proc.stdout, proc.stdout[-3000:]
    config["dataset"]["final_fit"] = "train"
    snakemake_run(tmp_path, "validate", "--dry-run", config=_write(config, tmp_path / "c.yaml"))
