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
(``predictions/{kind}/{input}/{train_source}/{test_source}.h5``), and ``a2dpipe predict`` takes each as its own
option: nothing splits a joined name. The one joined name, :func:`variant_name`, is for display: the
``variant`` of the prediction and evaluation files, on which tables, claims and the report key.

Example:
    >>> variant_name(Variant("ours", "rgbflow", "dataset", "gt"))
    'ours-rgbflow-dataset-gt'
    >>> variant_name(Variant("baseline", "rgb"))
    'baseline-rgb'
"""

from __future__ import annotations

from typing import NamedTuple

from a2dpipe.io import A2DError

__all__ = ["NONE", "KINDS", "INPUTS", "TRAINED_SOURCES", "TEST_SOURCES", "Variant", "check_variant", "variant_name"]

NONE = "none"  # placeholder of a source a kind does not use: keeps every path four parts deep
KINDS = ("baseline", "maskvote", "ours")
INPUTS = ("rgb", "rgbflow")
TRAINED_SOURCES = ("dataset", "generic")
TEST_SOURCES = ("dataset", "generic", "gt")


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


def variant_name(variant: Variant) -> str:
    """The display name: the parts a kind uses, joined by dashes (``baseline-rgb``, ``maskvote-rgbflow-dataset``,
    ``ours-rgbflow-dataset-gt``)."""
    return "-".join(part for part in check_variant(variant) if part != NONE)
