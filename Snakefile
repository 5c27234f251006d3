# a2dpipe: actor-action semantic segmentation with region masks (Dang et al., BMVC 2018).
#
#   snakemake tables --cores 1 --resources gpu=1      # the paper's tables on the embedded default
#   snakemake all --cores 1 --resources gpu=1         # tables, timings and every intermediate artifact
#   snakemake validate --cores 1 --resources gpu=1    # every variant's metrics on the validation split
#   snakemake compare_masks --cores 1 --resources gpu=1   # Table 3 and mask AP with a second mask model
#   snakemake aggregate --cores 1 --resources gpu=1 --configfile config/seeds.yaml   # three seeds and their aggregate
#   snakemake --report report.html                    # HTML report of the last run
#   snakemake segment --cores 2 --resources gpu=1     # config segment.videos through this run's models (docs/segment.md)
#
# Targets go before --resources, which takes every following word as a resource.


import shlex

from snakemake.utils import min_version

from a2dpipe.config import resolve

min_version("9.0")


# Jobs run `python -m a2dpipe` in their own environment (--sdm conda builds one from a copy of envs/a2dpipe.yaml,
# where a relative `-e ..` could not point here): every shell command first puts this workflow's source folder on
# PYTHONPATH, after any conda activation, so a job imports the package of the workflow that scheduled it from any
# working directory. The prefix is a format string: braces are doubled. `set -euo pipefail` is Snakemake's default.
shell.prefix(
    "set -euo pipefail; export PYTHONPATH="
    + shlex.quote(workflow.basedir).replace("{", "{{").replace("}", "}}")
    + "${{PYTHONPATH:+:$PYTHONPATH}}; "
)


configfile: "config.yaml"


# The schema (workflow/schemas/config.schema.yaml) checks every key and fills in the defaults; a mistake is one line
# naming the key (a typo'd key: the keys its section takes), not a dump of the schema.
config.update(resolve(config, "config"))


report: "workflow/report/workflow.rst"


# Helpers first (common.smk, then its parts by job), then the rules of each stage.
include: "workflow/rules/common.smk"
include: "workflow/rules/common/checks.smk"
include: "workflow/rules/common/paths.smk"
include: "workflow/rules/common/variants.smk"
include: "workflow/rules/common/resources.smk"
include: "workflow/rules/common/report.smk"
include: "workflow/rules/common/modules.smk"
include: "workflow/rules/common/segment.smk"


# The artifacts no training setting changes (paths.smk, shared(): index, frames, flow, ground truth's region masks)
# are made by the run whose results folder holds them: a seed's run or the mask-model comparison, run as a module,
# reads its parent's, so each is planned once.
if makes(SHARED_RESULTS):

    include: "workflow/rules/dataset.smk"
    include: "workflow/rules/flow.smk"


# One run, or (config `seeds` a list) one run of the stages below per seed, sharing the data above, plus the
# aggregate across seeds.
if SEEDS:

    include: "workflow/rules/seeds.smk"

else:

    include: "workflow/rules/masks.smk"
    include: "workflow/rules/segmentation.smk"
    include: "workflow/rules/evaluation.smk"
    include: "workflow/rules/segment.smk"

    # A second mask model's run beside this one (config experiments.compare_masks; target compare_masks).
    if COMPARE_MASKS:

        include: "workflow/rules/compare.smk"


rule all:
    default_target: True
    input:
        get_all_targets(),
        get_segment_strips(),
