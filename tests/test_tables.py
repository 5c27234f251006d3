import json
import math
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest

from a2dpipe import labels
from a2dpipe.evaluation import claims, metrics, paper_results, tables, timing
from a2dpipe.cli import main
from a2dpipe.devices import describe_device
from a2dpipe.errors import A2DError
from a2dpipe.evaluation.bootstrap import write_per_video
from a2dpipe.evaluation.evaluate import _json_safe
from a2dpipe.dataset.frames import FORMAT as FRAMES
from a2dpipe.segmentation.predictions import FORMAT as PREDICTIONS
from a2dpipe.flow.store import FORMAT as FLOW
from a2dpipe.masks.cache import FORMAT as MASKS
from a2dpipe.variants import NONE, Variant, variant_name

VARIANT_PARTS = [
    Variant("baseline", "rgb"),
    Variant("baseline", "rgbflow"),
    Variant("maskvote", "rgb", NONE, "dataset"),
    Variant("maskvote", "rgbflow", NONE, "dataset"),
    Variant("ours", "rgb", "dataset", "dataset"),
    Variant("ours", "rgbflow", "dataset", "dataset"),
    Variant("ours", "rgbflow", "generic", "generic"),
    Variant("ours", "rgbflow", "dataset", "gt"),
]
VARIANTS = [variant_name(v) for v in VARIANT_PARTS]
IDS = np.array([labels.BACKGROUND, *labels.VALID_PAIRS], dtype=np.uint8)


ACCURACY = {"baseline-rgb": 0.3, "baseline-rgbflow": 0.4, "maskvote-rgb-dataset": 0.45,
            "maskvote-rgbflow-dataset": 0.55, "ours-rgb-dataset-dataset": 0.5, "ours-rgbflow-dataset-dataset": 0.7,
            "ours-rgbflow-generic-generic": 0.6, "ours-rgbflow-dataset-gt": 0.9}


def fake_evaluation(variant, accuracy, seed, videos=8):
    """(evaluation document in the a2dpipe.evaluation.evaluate format, its accumulator): the same ground truth for
    every variant (test videos are shared), predictions right with probability ``accuracy``."""
    rng = np.random.default_rng(seed)
    acc = metrics.ConfusionAccumulator(3)
    for video in range(videos):
        truth = np.random.default_rng(100 + video)
        for _ in range(2):
            gt = truth.choice(IDS, size=(4, 6)).repeat(8, axis=0).repeat(8, axis=1)  # 8 x 8 blocks: non-boundary pixels
            joint = np.where(rng.random(gt.shape) < accuracy, gt, rng.choice(IDS, size=gt.shape))
            acc.add(gt, joint, video=f"vid{video}")
    doc = {
        "variant": variant,
        "split": "test",
        "frames": acc.frames,
        "boundary_width": 3,
        "metrics": {r: metrics.metrics(acc.matrices[r]) for r in metrics.REGIONS},
        "per_category_accuracy": metrics.per_category_accuracy(acc.matrices["whole"]["actor_action"]),
        "confusion": {r: {s: m.tolist() for s, m in acc.matrices[r].items()} for r in metrics.REGIONS},
    }
    return _json_safe(doc), acc


@pytest.fixture
def evaluation_files(tmp_path):
    """Evaluation JSON files of every variant; their per-video matrices lie beside them (``<variant>.videos.npz``)."""
    paths = []
    for k, variant in enumerate(VARIANTS):
        path = tmp_path / "evaluation" / f"{variant}.json"
        path.parent.mkdir(exist_ok=True)
        doc, acc = fake_evaluation(variant, ACCURACY[variant], k)
        path.write_text(json.dumps(doc))
        write_per_video(_per_video_path(path), variant, *acc.video_matrices())
        paths.append(path)
    return paths


def _per_video_path(evaluation: Path) -> Path:
    return evaluation.with_name(evaluation.stem + ".videos.npz")


def test_paper_figures_are_transcribed_consistently():
    # the paper prints its main result (RGB + flow, dataset masks) in Tables 1, 3 and 4
    assert paper_results.TABLE1[("ours", "rgbflow")] == paper_results.TABLE3[("dataset", "dataset")]
    assert paper_results.TABLE1[("ours", "rgbflow")] == paper_results.TABLE4_OURS
    # Table 5's averages are Table 1's actor-action mean class accuracies
    for key, row in paper_results.TABLE5.items():
        assert row["average"] == paper_results.TABLE1[key][5]
        assert len(row) == 45 and row["dog-none"] is None
        assert sum(v is not None for v in row.values()) == 44
    assert paper_results.TABLE5[("ours", "rgbflow")]["ball-flying"] == 26.7
    assert paper_results.TABLE5[("baseline", "rgb")]["dog-walking"] == 71.8


