"""Configuration and provenance: one schema validates every config and is the only source of its defaults.

The schema is ``workflow/schemas/config.schema.yaml``. The workflow validates ``config`` against it and passes each
command exactly the values it declares (:mod:`a2dpipe.settings`) as JSON (``--settings``); a command run by hand
reads a plain YAML file instead (``--config``), which is validated and completed with the schema's defaults here,
once::

    a2dpipe evaluate --config config.yaml ...                              # by hand: the whole file
    a2dpipe evaluate --settings '{"evaluation": {"boundary_width": 15, ...}}' ...   # from the rule's params

Provenance: every artifact records the settings it was made with and the package version (:func:`stamp`; HDF5
root attributes, a checkpoint's ``"provenance"`` entry, a JSON key or sidecar). :func:`check_consistent` refuses to
combine artifacts, or an artifact and a job, that disagree on a setting they share, naming the key and both values.
"""

from __future__ import annotations

import copy
import functools
import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path

import yaml

from a2dpipe import __version__
from a2dpipe.integrity import code_stamp
from a2dpipe.errors import A2DError, open_hdf5
from a2dpipe.io import atomic_path

__all__ = ["SCHEMA_PATH", "schema", "load_config", "resolve", "check_section", "settings_slice", "stamp",
           "stamp_attrs", "read_stamp", "hdf5_stamp", "check_consistent", "check_inputs", "write_made_from", "check_coherence", "check_resamples", "MIN_RESAMPLES", "code_of"]

SCHEMA_PATH = Path(__file__).resolve().parents[1] / "workflow" / "schemas" / "config.schema.yaml"


@functools.cache
def schema(partial: bool = False) -> dict:
    """The config schema; ``partial`` drops every ``required`` (for sections and settings slices)."""
    try:
        tree = yaml.safe_load(SCHEMA_PATH.read_text())
    except FileNotFoundError:
        raise A2DError(f"{SCHEMA_PATH}: config schema not found (run a2dpipe from a checkout of the project)") from None
    return _without_required(tree) if partial else tree


def _without_required(node):
    if isinstance(node, dict):
        return {k: _without_required(v) for k, v in node.items() if k != "required"}
    return [_without_required(v) for v in node] if isinstance(node, list) else node


def _validator(tree: dict, fill_defaults: bool):
    """Draft 2020-12 validator; with ``fill_defaults`` it also writes each absent property's schema default."""
    from jsonschema import Draft202012Validator, validators

    if not fill_defaults:
        return Draft202012Validator(tree)
    check_properties = Draft202012Validator.VALIDATORS["properties"]

    def properties_with_defaults(validator, properties, instance, subschema):
        if isinstance(instance, dict):
            for name, sub in properties.items():
                if "default" in sub:
                    instance.setdefault(name, copy.deepcopy(sub["default"]))
        yield from check_properties(validator, properties, instance, subschema)

    return validators.extend(Draft202012Validator, {"properties": properties_with_defaults})(tree)


def _message(error, source: str) -> str:
    key = ".".join(str(p) for p in error.absolute_path) or "(top level)"
    if isinstance(error.instance, str) and any(ord(c) < 32 or ord(c) == 127 for c in error.instance):
        return f"{source}: {key}: {error.instance!r} holds a control character; a path may not"
    if error.validator == "additionalProperties":
        return _unknown_keys_message(error, source, key)
    return f"{source}: {key}: {error.message}"


def _unknown_keys_message(error, source: str, section: str) -> str:
    """One line naming the unknown keys, the nearest allowed one, and the keys the section allows (in schema order)."""
    import difflib

    allowed = list(error.schema.get("properties", {}))
    unknown = [k for k in error.instance if k not in allowed]
    hints = []
    for name in unknown:
        close = difflib.get_close_matches(str(name), allowed, n=1)
        hints.append(f"{name!r} (did you mean {close[0]!r}?)" if close else repr(name))
    owner = "the top level" if section == "(top level)" else section
    return (f"{source}: {section}: unknown key{'s' if len(unknown) > 1 else ''} {', '.join(hints)}; "
            f"{owner} takes {', '.join(allowed)} (docs/configuration.md describes each)")


def resolve(config: Mapping, source: str = "config", *, partial: bool = False, fill_defaults: bool = True) -> dict:
    """A validated deep copy of ``config`` with the schema's defaults filled in; A2DError naming key and problem.

    ``partial`` accepts a config missing required keys (a section or a settings slice); ``fill_defaults=False``
    validates only (a settings slice must not gain values its rule did not declare).
    """
    config = copy.deepcopy(dict(config))
    validator = _validator(schema(partial), fill_defaults)
    if fill_defaults:
        for _ in validator.iter_errors(config):  # a first pass fills the defaults, so "required" sees them
            pass
    error = next(iter(sorted(validator.iter_errors(config), key=lambda e: list(map(str, e.absolute_path)))), None)
    if error is not None:
        raise A2DError(_message(error, source))
    return config


