"""The figures reported by Dang et al. (BMVC 2018), transcribed from its Tables 1-5 and its complexity paragraph.

Values are percentages as printed; ``None`` where the paper prints "-" or leaves a cell empty. Metric rows use
the column order ``METRIC_COLUMNS``: (global pixel accuracy, mean class accuracy, mean class IoU) x (actor,
action, actor-action).

Table 5 of the paper lists background and 42 pairs: it has no column for dog-none, which is ``None`` here.
Table 4's rows carry no method names in the available copy of the paper; its text cites five earlier works on
this task ([13], [23], [28], [29], [30] of its bibliography) without saying which row is which, so the rows
are kept as "published method 1..5" in the order printed.
"""

from __future__ import annotations

from a2dpipe.labels import class_names

__all__ = [
    "METRICS",
    "SETTING_ORDER",
    "METRIC_COLUMNS",
    "TABLE1",
    "TABLE2",
    "TABLE3",
    "TABLE4_PUBLISHED",
    "TABLE4_OURS",
    "TABLE4_CITED",
    "TABLE5",
    "TIMING_MS",
    "TIMING_DEVICE",
]

METRICS: tuple[str, ...] = ("global_accuracy", "mean_class_accuracy", "mean_iou")
SETTING_ORDER: tuple[str, ...] = ("actor", "action", "actor_action")
METRIC_COLUMNS: tuple[tuple[str, str], ...] = tuple((m, s) for m in METRICS for s in SETTING_ORDER)


def _row(text: str) -> tuple[float | None, ...]:
    values = tuple(None if v == "-" else float(v) for v in text.split())
    if len(values) != len(METRIC_COLUMNS):
        raise ValueError(f"expected {len(METRIC_COLUMNS)} values, got {text!r}")
    return values


# Table 1: (method, input) -> row
TABLE1: dict[tuple[str, str], tuple] = {
    ("baseline", "rgb"): _row("95.7 93.5 93.0  77.0 58.5 42.7  67.1 46.0 32.1"),
    ("ours", "rgb"): _row("95.0 92.9 92.5  85.5 68.8 51.5  67.0 48.1 34.5"),
    ("baseline", "rgbflow"): _row("95.8 93.9 93.5  78.0 61.7 46.1  68.1 49.1 34.9"),
    ("ours", "rgbflow"): _row("95.3 93.4 93.0  86.0 70.7 56.4  68.1 51.1 38.6"),
}

# Table 2 (non-boundary pixels, RGB + flow): method -> row
TABLE2: dict[str, tuple] = {
    "baseline": _row("97.7 96.3 95.8  85.1 67.8 51.6  75.6 53.9 39.0"),
    "ours": _row("97.3 96.0 95.7  88.9 73.6 57.8  73.3 56.1 41.8"),
}

# Table 3 (RGB + flow): (training mask source, test mask source) -> row. The paper's COCO-trained FCIS is this
# project's "generic" source, its A2D-trained FCIS the "dataset" source, its ground-truth masks "gt".
TABLE3: dict[tuple[str, str], tuple] = {
    ("generic", "generic"): _row("94.7 93.0 92.6  82.4 69.4 54.1  65.1 50.9 37.9"),
    ("dataset", "dataset"): _row("95.3 93.4 93.0  86.0 70.7 56.4  68.1 51.1 38.6"),
    ("dataset", "gt"): _row("98.1 96.3 95.9  87.7 72.5 57.7  80.9 59.1 45.6"),
}

# Table 4: earlier results as printed (best of several when a work gave several), then the paper's own row.
TABLE4_PUBLISHED: tuple[tuple, ...] = (
    _row("-    -    -     47.4 49.4 30.5  -    -    -"),
    _row("85.2 85.3 84.2  61.2 60.5 43.9  -    -    -"),
    _row("83.8 83.1 81.7  -    -    41.7  -    -    -"),
    _row("90.6 89.3 88.7  73.7 61.4 48.0  49.5 42.2 29.7"),
    _row("-    -    93.0  60.0 59.9 45.0  -    -    33.4"),
)
TABLE4_OURS: tuple = _row("95.3 93.4 93.0  86.0 70.7 56.4  68.1 51.1 38.6")
TABLE4_CITED = "Xu et al. 2015 [29], Xu & Corso 2016 [28], Yan et al. 2017 [30], Kalogeiton et al. 2017 [13], Qiu et al. 2018 [23]"