def test_tables_command_writes_every_table_beside_the_paper(tmp_path, evaluation_files):
    timing_csv = tmp_path / "timing.csv"
    pd.DataFrame([{"component": "flow", "item": "dis", "frames": 4, "ms_per_frame": 12.5, "device": "CPU x",
                   "paper_ms": 350.0}]).to_csv(timing_csv, index=False)
    quality_csv = tmp_path / "quality.csv"
    pd.DataFrame([{"source": "dataset", "AP": 0.41}, {"source": "generic", "AP": 0.22}]).to_csv(quality_csv, index=False)
    out = tmp_path / "tables"
    config = tmp_path / "config.yaml"
    config.write_text("seed: 0\nevaluation: {bootstrap_resamples: 500}\n")
    argv = ["tables", "--config", str(config), "--evaluations", *map(str, evaluation_files),
            "--per-video", *(str(_per_video_path(p)) for p in evaluation_files),
            "--mask-quality", str(quality_csv), "--timing", str(timing_csv), "--out-dir", str(out)]
    assert main(argv) == 0
    names = ["table1", "table2", "table3", "table4", "table5", "claims", "timing", "mask_quality"]
    for name in names:
        for suffix in (".csv", ".md", ".tex", ".html"):
            assert (out / f"{name}{suffix}").stat().st_size > 0, f"{name}{suffix}"
    assert (out / "done").exists()

    t1 = pd.read_csv(out / "table1.csv")
    assert list(t1["source"]) == ["paper", "this run", "this run", "paper", "this run"] * 2  # no paper mask vote
    assert list(t1["method"][:3]) == ["Baseline (RGB only)", "Baseline (RGB only)", "Mask vote (RGB only)"]
    assert t1.iloc[0]["mean class acc. actor-action"] == 42.7  # Baseline (RGB only), paper
    assert math.isnan(t1.iloc[0]["mean class acc. actor-action low"])  # the paper's figures have no interval
    doc = json.loads(evaluation_files[1].read_text())  # baseline-rgbflow
    row = t1[(t1["method"] == "Baseline (RGB + flow)") & (t1["source"] == "this run")].iloc[0]
    assert row["mean IoU actor"] == pytest.approx(100 * doc["metrics"]["whole"]["actor"]["mean_iou"], abs=0.01)
    assert row["mean IoU actor low"] < row["mean IoU actor"] < row["mean IoU actor high"]
    md = (out / "table1.md").read_text()
    assert "mean IoU actor low" not in md  # folded into the cell
    cell = f"{row['mean IoU actor']:.1f} [{row['mean IoU actor low']:.1f}, {row['mean IoU actor high']:.1f}]"
    assert "| Baseline (RGB + flow) | this run |" in md and cell in md
    assert cell in (out / "table1.tex").read_text()
    page = (out / "table1.html").read_text()  # what the report shows: the cell with its interval, and the CSV
    value, interval = cell.split(" [")
    assert "<h2>Table 1</h2>" in page and f'<td class="num">{value}<br><span class="ci">[{interval}</span></td>' in page
    assert "mean IoU actor low" not in page.split("<a download")[0]
    assert 'download="table1.csv" href="data:text/csv;base64,' in page

    t2 = pd.read_csv(out / "table2.csv")
    assert t2.iloc[1]["global acc. actor"] == pytest.approx(
        100 * doc["metrics"]["non_boundary"]["actor"]["global_accuracy"], abs=0.01)
    assert t2.iloc[0]["mean IoU actor-action"] == 39.0

    t3 = pd.read_csv(out / "table3.csv")
    assert list(t3["test masks"]) == ["generic", "generic", "dataset", "dataset", "gt", "gt"]
    assert t3.iloc[4]["mean IoU actor"] == 80.9

    t4 = pd.read_csv(out / "table4.csv")
    assert list(t4["method"][:5]) == [f"published method {k}" for k in range(1, 6)]
    assert list(t4["source"]) == ["paper"] * 6 + ["this run"]
    assert math.isnan(t4.iloc[0]["global acc. actor"]) and t4.iloc[3]["mean IoU actor-action"] == 29.7

    t5 = pd.read_csv(out / "table5.csv")
    assert list(t5.columns) == ["method", "source", *labels.class_names("actor_action"), "average"]
    ours = t5[(t5["method"] == "Ours (RGB + flow)") & (t5["source"] == "this run")].iloc[0]
    doc = json.loads(evaluation_files[VARIANTS.index("ours-rgbflow-dataset-dataset")].read_text())
    assert ours["adult-climbing"] == pytest.approx(100 * doc["per_category_accuracy"]["adult-climbing"], abs=0.01)
    assert ours["average"] == pytest.approx(100 * doc["metrics"]["whole"]["actor_action"]["mean_class_accuracy"], abs=0.01)

    claims_table = pd.read_csv(out / "claims.csv")
    assert list(claims_table["holds"]) == ["yes"] * 7  # the fake accuracies are ordered as claimed, far apart
    steps = r"(\+\d+\.\d \[\d+\.\d, \d+\.\d\](; )?)+"
    assert claims_table["difference [two-sided interval]"].str.fullmatch(steps).all()

    md = (out / "table1.md").read_text()
    assert "| Baseline (RGB only) | paper | 95.7 |" in md
    tex = (out / "table4.tex").read_text()
    assert r"\begin{tabular}" in tex and "published method 1 & paper & - &" in tex
    assert "actor-action" in (out / "table5.md").read_text()
    assert "12.5" in (out / "timing.md").read_text()


