# Dataset stage: the synthetic benchmark (embedded default), the frame index, per-shard frame extraction, and the
# ground truth's region masks per shard.
# Each rule passes its command exactly the config values that command declares it reads (params.settings:
# get_settings in common.smk, from a2dpipe/settings.py), so that changing one reruns it and what depends on it
# (rerun trigger "params"). Every substitution is shell-quoted.


if config["dataset"]["synthetic"]:

    rule synthesize:
        # With synthetic.metadata, the real videoset.csv and annotated-frames.csv are inputs: an edit reruns it.
        # Clips are drawn in parallel (the output does not depend on the number of workers; --cores caps it).
        input:
            unpack(get_synthetic_metadata),
        output:
            root=directory(config["dataset"]["root"]),
        log:
            res("logs", "synthesize.log"),
        benchmark:
            res("benchmarks", "synthesize.tsv")
        conda:
            "../../envs/a2dpipe.yaml"
        threads: 8
        resources:
            **get_job_resources("pass"),
        params:
            code=get_code("synthesize"),
            settings=get_settings("synthesize"),
        shell:
            "python -m a2dpipe synthesize --settings {params.settings:q} --out {output.root:q}"
            " --workers {threads:q} --log {log:q}"


rule index:
    input:
        root=get_dataset_root(),
    output:
        index=INDEX,
    log:
        res("logs", "index.log"),
    benchmark:
        res("benchmarks", "index.tsv")
    conda:
        "../../envs/a2dpipe.yaml"
    threads: 1
    resources:
        **get_job_resources("small"),
    params:
        code=get_code("index"),
        settings=get_settings("index"),
    shell:
        "python -m a2dpipe index --settings {params.settings:q} --root {input.root:q} --out {output.index:q}"
        " --log {log:q}"


rule extract_frames:
    input:
        root=get_dataset_root(),
        index=rules.index.output.index,
    output:
        frames=FRAMES,
    log:
        res("logs", "extract_frames", "shard-{shard}.log"),
    benchmark:
        res("benchmarks", "extract_frames", "shard-{shard}.tsv")
    conda:
        "../../envs/a2dpipe.yaml"
    threads: 1
    resources:
        **get_job_resources("shard"),
    params:
        code=get_code("extract-frames"),
        settings=get_settings("extract-frames"),
    shell:
        "python -m a2dpipe extract-frames --settings {params.settings:q} --root {input.root:q}"
        " --index {input.index:q} --shard {wildcards.shard:q} --out {output.frames:q} --log {log:q}"


rule frames:
    # Target for every frames shard: `snakemake --cores 1 frames`.
    input:
        expand(FRAMES, shard=SHARDS),


# The ground truth's regions in the region-cache format of the mask sources (masks.smk): from the frames shard's
# annotations, no model and no setting, on the CPU. `{source}` is always gt here, so that the command's settings
# come from region_masks' own function.
rule gt_region_masks:
    input:
        frames=FRAMES,
    output:
        cache=GT_MASK_CACHE,
    log:
        res("logs", "region_masks", "{source}", "shard-{shard}.log"),
    benchmark:
        res("benchmarks", "region_masks", "{source}", "shard-{shard}.tsv")
    wildcard_constraints:
        source="gt",
    conda:
        "../../envs/a2dpipe.yaml"
    threads: 1
    resources:
        **get_job_resources("shard"),
    params:
        code=get_code("region-masks"),
        settings=get_settings("region-masks"),
    shell:
        "python -m a2dpipe region-masks --settings {params.settings:q} --source {wildcards.source:q}"
        " --frames {input.frames:q} --out {output.cache:q} --log {log:q}"
