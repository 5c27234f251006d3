"""One declaration per command (a2dpipe/settings.py): the rule's params, the help, and what the command may read."""

from __future__ import annotations

import argparse
import itertools
import json
import re
import subprocess
import sys

import pytest

from a2dpipe import settings
from a2dpipe.cli import COMMANDS, import_command
from a2dpipe.config import load_config
from a2dpipe.errors import A2DError
from a2dpipe.variants import KINDS
from conftest import REPO

def _configs(tiny_config):
    """The tiny preset, and it with every key-choosing value turned the other way (FCIS, RAFT, the wheel)."""
    tiny = load_config(tiny_config)
    other = load_config(tiny_config)
    other["masks"]["model"], other["flow"]["method"], other["flow"]["encoding"] = "fcis", "raft", "wheel"
    return tiny, other


def _jobs(command):
    names = settings.DECLARATIONS[command].job
    return [dict(zip(names, values)) for values in itertools.product(*map(settings.job_values, names))]


def test_every_declaration_is_a_command():
    assert set(settings.DECLARATIONS) <= set(COMMANDS)


@pytest.mark.parametrize("command", list(settings.DECLARATIONS))
def test_the_help_of_a_command_names_the_keys_it_declares(command, tiny_config):
    """Each key read with the schema's defaults is named in full; one read under other choices (FCIS, RAFT, the
    wheel encoding) at least by its name."""
    parser = argparse.ArgumentParser(prog=f"a2dpipe {command}")
    import_command(command).configure_parser(parser)
    text = " ".join(parser.format_help().split())
    for key in settings.default_keys(command):
        assert re.search(rf"[ (]{re.escape(key)}[,;)]", text), f"`a2dpipe {command} --help` does not name {key}"
    keys = {key for config in _configs(tiny_config) for job in _jobs(command)
            for key in settings.declared_keys(command, config, job)}
    assert keys, command
    for key in keys:
        last = key.rsplit(".", 1)[-1]
        named = key in text or last in text or (last.startswith("fcis_") and "fcis_*" in text)
        assert named, f"`a2dpipe {command} --help` does not name {key}: {text}"


def test_a_command_sees_exactly_its_declared_keys(tiny_config):
    config = load_config(tiny_config)
    job = {"stage": 1, "input": "rgb"}
    got = settings.read_settings(argparse.Namespace(config=str(tiny_config), settings=None, **job), "train")
    assert got == json.loads(settings.settings_json("train", config, job))
    assert "stage2" not in got["segmentation"] and "flow" not in got  # stage 1 on RGB reads neither
    with pytest.raises(A2DError, match=r"`a2dpipe train` reads config key segmentation\.stage2, which its "
                                       r"declaration does not list: add it to DECLARATIONS\['train'\]"):
        got["segmentation"]["stage2"]


def test_a_command_that_reads_an_undeclared_key_fails_naming_it(tiny_run, tmp_path, monkeypatch):
    """`evaluate` with a declaration that lacks boundary_width stops when it reads it, naming the key and where to
    declare it, even though the settings it was handed hold the value."""
    from a2dpipe.cli import main

    declaration = settings.DECLARATIONS["evaluate"]
    monkeypatch.setitem(settings.DECLARATIONS, "evaluate", settings.Declaration(
        declaration.reads, lambda config, job: ["evaluation.settings_from"]))
    results = tiny_run / "results"
    given = {"evaluation": {"boundary_width": 5, "settings_from": "heads"}}
    log = tmp_path / "evaluate.log"
    code = main(["evaluate", "--settings", json.dumps(given), "--predictions",
                 str(results / "predictions" / "test" / "baseline" / "rgb" / "none" / "none.h5"),
                 "--frames", *map(str, sorted((results / "frames").glob("shard-*.h5"))),
                 "--out", str(tmp_path / "e.json"), "--log", str(log)])
    assert code == 1 and not (tmp_path / "e.json").exists()
    assert re.search(r"`a2dpipe evaluate` reads config key evaluation\.boundary_width, which its declaration does not "
                     r"list: add it to DECLARATIONS\['evaluate'\] in a2dpipe/settings\.py", log.read_text())


# A Snakefile that declares one more key for `evaluate`, then is the workflow.
WIDER_EVALUATE = """
from a2dpipe import settings

_evaluate = settings.DECLARATIONS["evaluate"]
settings.DECLARATIONS["evaluate"] = settings.Declaration(
    _evaluate.reads, lambda config, job: [*_evaluate.keys(config, job), "evaluation.qualitative_frames"])


include: {snakefile!r}
"""


def test_a_key_added_to_a_declaration_reruns_that_rule_and_what_follows(tiny_run, tiny_config, tmp_path):
    snakefile = tmp_path / "Snakefile"
    snakefile.write_text(WIDER_EVALUATE.format(snakefile=str(REPO / "Snakefile")))
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(snakefile), "--directory", str(tiny_run), "tables",
           "--dry-run", "--quiet", "rules", "--configfile", str(tiny_config)]
    proc = subprocess.run(cmd, cwd=REPO, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:]
    planned = {m[1]: int(m[2]) for m in re.finditer(r"^(\w+)\s+(\d+)$", proc.stdout, re.M) if m[1] != "total"}
    # the 8 prediction sets' evaluations, and the two jobs that read them; nothing upstream, no other rule
    assert planned == {"evaluate": 8, "report_figures": 1, "tables": 1}


def test_the_tiny_preset_is_read_by_the_declarations(tiny_config):
    """Every declared key of every job exists in the tiny preset (a declaration naming a key the schema lacks
    would fail each job of its rule)."""
    for config, command in itertools.product(_configs(tiny_config), settings.DECLARATIONS):
        for job in _jobs(command):
            assert json.loads(settings.settings_json(command, config, job)) or command == "region-masks"
