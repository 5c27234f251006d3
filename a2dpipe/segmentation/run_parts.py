"""The parts of one prediction variant, found in a run's results folder, for ``a2dpipe segment``.

A run (``--run RESULTS``; frames and flow under ``--shared``, the run's ``shared_results``, when set) holds the
variant's model files and the settings they were made with (their stamps, :mod:`a2dpipe.config`):

====================================  =============================================================================
file                                  what segment takes from it
====================================  =============================================================================
``models/stage1/<input>/model.pt``    the network of ``baseline`` and ``maskvote`` (stage 1); its settings
``models/stage2/<input>-<T>/model.pt`` the network of ``ours`` trained on train source ``T``; its settings
``masks/models/<S>/model.pt``         the mask model of test source ``S`` (``maskvote``, ``ours``)
``masks/<S>/shard-*.h5`` (one)        the mask model's inference settings (score threshold, regions kept, batch)
``<shared>/frames/shard-*.h5`` (one)  the frame height the networks saw; ``frames.neighbour`` (the flow partner)
``<shared>/flow/<method>/shard-*.h5`` the flow method and its settings (rgbflow)
``predictions/test/<variant>.h5``     optional: the settings ``predict`` used (inference batch, the mask vote's)
====================================  =============================================================================

All their stamps must agree (:func:`a2dpipe.config.check_consistent`): a model file from another configuration
is refused, naming it. Test source ``gt`` has no model (ground truth needs annotations) and is refused.

Example:
    >>> parse_variant("ours/rgbflow/dataset")
    Variant(kind='ours', input='rgbflow', train_source='dataset', test_source='dataset')
    >>> parse_variant("baseline/rgb")
    Variant(kind='baseline', input='rgb', train_source='none', test_source='none')
"""

from __future__ import annotations

import copy
import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from a2dpipe.config import check_consistent, hdf5_stamp, read_stamp, resolve
from a2dpipe.errors import A2DError
from a2dpipe.variants import NONE, Variant, check_variant, variant_name

__all__ = ["RunParts", "find_parts", "parse_variant", "DEFAULT_VARIANT"]

log = logging.getLogger(__name__)

DEFAULT_VARIANT = "ours/rgbflow/dataset"
SNAKEMAKE_HINT = "run `snakemake {path}` in the run's working folder, or point --run at a run that has it"


def parse_variant(text: str) -> Variant:
    """``kind/input[/train source[/test source]]`` -> a :class:`Variant`. The test source of ``ours`` defaults to
    its train source; ``maskvote``'s one source is its test source. A2DError for a variant no run has."""
    parts = [p for p in str(text).split("/") if p]
    if not 2 <= len(parts) <= 4:
        raise A2DError(f"--variant {text!r}: expected kind/input[/train source[/test source]], "
                       f"e.g. {DEFAULT_VARIANT} or baseline/rgb")
    kind, inp, *sources = parts
    if kind == "maskvote" and len(sources) == 1:
        sources = [NONE, sources[0]]
    if kind == "ours" and len(sources) == 1:
        sources = sources * 2
    variant = check_variant(Variant(kind, inp, *sources))
    if variant.test_source == "gt":
        raise A2DError(f"--variant {text!r}: ground-truth regions need annotations; use the dataset or generic "
                       f"mask source")
    if variant.kind != "baseline" and variant.test_source == NONE:
        raise A2DError(f"--variant {text!r}: a {variant.kind} variant needs a mask source (dataset or generic)")
    return variant


@dataclass
class RunParts:
    """Everything a variant's chain needs: model files, and ``settings`` (the run's, shaped like a config)."""

    variant: Variant
    network: Path
    mask_model: Path | None
    settings: dict
    height: int
    stamped: dict  # file -> its stamp settings, for the output's provenance

    @property
    def name(self) -> str:
        return variant_name(self.variant)


def _need(path: Path) -> Path:
    if not path.is_file():
        raise A2DError(f"{path}: not found; {SNAKEMAKE_HINT.format(path=path)}")
    return path


def _first_shard(folder: Path, what: str) -> Path:
    shards = sorted(folder.glob("shard-*.h5"))
    if not shards:
        raise A2DError(f"{folder}: no {what} (shard-*.h5) found; {SNAKEMAKE_HINT.format(path=folder / 'shard-000.h5')}")
    return shards[0]


