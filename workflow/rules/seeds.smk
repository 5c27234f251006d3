# Seeds run (config `seeds` a list): one run per seed through one DAG, and the aggregate of their tables.
# Each seed's run is this workflow as a module (rules `seed_<N>_<rule>`, config from get_seed_config): that seed,
# its results in <results>/seed-<N>/, and the artifacts no training seed changes (dataset, index, frames, flow,
# ground truth's region masks) read from this run, whose rules make them once (the modules define no rule for them:
# common.smk, makes()). Targets: `aggregate` (every seed's tables and their aggregate), `validate_seeds`, `all`.


for seed in SEEDS:
    seed_module = get_seed_module(seed)

    module:
        name: seed_module
        snakefile:
            "../../Snakefile"
        config:
            get_seed_config(seed)

    use rule * from seed_module exclude all as seed_module*


# The main target of a seeds run: every seed's tables and their aggregate across seeds.
rule aggregate:
    input:
        claims=get_seed_outputs("tables", "claims"),
        evaluations=get_aggregate_evaluations(),
    output:
        table1=res("aggregate", "table1.csv"),
        table2=res("aggregate", "table2.csv"),
        table3=res("aggregate", "table3.csv"),
        claims=res("aggregate", "claims.csv"),
        table1_page=report_page(
            res("aggregate", "table1.html"),
            "Table 1 over seeds",
            "../report/aggregate.rst",
            "Seeds",
        ),
        table2_page=report_page(
            res("aggregate", "table2.html"),
            "Table 2 over seeds",
            "../report/aggregate.rst",
            "Seeds",
        ),
        table3_page=report_page(
            res("aggregate", "table3.html"),
            "Table 3 over seeds",
            "../report/aggregate.rst",
            "Seeds",
        ),
        claims_page=report_page(
            res("aggregate", "claims.html"),
            "Claims over seeds",
            "../report/aggregate.rst",
            "Seeds",
        ),
        done=res("aggregate", "done"),
    log:
        res("logs", "aggregate.log"),
    benchmark:
        res("benchmarks", "aggregate.tsv")
    conda:
        "../../envs/a2dpipe.yaml"
    threads: 1
    resources:
        **get_job_resources("small"),
    params:
        code=get_code("aggregate"),
        runs=get_aggregate_arguments(),
        out_dir=get_output_dir,
    shell:
        "python -m a2dpipe aggregate {params.runs:q} --out-dir {params.out_dir:q} --log {log:q}"


# Every seed's metrics on the validation split (each seed's `validate`).
rule validate_seeds:
    input:
        get_seed_outputs("validate", "table"),
