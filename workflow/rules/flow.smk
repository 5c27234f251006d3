# Flow stage: optical flow and its RGB encoding for every annotated frame, one job per shard, for the configured
# method (config flow.method). Neural methods ask for the accelerator and the CPUs of a loader-fed job (frame
# readers and flow-image encoders beside the network); DIS runs on one CPU core.


rule flow:
    input:
        frames=FRAMES,
    output:
        flow=FLOW,
    log:
        res("logs", "flow", "{method}", "shard-{shard}.log"),
    benchmark:
        res("benchmarks", "flow", "{method}", "shard-{shard}.tsv")
    wildcard_constraints:
        method=config["flow"]["method"],
    conda:
        "../../envs/a2dpipe.yaml"
    threads: get_flow_threads()
    resources:
        **get_job_resources("shard", gpu=get_flow_gpus()),
    params:
        code=get_code("flow"),
        settings=get_settings("flow"),
    shell:
        "python -m a2dpipe flow --settings {params.settings:q} --method {wildcards.method:q}"
        " --frames {input.frames:q} --threads {threads:q} --out {output.flow:q} --log {log:q}"
