"""Prediction variants: the four parts that say which network predicts, from which input, with which regions.

=================  ====================================================================================
part               values
=================  ====================================================================================
``kind``           ``baseline`` (stage-1 network, ASPP head), ``maskvote`` (stage-1 probabilities averaged
                   inside each test region), ``ours`` (stage-2 network, region head)
``input``          ``rgb``, ``rgbflow``
``train_source``   mask source stage 2 trained on: ``dataset``, ``generic``; ``none`` unless ``ours``
``test_source``    mask source of the test regions: ``dataset``, ``generic``, ``gt``; ``none`` for ``baseline``
=================  ====================================================================================

Each part is a Snakemake wildcard of the prediction and evaluation paths
(``predictions/{split}/{kind}/{input}/{train_source}/{test_source}.h5``), and ``a2dpipe predict`` takes each as its own
option: nothing splits a joined name. The one joined name, :func:`variant_name`, is for display: the
``variant`` of the prediction and evaluation files, on which tables, claims and the report key. They name the
variants they report with :func:`variant_of` (a kind on an input, with the paper's ``dataset`` masks unless told
otherwise), never by writing a joined name out.

Which mask sources a run has (:func:`unavailable_sources`): ``dataset`` and ``gt`` always; ``generic`` with a COCO
model (``masks.coco_checkpoint``, used as is) or on the synthetic benchmark (trained on its non-actor objects).
A real-format dataset without a COCO file has no generic source: its dataset mask model then starts from ImageNet
weights or from scratch, and the workflow refuses, when it builds the DAG, a region run that names ``generic``.

Example:
    >>> variant_name(Variant("ours", "rgbflow", "dataset", "gt"))
    'ours-rgbflow-dataset-gt'
    >>> variant_name(Variant("baseline", "rgb"))
    'baseline-rgb'
"""

from __future__ import annotations

from typing import NamedTuple

from a2dpipe.errors import A2DError

__all__ = ["NONE", "KINDS", "INPUTS", "TRAINED_SOURCES", "TEST_SOURCES", "MAIN_SOURCE", "Variant", "check_variant",
           "variant_of", "all_variants", "variant_name", "unavailable_sources", "check_region_runs"]

NONE = "none"  # placeholder of a source a kind does not use: keeps every path four parts deep
KINDS = ("baseline", "maskvote", "ours")
INPUTS = ("rgb", "rgbflow")
TRAINED_SOURCES = ("dataset", "generic")
TEST_SOURCES = ("dataset", "generic", "gt")
MAIN_SOURCE = "dataset"  # the paper's default: region masks of a model trained on the target dataset


class Variant(NamedTuple):
    kind: str
    input: str
    train_source: str = NONE
    test_source: str = NONE


def _allowed(kind: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(train sources, test sources) a kind accepts."""
    if kind == "baseline":
        return (NONE,), (NONE,)
    if kind == "maskvote":
        return (NONE,), TEST_SOURCES
    return TRAINED_SOURCES, TEST_SOURCES


def check_variant(variant: Variant) -> Variant:
    """``variant`` itself; A2DError naming the part that no variant has (a source its kind does not take, too)."""
    if variant.kind not in KINDS:
        raise A2DError(f"variant kind {variant.kind!r}: expected one of {', '.join(KINDS)}")
    if variant.input not in INPUTS:
        raise A2DError(f"variant input {variant.input!r}: expected one of {', '.join(INPUTS)}")
    trained, tested = _allowed(variant.kind)
    if variant.train_source not in trained:
        raise A2DError(f"a {variant.kind} variant takes train source {' or '.join(trained)}, "
                       f"not {variant.train_source!r}")
    if variant.test_source not in tested:
        raise A2DError(f"a {variant.kind} variant takes test source {' or '.join(tested)}, "
                       f"not {variant.test_source!r}")
    return variant


def variant_of(kind: str, input: str, train_source: str = MAIN_SOURCE, test_source: str = MAIN_SOURCE) -> Variant:
    """The variant of ``kind`` on ``input`` with these mask sources where the kind takes one (the baseline takes
    none, the mask vote a test source only), by default the paper's: ``variant_of("ours", "rgb")`` is
    ``Variant("ours", "rgb", "dataset", "dataset")``."""
    trained, tested = _allowed(kind)
    return check_variant(Variant(kind, input, train_source if trained != (NONE,) else NONE,
                                 test_source if tested != (NONE,) else NONE))


def all_variants() -> list[Variant]:
    """Every variant :func:`check_variant` accepts, by kind, input, train source and test source."""
    return [Variant(kind, inp, train, test) for kind in KINDS for inp in INPUTS
            for train in _allowed(kind)[0] for test in _allowed(kind)[1]]


def variant_name(variant: Variant) -> str:
    """The display name: the parts a kind uses, joined by dashes (``baseline-rgb``, ``maskvote-rgbflow-dataset``,
    ``ours-rgbflow-dataset-gt``)."""
    return "-".join(part for part in check_variant(variant) if part != NONE)


def unavailable_sources(config: dict) -> dict[str, str]:
    """``{source: why this run lacks it}`` for the mask sources ``config`` cannot make (empty: all of them).

    ``generic`` needs a COCO model (``masks.coco_checkpoint``) or the synthetic benchmark's non-actor objects, which
    real A2D does not annotate (``dataset.synthetic: false``).
    """
    if config["masks"]["coco_checkpoint"] or config["dataset"]["synthetic"]:
        return {}
    return {"generic": "dataset.synthetic is false and masks.coco_checkpoint is null: a real-format dataset "
                       "annotates no non-actor objects to train a generic model on, and no COCO model is given"}


def check_region_runs(runs, config: dict) -> None:
    """A2DError naming each ``experiments.regions`` entry (``[input, train source, test source]``) that uses a mask
    source :func:`unavailable_sources` says this run lacks, why, and the two ways out."""
    missing = unavailable_sources(config)
    bad = [run for run in runs if missing.keys() & set(run[1:])]
    if not bad:
        return
    entries = ", ".join("[" + ", ".join(run) + "]" for run in bad)
    sources = sorted(missing.keys() & {s for run in bad for s in run[1:]})
    reasons = "; ".join(f"{s}: {missing[s]}" for s in sources)
    raise A2DError(
        f"config experiments.regions: {entries} use{'s' if len(bad) == 1 else ''} the {' and '.join(sources)} mask "
        f"source, which this run lacks ({reasons}). Remove {'that entry' if len(bad) == 1 else 'those entries'} or "
        "set masks.coco_checkpoint to a COCO model file (docs/real-a2d.md)"
    )
