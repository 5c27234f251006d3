# The runs of this workflow as modules: a seeds run's (workflow/rules/seeds.smk), one per seed as the module
# `seed_<N>_`, whose rules are named `seed_<N>_<rule>`; and the mask-model comparison (workflow/rules/compare.smk),
# this run again with the masks keys of experiments.compare_masks, as the module `compare_masks_`. A module's config
# names this run's folders for what it shares (shared_results, and for the comparison stage1_results): the module
# then defines no rule for those artifacts (common.smk, makes()), and this run's rules make them once.
import copy


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
    """`key` (evaluation, per_video) of the comparison run's `evaluate` for each Table 3 variant (test split)."""
    pattern = getattr(rules.compare_masks_evaluate.output, key)
    return variant_paths(pattern, get_table3_variants())
