# Dataset stage: the synthetic benchmark (embedded default), the frame index and per-shard frame extraction.
# Each rule lists the config values it reads as params, so that changing them reruns it (rerun trigger "params").


if config["dataset"]["synthetic"]:

    rule synthesize:
        output:
            root=directory(config["dataset"]["root"]),
        log:
            res("logs", "synthesize.log"),
        benchmark:
            res("benchmarks", "synthesize.tsv")
        conda:
            "../../envs/a2dpipe.yaml"
        threads: 1
        params:
            config_file=CONFIG_FILE,
            seed=config["seed"],
            settings=config["synthetic"],
        shell:
            "python -m a2dpipe synthesize --config {params.config_file} --out {output.root} --log {log}"


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
    params:
        config_file=CONFIG_FILE,
        shard_size=config["dataset"]["shard_size"],
        exclude=config["dataset"]["exclude_videos"],
        val_fraction=config["dataset"]["val_fraction"],
    shell:
        "python -m a2dpipe index --config {params.config_file} --root {input.root} --out {output.index} --log {log}"


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
    params:
        config_file=CONFIG_FILE,
        settings=config["frames"],
    shell:
        "python -m a2dpipe extract-frames --config {params.config_file} --root {input.root} --index {input.index}"
        " --shard {wildcards.shard} --out {output.frames} --log {log}"


rule frames:
    # Target for every frames shard: `snakemake --cores 1 frames`.
    input:
        expand(FRAMES, shard=SHARDS),