def load_config(path: str | os.PathLike) -> dict:
    """Read a YAML config file, validate it against the schema and fill in its defaults.

    A file for a command run by hand may hold only the sections that command reads; what it leaves out takes the
    schema's defaults. A2DError naming the file when it is missing, not YAML, not a mapping, or breaks the schema.
    """
    path = Path(path)
    try:
        with path.open() as f:
            config = yaml.safe_load(f)
    except FileNotFoundError:
        raise A2DError(f"{path}: config file not found") from None
    except yaml.YAMLError as err:
        raise A2DError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(config, dict):
        raise A2DError(f"{path}: expected a mapping at the top level")
    config.setdefault("dataset", {})  # the one section without a default of its own (its root is required)
    return resolve(config, str(path), partial=True)


def check_section(name: str, section: Mapping) -> dict:
    """Config section ``name`` validated, with every key the schema gives it (nothing is filled in); A2DError naming
    the keys it lacks. For code handed one section (a builder's settings) rather than a whole config."""
    checked = resolve({name: dict(section)}, f"config {name}", partial=True, fill_defaults=False)[name]
    missing = [k for k in schema()["properties"][name]["properties"] if k not in checked]
    if missing:
        raise A2DError(f"config {name}: lacks {', '.join(missing)} (docs/configuration.md gives their defaults)")
    return checked


def training_splits(settings: Mapping) -> tuple[str, ...]:
    """Splits the final models train on (config ``dataset.final_fit``): ``("train",)`` while settings are chosen on
    validation, ``("train", "val")`` once they are; settings without the key (older models) mean ``train``."""
    fit = (settings.get("dataset") or {}).get("final_fit", "train")
    return ("train", "val") if fit == "train+val" else ("train",)


def settings_slice(config: Mapping, keys: Iterable[str]) -> dict:
    """The values of dotted ``keys`` (``"seed"``, ``"segmentation.stage2"``) as a nested dict shaped like ``config``.

    >>> settings_slice({"seed": 0, "flow": {"method": "dis", "weights": None}}, ["seed", "flow.method"])
    {'seed': 0, 'flow': {'method': 'dis'}}
    """
    out: dict = {}
    for key in keys:
        *parents, last = key.split(".")
        source, target = config, out
        for part in parents:
            source, target = source[part], target.setdefault(part, {})
        target[last] = copy.deepcopy(source[last])
    return out


# -- provenance ---------------------------------------------------------------------------------------------------


def stamp(settings: Mapping) -> dict:
    """What an artifact records about how it was made: ``{"a2dpipe_version", "settings", "code"}``; ``code`` is
    ``{command: digest of its source}`` of the command writing it (:func:`a2dpipe.integrity.code_stamp`)."""
    return {"a2dpipe_version": __version__, "settings": json.loads(json.dumps(settings)), "code": code_stamp()}


def stamp_attrs(settings: Mapping) -> dict:
    """:func:`stamp` as HDF5 attributes (settings and code as sorted JSON text): ``f.attrs.update(stamp_attrs(s))``."""
    return {"a2dpipe_version": __version__, "settings": json.dumps(settings, sort_keys=True),
            "code": json.dumps(code_stamp(), sort_keys=True)}


def _json_value(value):
    if isinstance(value, bytes):
        value = value.decode()
    return json.loads(value) if isinstance(value, str) else dict(value)


def read_stamp(record: Mapping | None) -> dict | None:
    """The settings of a stamp (dict of :func:`stamp`, or HDF5 attributes of :func:`stamp_attrs`) with the code
    that made it as the key ``code`` (``{command: digest}``), so that :func:`check_consistent` refuses artifacts of
    one command made by two versions of its code; None if absent."""
    if not record or "settings" not in record:
        return None
    settings = _json_value(record["settings"])
    code = code_of(record)
    return {**settings, "code": code} if code else settings


def code_of(record: Mapping | None) -> dict:
    """``{command: digest}`` of the code that made an artifact (its stamp's ``code``; ``{}`` when not recorded)."""
    return _json_value(record["code"]) if record and record.get("code") else {}


def hdf5_stamp(path: str | os.PathLike, what: str = "artifact") -> dict | None:
    """Settings recorded in an HDF5 artifact's root attributes (None when it records none); ``what`` names the
    artifact in errors (``"flow cache"``: its message then says which rule rebuilds it)."""
    with open_hdf5(path, what) as f:
        return read_stamp(dict(f.attrs))


