"""Command line: ``a2dpipe <command> ...`` (also ``python -m a2dpipe``). Snakemake rules call these commands.

Each command lives in its stage module, which provides ``configure_parser(parser)`` and ``run(args)``. Modules
are imported only when their command runs, so ``a2dpipe --help`` stays instant and a stage's heavy imports
(torch, OpenCV) cost nothing to the others.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import logging
import os
import signal
import sys
import types
from pathlib import Path

from a2dpipe import __version__
from a2dpipe.integrity import code_digest, set_command
from a2dpipe.errors import A2DError

__all__ = ["COMMANDS", "main", "build_parser", "import_command", "command_digest", "dynamo_deferred", "setup_logging"]

# command -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "synthesize": ("a2dpipe.dataset.synthetic", "write the synthetic A2D-format benchmark"),
    "index": ("a2dpipe.dataset.index", "list the annotated frames of a dataset and assign shards"),
    "extract-frames": ("a2dpipe.dataset.frames", "decode annotated frames and their flow neighbours for one shard"),
    "flow": ("a2dpipe.flow.stage", "optical flow and its RGB encoding for one shard"),
    "train-mask-model": ("a2dpipe.masks.train", "train the instance-segmentation model behind a mask source"),
    "convert-weights": ("a2dpipe.masks.convert", "published weights into this project's model files (fcis-mxnet)"),
    "region-masks": ("a2dpipe.masks.stage", "cache candidate region masks of one shard to HDF5"),
    "mask-quality": ("a2dpipe.masks.quality", "COCO mask AP of the mask sources on the test split"),
    "train": ("a2dpipe.segmentation.train", "train the segmentation network (stage 1 or stage 2)"),
    "predict": ("a2dpipe.segmentation.predict", "label maps for every test frame"),
    "segment": ("a2dpipe.segmentation.segment", "segment any video with a run's models: overlay, label maps, summary"),
    "evaluate": ("a2dpipe.evaluation.evaluate", "metrics of one prediction set"),
    "tables": ("a2dpipe.evaluation.tables", "the paper's tables from this run's metrics"),
    "metrics-table": ("a2dpipe.evaluation.metrics_table", "every variant's metrics with intervals (validation split)"),
    "aggregate": ("a2dpipe.evaluation.aggregate", "Tables 1-3 and the claims across the runs of several seeds"),
    "compare-masks": ("a2dpipe.evaluation.mask_models", "Table 3 and mask AP of runs with different mask models"),
    "timing": ("a2dpipe.evaluation.timing", "milliseconds per frame of each stage on this machine"),
    "estimate": ("a2dpipe.evaluation.estimate", "wall time of each stage on one GPU: FLOP count x assumed throughput"),
    "report": ("a2dpipe.evaluation.report", "figures of the HTML report (per-category bars, loss curves, overlays)"),
    "config-reference": ("a2dpipe.config_reference", "the configuration reference page, from the config schema"),
}


DYNAMO_UTILS = "torch._dynamo.utils"


@contextlib.contextmanager
def dynamo_deferred():
    """Within it, importing torchvision does not import ``torch._dynamo``.

    ``torchvision.ops.roi_align`` imports ``is_compile_supported`` from ``torch._dynamo.utils`` when it loads, and
    so all of the compiler: ~3 CPU-s in each of the main job's 17 torchvision jobs, for a helper it calls only when
    its compiled ops are missing or deterministic CUDA is asked for. A stand-in takes the module's place in
    ``sys.modules``: its helper, and any other name asked of it, import the real module first (the stand-in steps
    aside for it), so code that does need the compiler gets it. The stand-in leaves on exit.
    """
    if "torch._dynamo" in sys.modules or DYNAMO_UTILS in sys.modules:  # loaded, or deferred by an outer call
        yield
        return
    stand_in = types.ModuleType(DYNAMO_UTILS)

    def real() -> types.ModuleType:
        if sys.modules.get(DYNAMO_UTILS) is stand_in:
            del sys.modules[DYNAMO_UTILS]
        return importlib.import_module(DYNAMO_UTILS)

    def module_getattr(name: str):
        if name.startswith("__"):  # the import system's probes (__path__, ...) must not load the compiler
            raise AttributeError(name)
        return getattr(real(), name)

    stand_in.__getattr__ = module_getattr
    stand_in.is_compile_supported = lambda device_type: real().is_compile_supported(device_type)
    sys.modules[DYNAMO_UTILS] = stand_in
    try:
        yield
    finally:
        if sys.modules.get(DYNAMO_UTILS) is stand_in:
            del sys.modules[DYNAMO_UTILS]


def import_command(name: str) -> types.ModuleType:
    """The stage module of command ``name`` (a key of :data:`COMMANDS`); :func:`main` imports it, as it runs it,
    within :func:`dynamo_deferred`."""
    return importlib.import_module(COMMANDS[name][0])


def command_digest(name: str) -> str:
    """Digest of the source command ``name`` runs (:func:`a2dpipe.integrity.code_digest` of its stage module): the
    rules pass it as a param, so a code edit reruns the rules of the commands it reaches."""
    return code_digest(COMMANDS[name][0])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="a2dpipe", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"a2dpipe {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="command", required=True)
    for name, (_, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


def setup_logging(log_file: str | os.PathLike | None = None, level: int = logging.INFO) -> logging.Logger:
    """Log to stderr and, when given, to ``log_file`` (the rule's ``log:``)."""
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_file:
        Path(log_file).parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_file, mode="w"))
    logging.basicConfig(level=level, format="%(asctime)s %(name)s %(levelname)s %(message)s", handlers=handlers, force=True)
    return logging.getLogger("a2dpipe")


