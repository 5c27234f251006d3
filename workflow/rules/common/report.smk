# Report helpers. The HTML report (`snakemake --report report.html`) shows the pages of the DAG of `all` that are
# marked for it, and stops at a marked file that does not exist. What `tables` makes is marked as it is; what only
# `all` adds (the mask-model comparison, the validation metrics) is marked once it exists, so that the report of a
# run of `tables` shows what that run made, and the report of a run of `all` everything.


def report_page(path, title, caption, category):
    """`path` (an HTML page or a figure) marked for the report, listed under `category` by its `title`."""
    return report(path, caption=caption, category=category, labels={"page": title})


def report_page_if_made(path, title, caption, category):
    """`path` marked for the report when it exists (see above), else as it is."""
    if Path(path).exists():
        return report_page(path, title, caption, category)
    return path


def get_mask_quality_page():
    """`tables`'s page of the mask AP table, when it writes one (get_mask_quality_table)."""
    if not get_mask_quality_table():
        return {}
    page = res("tables", "mask_quality.html")
    return {
        "mask_quality": report_page(
            page, "Mask quality", "../report/mask_quality.rst", "Masks"
        )
    }


def get_report_variant(kind):
    """Prediction set shown in the overlays: the paper's main one (RGB + flow, dataset masks) when configured."""
    preferred = {
        "baseline": Variant("baseline", "rgbflow"),
        "ours": Variant("ours", "rgbflow", "dataset", "dataset"),
    }[kind]
    variants = get_variants()
    if preferred in variants:
        return variant_paths(PREDICTIONS, [preferred])[0]
    candidates = [v for v in variants if v.kind == kind] or variants
    return variant_paths(PREDICTIONS, candidates[-1:])[0]


def get_segment_strips():
    """The overlay strips `snakemake segment` wrote (results/segment/<name>/overlays.png), marked for the report
    when there are any: `all` lists their folder as an input (no rule makes it), so the report shows them and
    `all` runs no segment job."""
    folder = res("segment")
    if not any(Path(folder).glob("[!.]*/overlays.png")):
        return []
    strips = report(
        folder,
        patterns=["{name,[^./][^/]*}/overlays.png"],
        caption="workflow/report/segment.rst",  # from the Snakefile, whose rule `all` lists it
        category="Segment",
        labels={"page": "Segment: {name}"},
    )
    return [strips]
