# Evaluation stage: metrics per prediction set and split, the paper's tables (the main target, from the test split),
# timings, report figures, and the metrics table of the validation split (target `validate`: where settings are
# chosen, never on test).


rule evaluate:
    input:
        predictions=PREDICTIONS,
        frames=expand(FRAMES, shard=SHARDS),
    output:
        evaluation=EVALUATION,
        per_video=EVALUATION_VIDEOS,
    log:
        res("logs", "evaluate", "{split}", f"{VARIANT}.log"),
    benchmark:
        res("benchmarks", "evaluate", "{split}", f"{VARIANT}.tsv")
    conda:
        "../../envs/a2dpipe.yaml"
    threads: 1
    resources:
        **get_job_resources("small"),
    params:
        code=get_code("evaluate"),
        settings=get_settings("evaluate"),
    shell:
        "python -m a2dpipe evaluate --settings {params.settings:q} --split {wildcards.split:q}"
        " --predictions {input.predictions:q}"
        " --frames {input.frames:q} --out {output.evaluation:q} --per-video {output.per_video:q} --log {log:q}"


# Target `validate`: every variant's metrics on the validation split, with bootstrap intervals over its videos.
rule validate:
    input:
        evaluations=get_validation_outputs(EVALUATION),
        per_video=get_validation_outputs(EVALUATION_VIDEOS),
    output:
        table=res("validation", "metrics.csv"),
        page=report_page_if_made(
            res("validation", "metrics.html"),
            "Validation metrics",
            "../report/validation.rst",
            "Validation",
        ),
    log:
        res("logs", "validate.log"),
    benchmark:
        res("benchmarks", "validate.tsv")
    conda:
        "../../envs/a2dpipe.yaml"
    threads: 1
    resources:
        **get_job_resources("small"),
    params:
        code=get_code("metrics-table"),
        settings=get_settings("metrics-table"),
        out_dir=get_output_dir,
    shell:
        "python -m a2dpipe metrics-table --settings {params.settings:q} --evaluations {input.evaluations:q}"
        " --per-video {input.per_video:q} --out-dir {params.out_dir:q} --log {log:q}"


rule timing:
    input:
        flow=get_timing_flow(),
        masks=get_timing_masks(),
        predictions=variant_paths(PREDICTIONS),
    output:
        table=res("timing", "timing.csv"),
        markdown=res("timing", "timing.md"),
    log:
        res("logs", "timing.log"),
    benchmark:
        res("benchmarks", "timing.tsv")
    conda:
        "../../envs/a2dpipe.yaml"
    threads: 1
    resources:
        **get_job_resources("small"),
    params:
        code=get_code("timing"),
    shell:
        "python -m a2dpipe timing --flow {input.flow:q} --masks {input.masks:q}"
        " --predictions {input.predictions:q} --out {output.table:q} --log {log:q}"


# Not a measurement: FLOPs of each stage of this configuration x assumed GPU throughput (a2dpipe/evaluation/estimate.py),
# beside the paper's K80 figures. Part of `all`, not of `tables`.
rule estimate:
    output:
        table=res("timing", "estimate.csv"),
        markdown=res("timing", "estimate.md"),
    log:
        res("logs", "estimate.log"),
    benchmark:
        res("benchmarks", "estimate.tsv")
    conda:
        "../../envs/a2dpipe.yaml"
    threads: 1
    resources:
        **get_job_resources("small"),
    params:
        code=get_code("estimate"),
        settings=get_settings("estimate"),
    shell:
        "python -m a2dpipe estimate --settings {params.settings:q} --out {output.table:q} --log {log:q}"


rule report_figures:
    input:
        evaluations=variant_paths(EVALUATION),
        frames=expand(FRAMES, shard=SHARDS),
        checkpoints=get_checkpoints(),
        baseline=get_report_variant("baseline"),
        ours=get_report_variant("ours"),
    output:
        per_category=report_page(
            res("figures", "per_category.png"),
            "Per-category accuracy",
            "../report/per_category.rst",
            "Figures",
        ),
        qualitative=report_page(
            res("figures", "qualitative.png"),
            "Qualitative results",
            "../report/qualitative.rst",
            "Figures",
        ),
        loss_curves=report_page(
            res("figures", "loss_curves.png"),
            "Training curves",
            "../report/loss_curves.rst",
            "Figures",
        ),
    log:
        res("logs", "report_figures.log"),
    benchmark:
        res("benchmarks", "report_figures.tsv")
    conda:
        "../../envs/a2dpipe.yaml"
    threads: 1
    resources:
        **get_job_resources("small"),
    params:
        code=get_code("report"),
        settings=get_settings("report"),
        out_dir=get_output_dir,
    shell:
        "python -m a2dpipe report --settings {params.settings:q} --evaluations {input.evaluations:q}"
        " --checkpoints {input.checkpoints:q} --frames {input.frames:q} --baseline {input.baseline:q}"
        " --ours {input.ours:q} --out-dir {params.out_dir:q} --log {log:q}"


# The main target. The report figures are inputs so that the main job leaves everything `--report` shows.
rule tables:
    input:
        evaluations=variant_paths(EVALUATION),
        per_video=variant_paths(EVALUATION_VIDEOS),
        timing=rules.timing.output.table,
        mask_quality=get_mask_quality_table(),
        figures=rules.report_figures.output,
    output:
        **get_mask_quality_page(),
        table1=res("tables", "table1.csv"),
        table2=res("tables", "table2.csv"),
        table3=res("tables", "table3.csv"),
        table4=res("tables", "table4.csv"),
        table5=res("tables", "table5.csv"),
        claims=res("tables", "claims.csv"),
        table1_page=report_page(
            res("tables", "table1.html"),
            "Table 1",
            "../report/table1.rst",
            "Tables",
        ),
        table2_page=report_page(
            res("tables", "table2.html"),
            "Table 2",
            "../report/table2.rst",
            "Tables",
        ),
        table3_page=report_page(
            res("tables", "table3.html"),
            "Table 3",
            "../report/table3.rst",
            "Tables",
        ),
        table4_page=report_page(
            res("tables", "table4.html"),
            "Table 4",
            "../report/table4.rst",
            "Tables",
        ),
        table5_page=report_page(
            res("tables", "table5.html"),
            "Table 5",
            "../report/table5.rst",
            "Tables",
        ),
        claims_page=report_page(
            res("tables", "claims.html"),
            "Claims",
            "../report/claims.rst",
            "Tables",
        ),
        timing_page=report_page(
            res("tables", "timing.html"),
            "Timing",
            "../report/timing.rst",
            "Timing",
        ),
        provenance=res("tables", "provenance.json"),
        done=res("tables", "done"),
    log:
        res("logs", "tables.log"),
    benchmark:
        res("benchmarks", "tables.tsv")
    conda:
        "../../envs/a2dpipe.yaml"
    threads: 1
    resources:
        **get_job_resources("small"),
    params:
        code=get_code("tables"),
        out_dir=get_output_dir,
        settings=get_settings("tables"),
    shell:
        "python -m a2dpipe tables --settings {params.settings:q} --evaluations {input.evaluations:q}"
        " --per-video {input.per_video:q} --timing {input.timing:q} --mask-quality {input.mask_quality:q}"
        " --out-dir {params.out_dir:q} --log {log:q}"
