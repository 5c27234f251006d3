# Mask-model comparison (config experiments.compare_masks; target `compare_masks`): this run again with another
# mask model, as the module `compare_masks_` (rules `compare_masks_<rule>`, results in <results>/compare-masks/).
# It reads this run's dataset, frames, flow, ground truth's region masks and stage-1 models (stage 1 reads no mask
# setting), whose rules this run alone defines (common.smk, makes()), and trains its own mask models, region caches
# and stage 2. Not part of `tables`.


module compare_masks:
    snakefile:
        "../../Snakefile"
    config:
        get_compare_config()


use rule * from compare_masks exclude all as compare_masks_*


# Both runs' Table 3 rows beside the mask AP of their test masks.
rule compare_masks:
    input:
        quality=MASK_QUALITY,
        evaluations=variant_paths(EVALUATION, get_table3_variants()),
        per_video=variant_paths(EVALUATION_VIDEOS, get_table3_variants()),
        other_quality=rules.compare_masks_mask_quality.output.table,
        other_evaluations=get_compare_outputs("evaluation"),
        other_per_video=get_compare_outputs("per_video"),
    output:
        table=res("tables", "mask_models.csv"),
        page=report_page_if_made(
            res("tables", "mask_models.html"),
            "Mask models",
            "../report/mask_models.rst",
            "Masks",
        ),
    log:
        res("logs", "compare_masks.log"),
    benchmark:
        res("benchmarks", "compare_masks.tsv")
    conda:
        "../../envs/a2dpipe.yaml"
    threads: 1
    resources:
        **get_job_resources("small"),
    params:
        code=get_code("compare-masks"),
        settings=get_settings("compare-masks"),
        this=get_compare_labels()[0],
        other=get_compare_labels()[1],
    shell:
        "python -m a2dpipe compare-masks --settings {params.settings:q}"
        " --model {params.this:q} --quality {input.quality:q} --evaluations {input.evaluations:q}"
        " --per-video {input.per_video:q}"
        " --model {params.other:q} --quality {input.other_quality:q} --evaluations {input.other_evaluations:q}"
        " --per-video {input.other_per_video:q} --out {output.table:q} --log {log:q}"
