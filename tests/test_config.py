"""Every shipped configuration validates against the schema, and the presets name the same keys."""

from pathlib import Path

import jsonschema
import pytest
import yaml

from a2dpipe.config import load_config
from a2dpipe.errors import A2DError

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = yaml.safe_load((ROOT / "workflow" / "schemas" / "config.schema.yaml").read_text())
PRESETS = [ROOT / "config.yaml", ROOT / "config" / "paper.yaml", ROOT / "tests" / "config.tiny.yaml",
           ROOT / "config" / "seeds.yaml"]


def _keys(tree, prefix=""):
    if not isinstance(tree, dict):
        return {prefix}
    return set().union(*(_keys(v, f"{prefix}.{k}") for k, v in tree.items()))


@pytest.mark.parametrize("path", PRESETS, ids=lambda p: p.name)
def test_preset_validates(path):
    jsonschema.validate(yaml.safe_load(path.read_text()), SCHEMA)


@pytest.mark.parametrize("name", ["paper-coco.yaml", "paper-fcis.yaml"])
def test_paper_overlay_validates_on_the_paper_preset(name):
    """config/paper-coco.yaml and paper-fcis.yaml go on top of the paper preset (`--configfile config/paper.yaml
    config/paper-coco.yaml`, merged key by key as Snakemake merges config files)."""
    from snakemake.utils import update_config

    config, overlay = (yaml.safe_load((ROOT / "config" / f).read_text()) for f in ("paper.yaml", name))
    update_config(config, overlay)
    jsonschema.validate(config, SCHEMA)
    assert config["masks"]["coco_checkpoint"]
    assert ["rgbflow", "generic", "generic"] in config["experiments"]["regions"]
    if name == "paper-coco.yaml":
        assert config["experiments"]["compare_masks"] is None
    else:
        assert config["masks"]["fcis_layout"] == "official" and config["masks"]["model"] == "fcis"


def test_tiny_preset_names_every_key_of_the_default():
    default, tiny = (yaml.safe_load(p.read_text()) for p in (PRESETS[0], PRESETS[2]))
    assert _keys(tiny) == _keys(default)


def test_unknown_key_is_rejected():
    config = yaml.safe_load(PRESETS[0].read_text())
    config["segmentation"]["stage1"]["iterationz"] = 5
    with pytest.raises(jsonschema.ValidationError, match="iterationz"):
        jsonschema.validate(config, SCHEMA)


def test_load_config_names_the_file(tmp_path):
    bad = tmp_path / "c.yaml"
    bad.write_text("a: [1, 2\n")
    with pytest.raises(A2DError, match="c.yaml: not valid YAML"):
        load_config(bad)
    with pytest.raises(A2DError, match="config file not found"):
        load_config(tmp_path / "missing.yaml")


def test_a_typo_names_the_key_the_nearest_one_and_the_keys_of_its_section():
    from a2dpipe.config import resolve

    config = yaml.safe_load(PRESETS[0].read_text())
    config["segmentation"]["stage1"]["iterationz"] = 5
    with pytest.raises(A2DError) as caught:
        resolve(config, "config.yaml")
    message = str(caught.value)
    assert message.startswith("config.yaml: segmentation.stage1: unknown key 'iterationz' (did you mean 'iterations'?)")
    allowed = ", ".join(SCHEMA["properties"]["segmentation"]["properties"]["stage1"]["properties"])
    assert f"segmentation.stage1 takes {allowed} (" in message and "\n" not in message
    with pytest.raises(A2DError, match=r"config.yaml: \(top level\): unknown keys 'sede' \(did you mean 'seed'\?\), "
                                       r"'zzz'; the top level takes results, seed, "):
        resolve({**config, "sede": 1, "zzz": 2}, "config.yaml")


def test_the_workflow_reports_a_typo_in_a_few_lines(tmp_path, snakemake_run):
    config = yaml.safe_load((ROOT / "tests" / "config.tiny.yaml").read_text())
    config["masks"]["lrr"] = config["masks"].pop("lr")
    path = tmp_path / "typo.yaml"
    path.write_text(yaml.safe_dump(config))
    proc = snakemake_run(tmp_path, "index", "--dry-run", config=path, check=False)
    assert proc.returncode != 0 and "masks: unknown key 'lrr' (did you mean 'lr'?); masks takes model," in proc.stdout
    assert len(proc.stdout.splitlines()) < 10, proc.stdout  # not the schema (it printed 279 lines)