def _log_option(argv: list[str]) -> str | None:
    """The value of ``--log`` in ``argv`` (read before the command's parser, so that its errors land there too)."""
    for i, word in enumerate(argv):
        if word == "--log" and i + 1 < len(argv):
            return argv[i + 1]
        if word.startswith("--log="):
            return word.split("=", 1)[1]
    return None


def main(argv: list[str] | None = None) -> int:
    """Run one command. Its log (``--log``: the rule's log file) receives everything, its failure included: an
    :class:`A2DError` as one line, any other exception with its traceback; both also go to stderr."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in COMMANDS:
        build_parser().parse_args(argv)  # prints help or the "invalid choice" error
        return 2
    name, rest = argv[0], argv[1:]
    # A write beyond the file-size limit (ulimit -f) then fails with EFBIG, which the writers report by file name,
    # instead of killing the process with SIGXFSZ.
    with contextlib.suppress(ValueError):  # only the main thread may set a handler
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    log = setup_logging(_log_option(rest))
    set_command(name, COMMANDS[name][0])
    try:
        with dynamo_deferred():  # stages import torchvision lazily too (a mask model only when one is used)
            module = import_command(name)
            parser = argparse.ArgumentParser(prog=f"a2dpipe {name}", description=COMMANDS[name][1])
            parser.add_argument("--log", help="also write the log to this file")
            module.configure_parser(parser)
            args = _parse(parser, rest, log)
            module.run(args)
    except A2DError as err:
        log.error("a2dpipe %s: error: %s", name, err)
        return 1
    except SystemExit as exit_:
        return exit_.code if isinstance(exit_.code, int) else 1
    except Exception:  # noqa: BLE001 - a bug or a library failure: its traceback belongs in the job's log
        log.exception("a2dpipe %s: failed with an unexpected error (a bug: please report it with this log)", name)
        return 1
    finally:
        set_command(None)
    return 0


def _parse(parser: argparse.ArgumentParser, rest: list[str], log) -> argparse.Namespace:
    """``parser.parse_args(rest)``; a usage error is also logged (argparse prints it to stderr only)."""
    try:
        return parser.parse_args(rest)
    except SystemExit as exit_:
        if exit_.code:
            log.error("a2dpipe: invalid arguments: %s (see `%s --help`)", " ".join(rest), parser.prog)
        raise


if __name__ == "__main__":
    raise SystemExit(main())
