# Helpers shared by every stage: artifact paths, shards, variants. Rules call `get_*` functions, never inline code.
import copy
import json
import math
from pathlib import Path

from a2dpipe.config import check_coherence
from a2dpipe.cli import command_digest
from a2dpipe.integrity import check_results_free, lock_results, unlock_results
from a2dpipe.dataset.a2d import read_videoset
from a2dpipe.io import A2DError
from a2dpipe.rerun import use_short_params_reason
from a2dpipe.settings import settings_json
from a2dpipe.variants import (
    KINDS,
    NONE,
    TEST_SOURCES,
    Variant,
    check_region_runs,
    check_variant,
    unavailable_sources,
)

RESULTS = config["results"]
# What no training seed changes (index, frames, flow) lies here; in a seeds run every seed's run shares one copy.
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
    """Path of a seed-independent artifact (index, frames, flow): under the results folder unless shared."""
    return str(Path(SHARED_RESULTS, *parts))


# Settings: each command declares once, in a2dpipe/settings.py, the config keys it reads; each rule's `settings` param
# holds those values as JSON, and the command gets them as `--settings`. Snakemake's params rerun trigger then reruns
# a rule (and what depends on it) when one of them changes and never otherwise, and no job reads a file that a later
# parse of the Snakefile could rewrite.


# Snakemake's reason for such a rerun would print the settings whole, before and now: it names the changed keys.
use_short_params_reason()


def get_settings(command, **job):
    """Params function `settings` of the rules that run `a2dpipe <command>`, JSON of the config values its
    declaration (a2dpipe.settings.DECLARATIONS) lists for the job. A job value named there comes from `job` (a
    value, or a function of the wildcards) or else from the wildcard of that name."""

    def settings(wildcards):
        values = dict(wildcards.items())
        for name, value in job.items():
            values[name] = value(wildcards) if callable(value) else value
        return settings_json(command, config, values)

    return settings


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


def check_synthetic_root():
    """Refuse, before Snakemake removes `synthesize`'s output, a dataset.root that `synthesize` did not write."""
    if config["dataset"]["synthetic"]:
        from a2dpipe.dataset.synthetic import check_replaceable

        check_replaceable(config["dataset"]["root"])


check_synthetic_root()
# A region run that names a mask source this run lacks fails here, not in a job minutes later.
check_region_runs(REGION_RUNS, config)
# What the schema cannot say (empty or inconsistent experiments, too few resamples for a 95% interval).
check_coherence(config)


# A lock in the results folder: a run from another working directory refuses to share it (Snakemake's own lock is
# per working directory). Taken when jobs start, released when the run ends; a killed run's lock is stale.
check_results_free(RESULTS)


onstart:
    lock_results(RESULTS)


onsuccess:
    unlock_results(RESULTS)


onerror:
    unlock_results(RESULTS)


def get_code(command):
    """Digest of the package source `a2dpipe <command>` imports (a2dpipe.integrity.code_digest): every rule passes
    its command's as a param, so a code edit reruns exactly the rules whose command it reaches.
    """
    return command_digest(command)


def count_videos():
    """Videos the index will hold: known from config for the synthetic benchmark, from videoset.csv otherwise."""
    if config["dataset"]["synthetic"] and config["synthetic"]["metadata"] is not None:
        from a2dpipe.dataset.synthetic import count_metadata_videos

        return count_metadata_videos(
            config["synthetic"], config["dataset"]["exclude_videos"]
        )
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
    kind="|".join(KINDS),
    train_source="|".join((NONE, *TRAINED_MASK_SOURCES)),
    test_source="|".join((NONE, *TEST_SOURCES)),