def test_compare_masks_puts_each_runs_table3_rows_beside_its_test_mask_ap(tmp_path, evaluation_files):
    table3_files = [p for p in evaluation_files if p.stem.startswith("ours-rgbflow-")]
    other = tmp_path / "other"
    other.mkdir()
    for k, path in enumerate(table3_files):  # the second run: lower accuracy everywhere
        doc, acc = fake_evaluation(path.stem, ACCURACY[path.stem] - 0.2, 50 + k)
        (other / path.name).write_text(json.dumps(doc))
        write_per_video(_per_video_path(other / path.name), path.stem, *acc.video_matrices())
    qualities = []
    for name, ap in (("this", 30.0), ("other", 20.0)):
        qualities.append(tmp_path / f"{name}-quality.csv")
        pd.DataFrame([{"source": "dataset", "categories": "actor", "AP": ap + 5},
                      {"source": "dataset", "categories": "agnostic", "AP": ap},
                      {"source": "generic", "categories": "agnostic", "AP": ap / 2}]).to_csv(qualities[-1], index=False)
    config = tmp_path / "config.yaml"
    config.write_text("seed: 0\nevaluation: {bootstrap_resamples: 200}\n")
    out = tmp_path / "tables" / "mask_models.csv"
    argv = ["compare-masks", "--config", str(config), "--out", str(out)]
    for label, quality, folder in (("model=fcis", qualities[0], None), ("model=maskrcnn", qualities[1], other)):
        files = [p if folder is None else folder / p.name for p in table3_files]
        argv += ["--model", label, "--quality", str(quality), "--evaluations", *map(str, files),
                 "--per-video", *(str(_per_video_path(p)) for p in files)]
    assert main(argv) == 0
    table = pd.read_csv(out)
    assert list(table.columns[:4]) == ["mask model", "training masks", "test masks", "test mask AP"]
    assert len(table) == 6 and list(table["mask model"]) == ["model=fcis"] * 3 + ["model=maskrcnn"] * 3
    rows = table.set_index(["mask model", "training masks", "test masks"]).sort_index()
    assert rows.loc[("model=fcis", "dataset + gt", "dataset"), "test mask AP"] == 30.0  # class-agnostic, not actor
    assert rows.loc[("model=maskrcnn", "generic + gt", "generic"), "test mask AP"] == 10.0
    assert math.isnan(rows.loc[("model=fcis", "dataset + gt", "gt"), "test mask AP"])
    metric = "mean class acc. actor-action"
    for key in rows.index:  # each run's own evaluations and intervals
        assert rows.loc[key, f"{metric} low"] <= rows.loc[key, metric] <= rows.loc[key, f"{metric} high"]
    assert (rows.loc["model=fcis", metric] > rows.loc["model=maskrcnn", metric]).all()
    assert "[" in out.with_suffix(".md").read_text() and out.with_suffix(".tex").exists()
    assert main([*argv, "--model", "model=third"]) == 1  # a label without its files is an error


def test_missing_variants_leave_their_rows_out(tmp_path, evaluation_files):
    evals = tables.load_evaluations(evaluation_files[:2])  # baselines only
    intervals = claims.load_intervals([_per_video_path(p) for p in evaluation_files[:2]], evals, resamples=200)
    t1 = tables.table1(evals, intervals)
    assert (t1["source"] == "this run").sum() == 2
    c = claims.claims(evals, intervals)
    assert c.iloc[0]["holds"] == "n/a" and c.iloc[1]["holds"] == "yes"
    assert claims.claims(evals).iloc[1]["holds"] == "n/a"  # no per-video matrices: nothing is resolved