# Table 5: per-category accuracy; the order of the paper's columns (background, then pairs actor by actor).
_TABLE5_COLUMNS = (
    "background",
    *(f"adult-{a}" for a in "climbing crawling eating jumping rolling running walking none".split()),
    *(f"baby-{a}" for a in "climbing crawling rolling walking none".split()),
    *(f"ball-{a}" for a in "flying jumping rolling none".split()),
    *(f"bird-{a}" for a in "climbing eating flying jumping rolling walking none".split()),
    *(f"car-{a}" for a in "flying jumping rolling running none".split()),
    *(f"cat-{a}" for a in "climbing eating jumping rolling running walking none".split()),
    *(f"dog-{a}" for a in "crawling eating jumping rolling running walking".split()),
    "average",
)


def _per_category(text: str) -> dict[str, float | None]:
    values = [float(v) for v in text.split()]
    if len(values) != len(_TABLE5_COLUMNS):
        raise ValueError(f"expected {len(_TABLE5_COLUMNS)} values, got {len(values)}")
    by_name = dict(zip(_TABLE5_COLUMNS, values))
    return {name: by_name.get(name) for name in [*class_names("actor_action"), "average"]}


# (method, input) -> {category name (labels.class_names order) | "average": value}
TABLE5: dict[tuple[str, str], dict[str, float | None]] = {
    ("baseline", "rgb"): _per_category(
        "98.1  49.0 71.9 91.7 22.9 34.1 31.0 61.7 51.1  68.8 59.3 74.1 55.6 16.4  0.8 2.6 49.5 6.5"
        "  57.9 45.9 60.7 5.6 43.5 46.0 25.4  28.6 80.2 42.9 44.8 50.6  48.8 65.5 19.2 51.1 14.5 41.5 4.4"
        "  42.2 80.2 5.5 38.9 6.8 71.8  42.7"
    ),
    ("baseline", "rgbflow"): _per_category(
        "98.2  53.4 77.7 89.9 31.5 36.5 32.2 64.6 51.5  69.3 69.2 73.5 58.7 20.3  2.0 7.6 53.9 12.8"
        "  62.4 45.5 61.1 9.9 46.6 55.0 28.5  29.2 84.6 45.5 56.6 46.3  53.1 64.7 15.8 49.2 20.3 52.3 8.1"
        "  51.9 82.9 13.2 47.8 8.4 74.8  46.1"
    ),
    ("ours", "rgb"): _per_category(
        "96.2  76.7 76.3 95.5 27.6 59.1 49.5 56.4 62.2  83.0 75.3 88.6 57.5 8.9  5.4 28.6 65.8 12.6"
        "  68.3 48.6 81.6 29.7 57.9 54.5 3.0  53.0 94.3 58.9 56.2 37.5  58.2 74.6 32.8 82.1 34.6 37.0 4.0"
        "  46.1 77.9 8.8 48.4 19.5 70.3  51.5"
    ),
    ("ours", "rgbflow"): _per_category(
        "96.4  73.2 79.7 93.1 43.0 48.1 53.0 61.1 66.1  83.3 77.3 86.3 61.0 37.0  26.7 30.8 81.1 18.5"
        "  63.2 50.5 80.2 22.2 65.0 61.9 3.0  34.9 97.9 62.3 75.7 62.9  62.8 75.7 30.9 75.7 46.1 49.4 6.7"
        "  49.2 81.3 35.7 61.9 27.0 71.0  56.4"
    ),
}

# Computational complexity paragraph: milliseconds per frame on one Nvidia K80 (and one Xeon 2.4 GHz CPU).
# "baseline_total" includes optical flow; the baseline network alone is therefore about 395 - 350 = 45 ms.
TIMING_MS: dict[str, float] = {
    "flow": 350.0,
    "masks": 300.0,
    "region": 450.0,
    "ours_total": 1100.0,
    "baseline_total": 395.0,
}
TIMING_DEVICE = "Nvidia K80 GPU, Intel Xeon 2.4 GHz CPU"
