# a2dpipe: actor-action semantic segmentation with region masks (Dang et al., BMVC 2018).
#
#   snakemake tables --cores 1 --resources gpu=1      # the paper's tables on the embedded default
#   snakemake all --cores 1 --resources gpu=1         # tables, timings and every intermediate artifact
#   snakemake validate --cores 1 --resources gpu=1    # every variant's metrics on the validation split
#   snakemake --report report.html                    # HTML report of the last run
#
# Targets go before --resources, which takes every following word as a resource.


from snakemake.utils import min_version, validate

min_version("9.0")


configfile: "config.yaml"


validate(config, schema="workflow/schemas/config.schema.yaml")


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/dataset.smk"
include: "workflow/rules/flow.smk"
include: "workflow/rules/masks.smk"
include: "workflow/rules/segmentation.smk"
include: "workflow/rules/evaluation.smk"


rule all:
    default_target: True
    input:
        get_all_targets(),