# Artifact paths: the contracts between stages (formats documented in the modules that write them).
INDEX = shared("index.csv")
FRAMES = shared("frames", "shard-{shard}.h5")
FLOW = shared("flow", "{method}", "shard-{shard}.h5")
MASK_MODEL = res("masks", "models", "{trained_source}", "model.pt")
MASK_CACHE = res("masks", "{source}", "shard-{shard}.h5")
MASK_QUALITY = res("masks", "quality.csv")
STAGE1 = str(Path(STAGE1_RESULTS, "models", "stage1", "{input}", "model.pt"))
STAGE2 = res("models", "stage2", "{input}-{trained_source}", "model.pt")
# A prediction variant is four wildcards, one folder each (a2dpipe.variants; `none` for a source a kind does not use).
VARIANT = "{kind}/{input}/{train_source}/{test_source}"
PREDICTIONS = res("predictions", f"{VARIANT}.h5")
EVALUATION = res("evaluation", f"{VARIANT}.json")
EVALUATION_VIDEOS = res("evaluation", f"{VARIANT}.videos.npz")
VAL_PREDICTIONS = res("validation", "predictions", f"{VARIANT}.h5")
VAL_EVALUATION = res("validation", "evaluation", f"{VARIANT}.json")
VAL_EVALUATION_VIDEOS = res("validation", "evaluation", f"{VARIANT}.videos.npz")


def get_synthetic_metadata(wildcards):
    """Inputs of `synthesize`: the real metadata files its A2D-shaped mode reads (none without metadata)."""
    folder = config["synthetic"]["metadata"]
    if folder is None:
        return {}
    from a2dpipe.dataset.synthetic import ANNOTATED_FILE, VIDEOSET_FILE

    return {
        "videoset": str(Path(folder, VIDEOSET_FILE)),
        "annotated": str(Path(folder, ANNOTATED_FILE)),
    }


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
    """Every prediction set (a2dpipe.variants.Variant): baselines per input, mask-vote controls (stage 1 averaged
    in test masks), and region models per (input, train source, test source)."""
    return (
        [Variant("baseline", inp) for inp in INPUTS]
        + [Variant("maskvote", inp, NONE, test) for inp, test in get_maskvote_runs()]
        + [Variant("ours", inp, train, test) for inp, train, test in REGION_RUNS]
    )


def variant_paths(pattern, variants=None):
    """`pattern` (PREDICTIONS, EVALUATION, ...) filled in for each variant, every configured one by default."""
    return [
        pattern.format(**variant._asdict())
        for variant in (get_variants() if variants is None else variants)
    ]


def get_validation_outputs(pattern):
    """Input function of `validate`: `pattern` (VAL_EVALUATION, ...) of every variant; refused when the final models
    train on train + val, as then none of them can be validated on the videos it trained on.
    """

    def paths(wildcards):
        if config["dataset"]["final_fit"] == "train+val":
            raise ValueError(
                "config dataset.final_fit is train+val: the models train on the validation videos, so the validate "
                "target cannot score them; choose settings with final_fit: train, then set train+val"
            )
        return variant_paths(pattern)

    return paths


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


def get_mask_gpus(wildcards):
    """Only the model sources of region-masks want the accelerator."""
    return 0 if wildcards.source == "gt" else 1


# Cluster resources (workflow/profiles/slurm): every rule declares them with get_job_resources, so that rules
# renamed by a module (compare_masks_*, seed_<N>_*) keep them. The partition follows the job's `gpu` resource,
# runtime and host memory its size (config cluster).


def get_job_resources(size, gpu=0):
    """Resources of a rule's jobs: `gpu` (an int or a function of the wildcards), the partition that follows from
    it, and the runtime (minutes) and host memory of `size`, a key of config cluster.sizes.
    """
    cluster = config["cluster"]
    gpus = gpu if callable(gpu) else (lambda wildcards: gpu)

    def partition(wildcards):
        return cluster["gpu_partition"] if gpus(wildcards) else cluster["cpu_partition"]

    return dict(
        gpu=gpus,
        slurm_partition=partition,
        runtime=cluster["sizes"][size]["runtime"],
        mem_mb=cluster["sizes"][size]["mem_mb"],
    )


def get_loader_threads():
    """CPUs of a job that feeds a network through the frame loader: one per worker process and one for the main
    process, which drives the accelerator; at least 2, which a network on the CPU (no workers) runs on. The job
    gives its own torch what the workers leave."""
    return max(config["segmentation"]["loader_workers"] + 1, 2)


