"""Timing stage: milliseconds per frame of flow, region masks and segmentation, like the paper's complexity paragraph.

Command::

    a2dpipe timing --config C --flow results/flow/<method>/shard-*.h5 --masks results/masks/<source>/shard-*.h5 \
        --predictions results/predictions/<kind>/.../<test_source>.h5 ... --out results/timing/timing.csv

Each stage measures its own compute time while it runs and stores it as the root attribute ``seconds_per_frame``
of its HDF5 outputs (flow: ``method``; masks: ``source``; predictions: ``variant`` name the item). This command
averages it over shards, weighted by the number of frame groups in each file, and adds the totals the paper
gives: *Ours* = flow + ``dataset`` masks + region network (``ours-rgbflow-dataset-dataset``), *Baseline* = flow
+ baseline network (``baseline-rgbflow``). The root attribute ``device`` (written by prediction, predicted region
masks and neural flow) names where a file was measured; DIS flow and ground-truth masks, which never use an
accelerator, record none and are named by this machine's CPU. Each file is read through its format
(:class:`a2dpipe.stores.ArtifactFormat`): one of another schema version is refused with the rule that rebuilds it.

Writes the CSV (columns ``component, item, frames, ms_per_frame, device, paper_ms``) and a Markdown copy
beside it (same name, ``.md``).
"""

from __future__ import annotations

import logging
import math
from collections import defaultdict
from pathlib import Path

import pandas as pd

from a2dpipe.evaluation.paper_results import TIMING_MS
from a2dpipe.flow.store import FORMAT as FLOW
from a2dpipe.devices import describe_device
from a2dpipe.errors import A2DError
from a2dpipe.io import atomic_path
from a2dpipe.masks.cache import FORMAT as MASKS
from a2dpipe.segmentation.predictions import FORMAT as PREDICTIONS
from a2dpipe.stores import ArtifactFormat, ArtifactReader
from a2dpipe.variants import all_variants, variant_name, variant_of

__all__ = ["TIMED", "TimedFile", "read_timing", "timing_table", "configure_parser", "run"]

log = logging.getLogger(__name__)

COLUMNS = ["component", "item", "frames", "ms_per_frame", "device", "paper_ms"]
MAIN_REGION_VARIANT = variant_name(variant_of("ours", "rgbflow"))  # the paper's Ours and Baseline
MAIN_BASELINE_VARIANT = variant_name(variant_of("baseline", "rgbflow"))
KIND_OF = {variant_name(v): v.kind for v in all_variants()}  # a predictions file's variant attribute -> its kind


class TimedFile(ArtifactReader):
    """A stage output of ``artifact_format`` (its schema checked), read for its root attributes and frame count."""

    def __init__(self, path, artifact_format: ArtifactFormat):
        self.FORMAT = artifact_format
        super().__init__(path)


# what each option of the command reads: (the files' format, the root attribute naming the item)
TIMED = {"flow": (FLOW, "method"), "masks": (MASKS, "source"), "predictions": (PREDICTIONS, "variant")}


def read_timing(paths, component: str) -> dict[str, dict]:
    """``{item: {"frames": int, "seconds_per_frame": float, "device": str | None}}`` over ``paths``, files of
    ``component`` (a key of :data:`TIMED`).

    ``item`` is the file's root attribute naming it (:data:`TIMED`); shards of one item are averaged weighted by
    their frame counts. Files without frames are skipped; a file of another format or version, or lacking the
    attributes, is an error naming it.
    """
    artifact_format, name_attr = TIMED[component]
    frames: dict[str, int] = defaultdict(int)
    seconds: dict[str, float] = defaultdict(float)
    devices: dict[str, str | None] = {}
    for path in paths:
        with TimedFile(path, artifact_format) as f:
            attrs, n = f.attrs, len(f)
        for attr in (name_attr, "seconds_per_frame"):
            if attr not in attrs:
                raise A2DError(f"{path}: root attribute {attr!r} is missing")
        item, spf = str(attrs[name_attr]), float(attrs["seconds_per_frame"])
        if n == 0 or math.isnan(spf):
            continue
        frames[item] += n
        seconds[item] += spf * n
        if "device" in attrs:
            devices[item] = str(attrs["device"])
    return {
        item: {"frames": frames[item], "seconds_per_frame": seconds[item] / frames[item], "device": devices.get(item)}
        for item in frames
    }


