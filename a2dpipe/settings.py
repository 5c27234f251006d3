"""What each command reads of the config, declared once: :data:`DECLARATIONS`.

A command's declaration lists the dotted config keys it reads (``"seed"``, ``"masks.lr"``, a whole section such as
``"frames"``) as a function of the config and of the job: the values that pick one job of its rule (``input``,
``kind``, ``source``, ``stage``, ...: the rule's wildcards, the command's options when run by hand). Everything that
depends on which keys a command reads derives from it:

- the rule's ``settings`` param (``get_settings`` in ``workflow/rules/common.smk``): the declared values as JSON, so
  that Snakemake reruns the rule, and what depends on it, when one of them changes, and never otherwise;
- the command's ``--config``/``--settings`` help (:func:`add_config_arguments`);
- what the command sees (:func:`read_settings`): exactly the declared keys, from a whole ``--config`` file or the
  rule's ``--settings``; reading any other key raises an A2DError naming the declaration to extend;
- what provenance stamps and resume fingerprints record (:func:`recorded`: less the keys that change no result) and
  what is compared with the stamps of a job's inputs (:func:`compared`).

A command that reads a new key adds it here, and nowhere else but the schema, ``config.yaml`` and the presets::

    >>> sorted(declared_keys("evaluate", {}))
    ['evaluation.boundary_width', 'evaluation.settings_from']
"""

from __future__ import annotations

import argparse
import itertools
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from a2dpipe.config import load_config, resolve, schema, settings_slice
from a2dpipe.errors import A2DError
from a2dpipe.variants import INPUTS, KINDS, TEST_SOURCES

__all__ = ["Declaration", "DECLARATIONS", "Settings", "declared_keys", "settings_json", "job_values", "default_keys",
           "add_config_arguments", "read_settings", "recorded", "compared", "plain"]

Job = Mapping[str, object]


@dataclass(frozen=True)
class Declaration:
    """The config keys one command reads.

    ``reads``: a sentence naming them and when (the command's help). ``keys(config, job)``: the dotted keys, where
    ``job`` holds the values named in ``job``. ``unrecorded``: keys that change no result (loader processes), left
    out of provenance stamps and resume fingerprints. ``own``: keys recorded but not compared with the stamps of the
    job's inputs, whose value may differ from theirs.
    """

    reads: str
    keys: Callable[[Mapping, Job], list[str]]
    job: tuple[str, ...] = ()
    unrecorded: tuple[str, ...] = ()
    own: tuple[str, ...] = ()


# The frame loader's processes: the batches, and so every result, are the same for any number of them.
LOADER_KEYS = ("segmentation.loader_workers", "segmentation.loader_prefetch")


def _section(name: str, without: tuple[str, ...] = ()) -> list[str]:
    """Every key of config section ``name`` (from the schema, so a key added there is read) less ``without``."""
    return [f"{name}.{k}" for k in schema()["properties"][name]["properties"] if k not in without]


def _fixed(*keys: str) -> Callable[[Mapping, Job], list[str]]:
    return lambda config, job: list(keys)


def flow_encoding_keys(config: Mapping) -> list[str]:
    """Keys that make the flow-as-RGB image: the encoding, and the wheel's saturation only for the wheel."""
    return ["flow.encoding"] + (["flow.wheel_max"] if config["flow"]["encoding"] == "wheel" else [])


def _index(config, job):
    # not where the dataset lies (its root is the rule's input), whether it is synthetic, nor the trainers' final_fit
    return _section("dataset", ("root", "synthetic", "final_fit"))


def _flow(config, job):
    method = job.get("method") or config["flow"]["method"]
    keys = ["flow.method", *flow_encoding_keys(config)]
    if method == "dis":
        return [*keys, "flow.dis_preset"]
    return [*keys, "flow.weights", "flow.batch_size", *(["flow.raft_variant"] if method == "raft" else []), "device"]


def _mask_model_keys(config) -> list[str]:
    """The masks keys of the configured model: FCIS's own keys only for FCIS, so that theirs need no edit here."""
    fcis = config["masks"]["model"] == "fcis"
    return [k for k in _section("masks") if fcis or not k.startswith("masks.fcis_")]


def _train_mask_model(config, job):
    # one step count: finetune_iterations for a model with a start (the dataset model, fine-tuned from the generic
    # one), iterations for one without; the score threshold is for inference only
    unread = ("masks.score_threshold", "masks.iterations" if job["start"] else "masks.finetune_iterations")
    return ["seed", "device", "dataset.final_fit", *(k for k in _mask_model_keys(config) if k not in unread),
            *LOADER_KEYS]


def _region_masks(config, job):
    if job["source"] == "gt":
        return []
    return ["device", "masks.batch_size", "masks.score_threshold", "masks.max_regions"]


def _train(config, job):
    # stage 1 builds no region back-end and caches no features
    stage1_unread = ("stage2", "inference_batch") if int(job["stage"]) == 1 else ()
    flow = flow_encoding_keys(config) if job["input"] == "rgbflow" else []
    return ["seed", "device", "dataset.final_fit", *_section("segmentation", stage1_unread), *flow]