def _variant(wildcards):
    """The variant of a predict or evaluate job; A2DError for a path no variant has (a source its kind lacks)."""
    return check_variant(
        Variant(
            wildcards.kind,
            wildcards.input,
            wildcards.train_source,
            wildcards.test_source,
        )
    )


def get_variant_model(wildcards):
    """Stage-1 checkpoint for a baseline or mask-vote variant, stage-2 checkpoint for a region variant."""
    variant = _variant(wildcards)
    if variant.kind != "ours":
        return STAGE1.format(input=variant.input)
    return STAGE2.format(input=variant.input, trained_source=variant.train_source)


def get_variant_masks(wildcards):
    """Region caches of the variant's test source (none for baselines; mask votes and region models test on it)."""
    variant = _variant(wildcards)
    if variant.kind == "baseline":
        return []
    return expand(MASK_CACHE, source=variant.test_source, shard=SHARDS)


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
    """Mask AP table, when a trained source is a test source of the run."""
    return [MASK_QUALITY] if get_quality_sources() else []


def get_quality_sources():
    """Trained mask sources whose mask AP the run measures: those it tests with."""
    return [s for s in TRAINED_MASK_SOURCES if s in get_test_sources()]


def get_quality_caches(source):
    """Input function of `mask_quality`: the region caches of `source`, when its mask AP is measured."""

    def caches(wildcards):
        if source not in get_quality_sources():
            return []
        return expand(MASK_CACHE, source=source, shard=SHARDS)

    return caches


def get_quality_left_out():
    """`mask_quality`'s notes on the trained sources it leaves out, as `source: why` (a row with no figures)."""
    return [
        f"{s}: {UNAVAILABLE_SOURCES.get(s, 'no experiments.regions entry tests with it')}"
        for s in TRAINED_MASK_SOURCES
        if s not in get_quality_sources()
    ]


# The HTML report (`snakemake --report report.html`) shows the pages of the DAG of `all` that are marked for it, and
# stops at a marked file that does not exist. What `tables` makes is marked as it is; what only `all` adds (the
# mask-model comparison, the validation metrics) is marked once it exists, so that the report of a run of `tables`
# shows what that run made, and the report of a run of `all` everything.


def report_page(path, title, caption, category):
    """`path` (an HTML page or a figure) marked for the report, listed under `category` by its `title`."""
    return report(path, caption=caption, category=category, labels={"page": title})


def report_page_if_made(path, title, caption, category):
    """`path` marked for the report when it exists (see above), else as it is."""
    if Path(path).exists():
        return report_page(path, title, caption, category)
    return path


def get_mask_quality_page():
    """`tables`'s page of the mask AP table, when it writes one (get_mask_quality_table)."""
    if not get_mask_quality_table():
        return {}
    page = res("tables", "mask_quality.html")
    return {
        "mask_quality": report_page(
            page, "Mask quality", "../report/mask_quality.rst", "Masks"
        )
    }


def get_report_variant(kind):
    """Prediction set shown in the overlays: the paper's main one (RGB + flow, dataset masks) when configured."""
    preferred = {
        "baseline": Variant("baseline", "rgbflow"),
        "ours": Variant("ours", "rgbflow", "dataset", "dataset"),
    }[kind]
    variants = get_variants()
    if preferred in variants:
        return variant_paths(PREDICTIONS, [preferred])[0]
    candidates = [v for v in variants if v.kind == kind] or variants
    return variant_paths(PREDICTIONS, candidates[-1:])[0]


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
    """`all`: the tables, timings, timing estimate, validation metrics (unless the final models train on the
    validation videos: dataset.final_fit) and mask-model comparison; in a seeds run the first four of every seed's
    run and their aggregate."""
    validated = config["dataset"]["final_fit"] == "train"
    if SEEDS:
        return [
            *get_seed_outputs("tables", "done"),
            *get_seed_outputs("timing", "table"),
            *get_seed_outputs("estimate", "table"),
            *(get_seed_outputs("validate", "table") if validated else []),
            rules.aggregate.output.done,
        ]
    return [
        res("tables", "done"),
        res("timing", "timing.csv"),
        res("timing", "estimate.csv"),
        *([res("validation", "metrics.csv")] if validated else []),
        *([res("tables", "mask_models.csv")] if COMPARE_MASKS else []),
    ]


