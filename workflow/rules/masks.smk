# Region masks stage: the mask models (dataset, generic), their per-shard region caches, mask AP. Ground truth's
# region caches need neither model nor setting: the run that makes the frames makes them (dataset.smk).


rule train_mask_model:
    input:
        frames=expand(FRAMES, shard=SHARDS),
        start=get_mask_model_start,
    output:
        model=MASK_MODEL,
    log:
        res("logs", "train_mask_model", "{trained_source}.log"),
    benchmark:
        res("benchmarks", "train_mask_model", "{trained_source}.tsv")
    conda:
        "../../envs/a2dpipe.yaml"
    threads: get_loader_threads()
    resources:
        **get_job_resources("train", gpu=1),
    params:
        code=get_code("train-mask-model"),
        settings=get_settings("train-mask-model", start=get_mask_model_start),
    shell:
        "python -m a2dpipe train-mask-model --settings {params.settings:q}"
        " --source {wildcards.trained_source:q} --frames {input.frames:q} --start {input.start:q}"
        " --threads {threads:q} --out {output.model:q} --log {log:q}"


rule region_masks:
    input:
        frames=FRAMES,
        model=get_mask_model,
    output:
        cache=MASK_CACHE,
    log:
        res("logs", "region_masks", "{source}", "shard-{shard}.log"),
    benchmark:
        res("benchmarks", "region_masks", "{source}", "shard-{shard}.tsv")
    wildcard_constraints:
        source="|".join(TRAINED_MASK_SOURCES),
    conda:
        "../../envs/a2dpipe.yaml"
    threads: 1
    resources:
        **get_job_resources("shard", gpu=1),
    params:
        code=get_code("region-masks"),
        settings=get_settings("region-masks"),
    shell:
        "python -m a2dpipe region-masks --settings {params.settings:q} --source {wildcards.source:q}"
        " --frames {input.frames:q} --model {input.model:q} --out {output.cache:q} --log {log:q}"


rule mask_quality:
    input:
        frames=expand(FRAMES, shard=SHARDS),
        dataset=get_quality_caches("dataset"),
        generic=get_quality_caches("generic"),
    output:
        table=MASK_QUALITY,
    log:
        res("logs", "mask_quality.log"),
    benchmark:
        res("benchmarks", "mask_quality.tsv")
    conda:
        "../../envs/a2dpipe.yaml"
    threads: 1
    resources:
        **get_job_resources("pass"),
    params:
        code=get_code("mask-quality"),
        left_out=get_quality_left_out(),
    shell:
        "python -m a2dpipe mask-quality --frames {input.frames:q} --dataset {input.dataset:q}"
        " --generic {input.generic:q} --left-out {params.left_out:q} --out {output.table:q} --log {log:q}"