def _predict(config, job):
    flow = flow_encoding_keys(config) if job["input"] == "rgbflow" else []
    vote = ["segmentation.stage2.uncovered_background", "segmentation.stage2.pixel_stride"]
    return ["device", *LOADER_KEYS, "segmentation.inference_batch", *flow,
            *(vote if job["kind"] == "maskvote" else [])]


def _estimate(config, job):
    seg = ["backbone", "width", "aspp_rates", "crop", "amp", "loader_workers"]
    stage1 = ["batch_size", "iterations"]
    stage2 = [*stage1, "roi_size", "fc_dim", "pool", "roi_channels", "cache_features"]
    # steps: the generic model's from scratch (none when COCO's model is it), the dataset model's fine-tuning; with
    # no generic source (real-format data, no COCO file) the dataset model's from its start
    masks = ["model", "backbone", "min_size", "max_size", "batch_size", "max_regions", "iterations",
             "finetune_iterations", "coco_checkpoint"]
    fcis = [k for k in _mask_model_keys(config) if k.startswith("masks.fcis_")]
    raft = ["flow.raft_variant"] if config["flow"]["method"] == "raft" else []
    return [*(f"segmentation.{k}" for k in seg), *(f"segmentation.stage1.{k}" for k in stage1),
            *(f"segmentation.stage2.{k}" for k in stage2), *(f"masks.{k}" for k in masks), *fcis,
            "experiments.inputs", "experiments.regions", "dataset.synthetic", "flow.method", *raft,
            *flow_encoding_keys(config)]


DECLARATIONS: dict[str, Declaration] = {
    "synthesize": Declaration("seed and the synthetic section", _fixed("seed", "synthetic")),
    "index": Declaration("the dataset keys but root, synthetic and final_fit", _index),
    "extract-frames": Declaration("the frames section", _fixed("frames")),
    "flow": Declaration("flow.method, flow.encoding, flow.wheel_max for the wheel, flow.dis_preset for dis; for "
                        "neural methods flow.weights, flow.batch_size, flow.raft_variant (raft) and device",
                        _flow, job=("method",)),
    "train-mask-model": Declaration("seed, device, dataset.final_fit, the masks keys but score_threshold (FCIS's "
                                    "fcis_* only for fcis; iterations without a start, finetune_iterations with "
                                    "one), segmentation.loader_workers and loader_prefetch", _train_mask_model,
                                    job=("start",), unrecorded=LOADER_KEYS),
    "region-masks": Declaration("device, masks.batch_size, masks.score_threshold, masks.max_regions; none for gt",
                                _region_masks, job=("source",)),
    "train": Declaration("seed, device, dataset.final_fit, the segmentation keys (stage 1: but stage2 and "
                         "inference_batch), flow.encoding and flow.wheel_max (rgbflow)", _train,
                         job=("stage", "input"), unrecorded=LOADER_KEYS),
    "predict": Declaration("device, segmentation.loader_workers, loader_prefetch and inference_batch, "
                           "flow.encoding and flow.wheel_max (rgbflow), segmentation.stage2.uncovered_background "
                           "and pixel_stride (maskvote); the network is the model file's", _predict,
                           job=("kind", "input"), unrecorded=LOADER_KEYS,
                           # stage 2 cached its features in batches that need not be this job's
                           own=("segmentation.inference_batch",)),
    "evaluate": Declaration("evaluation.boundary_width, evaluation.settings_from",
                            _fixed("evaluation.boundary_width", "evaluation.settings_from")),
    "tables": Declaration("seed, evaluation.bootstrap_resamples, evaluation.claims_correction, dataset.final_fit",
                          _fixed("seed", "evaluation.bootstrap_resamples", "evaluation.claims_correction",
                                 "dataset.final_fit")),
    "metrics-table": Declaration("seed, evaluation.bootstrap_resamples",
                                 _fixed("seed", "evaluation.bootstrap_resamples")),
    "compare-masks": Declaration("seed, evaluation.bootstrap_resamples",
                                 _fixed("seed", "evaluation.bootstrap_resamples")),
    "estimate": Declaration("the networks' sizes, batches and iterations (segmentation: backbone, width, "
                            "aspp_rates, crop, amp, loader_workers, stage1 and stage2 keys; masks: model, backbone, "
                            "min_size, max_size, batch_size, max_regions, iterations, finetune_iterations, "
                            "coco_checkpoint, fcis_* for fcis), experiments.inputs and regions, dataset.synthetic, "
                            "flow.method, flow.raft_variant (raft), flow.encoding, flow.wheel_max (wheel)", _estimate),
    "report": Declaration("evaluation.qualitative_frames", _fixed("evaluation.qualitative_frames")),
}


def _declaration(command: str) -> Declaration:
    try:
        return DECLARATIONS[command]
    except KeyError:
        raise A2DError(f"`a2dpipe {command}` declares no config settings (a2dpipe.settings.DECLARATIONS)") from None


def declared_keys(command: str, config: Mapping, job: Job | None = None) -> list[str]:
    """The dotted keys ``command`` reads of ``config`` for ``job`` (values of its declaration's ``job`` names)."""
    declaration = _declaration(command)
    job = {name: (job or {}).get(name) for name in declaration.job}
    return declaration.keys(config, job)