# A seeds run (workflow/rules/seeds.smk): this workflow once per seed, as the module `seed_<N>_`, whose rules are
# named `seed_<N>_<rule>`.


def get_seed_module(seed):
    """Name of the module that runs `seed` (also the prefix of its rules' names)."""
    return f"seed_{seed}_"


def get_seed_config(seed):
    """Config of the run of `seed`: that seed for training and the bootstrap, its own results folder, and this
    run's folder for the artifacts all seeds share (the dataset root is already one path for all).
    """
    return get_module_config(f"seed-{seed}", seed=seed, seeds=None)


def get_module_config(folder, **keys):
    """This config for a run of this workflow as a module (a seed's, the mask-model comparison): its results in
    <results>/`folder`, this run's folder for the artifacts it shares, no mask-model comparison of its own, and
    `keys` on top."""
    run = copy.deepcopy(config)
    run["experiments"]["compare_masks"] = None
    run.update(results=res(folder), shared_results=SHARED_RESULTS, **keys)
    return run


def _seed_rule(seed, rule):
    return getattr(rules, get_seed_module(seed) + rule)


def get_seed_outputs(rule, key):
    """Output `key` of `rule` in every seed's run (rules.seed_<N>_<rule>.output.<key>), in seed order."""
    return [getattr(_seed_rule(seed, rule).output, key) for seed in SEEDS]


def get_aggregate_arguments():
    """`a2dpipe aggregate` arguments: per seed its number, its claims table and the evaluations of its tables."""
    args = []
    for seed in SEEDS:
        tables = _seed_rule(seed, "tables")
        args += ["--seed", str(seed), "--claims", tables.output.claims]
        args += ["--evaluations", *tables.input.evaluations]
    return args


def get_aggregate_evaluations():
    """Evaluation files behind every seed's tables."""
    return [
        path for seed in SEEDS for path in _seed_rule(seed, "tables").input.evaluations
    ]


def get_output_dir(wildcards, output):
    """Folder of a rule's first output, for commands that write several files into one folder."""
    return str(Path(output[0]).parent)


# The mask-model comparison (workflow/rules/compare.smk): this run again with the masks keys of
# experiments.compare_masks, as the module `compare_masks_`.


def get_compare_config():
    """Config of the comparison run: this one with the other mask model's keys, its own results folder, and this
    run's data and stage-1 models (stage 1 reads no mask setting)."""
    unknown = sorted(set(COMPARE_MASKS) - set(config["masks"]))
    if unknown:  # said here: the module's own validation would blame its masks section
        raise ValueError(
            f"config experiments.compare_masks: {', '.join(unknown)} is not a masks key "
            f"(masks keys: {', '.join(config['masks'])})"
        )
    run = get_module_config("compare-masks", stage1_results=STAGE1_RESULTS)
    run["masks"].update(copy.deepcopy(COMPARE_MASKS))
    return run


def get_compare_labels():
    """(this run, the comparison run) as the masks keys they differ in: `model=fcis, lr=0.005` beside
    `model=maskrcnn, lr=0.001`."""
    keys = sorted(COMPARE_MASKS)
    label = lambda masks: ", ".join(f"{k}={masks.get(k)}" for k in keys)
    return label(config["masks"]), label(COMPARE_MASKS)


def get_table3_variants():
    """The configured region runs that Table 3 shows: RGB + flow, by training and test mask source."""
    return [
        Variant("ours", inp, train, test)
        for inp, train, test in REGION_RUNS
        if inp == "rgbflow"
    ]