def _flow_shard(shared: Path, encoding: dict) -> Path:
    """The flow cache the run's rgbflow models were trained on: the one method under ``flow/`` (several: the one
    whose encoding the model's stamp names)."""
    candidates = [_first_shard(d, "flow caches") for d in sorted((shared / "flow").glob("*")) if d.is_dir()
                  and any(d.glob("shard-*.h5"))]
    if not candidates:
        raise A2DError(f"{shared / 'flow'}: no flow caches; the rgbflow variants need the run's flow settings "
                       f"(pass --shared when the run's shared_results is another folder)")
    if len(candidates) > 1:
        agree = [c for c in candidates
                 if all((read_stamp_file(c, "flow cache").get("flow") or {}).get(k) == v for k, v in encoding.items())]
        if len(agree) != 1:
            raise A2DError(f"{shared / 'flow'}: flow caches of several methods ({', '.join(c.parent.name for c in candidates)}); "
                           f"keep only the one the run was trained with")
        return agree[0]
    return candidates[0]


def read_stamp_file(path: Path, what: str = "artifact") -> dict:
    """Settings recorded in an HDF5 artifact or a model file (``what``: ``"stage-1 model"``, ``"mask model"`` ...;
    :func:`a2dpipe.checkpoint.load_model_file`), ``{}`` when it records none."""
    if path.suffix == ".h5":
        return hdf5_stamp(path, what) or {}
    from a2dpipe.checkpoint import load_model_file

    return read_stamp(load_model_file(path, what)["provenance"]) or {}


def _merge(into: dict, settings: dict) -> dict:
    for key, value in settings.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = copy.deepcopy(value)
    return into


def _frame_height(frames_shard: Path) -> int:
    """The most common frame height of a frames shard (A2D's are all 320 px): the networks' input height."""
    from a2dpipe.dataset.frames import FrameStore

    with FrameStore(frames_shard) as store:
        heights = Counter(int(store.group(video, frame)["rgb"].shape[0]) for video, frame in store.keys())
    if not heights:
        raise A2DError(f"{frames_shard}: holds no frames; its height is the one the models were trained at")
    return heights.most_common(1)[0][0]


def find_parts(run: str | Path, variant: Variant, shared: str | Path | None = None) -> RunParts:
    """The parts of ``variant`` in results folder ``run`` (frames and flow under ``shared``, default ``run``);
    A2DError naming the first file that is missing or disagrees with the others."""
    run = Path(run)
    shared = Path(shared) if shared else run
    if not run.is_dir():
        raise A2DError(f"{run}: run folder not found (--run takes a results folder of a finished run)")
    v = variant
    if v.kind == "ours":
        network = _need(run / "models" / "stage2" / f"{v.input}-{v.train_source}" / "model.pt")
    else:
        network = _need(run / "models" / "stage1" / v.input / "model.pt")
    files = {network: f"stage-{2 if v.kind == 'ours' else 1} model"}
    mask_model = None
    if v.kind != "baseline":
        mask_model = _need(run / "masks" / "models" / v.test_source / "model.pt")
        files[mask_model] = "mask model"
        files[_first_shard(run / "masks" / v.test_source, "region-mask caches")] = "region-mask cache"
    frames = _first_shard(shared / "frames", "frames shards")
    files[frames] = "frames shard"
    stamps = {str(path): read_stamp_file(path, what) for path, what in files.items()}
    if v.input == "rgbflow":
        flow = _flow_shard(shared, stamps[str(network)].get("flow", {}))
        stamps[str(flow)] = read_stamp_file(flow, "flow cache")
    predictions = run / "predictions" / "test" / v.kind / v.input / v.train_source / f"{v.test_source}.h5"
    if predictions.is_file():
        stamps[str(predictions)] = read_stamp_file(predictions, "predictions file")
    check_consistent(stamps)
    settings: dict = {}
    for stamp in stamps.values():
        _merge(settings, stamp)
    if v.kind == "maskvote" and str(predictions) not in stamps:
        log.info("%s not found: the mask vote takes the schema's segmentation.stage2 settings", predictions)
    # the artifacts record what their commands read; what segment needs beyond that (a stage-1 run's inference
    # batch, the mask vote's stage2 without its predictions) is the schema's default
    sections = ("segmentation", "flow", "frames")
    filled = resolve({k: settings.get(k, {}) for k in sections}, "the run's recorded settings", partial=True)
    settings.update({k: filled[k] for k in sections})
    settings.setdefault("device", "auto")
    return RunParts(v, network, mask_model, settings, _frame_height(frames), stamps)