def test_claims_say_yes_no_or_not_resolved_by_the_interval_of_the_difference(tmp_path):
    docs = {}
    for variant, accuracy, seed in (("baseline-rgbflow", 0.5, 1), ("ours-rgbflow-dataset-dataset", 0.5, 2),
                                    ("baseline-rgb", 0.9, 3), ("ours-rgb-dataset-dataset", 0.5, 4)):
        doc, acc = fake_evaluation(variant, accuracy, seed)
        path = tmp_path / f"{variant}.json"
        path.write_text(json.dumps(doc))
        write_per_video(_per_video_path(path), variant, *acc.video_matrices())
        docs[variant] = path
    evals = tables.load_evaluations(docs.values())
    intervals = claims.load_intervals([_per_video_path(p) for p in docs.values()], evals, resamples=500)
    holds = dict(zip(claims.claims(evals, intervals)["claim"], claims.claims(evals, intervals)["holds"]))
    assert holds["Ours beats Baseline in actor-action mean class accuracy (RGB + flow)"] == "not resolved"  # equal skill
    assert holds["flow improves action mean class accuracy (Baseline)"] == "no"  # 0.9 -> 0.5
    same = {v: evals["baseline-rgb"] | {"variant": v} for v in ("baseline-rgb", "baseline-rgbflow")}
    tie = claims.load_intervals([_per_video_path(docs["baseline-rgb"])], evals, resamples=50)
    tie.per_video["baseline-rgbflow"] = tie.per_video["baseline-rgb"]
    tied = claims.claims(same, tie).iloc[1]
    assert tied["holds"] == "not resolved"  # an exact tie ([0.0, 0.0]) resolves nothing either way
    assert tied["difference [two-sided interval]"] == "+0.0 [0.0, 0.0]"
    assert claims.verdict([(0.1, 0.3), (0.2, 0.4)]) == "yes"
    assert claims.verdict([(0.1, 0.3), (-0.2, 0.4)]) == "not resolved"
    assert claims.verdict([(0.1, 0.3), (-0.4, -0.2)]) == "no"
    assert claims.verdict([(0.0, 0.0)]) == "not resolved" and claims.verdict([(-0.2, 0.0)]) == "not resolved"


def test_family_wise_levels_bonferroni_and_holm():
    p = [0.001, 0.02, math.nan, 0.004, 0.3]  # four claims tested
    levels, allowed = claims.claim_levels(p, "none")
    assert levels == pytest.approx([0.025] * 5) and all(allowed)
    levels, allowed = claims.claim_levels(p, "bonferroni")
    assert levels == pytest.approx([0.025 / 4] * 5) and all(allowed)
    levels, allowed = claims.claim_levels(p, "holm")
    # ranks: 0.001 (0.025/4), 0.004 (0.025/3), 0.02 (0.025/2), 0.3 (0.025/1)
    assert [levels[i] for i in (0, 3, 1, 4)] == pytest.approx([0.025 / 4, 0.025 / 3, 0.025 / 2, 0.025])
    # 0.001 and 0.004 pass their levels, 0.02 fails 0.0125: the step-down stops there, so 0.3 (and anything
    # ranked after 0.02) may not say yes, whatever its own interval
    assert allowed == [True, True, True, True, False]
    levels, allowed = claims.claim_levels([0.001, 0.02, 0.015], "holm")
    assert levels == pytest.approx([0.025 / 3, 0.025, 0.025 / 2]) and allowed == [True, False, True]
    with pytest.raises(Exception, match="claims_correction"):
        claims.claim_levels(p, "fdr")


def test_claims_under_a_family_wise_correction_widen_and_say_so(tmp_path, evaluation_files):
    evals = tables.load_evaluations(evaluation_files)
    intervals = claims.load_intervals([_per_video_path(p) for p in evaluation_files], evals, resamples=300)
    plain = claims.claims(evals, intervals, "none")
    bonferroni = claims.claims(evals, intervals, "bonferroni")
    assert set(plain["interval"]) == {"95% (2.5% one-sided per step)"}
    assert set(bonferroni["interval"]) == {"99.3% (0.36% one-sided per step)"}
    assert (bonferroni["lowest interval end (points)"] < plain["lowest interval end (points)"]).all()
    # a family-wise yes is a per-claim yes, never the other way round
    assert not ((bonferroni["holds"] == "yes") & (plain["holds"] != "yes")).any()
    holm = claims.claims(evals, intervals, "holm")
    assert not ((holm["holds"] == "yes") & (plain["holds"] != "yes")).any()
    assert (holm["holds"] == "yes").sum() >= (bonferroni["holds"] == "yes").sum()
    for correction, words in (("none", "no correction across the 7 claims"), ("holm", "Holm"),
                              ("bonferroni", "Bonferroni")):
        caption = claims.claims_caption(correction)
        assert words.lower() in caption.lower() and "conditional on the trained models" in caption
        assert "seeds run" in caption


