# What this run makes: its prediction variants (a2dpipe.variants), the models and caches each one reads, and the
# lists that the tables, timings, mask quality and the targets take.
from a2dpipe.variants import Variant, check_variant


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


def variant_paths(pattern, variants=None, split="test"):
    """`pattern` (PREDICTIONS, EVALUATION, ...) filled in for each variant, every configured one by default, on
    `split`."""
    return [
        pattern.format(split=split, **variant._asdict())
        for variant in (get_variants() if variants is None else variants)
    ]


def get_validation_outputs(pattern):
    """Input function of `validate`: `pattern` (EVALUATION, ...) of every variant on the validation split; refused
    when the final models train on train + val, as then none of them can be validated on the videos it trained on.
    """

    def paths(wildcards):
        if config["dataset"]["final_fit"] == "train+val":
            raise ValueError(
                "config dataset.final_fit is train+val: the models train on the validation videos, so the validate "
                "target cannot score them; choose settings with final_fit: train, then set train+val"
            )
        return variant_paths(pattern, split="val")

    return paths


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
    return get_mask_caches(variant.test_source)


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
    return [path for source in get_test_sources() for path in get_mask_caches(source)]


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
        return get_mask_caches(source)

    return caches


def get_quality_left_out():
    """`mask_quality`'s notes on the trained sources it leaves out, as `source: why` (a row with no figures)."""
    return [
        f"{s}: {UNAVAILABLE_SOURCES.get(s, 'no experiments.regions entry tests with it')}"
        for s in TRAINED_MASK_SOURCES
        if s not in get_quality_sources()
    ]


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
