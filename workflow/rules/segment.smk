# Segmenting videos of one's own with this run's models (config `segment`; target `segment`): not part of `tables`
# or `all`. Each video (a file OpenCV reads, or a folder of frames) -> results/segment/<name>/ (overlay.mp4,
# labels.h5 or labels/, summary.json, overlays.png: the report shows it, see get_segment_strips), from the
# variant's model files and the artifacts whose stamps hold its settings, which Snakemake builds first when they
# are missing.


rule segment:
    input:
        get_segment_outputs,


rule segment_video:
    input:
        video=get_segment_video,
        parts=get_segment_parts,
    output:
        folder=directory(res("segment", "{name}")),
    log:
        res("logs", "segment", "{name}.log"),
    benchmark:
        res("benchmarks", "segment", "{name}.tsv")
    wildcard_constraints:
        name=get_segment_name_pattern(),
    conda:
        "../../envs/a2dpipe.yaml"
    threads: 2
    resources:
        **get_job_resources("pass", gpu=1),
    params:
        code=get_code("segment"),
        run=get_segment_run,
        shared=get_segment_shared,
        out=get_output_dir,
        variant=config["segment"]["variant"],
        every=config["segment"]["every"],
        maps=config["segment"]["maps"],
    shell:
        "python -m a2dpipe segment {input.video:q} --run {params.run:q} --shared {params.shared:q}"
        " --variant {params.variant:q} --every {params.every:q} --maps {params.maps:q} --threads {threads:q}"
        " --no-progress --out {params.out:q} --log {log:q}"
