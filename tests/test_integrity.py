"""Integrity: checksums and range checks on every artifact kind, resume only from the same inputs, code provenance,
write failures, errors in job logs, config coherence and the results-folder lock (docs/integrity.md)."""

import json
import logging
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import h5py
import numpy as np
import pytest

from a2dpipe import integrity, io
from a2dpipe.cli import COMMANDS, command_digest, main
from a2dpipe.config import check_coherence, resolve, stamp, write_made_from
from a2dpipe.evaluation.bootstrap import read_per_video, write_per_video
from a2dpipe.evaluation.tables import load_evaluations
from a2dpipe.flow.store import FlowStore, FlowWriter
from a2dpipe.errors import A2DError
from a2dpipe.segmentation.predictions import PredictionStore, PredictionWriter

ROOT = Path(__file__).resolve().parents[1]
RNG = np.random.default_rng(0)


def flip_bit(path, offset, bit=3):
    data = bytearray(Path(path).read_bytes())
    data[offset] ^= 1 << bit
    Path(path).write_bytes(bytes(data))


def chunk_offset(path, dataset):
    """Byte offset of the first stored chunk of ``dataset`` (where its values lie)."""
    with h5py.File(path, "r") as f:
        return f[dataset].id.get_chunk_info(0).byte_offset


def write_flow(path, frames=2, value=None):
    with FlowWriter(path, method="dis", encoding="xym", settings={"flow": {"method": "dis"}}) as writer:
        for frame in range(1, frames + 1):
            field = RNG.normal(0, 3, (48, 64, 2)) if value is None else np.full((48, 64, 2), value)
            writer.write("vid", frame, field, RNG.integers(0, 255, (48, 64, 3)), direction="next")
        writer.seconds_per_frame = 0.01


def write_predictions(path, joint=11):
    with PredictionWriter(path, variant="baseline-rgb", model="model.pt", device="CPU", settings={"seed": 0}) as writer:
        for frame in (1, 2):
            writer.write("vid", frame, {"actor": RNG.integers(0, 8, (48, 64)), "action": RNG.integers(0, 10, (48, 64)),
                                        "joint": np.full((48, 64), joint)})
        writer.seconds_per_frame = 0.01


def read_all_flow(path):
    with FlowStore(path) as store:
        return [store.read(*key) for key in store.keys()]


def read_all_predictions(path):
    with PredictionStore(path) as store:
        return [store.read(*key) for key in store.keys()]


# -- checksums and range checks ---------------------------------------------------------------------------------


def test_every_dataset_of_the_hdf5_writers_carries_a_checksum(tmp_path):
    write_flow(tmp_path / "flow.h5")
    write_predictions(tmp_path / "pred.h5")
    for name in ("flow.h5", "pred.h5"):
        with h5py.File(tmp_path / name, "r") as f:
            datasets = []
            f.visititems(lambda key, obj: datasets.append(obj) if isinstance(obj, h5py.Dataset) else None)
            assert datasets and all(d.fletcher32 for d in datasets), name


@pytest.mark.parametrize("kind, dataset, rule", [
    ("flow", "vid/00001/flow", "flow"), ("flow", "vid/00002/rgb", "flow"),
    ("predictions", "vid/00002/joint", "predict"), ("predictions", "vid/00001/actor", "predict"),
])
def test_a_flipped_bit_in_a_dataset_is_an_error_naming_the_file_and_rule(tmp_path, kind, dataset, rule):
    path = tmp_path / f"{kind}.h5"
    (write_flow if kind == "flow" else write_predictions)(path)
    flip_bit(path, chunk_offset(path, dataset) + 5)
    with pytest.raises(A2DError) as err:
        (read_all_flow if kind == "flow" else read_all_predictions)(path)
    assert str(err.value).startswith(f"{path}: ") and f"`snakemake --forcerun {rule}`" in str(err.value)


