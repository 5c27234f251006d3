# Region masks stage: the mask models (dataset, generic), the per-shard region caches of every source, mask AP.


rule train_mask_model:
    input:
        frames=expand(FRAMES, shard=SHARDS),
    output:
        model=MASK_MODEL,
    log:
        res("logs", "train_mask_model", "{trained_source}.log"),
    benchmark:
        res("benchmarks", "train_mask_model", "{trained_source}.tsv")
    conda:
        "../../envs/a2dpipe.yaml"
    threads: 2
    resources:
        gpu=1,
    params:
        config_file=CONFIG_FILE,
    shell:
        "python -m a2dpipe train-mask-model --config {params.config_file} --source {wildcards.trained_source}"
        " --frames {input.frames} --out {output.model} --log {log}"


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
    conda:
        "../../envs/a2dpipe.yaml"
    threads: 1
    resources:
        gpu=get_mask_gpus,
    params:
        config_file=CONFIG_FILE,
        model=get_mask_model_arg,
    shell:
        "python -m a2dpipe region-masks --config {params.config_file} --source {wildcards.source}"
        " --frames {input.frames} {params.model} --out {output.cache} --log {log}"


rule mask_quality:
    input:
        frames=expand(FRAMES, shard=SHARDS),
        dataset=expand(MASK_CACHE, source="dataset", shard=SHARDS),
        generic=expand(MASK_CACHE, source="generic", shard=SHARDS),
    output:
        table=MASK_QUALITY,
    log:
        res("logs", "mask_quality.log"),
    benchmark:
        res("benchmarks", "mask_quality.tsv")
    conda:
        "../../envs/a2dpipe.yaml"
    threads: 1
    params:
        config_file=CONFIG_FILE,
    shell:
        "python -m a2dpipe mask-quality --config {params.config_file} --frames {input.frames}"
        " --dataset {input.dataset} --generic {input.generic} --out {output.table} --log {log}"
