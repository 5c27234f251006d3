# Segmenting videos of one's own (workflow/rules/segment.smk; config `segment`): the configured videos, read from
# their folder when the Snakefile is parsed, and the run's files that `a2dpipe segment` reads.


def get_segment_videos():
    """{name: path} of config segment.videos: a folder (its videos, and its sub-folders of frames) or a list of
    videos and frame folders; a name is the file's stem or the folder's name."""
    from a2dpipe.segmentation.frames_in import IMAGE_SUFFIXES, VIDEO_SUFFIXES

    videos = config["segment"]["videos"]
    if videos is None:
        return {}
    if isinstance(videos, str):
        folder = Path(videos)
        if not folder.is_dir():
            raise ValueError(
                f"config segment.videos: {folder} is not a folder (give a folder or a list of videos)"
            )
        videos = [
            p
            for p in sorted(folder.iterdir())
            if p.suffix.lower() in VIDEO_SUFFIXES
            or (
                p.is_dir()
                and any(q.suffix.lower() in IMAGE_SUFFIXES for q in p.iterdir())
            )
        ]
    named = {}
    for path in map(Path, videos):
        name = path.name if path.is_dir() else path.stem
        if name in named:
            raise ValueError(
                f"config segment.videos: {named[name]} and {path} share the name {name!r}; rename one"
            )
        named[name] = str(path)
    return named


def get_segment_outputs(wildcards):
    """Target `segment`: one results folder per configured video."""
    videos = get_segment_videos()
    if not videos:
        raise ValueError(
            "config segment.videos is null or names no video: set it to a folder or a list of videos"
        )
    return [res("segment", name) for name in videos]


def get_segment_name_pattern():
    """Only the configured videos' names are `segment_video` jobs (a typo is an error, not a new job)."""
    import re

    return "|".join(map(re.escape, get_segment_videos())) or "(?!)"


def get_segment_run(wildcards):
    """The run whose models segment reads: this one."""
    return RESULTS


def get_segment_shared(wildcards):
    """Where this run's frames and flow lie (its shared_results)."""
    return SHARED_RESULTS


def get_segment_video(wildcards):
    return get_segment_videos()[wildcards.name]


def get_segment_parts(wildcards):
    """The run's files `a2dpipe segment` reads for the configured variant: its network, for regions the mask
    model and one region cache (its inference settings), one frames shard (frame height, flow partner), for
    rgbflow one flow cache (the flow settings), and the variant's predictions when the run makes them.
    """
    from a2dpipe.segmentation.run_parts import parse_variant

    v = parse_variant(config["segment"]["variant"])
    parts = [FRAMES.format(shard=SHARDS[0])]
    if v.kind == "ours":
        parts.append(STAGE2.format(input=v.input, trained_source=v.train_source))
    else:
        parts.append(STAGE1.format(input=v.input))
    if v.kind != "baseline":
        parts.append(MASK_MODEL.format(trained_source=v.test_source))
        parts.append(get_mask_caches(v.test_source)[0])
    if v.input == "rgbflow":
        parts.append(FLOW.format(method=config["flow"]["method"], shard=SHARDS[0]))
    if v in get_variants():
        parts.extend(variant_paths(PREDICTIONS, [v]))
    return parts
