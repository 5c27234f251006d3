# Helpers shared by every stage: artifact paths, shards, variants. Rules call `get_*` functions, never inline code.
import math
import os
from pathlib import Path

import yaml

from a2dpipe.dataset.a2d import read_videoset

RESULTS = config["results"]
INPUTS = config["experiments"]["inputs"]
REGION_RUNS = [tuple(run) for run in config["experiments"]["regions"]]
MASK_SOURCES = ("dataset", "generic", "gt")
TRAINED_MASK_SOURCES = ("dataset", "generic")


def res(*parts):
    """Path of an artifact under the results folder."""
    return str(Path(RESULTS, *parts))


def write_resolved_config():
    """Write the config as the workflow resolved it (config files merged, --config overrides and schema defaults
    applied) to results/config.yaml, the file every command reads. Rewritten only when its content changes.
    """
    path = Path(res("config.yaml"))
    text = yaml.safe_dump(config, sort_keys=False)
    if not path.exists() or path.read_text() != text:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        tmp.write_text(text)
        os.replace(tmp, path)
    return str(path)


CONFIG_FILE = write_resolved_config()


def count_videos():
    """Videos the index will hold: known from config for the synthetic benchmark, from videoset.csv otherwise."""
    if config["dataset"]["synthetic"]:
        return config["synthetic"]["videos"]
    videos = read_videoset(Path(config["dataset"]["root"], "videoset.csv"))
    return int((~videos["video"].isin(config["dataset"]["exclude_videos"])).sum())


SHARDS = [
    f"{s:03d}"
    for s in range(math.ceil(count_videos() / config["dataset"]["shard_size"]))
]


wildcard_constraints:
    shard=r"\d{3}",
    input="|".join(INPUTS),
    source="|".join(MASK_SOURCES),
    trained_source="|".join(TRAINED_MASK_SOURCES),


# Artifact paths: the contracts between stages (formats documented in the modules that write them).
INDEX = res("index.csv")
FRAMES = res("frames", "shard-{shard}.h5")
FLOW = res("flow", "{method}", "shard-{shard}.h5")
MASK_MODEL = res("masks", "models", "{trained_source}", "model.pt")
MASK_CACHE = res("masks", "{source}", "shard-{shard}.h5")
MASK_QUALITY = res("masks", "quality.csv")
STAGE1 = res("models", "stage1", "{input}", "model.pt")
STAGE2 = res("models", "stage2", "{input}-{trained_source}", "model.pt")
PREDICTIONS = res("predictions", "{variant}.h5")
EVALUATION = res("evaluation", "{variant}.json")
EVALUATION_VIDEOS = res("evaluation", "{variant}.videos.npz")
VAL_PREDICTIONS = res("validation", "predictions", "{variant}.h5")
VAL_EVALUATION = res("validation", "evaluation", "{variant}.json")
VAL_EVALUATION_VIDEOS = res("validation", "evaluation", "{variant}.videos.npz")


def get_dataset_root():
    """The dataset folder: produced by `synthesize` for the embedded default, an existing copy otherwise."""
    return config["dataset"]["root"]


def get_stage2_runs():
    """Distinct (input, training mask source) pairs that stage 2 trains."""
    return sorted({(inp, train) for inp, train, _ in REGION_RUNS})


def get_maskvote_runs():
    """(input, test source) of the mask-vote controls: one per input whose region runs test on dataset masks."""
    return sorted({(inp, test) for inp, _, test in REGION_RUNS if test == "dataset"})


def get_variants():
    """Every prediction set: baselines per input, mask-vote controls (stage 1 averaged in test masks), and
    region models per (input, train source, test source)."""
    return (
        [f"baseline-{inp}" for inp in INPUTS]
        + [f"maskvote-{inp}-{test}" for inp, test in get_maskvote_runs()]
        + [f"ours-{inp}-{train}-{test}" for inp, train, test in REGION_RUNS]
    )


def get_flow_gpus():
    """Accelerators a flow job asks for: one for the neural methods, none for DIS."""
    return 0 if config["flow"]["method"] == "dis" else 1


def get_flow_inputs(wildcards):
    """Flow caches of every shard, when the input uses flow."""
    if wildcards.input == "rgb":
        return []
    return expand(FLOW, method=config["flow"]["method"], shard=SHARDS)