def _leaves(tree: Mapping, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            out.update(_leaves(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def check_consistent(made_with: Mapping[str, Mapping | None]) -> None:
    """Refuse to combine artifacts (or an artifact and a job) that disagree on a setting they both record.

    ``made_with`` maps a name (a file, or ``"this job"``) to its settings; None (nothing recorded) is skipped.
    A2DError names the key, both values and both names.
    """
    seen: dict[str, tuple[object, str]] = {}
    for name, settings in made_with.items():
        for key, value in _leaves(settings or {}).items():
            if key in seen and seen[key][0] != value:
                first, other = seen[key][1], name
                if key.startswith("code."):
                    problem = (f"made by code {value!r} of `a2dpipe {key[5:]}`, while {first} was made by its "
                               f"code {seen[key][0]!r}")
                else:
                    problem = f"made with {key} = {value!r}, while {first} has {key} = {seen[key][0]!r}"
                raise A2DError(f"{other}: {problem}; refusing to mix them; rebuild the outdated one with "
                               f"`snakemake --forcerun <its rule>` (after a code update: `snakemake <target> "
                               f"--rerun-triggers params`, see docs/integrity.md)")
            seen.setdefault(key, (value, name))


def check_inputs(settings: Mapping, paths: Mapping[str, Iterable[str | os.PathLike]]) -> None:
    """:func:`check_consistent` over this job and the stamps of the HDF5 artifacts ``paths`` (``{what: paths}``,
    e.g. ``{"frames shard": [...], "flow cache": [...]}``; ``what`` names them in errors)."""
    stamps = {str(p): hdf5_stamp(p, what) for what, group in paths.items() for p in group}
    check_consistent({"this job": settings, **stamps})


def write_made_from(path: str | os.PathLike, stamps: Mapping[str, Mapping | None]) -> None:
    """Record the stamps of the artifacts a result was made from in the JSON sidecar ``path``, once they agree.

    ``stamps`` maps each input file to its :func:`stamp` (None when it records none); :func:`check_consistent`
    refuses inputs that disagree on a setting.
    """
    check_consistent({name: read_stamp(s) for name, s in stamps.items()})
    doc = {"a2dpipe_version": __version__, "made_from": dict(stamps)}
    with atomic_path(path) as tmp:
        Path(tmp).write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n")


# -- coherence: what the schema alone cannot say -------------------------------------------------------------------

# A 95% interval is the point plus and minus 1.96 standard deviations of the resamples (evaluation.bootstrap): below
# 40 resamples that standard deviation is off by more than 11% (its relative error is ~1 / sqrt(2 (n - 1))).
MIN_RESAMPLES = 40


def check_coherence(config: Mapping, source: str = "config") -> None:
    """A2DError naming the key, the problem and the fix for a configuration the schema accepts but no run can use:
    no region run (Tables 1-3 and the claims compare region models), a region run on an input the run does not
    train, or too few bootstrap resamples for a 95% interval. The workflow calls it when it parses the config."""
    experiments = config["experiments"]
    if not experiments["regions"]:
        raise A2DError(f"{source}: experiments.regions is empty: Tables 1-3 and the claims compare region models; "
                       f"give at least one [input, training mask source, test mask source], e.g. "
                       f"[rgbflow, dataset, dataset]")
    missing = sorted({run[0] for run in experiments["regions"]} - set(experiments["inputs"]))
    if missing:
        raise A2DError(f"{source}: experiments.regions uses input(s) {missing} that experiments.inputs "
                       f"({experiments['inputs']}) lacks: stage 2 starts from that input's stage-1 model; add them "
                       f"to experiments.inputs or drop those region runs")
    check_resamples(config["evaluation"]["bootstrap_resamples"], source)


def check_resamples(resamples: int, source: str = "config") -> None:
    """A2DError when ``resamples`` are too few for a 95% interval (:mod:`a2dpipe.evaluation.bootstrap`)."""
    if resamples < MIN_RESAMPLES:
        raise A2DError(f"{source}: evaluation.bootstrap_resamples = {resamples} is too few for a 95% interval: its "
                       f"half-width is 1.96 standard deviations of the resamples (the claims' family-wise ends lie "
                       f"further out), which takes at least {MIN_RESAMPLES} resamples: with fewer the standard "
                       f"deviation is off by more than 11% (1 / sqrt(2 (n - 1))); use {MIN_RESAMPLES} or more (1000 "
                       f"for stable ends)")
