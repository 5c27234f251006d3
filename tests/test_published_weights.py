"""torchvision's published weight files load where a user points them. The files are made here, in the layouts
torchvision publishes them in, with random values (nothing is downloaded): ImageNet ResNet-101 with and without
batch norm counters into both stage-1 streams and FCIS's backbone; COCO Mask R-CNN as the generic source (used as
is, so loaded strictly) and as the start of the dataset one (class heads of another shape re-initialised)."""

from __future__ import annotations

import logging
from collections import OrderedDict

import pytest
import torch
import torchvision
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
from torchvision.ops.misc import FrozenBatchNorm2d

from conftest import schema_section
from a2dpipe.errors import A2DError
from a2dpipe.masks import train as train_module
from a2dpipe.masks.backbones import DilatedResNet, load_imagenet_weights
from a2dpipe.masks.fcis import fcis
from a2dpipe.masks.model import build_mask_model, load_mask_model
from a2dpipe.segmentation.models import build_front_end
from test_masks import make_frames_shard

COUNTER = "num_batches_tracked"


def random_state(model: torch.nn.Module, seed: int) -> OrderedDict:
    """``model``'s state dict with every value random (batch norm statistics and counters included), so that a
    tensor left as the loader's model initialised it can never pass for one loaded from the file. Small weights
    and positive variances: the network still computes finite values."""
    generator = torch.Generator().manual_seed(seed)
    state = OrderedDict()
    for key, value in model.state_dict().items():
        if key.endswith("running_var"):
            state[key] = torch.rand(value.shape, generator=generator) + 0.5
        elif value.is_floating_point():
            state[key] = torch.randn(value.shape, generator=generator) * 0.05
        else:
            state[key] = torch.randint(1, 1000, value.shape, generator=generator, dtype=value.dtype)
    return state


def _assert_holds(state: dict, expected: dict, skip=()):
    for key, value in expected.items():
        if not key.startswith(tuple(skip)):
            assert torch.equal(state[key], value), key


# --- ImageNet ResNet-101 ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def resnet101_files(tmp_path_factory):
    """(state, file with counters, file without them): torchvision's ImageNet ResNet-101 state dict as published,
    older files (``resnet101-63fe2227.pth``) having no ``num_batches_tracked`` entries."""
    state = random_state(torchvision.models.resnet101(weights=None), seed=0)
    folder = tmp_path_factory.mktemp("imagenet")
    with_counters, without = folder / "resnet101-cd907fc2.pth", folder / "resnet101-63fe2227.pth"
    torch.save(state, with_counters)
    torch.save(OrderedDict((k, v) for k, v in state.items() if not k.endswith(COUNTER)), without)
    return state, with_counters, without


def test_imagenet_resnet101_loads_into_both_streams_with_or_without_counters(resnet101_files):
    state, with_counters, without = resnet101_files
    front_end = build_front_end(backbone="resnet101", streams=("rgb", "flow"), rgb_weights=str(without),
                                flow_weights=str(with_counters))
    rgb, flow = (front_end.streams[name].state_dict() for name in ("rgb", "flow"))
    weights = {k: v for k, v in state.items() if not k.endswith(COUNTER)}
    _assert_holds(rgb, weights, skip=("fc.",))
    _assert_holds(flow, state, skip=("fc.",))  # counters too
    assert all(int(v) == 0 for k, v in rgb.items() if k.endswith(COUNTER))  # none in the file: the model's own


def test_imagenet_resnet101_loads_into_the_fcis_backbone_with_or_without_counters(resnet101_files):
    state, with_counters, without = resnet101_files
    model = fcis(backbone="resnet101", num_classes=2, min_size=64, max_size=96, imagenet_weights=without)
    body = model.backbone.body.state_dict()
    assert not any(k.endswith(COUNTER) for k in body)  # frozen batch norm, as FCIS fine-tunes
    _assert_holds(state, body)
    backbone = DilatedResNet(101, frozen=True)
    load_imagenet_weights(backbone, with_counters)  # the counters have nowhere to go and are not an error
    _assert_holds(state, backbone.body.state_dict())


# --- COCO Mask R-CNN ---------------------------------------------------------------------------------------------


def published_maskrcnn(num_classes: int = 91) -> MaskRCNN:
    """torchvision's ``maskrcnn_resnet50_fpn`` as its COCO file was trained: frozen batch norm, so the file holds
    no batch norm counters (the layout of ``maskrcnn_resnet50_fpn_coco-bf2d0c1e.pth``)."""
    backbone = _resnet_fpn_extractor(torchvision.models.resnet50(weights=None, norm_layer=FrozenBatchNorm2d), 3)
    return MaskRCNN(backbone, num_classes=num_classes)


def _masks_config(**masks) -> dict:
    cfg = dict(model="maskrcnn", backbone="resnet50_fpn", min_size=64, max_size=96, finetune_iterations=1,
               batch_size=1, optimizer="sgd", lr=0.001, checkpoint_every=10, score_threshold=0.0, max_regions=5)
    cfg.update(masks)
    return {"seed": 0, "device": "cpu", "masks": schema_section("masks", cfg)}


