# Segmentation stage: stage 1 (front-end + ASPP baseline) per input, stage 2 (frozen front-end + region back-end)
# per input and training mask source, predictions per variant and split (test for the tables, val for `validate`).
# Training resumes from checkpoint.pt beside model.pt.


# Stage 1 reads no mask setting: the mask-model comparison reads this run's models (stage1_results), not its own.
if makes(STAGE1_RESULTS):

    rule train_stage1:
        input:
            frames=expand(FRAMES, shard=SHARDS),
            flow=get_flow_inputs,
        output:
            model=STAGE1,
            curve=res("models", "stage1", "{input}", "loss.csv"),
        log:
            res("logs", "train_stage1", "{input}.log"),
        benchmark:
            res("benchmarks", "train_stage1", "{input}.tsv")
        conda:
            "../../envs/a2dpipe.yaml"
        threads: get_loader_threads()
        resources:
            **get_job_resources("train", gpu=1),
        params:
            code=get_code("train"),
            settings=get_settings("train", stage=1),
        shell:
            "python -m a2dpipe train --settings {params.settings:q} --stage 1 --input {wildcards.input:q}"
            " --frames {input.frames:q} --flow {input.flow:q} --threads {threads:q} --out {output.model:q}"
            " --log {log:q}"


rule train_stage2:
    input:
        frames=expand(FRAMES, shard=SHARDS),
        flow=get_flow_inputs,
        masks=get_stage2_masks,
        stage1=STAGE1,
    output:
        model=STAGE2,
        curve=res("models", "stage2", "{input}-{trained_source}", "loss.csv"),
    log:
        res("logs", "train_stage2", "{input}-{trained_source}.log"),
    benchmark:
        res("benchmarks", "train_stage2", "{input}-{trained_source}.tsv")
    conda:
        "../../envs/a2dpipe.yaml"
    threads: get_loader_threads()
    resources:
        **get_job_resources("train", gpu=1),
    params:
        code=get_code("train"),
        settings=get_settings("train", stage=2),
    shell:
        "python -m a2dpipe train --settings {params.settings:q} --stage 2 --input {wildcards.input:q}"
        " --mask-source {wildcards.trained_source:q} --frames {input.frames:q} --flow {input.flow:q}"
        " --masks {input.masks:q} --stage1 {input.stage1:q} --threads {threads:q} --out {output.model:q}"
        " --log {log:q}"


rule predict:
    input:
        frames=expand(FRAMES, shard=SHARDS),
        flow=get_flow_inputs,
        masks=get_variant_masks,
        model=get_variant_model,
    output:
        predictions=PREDICTIONS,
    log:
        res("logs", "predict", "{split}", f"{VARIANT}.log"),
    benchmark:
        res("benchmarks", "predict", "{split}", f"{VARIANT}.tsv")
    conda:
        "../../envs/a2dpipe.yaml"
    threads: get_loader_threads()
    resources:
        **get_job_resources("pass", gpu=1),
    params:
        code=get_code("predict"),
        settings=get_settings("predict"),
    shell:
        "python -m a2dpipe predict --settings {params.settings:q} --split {wildcards.split:q}"
        " --kind {wildcards.kind:q} --input {wildcards.input:q} --train-source {wildcards.train_source:q}"
        " --test-source {wildcards.test_source:q}"
        " --model {input.model:q} --frames {input.frames:q} --flow {input.flow:q} --masks {input.masks:q}"
        " --threads {threads:q} --out {output.predictions:q} --log {log:q}"
