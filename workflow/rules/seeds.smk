# Seeds run (config `seeds` a list): one run per seed through one DAG, and the aggregate of their tables.
# Each seed's run is this workflow as a module (rules `seed_<N>_<rule>`, config from get_seed_config): that seed,
# its results in <results>/seed-<N>/, and the artifacts no training seed changes (dataset, index, frames, flow)
# read from this run, whose rules make them once; those rules are therefore left out of the modules.


for seed in SEEDS:
    seed_module = get_seed_module(seed)

    module:
        name: seed_module
        snakefile:
            "../../Snakefile"
        config:
            get_seed_config(seed)

    use rule * from seed_module exclude synthesize, index, extract_frames, frames, flow, all as seed_module*


rule aggregate:
    input:
        claims=get_seed_outputs("tables", "claims"),
        evaluations=get_aggregate_evaluations(),
    output:
        table1=report(
            res("aggregate", "table1.csv"),
            caption="../report/aggregate.rst",
            category="Seeds",
        ),
        table2=report(
            res("aggregate", "table2.csv"),
            caption="../report/aggregate.rst",
            category="Seeds",
        ),
        table3=report(
            res("aggregate", "table3.csv"),
            caption="../report/aggregate.rst",
            category="Seeds",
        ),
        claims=report(
            res("aggregate", "claims.csv"),
            caption="../report/aggregate.rst",
            category="Seeds",
        ),
        done=res("aggregate", "done"),
    log:
        res("logs", "aggregate.log"),
    benchmark:
        res("benchmarks", "aggregate.tsv")
    conda:
        "../../envs/a2dpipe.yaml"
    threads: 1
    params:
        code=get_code("aggregate"),
        runs=get_aggregate_arguments(),
        out_dir=get_output_dir,
    shell:
        "python -m a2dpipe aggregate {params.runs:q} --out-dir {params.out_dir:q} --log {log:q}"


# The main target of a seeds run: every seed's tables and their aggregate.
rule tables:
    input:
        get_seed_outputs("tables", "done"),
        rules.aggregate.output.done,


# Every seed's metrics on the validation split.
rule validate:
    input:
        get_seed_outputs("validate", "table"),