@pytest.fixture(scope="module")
def coco_maskrcnn(tmp_path_factory):
    """(state, path) of a stand-in for torchvision's published COCO Mask R-CNN file."""
    state = random_state(published_maskrcnn(), seed=1)
    assert not any(k.endswith(COUNTER) for k in state)
    path = tmp_path_factory.mktemp("coco") / "maskrcnn_resnet50_fpn_coco-bf2d0c1e.pth"
    torch.save(state, path)
    return state, path


@pytest.fixture(scope="module")
def coco_generic(coco_maskrcnn, tmp_path_factory):
    """(checkpoint dict, path) of the generic source made from the COCO file by ``train-mask-model``."""
    out = tmp_path_factory.mktemp("generic") / "model.pt"
    config = _masks_config(coco_checkpoint=str(coco_maskrcnn[1]))
    return train_module.train_mask_model(config, "generic", [], out), out


def test_coco_maskrcnn_is_the_generic_source_as_is(coco_maskrcnn, coco_generic):
    (state, _), (checkpoint, out) = coco_maskrcnn, coco_generic
    assert checkpoint["steps"] == 0 and checkpoint["class_agnostic"]
    assert checkpoint["model"].keys() == state.keys()
    _assert_holds(checkpoint["model"], state)
    model, _ = load_mask_model(out)
    with torch.inference_mode():
        detections = model([torch.rand(3, 64, 80)])[0]
    assert detections["masks"].shape[1:] == (1, 64, 80)


def test_coco_maskrcnn_starts_the_dataset_model_with_new_class_heads(coco_maskrcnn, coco_generic, tmp_path, caplog):
    (state, path), (_, generic) = coco_maskrcnn, coco_generic
    config = _masks_config(coco_checkpoint=str(path))
    arch = train_module.model_arch(config["masks"], "dataset", train_module.NUM_CLASSES["dataset"])
    model = build_mask_model(**arch)
    with caplog.at_level(logging.INFO, logger="a2dpipe.checkpoint"):
        train_module._load_start(model, generic, arch, config)
    heads = ("roi_heads.box_predictor.", "roi_heads.mask_predictor.mask_fcn_logits.")
    _assert_holds(state, {k: v for k, v in model.state_dict().items() if not k.startswith(heads)})
    # the class heads are said once, as of another shape with both shapes, not as both missing and unused
    message = next(r.getMessage() for r in caplog.records if "loaded" in r.getMessage())
    assert "the rest: 6 of another shape: " in message and "missing" not in message and "unused" not in message
    assert "roi_heads.box_predictor.cls_score.weight (91, 1024) in the file, (8, 1024) in the model" in message

    shard = make_frames_shard(tmp_path / "shard-000.h5", videos=2, frames=1)
    tuned = train_module.train_mask_model(config, "dataset", [shard], tmp_path / "dataset" / "model.pt",
                                          start=generic)
    assert tuned["steps"] == 1 and tuned["start"].startswith(str(generic))
    frozen = "backbone.body.layer1.0.conv1.weight"  # torchvision's fine-tuning layout trains only the last stages
    assert torch.equal(tuned["model"][frozen], state[frozen])


def _tiny_coco(path, num_classes: int = 91, drop=(), extra=None):
    """A COCO file for the tiny Mask R-CNN: ``drop`` names left out, ``extra`` tensors added."""
    torch.manual_seed(0)
    state = build_mask_model(backbone="tiny", num_classes=num_classes, min_size=48, max_size=64).state_dict()
    state = {k: v for k, v in state.items() if k not in drop} | (extra or {})
    torch.save(state, path)
    return path


@pytest.mark.parametrize("case, phrase", [
    ("missing", "2 of the model's tensors missing from the file: roi_heads.mask_head.0.0.weight, "
                "rpn.head.conv.0.0.bias"),
    ("unused", "1 tensors of the file unused: roi_heads.extra.weight"),
    ("shape", "6 of another shape: roi_heads.box_predictor.bbox_pred.bias (324) in the file, (364) in the model"),
], ids=["missing", "unused", "shape"])
def test_a_coco_file_that_does_not_cover_the_generic_model_is_an_error_naming_each_tensor(tmp_path, case, phrase):
    files = {
        "missing": lambda p: _tiny_coco(p, drop=("roi_heads.mask_head.0.0.weight", "rpn.head.conv.0.0.bias")),
        "unused": lambda p: _tiny_coco(p, extra={"roi_heads.extra.weight": torch.zeros(2)}),
        "shape": lambda p: _tiny_coco(p, num_classes=81),  # the official FCIS's class count
    }
    path = files[case](tmp_path / "coco.pth")
    config = _masks_config(backbone="tiny", min_size=48, max_size=64, coco_checkpoint=str(path))
    out = tmp_path / "generic" / "model.pt"
    with pytest.raises(A2DError) as err:
        train_module.train_mask_model(config, "generic", [], out)
    message = str(err.value)
    assert message.startswith(f"{path}: not a COCO MaskRCNN checkpoint: ") and phrase in message
    assert not out.exists()
    if case == "shape":  # said once, as of another shape: not also as missing and unused
        assert "missing" not in message and "unused" not in message