def get_mask_model(wildcards):
    """The mask model behind a region-mask source: none for ground truth."""
    if wildcards.source == "gt":
        return []
    return MASK_MODEL.format(trained_source=wildcards.source)


def get_mask_model_arg(wildcards, input):
    """`--model` of region-masks: absent for ground truth."""
    return f"--model {input.model}" if input.model else ""


def get_mask_gpus(wildcards):
    """Only the model sources of region-masks want the accelerator."""
    return 0 if wildcards.source == "gt" else 1


def _variant_parts(wildcards):
    """(kind, input, train source, test source) of a prediction variant (see get_variants)."""
    parts = wildcards.variant.split("-")
    if parts[0] == "maskvote":
        return parts[0], parts[1], None, parts[2]
    return (
        parts[0],
        parts[1],
        (parts[2] if len(parts) > 2 else None),
        (parts[3] if len(parts) > 3 else None),
    )


def get_variant_model(wildcards):
    """Stage-1 checkpoint for a baseline or mask-vote variant, stage-2 checkpoint for a region variant."""
    kind, inp, train, _ = _variant_parts(wildcards)
    if kind != "ours":
        return STAGE1.format(input=inp)
    return STAGE2.format(input=inp, trained_source=train)


def get_variant_flow(wildcards):
    """Flow caches of every shard when the variant's input uses flow."""
    _, inp, _, _ = _variant_parts(wildcards)
    return (
        []
        if inp == "rgb"
        else expand(FLOW, method=config["flow"]["method"], shard=SHARDS)
    )


def get_variant_masks(wildcards):
    """Region caches of the variant's test source (none for baselines; mask votes and region models test on it)."""
    kind, _, _, test = _variant_parts(wildcards)
    return [] if kind == "baseline" else expand(MASK_CACHE, source=test, shard=SHARDS)


def get_stage2_masks(wildcards):
    """Region caches of the mask source stage 2 trains on (ground truth is added by the trainer)."""
    return expand(MASK_CACHE, source=wildcards.trained_source, shard=SHARDS)


def get_test_sources():
    """Mask sources the configured region variants are tested with."""
    return sorted({test for _, _, test in REGION_RUNS})


def get_timing_flow():
    """Flow caches of every shard (only computed when an input uses flow)."""
    if "rgbflow" not in INPUTS:
        return []
    return expand(FLOW, method=config["flow"]["method"], shard=SHARDS)


def get_timing_masks():
    """Region caches of every test mask source."""
    return expand(MASK_CACHE, source=get_test_sources(), shard=SHARDS)


def get_mask_quality_table():
    """Mask AP table, when both trained sources are part of the run (it needs both caches)."""
    return (
        [MASK_QUALITY] if set(TRAINED_MASK_SOURCES) <= set(get_test_sources()) else []
    )


def get_mask_quality_arg(wildcards, input):
    """`--mask-quality` of tables: absent when the table is not made."""
    return f"--mask-quality {input.mask_quality}" if input.mask_quality else ""


def get_report_variant(kind):
    """Prediction set shown in the overlays: the paper's main one (RGB + flow, dataset masks) when configured."""
    preferred = {
        "baseline": "baseline-rgbflow",
        "ours": "ours-rgbflow-dataset-dataset",
    }[kind]
    variants = get_variants()
    if preferred in variants:
        return PREDICTIONS.format(variant=preferred)
    candidates = [v for v in variants if v.startswith(kind)] or variants
    return PREDICTIONS.format(variant=candidates[-1])


def get_checkpoints():
    """Every trained model (their loss curves lie beside them)."""
    stage1 = expand(STAGE1, input=INPUTS)
    stage2 = [
        STAGE2.format(input=inp, trained_source=train)
        for inp, train in get_stage2_runs()
    ]
    masks = expand(
        MASK_MODEL,
        trained_source=[s for s in TRAINED_MASK_SOURCES if s in get_test_sources()],
    )
    return stage1 + stage2 + masks


def get_all_targets():
    return [res("tables", "done"), res("timing", "timing.csv")]


def get_output_dir(wildcards, output):
    """Folder of a rule's first output, for commands that write several files into one folder."""
    return str(Path(output[0]).parent)