def test_stale_or_mismatched_per_video_files_are_named(tmp_path, evaluation_files):
    evals = tables.load_evaluations(evaluation_files[:2])
    with pytest.raises(Exception, match="does not add up"):
        claims.load_intervals([_per_video_path(evaluation_files[1])], {"baseline-rgbflow": evals["baseline-rgb"]
                                                                       | {"variant": "baseline-rgbflow"}})
    doc, acc = fake_evaluation("baseline-rgbflow", 0.4, 1, videos=5)
    other = tmp_path / "other.videos.npz"
    write_per_video(other, "baseline-rgbflow", *acc.video_matrices())
    evals["baseline-rgbflow"] = doc
    with pytest.raises(Exception, match="different test videos"):
        claims.load_intervals([_per_video_path(evaluation_files[0]), other], evals)


def test_metrics_table_writes_one_row_per_variant_and_region(tmp_path, evaluation_files):
    config = tmp_path / "config.yaml"
    config.write_text("seed: 0\nevaluation: {bootstrap_resamples: 100}\n")
    out = tmp_path / "validation"
    argv = ["metrics-table", "--config", str(config), "--evaluations", *map(str, evaluation_files),
            "--per-video", *(str(_per_video_path(p)) for p in evaluation_files), "--out-dir", str(out)]
    assert main(argv) == 0
    table = pd.read_csv(out / "metrics.csv")
    assert len(table) == 2 * len(VARIANTS) and set(table["pixels"]) == {"whole", "non_boundary"}
    assert (table["mean IoU actor-action low"] <= table["mean IoU actor-action"]).all()
    assert {p.name for p in out.iterdir()} == {f"metrics.{s}" for s in ("csv", "md", "tex", "html")}


