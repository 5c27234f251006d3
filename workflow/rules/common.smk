# Helpers that the rules of every stage read: the run's folders and the settings each command gets. The other
# helpers lie beside this file in common/, one file per job (checks, paths, variants, resources, report, modules,
# segment), and the Snakefile includes them after this one. Rules call `get_*` functions, never inline code.
from pathlib import Path

from a2dpipe.cli import command_digest
from a2dpipe.errors import A2DError
from a2dpipe.rerun import use_short_params_reason
from a2dpipe.settings import settings_json
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


def get_code(command):
    """Digest of the package source `a2dpipe <command>` imports (a2dpipe.integrity.code_digest): every rule passes
    its command's as a param, so a code edit reruns exactly the rules whose command it reaches.
    """
    return command_digest(command)


def get_output_dir(wildcards, output):
    """Folder of a rule's first output, for commands that write several files into one folder."""
    return str(Path(output[0]).parent)
