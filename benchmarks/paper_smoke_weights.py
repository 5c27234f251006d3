"""The stand-in weight files of ``config/paper-smoke.yaml``: random values in the layouts the real files are
published in, written where the config points (nothing is downloaded):

    python benchmarks/paper_smoke_weights.py --configfile config/paper-smoke.yaml
    snakemake tables --cores 2 --configfile config/paper-smoke.yaml

- ``segmentation.rgb_weights`` / ``flow_weights``: torchvision's ImageNet ResNet-101 state dict as the older
  published file (``resnet101-63fe2227.pth``) holds it, without ``num_batches_tracked`` entries;
- ``masks.coco_checkpoint``: the official FCIS ResNet-101 (msracver/FCIS, 81 COCO classes) as an MXNet ``.params``
  file (``fcis_coco-0000.params``: ``arg:`` / ``aux:`` names, the official shapes), written with numpy, read back by
  the project's reader, then converted by ``a2dpipe convert-weights fcis-mxnet`` into the file the config names;
- ``flow.weights``: a flownet2-pytorch checkpoint (``epoch``, ``best_EPE`` as numpy numbers, ``state_dict``).

The writers are the tests' (tests/test_published_weights.py, tests/test_convert_weights.py). The FCIS values are
scaled as ``benchmarks/fcis_mxnet.py`` scales them, so that 101 layers keep activations finite and the heads
propose boxes of a sensible size; files already present are kept (``--force`` rewrites them).
"""

from __future__ import annotations

import argparse
import sys
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch
import torchvision
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]  # this checkout's package, and the tests' writers

from a2dpipe.cli import main as a2dpipe_main  # noqa: E402
from a2dpipe.flow.flownet import flownet2  # noqa: E402
from a2dpipe.masks import convert  # noqa: E402
from a2dpipe.masks.model import build_mask_model  # noqa: E402
from a2dpipe.masks.mxnet_params import read_params  # noqa: E402
from test_convert_weights import official_arrays, write_params  # noqa: E402
from test_published_weights import COUNTER, random_state  # noqa: E402

# standard deviation x sqrt(fan-in) per official layer (He's sqrt(2) elsewhere): conv1 sees 0-255 input, the heads
# give scores and box deltas of order one and 0.1
HEAD_SCALE = {"conv1": np.sqrt(2.0) / 128, "rpn_cls_score": 0.1, "rpn_bbox_pred": 0.1, "fcis_cls_seg": 1.0,
              "fcis_bbox": 0.2}
FCIS_CLASSES = 81


def config_paths(configfiles: list[Path]) -> dict[str, Path]:
    """The weight files the configs name (later files override earlier ones, as Snakemake merges them)."""
    merged: dict = {}
    for path in configfiles:
        for section, values in (yaml.safe_load(path.read_text()) or {}).items():
            merged[section] = {**merged.get(section, {}), **values} if isinstance(values, dict) else values
    wanted = {"resnet101": ("segmentation", "rgb_weights"), "flownet2": ("flow", "weights"),
              "fcis": ("masks", "coco_checkpoint")}
    paths = {}
    for name, (section, key) in wanted.items():
        value = merged.get(section, {}).get(key)
        if not value:
            raise SystemExit(f"{', '.join(map(str, configfiles))}: {section}.{key} is not set: the config names no "
                             f"file for the {name} stand-in")
        paths[name] = Path(value)
    return paths


def write_resnet101(path: Path) -> None:
    state = random_state(torchvision.models.resnet101(weights=None), seed=0)
    torch.save(OrderedDict((k, v) for k, v in state.items() if not k.endswith(COUNTER)), path)


def fcis_params(rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Random arrays of every official FCIS name and shape, ``arg:`` / ``aux:`` prefixed as MXNet saves them."""
    model = build_mask_model(model="fcis", backbone="resnet101", num_classes=FCIS_CLASSES, min_size=600,
                             max_size=1000, layout="official")
    arrays = {}
    for name, zeros in official_arrays(model).items():
        dims = zeros.shape
        if name.endswith("_weight"):
            scale = HEAD_SCALE.get(name[:-len("_weight")], np.sqrt(2.0))
            value = rng.normal(0, scale / np.sqrt(np.prod(dims[1:])), dims)
        elif name.endswith("_gamma"):
            value = rng.uniform(0.1, 0.3, dims) if "branch2c" in name else rng.uniform(0.5, 1.5, dims)
        elif name.endswith("_moving_var"):
            value = rng.uniform(0.5, 1.5, dims)
        else:  # biases, betas, moving means
            value = rng.normal(0, 0.1, dims)
        kind = "aux" if name.endswith(("_moving_mean", "_moving_var")) else "arg"
        arrays[f"{kind}:{name}"] = value.astype(np.float32)
    return arrays


def write_fcis(path: Path) -> None:
    """The official ``.params`` beside ``path``, checked by the project's reader, converted into ``path``."""
    params = path.with_name("fcis_coco-0000.params")
    arrays = fcis_params(np.random.default_rng(0))
    write_params(params, arrays)
    read = read_params(params)
    if read.keys() != arrays.keys() or not all(np.array_equal(read[k], v) for k, v in arrays.items()):
        raise SystemExit(f"{params}: the reader does not return the arrays written")
    code = a2dpipe_main(["convert-weights", convert.FORMATS[0], str(params), str(path)])
    if code not in (None, 0) or not path.is_file():
        raise SystemExit(f"{params}: a2dpipe convert-weights failed (exit {code})")


def write_flownet2(path: Path) -> None:
    torch.manual_seed(0)
    torch.save({"epoch": np.int64(0), "best_EPE": np.float64(0.0), "state_dict": flownet2().state_dict()}, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configfile", type=Path, nargs="+", default=[REPO / "config" / "paper-smoke.yaml"])
    parser.add_argument("--force", action="store_true", help="rewrite files already present")
    args = parser.parse_args()
    writers = {"resnet101": write_resnet101, "fcis": write_fcis, "flownet2": write_flownet2}
    for name, path in config_paths(args.configfile).items():
        if path.is_file() and not args.force:
            print(f"{path}: present, kept")
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        writers[name](path)
        print(f"{path}: {name} stand-in written ({path.stat().st_size / 2**20:.0f} MiB)")


if __name__ == "__main__":
    main()