def test_a_broken_evaluation_file_is_named(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    assert main(["tables", "--config", "c", "--evaluations", str(bad), "--out-dir", str(tmp_path / "t")]) == 1
    assert not (tmp_path / "t" / "done").exists()


def write_store(path, attrs, frames):
    """A timed stage output (flow cache, region-mask cache or predictions, as its item attribute says) of the
    schema version the timing job reads."""
    component = next(c for c, (_, item) in timing.TIMED.items() if item in attrs)
    with h5py.File(path, "w") as f:
        f.attrs["schema"] = timing.TIMED[component][0].schema
        for key, value in attrs.items():
            f.attrs[key] = value
        for video, frame in frames:
            f.create_group(f"{video}/{frame:05d}")


def test_timing_averages_shards_by_frames_and_adds_the_totals(tmp_path):
    write_store(tmp_path / "flow0.h5", {"method": "dis", "seconds_per_frame": 0.010}, [("a", 1), ("a", 2), ("b", 1)])
    write_store(tmp_path / "flow1.h5", {"method": "dis", "seconds_per_frame": 0.030}, [("c", 4)])
    write_store(tmp_path / "mask0.h5", {"source": "dataset", "seconds_per_frame": 0.1, "device": "CUDA H200"}, [("a", 1)])
    write_store(tmp_path / "mask1.h5", {"source": "gt", "seconds_per_frame": 0.001}, [("a", 1)])
    write_store(tmp_path / "empty.h5", {"source": "gt", "seconds_per_frame": float("nan")}, [])
    write_store(tmp_path / "p0.h5", {"variant": "baseline-rgbflow", "seconds_per_frame": 0.02, "device": "CPU x"},
                [("a", 1), ("c", 4)])
    write_store(tmp_path / "p1.h5", {"variant": "ours-rgbflow-dataset-dataset", "seconds_per_frame": 0.05,
                                     "device": "CPU x"}, [("a", 1)])
    out = tmp_path / "timing" / "timing.csv"
    argv = ["timing", "--config", "c", "--flow", str(tmp_path / "flow0.h5"), str(tmp_path / "flow1.h5"),
            "--masks", str(tmp_path / "mask0.h5"), str(tmp_path / "mask1.h5"), str(tmp_path / "empty.h5"),
            "--predictions", str(tmp_path / "p0.h5"), str(tmp_path / "p1.h5"), "--out", str(out)]
    assert main(argv) == 0
    t = pd.read_csv(out).set_index("component")
    assert t.loc["flow", "ms_per_frame"] == pytest.approx(15.0)  # (3 * 10 + 1 * 30) / 4
    assert t.loc["flow", "frames"] == 4 and t.loc["flow", "paper_ms"] == 350
    masks = t.loc["masks"].set_index("item")
    assert masks.loc["dataset", "device"] == "CUDA H200" and masks.loc["dataset", "ms_per_frame"] == 100
    assert math.isnan(masks.loc["gt", "paper_ms"])
    assert t.loc["segmentation baseline", "paper_ms"] == 45
    assert t.loc["total ours", "ms_per_frame"] == pytest.approx(15 + 100 + 50)
    assert t.loc["total ours", "paper_ms"] == 1100
    assert t.loc["total baseline", "ms_per_frame"] == pytest.approx(15 + 20)
    assert t.loc["flow", "device"] == describe_device()  # DIS records none: this CPU
    assert t.loc["total ours", "device"] == "CPU x"
    assert (out.with_suffix(".md")).read_text().startswith("| component |")


def test_timing_names_a_file_without_the_attribute(tmp_path):
    write_store(tmp_path / "flow.h5", {"method": "dis"}, [("a", 1)])
    out = tmp_path / "t.csv"
    assert main(["timing", "--config", "c", "--flow", str(tmp_path / "flow.h5"), "--out", str(out)]) == 1
    assert not out.exists()


def test_timing_refuses_a_file_of_another_schema_version_naming_its_rule(tmp_path):
    write_store(tmp_path / "p.h5", {"variant": "baseline-rgbflow", "seconds_per_frame": 0.02}, [("a", 1)])
    with h5py.File(tmp_path / "p.h5", "a") as f:
        f.attrs["schema"] = "a2dpipe.predictions/1"  # files of version 1 may lack the device they ran on
    with pytest.raises(A2DError, match=r"p.h5: not a predictions file .*'a2dpipe.predictions/1'.*--forcerun predict"):
        timing.read_timing([tmp_path / "p.h5"], "predictions")


def test_timing_imports_no_torch_when_the_files_name_their_device(tmp_path):
    """Prediction and predicted masks record where they ran, so the timing job (a CPU job on a cluster) neither
    names its own machine for them nor pays PyTorch's import, seconds of CPU, to ask."""
    import subprocess
    import sys

    write_store(tmp_path / "flow.h5", {"method": "dis", "seconds_per_frame": 0.01}, [("a", 1)])
    write_store(tmp_path / "mask.h5", {"source": "dataset", "seconds_per_frame": 0.1, "device": "CUDA H200"}, [("a", 1)])
    write_store(tmp_path / "p.h5", {"variant": "baseline-rgbflow", "seconds_per_frame": 0.02, "device": "CUDA H200"},
                [("a", 1)])
    out = tmp_path / "timing.csv"
    code = ("import sys; from a2dpipe.cli import main; code = main(sys.argv[1:]); "
            "print('torch imported' if 'torch' in sys.modules else 'no torch'); sys.exit(code)")
    proc = subprocess.run([sys.executable, "-c", code, "timing", "--flow", str(tmp_path / "flow.h5"),
                           "--masks", str(tmp_path / "mask.h5"), "--predictions", str(tmp_path / "p.h5"),
                           "--out", str(out)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "no torch"
    t = pd.read_csv(out).set_index("item")
    assert t.loc["baseline-rgbflow", "device"] == "CUDA H200" and t.loc["dis", "device"].startswith("CPU ")


def test_overlay_blends_palette_colours_on_foreground_only():
    from a2dpipe.evaluation.report import overlay

    rgb = np.full((2, 2, 3), 100, np.uint8)
    ids = np.array([[0, 11], [79, 0]], np.uint8)
    out = overlay(rgb, ids, alpha=0.5)
    np.testing.assert_array_equal(out[0, 0], [100, 100, 100])
    np.testing.assert_array_equal(out[0, 1], np.round(0.5 * 100 + 0.5 * labels.PALETTE[11].astype(float)))
    np.testing.assert_array_equal(out[1, 0], np.round(0.5 * 100 + 0.5 * labels.PALETTE[79].astype(float)))


def test_report_command_draws_the_three_figures(tmp_path, evaluation_files):
    rng = np.random.default_rng(0)
    frames = tmp_path / "frames.h5"
    preds = {"baseline": tmp_path / "baseline-rgbflow.h5", "ours": tmp_path / "ours-rgbflow-dataset-dataset.h5"}
    with h5py.File(frames, "w") as f, h5py.File(preds["baseline"], "w") as b, h5py.File(preds["ours"], "w") as o:
        f.attrs["schema"], b.attrs["schema"], o.attrs["schema"] = FRAMES.schema, PREDICTIONS.schema, PREDICTIONS.schema
        for video in ("v1", "v2", "v3"):
            label = np.zeros((24, 32), np.uint8)
            label[5:15, 8:20] = rng.choice(IDS[1:])
            g = f.create_group(f"{video}/00003")
            g.attrs["split"] = "test" if video != "v3" else "train"
            g.create_dataset("rgb", data=rng.integers(0, 255, (24, 32, 3), dtype=np.uint8))
            g.create_dataset("label", data=label)
            for h in (b, o):
                h.create_group(f"{video}/00003").create_dataset("joint", data=np.roll(label, 2, axis=1))
    for stage in ("stage1/rgb", "stage2/rgbflow-dataset"):
        d = tmp_path / "models" / stage
        d.mkdir(parents=True)
        (d / "model.pt").write_bytes(b"x")
        pd.DataFrame({"step": [1, 2, 3], "loss": [2.0, 1.5, 1.2], "lr": [0.1] * 3}).to_csv(d / "loss.csv", index=False)
    cfg = tmp_path / "config.yaml"
    cfg.write_text("evaluation: {qualitative_frames: 4}\n")
    out = tmp_path / "figures"
    argv = ["report", "--config", str(cfg), "--evaluations", *map(str, evaluation_files),
            "--checkpoints", str(tmp_path / "models/stage1/rgb/model.pt"),
            str(tmp_path / "models/stage2/rgbflow-dataset/model.pt"), "--frames", str(frames),
            "--baseline", str(preds["baseline"]), "--ours", str(preds["ours"]), "--out-dir", str(out)]
    assert main(argv) == 0
    for name in ("per_category", "loss_curves", "qualitative"):
        assert (out / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    from a2dpipe.evaluation.report import loss_curves_figure

    assert loss_curves_figure([tmp_path / "models/stage1/rgb/model.pt"], tmp_path / "one.png") == 1


def test_overlay_columns_are_titled_by_variant(tmp_path):
    from a2dpipe.evaluation.report import variant_title

    layout = tmp_path / "results" / "predictions" / "test"
    assert variant_title(layout / "ours/rgbflow/dataset/gt.h5") == "Ours (RGB + flow), masks: dataset -> gt"
    assert variant_title(layout / "baseline/rgb/none/none.h5") == "Baseline (RGB only)"
    assert variant_title(layout / "maskvote/rgbflow/none/dataset.h5") == "Mask vote (RGB + flow), dataset masks"
    flat = tmp_path / "mine.h5"  # outside the workflow's layout: the variant the file records
    with h5py.File(flat, "w") as f:
        f.attrs.update(schema=PREDICTIONS.schema, variant="ours-rgb-dataset-dataset")
    assert variant_title(flat) == "ours-rgb-dataset-dataset"


def test_loss_curves_draw_each_loss_and_the_learning_rate_on_whole_steps():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from a2dpipe.evaluation.report import _draw_curve

    df = pd.DataFrame({"step": [1, 2, 3], "loss": [2.0, 1.5, 1.2], "lr": [0.1, 0.05, 0.01],
                       "loss_actor": [1.2, 0.9, 0.7], "loss_action": [0.8, 0.6, 0.5]})
    fig, ax = plt.subplots()
    _draw_curve(ax, "stage1/rgb", df)
    fig.canvas.draw()
    assert [line.get_label() for line in ax.lines] == ["loss", "loss_actor", "loss_action"]
    (lr_ax,) = [other for other in fig.axes if other is not ax]
    np.testing.assert_array_equal(lr_ax.lines[0].get_ydata(), df["lr"])
    assert [t.get_text() for t in ax.get_legend().get_texts()][-1] == "learning rate"
    ticks = [t for t in ax.get_xticks() if 1 <= t <= 3]
    assert ticks and all(float(t).is_integer() for t in ticks)
    plt.close(fig)


# --- the evaluation rules and `snakemake --report` on hand-made upstream artifacts --------------------------------

REPO = Path(__file__).resolve().parents[1]


def _fixture_run(root: Path) -> dict:
    """Write every artifact the evaluation rules read, following the contracts, for a 4-video, 2-shard config."""
    import yaml

    config = yaml.safe_load((REPO / "config.yaml").read_text())
    config["synthetic"]["videos"] = 4
    config["dataset"]["shard_size"] = 2
    (root / "config.yaml").write_text(yaml.safe_dump(config))
    rng = np.random.default_rng(0)
    res = root / config["results"]
    labels_of = {}

    def h5(path, attrs):
        path.parent.mkdir(parents=True, exist_ok=True)
        f = h5py.File(path, "w")
        f.attrs.update(attrs)
        return f

    for shard in range(2):
        with h5(res / "frames" / f"shard-{shard:03d}.h5", {"schema": FRAMES.schema}) as f:
            for v in (2 * shard, 2 * shard + 1):
                label = np.zeros((32, 48), np.uint8)
                label[8:24, 10:30] = rng.choice(IDS[1:])
                g = f.create_group(f"vid{v}/00004")
                g.attrs["split"] = "test" if v % 2 else "train"
                g.create_dataset("rgb", data=rng.integers(0, 255, (32, 48, 3), dtype=np.uint8))
                g.create_dataset("label", data=label)
                labels_of[f"vid{v}/00004"] = (label, v % 2 == 1)
        with h5(res / "flow" / "dis" / f"shard-{shard:03d}.h5", {"schema": FLOW.schema, "method": "dis",
                                                                    "seconds_per_frame": 0.02}) as f:
            for v in (2 * shard, 2 * shard + 1):
                f.create_group(f"vid{v}/00004")
        for source in ("dataset", "generic", "gt"):
            with h5(res / "masks" / source / f"shard-{shard:03d}.h5", {"schema": MASKS.schema, "source": source,
                                                                      "seconds_per_frame": 0.1}) as f:
                for v in (2 * shard, 2 * shard + 1):
                    f.create_group(f"vid{v}/00004")
    checkpoints = [res / "masks/models/dataset", res / "masks/models/generic", res / "models/stage1/rgb",
                   res / "models/stage1/rgbflow", res / "models/stage2/rgb-dataset",
                   res / "models/stage2/rgbflow-dataset", res / "models/stage2/rgbflow-generic"]
    for d in checkpoints:
        d.mkdir(parents=True, exist_ok=True)
        (d / "model.pt").write_bytes(b"weights")
        pd.DataFrame({"step": [1, 2], "loss": [1.0, 0.5]}).to_csv(d / "loss.csv", index=False)
    pd.DataFrame([{"source": "dataset", "AP": 40.0}, {"source": "generic", "AP": 20.0}]).to_csv(
        res / "masks" / "quality.csv", index=False)
    for k, variant in enumerate(VARIANT_PARTS):  # the layout: predictions/{split}/{kind}/{input}/{train}/{test}.h5
        attrs = {"schema": PREDICTIONS.schema, "variant": variant_name(variant), "seconds_per_frame": 0.01 * (k + 1),
                 "device": "CPU fixture"}
        with h5(res / "predictions" / "test" / Path(*variant[:3]) / f"{variant.test_source}.h5", attrs) as f:
            for key, (label, test) in labels_of.items():
                if test:
                    joint = np.where(rng.random(label.shape) < 0.8, label, 0).astype(np.uint8)
                    g = f.create_group(key)
                    g.create_dataset("joint", data=joint)
                    g.create_dataset("actor", data=joint // 10)
                    g.create_dataset("action", data=joint % 10)
    return config


@pytest.mark.slow
def test_evaluation_rules_and_html_report_on_fixture_artifacts(tmp_path):
    import os
    import shutil
    import subprocess

    for name in ("Snakefile", "workflow", "envs", "a2dpipe"):  # the package too: the Snakefile imports it
        src = REPO / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, tmp_path / name)
    _fixture_run(tmp_path)
    # the target first: --allowed-rules (like --resources) takes every word after it
    cmd = ["snakemake", "tables", "--cores", "1", "--resources", "gpu=1"]
    allowed = ["--allowed-rules", "evaluate", "timing", "report_figures", "tables"]
    env = dict(os.environ, PYTHONPATH=str(REPO))  # the copied workflow imports this checkout's package
    done = subprocess.run([*cmd, *allowed], cwd=tmp_path, capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    res = tmp_path / "results"
    assert (res / "tables" / "done").exists() and (res / "timing" / "timing.csv").exists()
    for name in ("per_category", "qualitative", "loss_curves"):
        assert (res / "figures" / f"{name}.png").exists()
    t3 = pd.read_csv(res / "tables" / "table3.csv")
    assert (t3["source"] == "this run").sum() == 3
    assert (res / "tables" / "mask_quality.md").exists()
    report = subprocess.run([*cmd, "--report", "report.html", *allowed], cwd=tmp_path, capture_output=True, text=True,
                            env=env)
    assert report.returncode == 0, report.stderr[-3000:]
    assert (tmp_path / "report.html").stat().st_size > 10_000