def timing_table(flow: dict, masks: dict, predictions: dict, cpu: str) -> pd.DataFrame:
    """Rows per flow method, mask source and prediction variant, then the two totals (module doc).

    ``cpu`` names where the items that record no device ran: those that always run on the CPU (DIS flow,
    ground-truth masks).
    """
    rows = []

    def add(component, item, entry, paper):
        rows.append(
            {
                "component": component,
                "item": item,
                "frames": entry["frames"],
                "ms_per_frame": 1000.0 * entry["seconds_per_frame"],
                "device": entry["device"] or cpu,
                "paper_ms": paper,
            }
        )

    for method, entry in sorted(flow.items()):
        add("flow", method, entry, TIMING_MS["flow"])
    for source, entry in sorted(masks.items()):
        add("masks", source, entry, TIMING_MS["masks"] if source != "gt" else None)
    for variant, entry in sorted(predictions.items()):
        kind = KIND_OF.get(variant)
        if kind == "baseline":
            paper = TIMING_MS["baseline_total"] - TIMING_MS["flow"] if variant == MAIN_BASELINE_VARIANT else None
            add("segmentation baseline", variant, entry, paper)
        elif kind == "maskvote":  # this run's control: stage-1 network + mask averaging
            add("segmentation mask vote", variant, entry, None)
        else:
            add("segmentation region", variant, entry, TIMING_MS["region"] if variant == MAIN_REGION_VARIANT else None)

    flow_ms = sum(1000.0 * e["seconds_per_frame"] for e in flow.values()) if len(flow) == 1 else math.nan
    totals = {
        "total ours": (MAIN_REGION_VARIANT, ["dataset"], TIMING_MS["ours_total"]),
        "total baseline": (MAIN_BASELINE_VARIANT, [], TIMING_MS["baseline_total"]),
    }
    for component, (variant, sources, paper) in totals.items():
        if variant not in predictions or any(s not in masks for s in sources) or math.isnan(flow_ms):
            log.warning("%s: left out (needs one flow method, masks %s and variant %s)", component, sources, variant)
            continue
        ms = flow_ms + sum(1000.0 * masks[s]["seconds_per_frame"] for s in sources)
        ms += 1000.0 * predictions[variant]["seconds_per_frame"]
        item = " + ".join(["flow", *(f"{s} masks" for s in sources), variant])
        rows.append({"component": component, "item": item, "frames": predictions[variant]["frames"],
                     "ms_per_frame": ms, "device": predictions[variant]["device"] or cpu, "paper_ms": paper})
    return pd.DataFrame(rows, columns=COLUMNS)


def configure_parser(parser) -> None:
    parser.add_argument("--config", help="unused: the timing table has no settings (accepted for uniformity)")
    parser.add_argument("--flow", nargs="*", default=[], help="flow shard files")
    parser.add_argument("--masks", nargs="*", default=[], help="region-mask shard files (any sources)")
    parser.add_argument("--predictions", nargs="*", default=[], help="prediction files (any variants)")
    parser.add_argument("--out", required=True, help="CSV to write; a Markdown copy goes beside it")


def run(args) -> None:
    from a2dpipe.evaluation.writers import markdown_table  # one Markdown writer for every table

    flow, masks = read_timing(args.flow, "flow"), read_timing(args.masks, "masks")
    predictions = read_timing(args.predictions, "predictions")
    table = timing_table(flow, masks, predictions, describe_device())
    out = Path(args.out)
    with atomic_path(out.with_suffix(".md")) as tmp:
        Path(tmp).write_text(markdown_table(table, digits=1))
    with atomic_path(out) as tmp:
        table.to_csv(tmp, index=False, float_format="%.1f")
    log.info("timing:\n%s", table.to_string(index=False))