def get_compare_outputs(key):
    """`key` (evaluation, per_video) of the comparison run's `evaluate` for each Table 3 variant."""
    pattern = getattr(rules.compare_masks_evaluate.output, key)
    return [pattern.format(**v._asdict()) for v in get_table3_variants()]


# Segmenting videos of one's own (workflow/rules/segment.smk; config `segment`).


def get_segment_videos():
    """{name: path} of config segment.videos: a folder (its videos, and its sub-folders of frames) or a list of
    videos and frame folders; a name is the file's stem or the folder's name."""
    from a2dpipe.segmentation.frames_in import IMAGE_SUFFIXES, VIDEO_SUFFIXES

    videos = config["segment"]["videos"]
    if videos is None:
        return {}
    if isinstance(videos, str):
        folder = Path(videos)
        if not folder.is_dir():
            raise ValueError(
                f"config segment.videos: {folder} is not a folder (give a folder or a list of videos)"
            )
        videos = [
            p
            for p in sorted(folder.iterdir())
            if p.suffix.lower() in VIDEO_SUFFIXES
            or (
                p.is_dir()
                and any(q.suffix.lower() in IMAGE_SUFFIXES for q in p.iterdir())
            )
        ]
    named = {}
    for path in map(Path, videos):
        name = path.name if path.is_dir() else path.stem
        if name in named:
            raise ValueError(
                f"config segment.videos: {named[name]} and {path} share the name {name!r}; rename one"
            )
        named[name] = str(path)
    return named


def get_segment_outputs(wildcards):
    """Target `segment`: one results folder per configured video."""
    videos = get_segment_videos()
    if not videos:
        raise ValueError(
            "config segment.videos is null or names no video: set it to a folder or a list of videos"
        )
    return [res("segment", name) for name in videos]


def get_segment_strips():
    """The overlay strips `snakemake segment` wrote (results/segment/<name>/overlays.png), marked for the report
    when there are any: `all` lists their folder as an input (no rule makes it), so the report shows them and
    `all` runs no segment job."""
    folder = res("segment")
    if not any(Path(folder).glob("[!.]*/overlays.png")):
        return []
    strips = report(
        folder,
        patterns=["{name,[^./][^/]*}/overlays.png"],
        caption="workflow/report/segment.rst",  # from the Snakefile, whose rule `all` lists it
        category="Segment",
        labels={"page": "Segment: {name}"},
    )
    return [strips]


def get_segment_name_pattern():
    """Only the configured videos' names are `segment_video` jobs (a typo is an error, not a new job)."""
    import re

    return "|".join(map(re.escape, get_segment_videos())) or "(?!)"


def get_segment_run(wildcards):
    """The run whose models segment reads: this one."""
    return RESULTS


def get_segment_shared(wildcards):
    """Where this run's frames and flow lie (its shared_results)."""
    return SHARED_RESULTS


def get_segment_video(wildcards):
    return get_segment_videos()[wildcards.name]


def get_segment_parts(wildcards):
    """The run's files `a2dpipe segment` reads for the configured variant: its network, for regions the mask
    model and one region cache (its inference settings), one frames shard (frame height, flow partner), for
    rgbflow one flow cache (the flow settings), and the variant's predictions when the run makes them.
    """
    from a2dpipe.segmentation.run_parts import parse_variant

    v = parse_variant(config["segment"]["variant"])
    parts = [FRAMES.format(shard=SHARDS[0])]
    if v.kind == "ours":
        parts.append(STAGE2.format(input=v.input, trained_source=v.train_source))
    else:
        parts.append(STAGE1.format(input=v.input))
    if v.kind != "baseline":
        parts.append(MASK_MODEL.format(trained_source=v.test_source))
        parts.append(MASK_CACHE.format(source=v.test_source, shard=SHARDS[0]))
    if v.input == "rgbflow":
        parts.append(FLOW.format(method=config["flow"]["method"], shard=SHARDS[0]))
    if v in get_variants():
        parts.append(PREDICTIONS.format(**v._asdict()))
    return parts
