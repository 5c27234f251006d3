# Dataset stage: the synthetic benchmark (embedded default), the frame index and per-shard frame extraction.


if config["dataset"]["synthetic"]:

    rule synthesize:
        output:
            root=directory(config["dataset"]["root"]),
        params:
            config_file=CONFIG_FILE,
        log:
            res("logs", "synthesize.log"),
        benchmark:
            res("benchmarks", "synthesize.tsv")
        threads: 1
        shell:
            "python -m a2dpipe synthesize --config {params.config_file} --out {output.root} --log {log}"


rule index:
    input:
        root=get_dataset_root(),
    output:
        index=res("index.csv"),
    params:
        config_file=CONFIG_FILE,
    log:
        res("logs", "index.log"),
    benchmark:
        res("benchmarks", "index.tsv")
    threads: 1
    shell:
        "python -m a2dpipe index --config {params.config_file} --root {input.root} --out {output.index} --log {log}"


rule extract_frames:
    input:
        root=get_dataset_root(),
        index=rules.index.output.index,
    output:
        frames=res("frames", "shard-{shard}.h5"),
    params:
        config_file=CONFIG_FILE,
    log:
        res("logs", "extract_frames", "shard-{shard}.log"),
    benchmark:
        res("benchmarks", "extract_frames", "shard-{shard}.tsv")
    threads: 1
    shell:
        "python -m a2dpipe extract-frames --config {params.config_file} --root {input.root} --index {input.index}"
        " --shard {wildcards.shard} --out {output.frames} --log {log}"
