# Helpers that the rules of every stage read: the run's folders and the settings each command gets. The other
# helpers lie beside this file in common/, one file per job (checks, paths, variants, resources, report, modules,
# segment), and the Snakefile includes them after this one. Rules call `get_*` functions, never inline code.
import json
from pathlib import Path

from a2dpipe.config import settings_slice
from a2dpipe.cli import command_digest
from a2dpipe.io import A2DError
from a2dpipe.rerun import use_short_params_reason
from a2dpipe.variants import unavailable_sources

RESULTS = config["results"]
# What no training seed changes (index, frames, flow, ground-truth region masks) lies here; in a seeds run every
# seed's run shares one copy, and so does the mask-model comparison.
SHARED_RESULTS = config["shared_results"] or RESULTS
SEEDS = config[
    "seeds"
]  # None: one run (the one-seed layout); a list: one run per seed (workflow/rules/seeds.smk)
# The stage-1 models lie here; a mask-model comparison run (workflow/rules/compare.smk) reads this run's.
STAGE1_RESULTS = config["stage1_results"] or RESULTS
COMPARE_MASKS = config["experiments"]["compare_masks"]
INPUTS = config["experiments"]["inputs"]
REGION_RUNS = [tuple(run) for run in config["experiments"]["regions"]]
MASK_SOURCES = ("dataset", "generic", "gt")
TRAINED_MASK_SOURCES = ("dataset", "generic")
# Mask sources this run cannot make, and why: generic on a real-format dataset without a COCO file.
UNAVAILABLE_SOURCES = unavailable_sources(config)


def res(*parts):
    """Path of an artifact under the results folder."""
    return str(Path(RESULTS, *parts))


def shared(*parts):
    """Path of an artifact no training setting changes (index, frames, flow, ground-truth region masks): under the
    shared results folder, which a seeds run's and a mask-model comparison's modules take from their parent run.
    """
    return str(Path(SHARED_RESULTS, *parts))


def makes(folder):
    """Whether this run's rules make the artifacts under `folder`: those of its results folder. The shared and
    stage-1 folders of a module (a seed's run, the mask-model comparison) are its parent's, whose rules make them:
    that is what keeps the rules of the shared artifacts out of the modules, so each is planned once.
    """
    return Path(folder).resolve() == Path(RESULTS).resolve()


# Settings: each rule's params hold, as JSON, exactly the config values its command reads, and the command gets them
# as `--settings`. Snakemake's params rerun trigger then reruns a rule (and what depends on it) when one of them
# changes and never otherwise, and no job reads a file that a later parse of the Snakefile could rewrite.


# Snakemake's reason for such a rerun would print the settings whole, before and now: it names the changed keys.
use_short_params_reason()


def get_settings(*keys):
    """JSON of the config values at dotted `keys` ("seed", "masks.lr"), shaped like the config."""
    return json.dumps(settings_slice(config, keys), sort_keys=True)


def get_index_settings():
    """`index` reads the dataset keys other than where it lies, whether it is synthetic (root is its input) and
    which splits the final models train on (the trainers read that)."""
    keys = [
        f"dataset.{k}"
        for k in config["dataset"]
        if k not in ("root", "synthetic", "final_fit")
    ]
    return get_settings(*keys)


def get_flow_encoding_keys():
    """Keys that make the flow-as-RGB image: the encoding, and the wheel's saturation only for the wheel."""
    wheel = config["flow"]["encoding"] == "wheel"
    return ["flow.encoding"] + (["flow.wheel_max"] if wheel else [])


def get_flow_settings():
    """`flow` reads the method and the encoding; DIS its preset; neural methods weights, batches and device."""
    method = config["flow"]["method"]
    keys = ["flow.method", *get_flow_encoding_keys()]
    if method == "dis":
        return get_settings(*keys, "flow.dis_preset")
    raft = ["flow.raft_variant"] if method == "raft" else []
    return get_settings(*keys, "flow.weights", "flow.batch_size", *raft, "device")


def get_mask_model_settings(wildcards):
    """`train_mask_model` reads every masks key except the inference-only score threshold, FCIS's keys only for
    FCIS, and one step count: `finetune_iterations` for a model with a start (the dataset model, fine-tuned from
    the generic one), `iterations` for one without (the generic model; the dataset model when there is no
    generic source)."""
    fcis = config["masks"]["model"] == "fcis"
    started = bool(get_mask_model_start(wildcards))
    unread = ("score_threshold", "iterations" if started else "finetune_iterations")
    masks = [
        f"masks.{k}"
        for k in config["masks"]
        if k not in unread and (fcis or not k.startswith("fcis_"))
    ]
    return get_settings("seed", "device", "dataset.final_fit", *masks)