def settings_json(command: str, config: Mapping, job: Job | None = None) -> str:
    """The rule's ``settings`` param: the declared values of ``config``, shaped like it, as sorted JSON."""
    return json.dumps(settings_slice(config, declared_keys(command, config, job)), sort_keys=True)


def job_values(name: str) -> tuple:
    """The values a job value ``name`` of a declaration takes (``start``: none, or a model to start from)."""
    methods = tuple(schema()["properties"]["flow"]["properties"]["method"]["enum"])
    return {"stage": (1, 2), "input": INPUTS, "kind": KINDS, "source": TEST_SOURCES, "start": ((), ("model.pt",)),
            "method": methods}[name]


def default_keys(command: str) -> list[str]:
    """Every key ``command`` reads of the schema's default config, over all its jobs (its help lists them)."""
    config = resolve({"dataset": {}}, partial=True)
    names = _declaration(command).job
    keys = {key for values in itertools.product(*map(job_values, names))
            for key in declared_keys(command, config, dict(zip(names, values)))}
    return sorted(keys)


def add_config_arguments(parser: argparse.ArgumentParser, command: str) -> None:
    """``--config FILE`` (by hand) or ``--settings JSON`` (from the rule's params), helped by the declaration."""
    reads = f"{_declaration(command).reads}; with the schema's defaults: {', '.join(default_keys(command)) or 'none'}"
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--config", help=f"config YAML, validated and completed by the schema (reads {reads})")
    group.add_argument("--settings", help="JSON of the config values this command reads (those --config names); the "
                                          "rules pass it")


class Settings(dict):
    """The declared config values of one command; reading an undeclared key raises an A2DError that names the
    command, the key and the declaration to extend (read keys with ``[]``: ``.get`` bypasses the check). A model
    file holds :func:`plain` copies (``torch.load(weights_only=True)`` reads no other class)."""

    def __init__(self, values: Mapping, command: str, prefix: str = ""):
        super().__init__({k: Settings(v, command, f"{prefix}{k}.") if isinstance(v, Mapping) else v
                          for k, v in values.items()})
        self.command, self.prefix = command, prefix

    def __missing__(self, key):
        raise A2DError(f"`a2dpipe {self.command}` reads config key {self.prefix}{key}, which its declaration does "
                       f"not list: add it to DECLARATIONS[{self.command!r}] in a2dpipe/settings.py (its rule then "
                       f"passes it, and reruns when it changes)")


def plain(settings: Mapping) -> dict:
    """``settings`` as nested plain dicts."""
    return {k: plain(v) if isinstance(v, Mapping) else v for k, v in settings.items()}


def _read_config(args: argparse.Namespace) -> tuple[dict, str]:
    if args.settings is None:
        return load_config(args.config), str(args.config)  # validated, the schema's defaults filled in once
    try:
        settings = json.loads(args.settings)
    except json.JSONDecodeError as err:
        raise A2DError(f"--settings: not valid JSON: {err}") from None
    if not isinstance(settings, dict):
        raise A2DError("--settings: expected a JSON object")
    return resolve(settings, "--settings", partial=True, fill_defaults=False), "--settings"


def read_settings(args: argparse.Namespace, command: str) -> Settings:
    """The config values ``command`` declares (:data:`DECLARATIONS`) for the job its options name, from its
    ``--config`` file or its ``--settings`` JSON; A2DError naming the key when they lack one it declares."""
    config, source = _read_config(args)
    try:
        keys = declared_keys(command, config, vars(args))
    except KeyError as err:  # a key that chooses the others (flow.method, masks.model, ...)
        keys = [str(err.args[0])]
    missing = [key for key in keys if not _holds(config, key)]
    if missing:
        raise A2DError(f"{source}: lacks config key(s) {', '.join(missing)}, which `a2dpipe {command}` reads "
                       f"(a2dpipe.settings.DECLARATIONS)")
    return Settings(settings_slice(config, keys), command)


def _holds(config: Mapping, key: str) -> bool:
    node = config
    for part in key.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return False
        node = node[part]
    return True


def _without(settings: Mapping, keys) -> dict:
    out = plain(settings)
    for key in keys:
        *parents, last = key.split(".")
        node = out
        for part in parents:
            node = node.get(part, {})
        node.pop(last, None)
    for section in {key.split(".")[0] for key in keys}:
        if out.get(section) == {}:
            del out[section]
    return out


def recorded(command: str, settings: Mapping, job: Job | None = None) -> dict:
    """What provenance stamps and resume fingerprints record of ``settings`` (a command's, or a whole config): the
    keys ``command`` declares for ``job``, less those that change no result."""
    declared = settings_slice(settings, declared_keys(command, settings, job))
    return _without(declared, _declaration(command).unrecorded)


def compared(command: str, settings: Mapping, job: Job | None = None) -> dict:
    """:func:`recorded` less the keys whose value may differ from the stamps of the job's inputs."""
    return _without(recorded(command, settings, job), _declaration(command).own)