def flipped_reads(path, read_all, samples=300):
    """(offset, what ``read_all`` read) for each of ~``samples`` copies of ``path`` with one bit flipped (every
    byte region, metadata too) that read without an A2DError."""
    original = Path(path).read_bytes()
    damaged = Path(path).with_name("damaged.h5")
    for offset in range(0, len(original), max(1, len(original) // samples)):
        data = bytearray(original)
        data[offset] ^= 1 << (offset % 8)
        damaged.write_bytes(bytes(data))
        try:
            yield offset, read_all(damaged)
        except A2DError:
            continue


def test_flipped_bits_anywhere_in_a_predictions_file_never_change_what_is_read(tmp_path):
    # metadata too (libver 1.10: object headers carry checksums): every byte, one bit each
    path = tmp_path / "pred.h5"
    write_predictions(path)
    reference = read_all_predictions(path)
    for offset, got in flipped_reads(path, read_all_predictions):
        assert len(got) == len(reference) and all(
            all(np.array_equal(g[k], r[k]) for k in r) for g, r in zip(got, reference)), f"byte {offset}: silent"


def test_flipped_bits_anywhere_in_a_frames_shard_never_change_what_is_read(tmp_path):
    # a frame's text attributes (split, direction) included: at fixed length they lie in checksummed headers
    from a2dpipe.dataset.frames import FrameStore
    from a2dpipe.evaluation.cpu_costs import write_synthetic_frames

    def read_all(path):
        with FrameStore(path) as store:
            return [(vars(store.read(*key)), store.keys("train")) for key in store.keys()]

    path = write_synthetic_frames(tmp_path / "frames.h5", ["v000", "v001"], (32, 48), np.random.default_rng(0))
    reference = read_all(path)
    for offset, got in flipped_reads(path, read_all):
        for (record, train), (expected, expected_train) in zip(got, reference, strict=True):
            assert train == expected_train, f"byte {offset}: silent"
            for key, value in expected.items():
                assert np.array_equal(record[key], value), f"byte {offset}: {key} silently changed"


def test_values_out_of_range_are_refused_on_read(tmp_path):
    from a2dpipe.labels import VALID_PAIRS

    write_predictions(tmp_path / "pred.h5", joint=99)  # beyond every id
    with pytest.raises(A2DError, match=r"pred\.h5: frame vid/00001: joint holds values in \[99, 99\], outside"):
        read_all_predictions(tmp_path / "pred.h5")
    invalid = next(i for i in range(1, max(VALID_PAIRS)) if i not in VALID_PAIRS)  # in range, yet no pair
    write_predictions(tmp_path / "pred.h5", joint=invalid)
    with pytest.raises(A2DError, match=r"pred\.h5: frame vid/00001: joint holds label\(s\) .* no actor-action id"):
        read_all_predictions(tmp_path / "pred.h5")
    write_flow(tmp_path / "flow.h5", value=30000.0)  # float16 holds it; no frame is that wide
    with pytest.raises(A2DError, match=r"flow\.h5: frame vid/00001: flow holds values in .*outside.*--forcerun flow"):
        read_all_flow(tmp_path / "flow.h5")


def _evaluation(tmp_path, name="e.json", code="abc"):
    doc = {"variant": "baseline-rgb", "metrics": {"whole": {}}, "frames": 4,
           "provenance": {"a2dpipe_version": "0", "settings": {"seed": 0}, "code": {"evaluate": code}}}
    path = tmp_path / name
    path.write_text(json.dumps(integrity.with_digest(doc), indent=1))
    return path


def test_a_changed_byte_in_an_evaluation_is_an_error_naming_the_rule(tmp_path):
    path = _evaluation(tmp_path)
    assert load_evaluations([path])["baseline-rgb"]["frames"] == 4
    path.write_text(path.read_text().replace('"frames": 4', '"frames": 5'))
    with pytest.raises(A2DError, match=r"e\.json: .*sha256 digest.*`snakemake --forcerun evaluate`"):
        load_evaluations([path])
    path.write_bytes(b"\xff" + path.read_bytes()[1:])  # not UTF-8 any more
    with pytest.raises(A2DError, match=r"e\.json: cannot read it.*--forcerun evaluate"):
        load_evaluations([path])


def test_damaged_per_video_matrices_are_an_error_naming_the_rule(tmp_path):
    path = tmp_path / "v.videos.npz"
    stack = RNG.integers(0, 50, (3, 4, 4))
    write_per_video(path, "baseline-rgb", ["a", "b", "c"], {"whole": {"actor": stack}})
    assert np.array_equal(read_per_video(path)["whole.actor"], stack)
    original = path.read_bytes()
    for offset in range(0, len(original), max(1, len(original) // 60)):
        flip_bit(path, offset, bit=offset % 8)
        try:
            doc = read_per_video(path)
        except A2DError as err:
            assert str(err).startswith(f"{path}: ") and "--forcerun evaluate" in str(err)
        else:
            assert np.array_equal(doc["whole.actor"], stack) and doc["videos"] == ["a", "b", "c"], offset
        path.write_bytes(original)
    path.write_bytes(original[: len(original) // 2])
    with pytest.raises(A2DError, match=r"videos\.npz: cannot read it \(BadZipFile.*--forcerun evaluate"):
        read_per_video(path)


# -- code provenance --------------------------------------------------------------------------------------------


@pytest.fixture()
def package_copy(tmp_path, monkeypatch):
    """A copy of the package whose digests the test may change by editing its files."""
    copy = tmp_path / "a2dpipe"
    shutil.copytree(integrity.PACKAGE_ROOT, copy, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(integrity, "PACKAGE_ROOT", copy)
    integrity.forget_code_digests()
    yield copy
    integrity.forget_code_digests()


def test_a_code_edit_changes_the_digest_of_exactly_the_commands_that_import_it(package_copy):
    before = {command: command_digest(command) for command in COMMANDS}
    metrics = package_copy / "evaluation" / "metrics.py"
    metrics.write_text(metrics.read_text() + "\n# an edit\n")
    integrity.code_digest.cache_clear()
    after = {command: command_digest(command) for command in COMMANDS}
    changed = {command for command in COMMANDS if before[command] != after[command]}
    assert "evaluate" in changed and "flow" not in changed and "extract-frames" not in changed
    assert changed == {c for c in COMMANDS if "a2dpipe.evaluation.metrics" in integrity.module_files(COMMANDS[c][0])}


def test_every_rule_that_runs_a_command_passes_that_commands_code_digest():
    for smk in (ROOT / "workflow" / "rules").glob("*.smk"):
        for rule in re.split(r"\n(?=rule |    rule )", smk.read_text()):
            command = re.search(r"python -m a2dpipe ([\w-]+)", rule)
            if command:
                assert f'code=get_code("{command.group(1)}")' in rule, f"{smk.name}: {rule.splitlines()[0]}"


def test_combining_artifacts_of_two_codes_is_refused_naming_both(tmp_path):
    a, b = _evaluation(tmp_path, "a.json", code="111"), _evaluation(tmp_path, "b.json", code="222")
    stamps = {str(p): json.loads(p.read_text())["provenance"] for p in (a, b)}
    with pytest.raises(A2DError, match=r"b\.json: made by code '222' of `a2dpipe evaluate`, while .*a\.json was made "
                                       r"by its code '111'"):
        write_made_from(tmp_path / "provenance.json", stamps)


def test_artifacts_record_the_code_of_the_command_that_wrote_them(tmp_path):
    integrity.set_command("flow", COMMANDS["flow"][0])
    try:
        write_flow(tmp_path / "flow.h5")
        assert stamp({})["code"] == {"flow": command_digest("flow")}
    finally:
        integrity.set_command(None)
    with h5py.File(tmp_path / "flow.h5", "r") as f:
        assert json.loads(f.attrs["code"]) == {"flow": command_digest("flow")}


# -- resume only from the same inputs ---------------------------------------------------------------------------


def test_resume_starts_over_when_an_input_file_changed_naming_it(tmp_path, caplog):
    from tests.test_train import CONFIG, make_samples
    from a2dpipe.segmentation.train import train

    out = tmp_path / "model.pt"
    inputs = {"results/frames/shard-000.h5": "aaaa", "results/flow/dis/shard-000.h5": "bbbb"}
    assert train(CONFIG, stage=1, input="rgbflow", samples=make_samples(), out=out, max_steps=3,
                 inputs=inputs) is None
    changed = {**inputs, "results/flow/dis/shard-000.h5": "cccc"}
    with caplog.at_level(logging.INFO):
        result = train(CONFIG, stage=1, input="rgbflow", samples=make_samples(), out=out, inputs=changed)
    lines = [r.getMessage() for r in caplog.records if "made from other inputs" in r.getMessage()]
    assert lines and "(changed: results/flow/dis/shard-000.h5)" in lines[0]
    assert not any("resuming" in r.getMessage() for r in caplog.records)
    assert [row["step"] for row in result["curve"]] == list(range(1, 7))


def test_file_digest_follows_the_content(tmp_path):
    path = tmp_path / "f.bin"
    path.write_bytes(b"x" * 1000)
    first = integrity.file_digest(path)
    path.write_bytes(b"x" * 999 + b"y")
    assert integrity.file_digest(path) != first


# -- write failures ---------------------------------------------------------------------------------------------

WRITE_UNDER_LIMIT = textwrap.dedent("""
    import resource, signal, sys
    sys.path.insert(0, {root!r})
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)   # as the command line does
    resource.setrlimit(resource.RLIMIT_FSIZE, (400_000, resource.RLIM_INFINITY))
    import numpy as np, torch
    from a2dpipe.errors import A2DError
    from a2dpipe.flow.store import FlowWriter
    from a2dpipe.checkpoint import save_resume
    try:
        if sys.argv[1] == "hdf5":
            with FlowWriter(sys.argv[2], method="dis", encoding="xym") as writer:
                for frame in range(1, 400):
                    rng = np.random.default_rng(frame)
                    writer.write("vid", frame, rng.normal(0, 9, (96, 128, 2)), rng.integers(0, 255, (96, 128, 3)))
                writer.seconds_per_frame = 0.0
        else:
            model = torch.nn.Linear(400, 400)
            optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
            scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
            save_resume(sys.argv[2], "fp", 2, model, optimizer, scheduler, [])
    except A2DError as err:
        print(err)
        sys.exit(1)
""")


@pytest.mark.parametrize("kind", ["hdf5", "checkpoint"])
def test_a_file_size_limit_is_a_clear_error_leaving_nothing_partial(tmp_path, kind):
    out = tmp_path / ("flow.h5" if kind == "hdf5" else "checkpoint.pt")
    if kind == "checkpoint":
        out.write_bytes(b"the previous checkpoint")
    script = tmp_path / "write.py"
    script.write_text(WRITE_UNDER_LIMIT.format(root=str(ROOT)))
    proc = subprocess.run([sys.executable, str(script), kind, str(out)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, (proc.returncode, proc.stderr[-2000:])
    assert f"{out}: cannot be written: the file-size limit (ulimit -f, 400000 bytes) leaves no room for it" in proc.stdout
    leftovers = [p.name for p in tmp_path.iterdir() if p.name not in ("write.py", out.name)]
    assert leftovers == []
    if kind == "checkpoint":  # the checkpoint before stays where it was
        assert out.read_bytes() == b"the previous checkpoint"
    else:
        assert not out.exists()


def test_a_full_disk_is_a_clear_error_naming_the_file(tmp_path, monkeypatch):
    monkeypatch.setattr(io, "_free_bytes", lambda path: 1 << 20)
    with pytest.raises(A2DError, match=r"flow\.h5: cannot be written: no space left on the device"):
        write_flow(tmp_path / "flow.h5")
    assert list(tmp_path.iterdir()) == []


# -- errors in the job's log ------------------------------------------------------------------------------------


def test_a_failing_command_writes_its_error_and_traceback_to_its_log(tmp_path, monkeypatch):
    log = tmp_path / "job.log"
    settings = json.dumps({"seed": 0, "evaluation": {"bootstrap_resamples": 200}})
    assert main(["tables", "--settings", settings, "--evaluations", str(tmp_path / "missing.json"),
                 "--out-dir", str(tmp_path / "t"), "--log", str(log)]) == 1
    assert "missing.json: evaluation not found" in log.read_text()

    import a2dpipe.evaluation.tables as tables

    def broken(args):
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(tables, "run", broken)
    assert main(["tables", "--settings", settings, "--evaluations", "x.json", "--out-dir", str(tmp_path),
                 "--log", str(log)]) == 1
    text = log.read_text()
    assert "Traceback (most recent call last)" in text and "ZeroDivisionError: a bug" in text


# -- config coherence and the results lock ----------------------------------------------------------------------


def _config(**experiments_and_evaluation):
    config = resolve({"dataset": {"root": "data"}}, partial=True)
    for key, value in experiments_and_evaluation.items():
        section, name = key.split("__")
        config[section][name] = value
    return config


@pytest.mark.parametrize("keys, message", [
    ({"experiments__regions": []}, r"experiments\.regions is empty"),
    ({"experiments__inputs": ["rgb"]}, r"experiments\.regions uses input\(s\) \['rgbflow'\] that experiments\.inputs"),
    ({"evaluation__bootstrap_resamples": 1}, r"bootstrap_resamples = 1 is too few for a 95% interval.* at least 40"),
])
def test_incoherent_configs_are_refused_at_parse_time(keys, message):
    with pytest.raises(A2DError, match=message):
        check_coherence(_config(**keys))
    check_coherence(_config())  # the defaults are coherent


def test_a_results_folder_in_use_from_another_directory_is_refused(tmp_path, monkeypatch):
    results = tmp_path / "results"
    results.mkdir()
    lock = results / integrity.RESULTS_LOCK
    live = {"workdir": "/elsewhere", "host": io._host(), "pid": os.getpid(), "started": "now"}
    lock.write_text(json.dumps(live))
    with pytest.raises(A2DError, match=r"results: in use by a run started from /elsewhere.*set config `results`"):
        integrity.check_results_free(results)
    monkeypatch.chdir(tmp_path)
    lock.write_text(json.dumps({**live, "workdir": str(tmp_path)}))  # this directory's own: Snakemake's business
    integrity.check_results_free(results)
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    lock.write_text(json.dumps({**live, "pid": int(gone.stdout)}))  # a killed run's lock is stale
    integrity.check_results_free(results)
    integrity.lock_results(results)
    assert json.loads(lock.read_text())["pid"] == os.getpid()
    integrity.unlock_results(results)
    assert not lock.exists()


@pytest.mark.slow
def test_a_code_edit_reruns_exactly_the_stages_whose_code_changed(tiny_run, tiny_config, tmp_path):
    """The complete tiny run, planned again by a copy of the workflow whose metrics module was edited: `evaluate`
    and what depends on it rerun (params changed: the code digest), nothing upstream does."""
    for name in ("Snakefile", "workflow", "envs", "a2dpipe"):
        src = ROOT / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, tmp_path / name,
                                                         **({"ignore": shutil.ignore_patterns("__pycache__")}
                                                            if src.is_dir() else {}))
    metrics = tmp_path / "a2dpipe" / "evaluation" / "metrics.py"
    metrics.write_text(metrics.read_text() + "\n# an edit\n")
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(tmp_path / "Snakefile"), "--directory",
           str(tiny_run), "tables", "--dry-run", "--quiet", "rules", "--configfile", str(tiny_config)]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600,
                          env=dict(os.environ, PYTHONPATH=str(tmp_path)))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    planned = {m[1] for m in re.finditer(r"^(\w+)\s+(\d+)$", proc.stdout, re.M) if m[1] != "total"}
    assert "evaluate" in planned and "tables" in planned, proc.stdout[-3000:]
    assert not planned & {"synthesize", "index", "extract_frames", "flow", "train_stage1", "train_stage2",
                          "train_mask_model", "region_masks", "predict"}, planned