def get_mask_model_start(wildcards):
    """The dataset mask model is fine-tuned from the generic one (COCO's on real data) where the run has one,
    else starts from ImageNet weights or from scratch; the generic one has no start. A model of a source the run
    lacks, asked for by path, is an error when the DAG is built."""
    if wildcards.trained_source in UNAVAILABLE_SOURCES:
        raise A2DError(
            f"no {wildcards.trained_source} mask model in this run: "
            f"{UNAVAILABLE_SOURCES[wildcards.trained_source]} (docs/real-a2d.md)"
        )
    if wildcards.trained_source == "dataset" and "generic" not in UNAVAILABLE_SOURCES:
        return MASK_MODEL.format(trained_source="generic")
    return []


def get_region_mask_settings(wildcards):
    """`region_masks` of a model source reads the inference keys; ground truth reads none."""
    if wildcards.source == "gt":
        return get_settings()
    keys = ["masks.batch_size", "masks.score_threshold", "masks.max_regions"]
    return get_settings("device", *keys)


def get_train_settings(stage):
    """Params function of `train_stage<stage>`: seed, device, segmentation (stage 1 without stage2 and the
    inference batch, which only stage 2's feature cache reads), flow encoding."""

    def settings(wildcards):
        seg = [f"segmentation.{k}" for k in config["segmentation"]]
        if stage == 1:
            seg.remove("segmentation.stage2")
            seg.remove("segmentation.inference_batch")
        flow = get_flow_encoding_keys() if wildcards.input == "rgbflow" else []
        return get_settings("seed", "device", "dataset.final_fit", *seg, *flow)

    return settings


def get_predict_settings(wildcards):
    """`predict` reads the device, the frame loader's settings and inference batch, for flow inputs the flow
    encoding, and for the mask vote Ours' region-to-pixel settings (the network is the
    checkpoint's)."""
    flow = get_flow_encoding_keys() if wildcards.input == "rgbflow" else []
    loader = [
        "segmentation.loader_workers",
        "segmentation.loader_prefetch",
        "segmentation.inference_batch",
    ]
    vote = [
        "segmentation.stage2.uncovered_background",
        "segmentation.stage2.pixel_stride",
    ]
    return get_settings(
        "device", *loader, *flow, *(vote if wildcards.kind == "maskvote" else [])
    )


def get_estimate_settings():
    """`estimate` reads the networks' architecture and work: sizes, batches, iterations, regions, experiments, the
    mask model (FCIS's keys only for FCIS) and the flow network (RAFT's variant only for RAFT); for the CPU side
    the loader workers and the flow encoding.
    """
    seg = ["backbone", "width", "aspp_rates", "crop", "amp", "loader_workers"]
    stage1 = ["batch_size", "iterations"]
    stage2 = [*stage1, "roi_size", "fc_dim", "pool", "roi_channels", "cache_features"]
    masks = ["model", "backbone", "min_size", "max_size", "batch_size", "max_regions"]
    # steps: the generic model's from scratch (none when COCO's model is it), the dataset model's fine-tuning; with
    # no generic source (real-format data, no COCO file) the dataset model's from its start
    masks += ["iterations", "finetune_iterations", "coco_checkpoint"]
    if config["masks"]["model"] == "fcis":
        masks += [k for k in config["masks"] if k.startswith("fcis_")]
    return get_settings(
        *(f"segmentation.{k}" for k in seg),
        *(f"segmentation.stage1.{k}" for k in stage1),
        *(f"segmentation.stage2.{k}" for k in stage2),
        *(f"masks.{k}" for k in masks),
        "experiments.inputs",
        "experiments.regions",
        "dataset.synthetic",
        "flow.method",
        *(["flow.raft_variant"] if config["flow"]["method"] == "raft" else []),
        *get_flow_encoding_keys(),
    )


def get_code(command):
    """Digest of the package source `a2dpipe <command>` imports (a2dpipe.integrity.code_digest): every rule passes
    its command's as a param, so a code edit reruns exactly the rules whose command it reaches.
    """
    return command_digest(command)


def get_output_dir(wildcards, output):
    """Folder of a rule's first output, for commands that write several files into one folder."""
    return str(Path(output[0]).parent)
