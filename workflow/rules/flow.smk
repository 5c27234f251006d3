# Flow stage: optical flow and its RGB encoding for every annotated frame, one job per shard, for the configured
# method (config flow.method). Neural methods ask for the accelerator; DIS runs on one CPU core.


rule flow:
    input:
        frames=FRAMES,
    output:
        flow=FLOW,
    wildcard_constraints:
        method=config["flow"]["method"],
    params:
        config_file=CONFIG_FILE,
    log:
        res("logs", "flow", "{method}", "shard-{shard}.log"),
    benchmark:
        res("benchmarks", "flow", "{method}", "shard-{shard}.tsv")
    threads: 1
    resources:
        gpu=get_flow_gpus(),
    shell:
        "python -m a2dpipe flow --config {params.config_file} --method {wildcards.method}"
        " --frames {input.frames} --out {output.flow} --log {log}"
