"""FCIS mask model: the channel layout, assembling against a naive loop, mask voting, the MaskRCNN contract,
training, checkpoints, ImageNet and project-format COCO weights."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from test_masks import make_frames_shard
from torchvision.models import resnet50

from a2dpipe.io import A2DError
from a2dpipe.masks import MaskCache
from a2dpipe.masks import train as train_module
from a2dpipe.masks.backbones import DilatedTinyBody, TinyBody
from a2dpipe.masks.fcis import FCIS, assemble, assemble_naive, fcis, mask_voting
from a2dpipe.masks.model import build_mask_model, load_coco_checkpoint, load_mask_model, mask_model_options
from a2dpipe.masks.stage import cache_regions

REPO = Path(__file__).resolve().parents[1]


def _tiny_config(**masks) -> dict:
    """The tiny preset with ``masks.model: fcis`` (and overrides), on CPU."""
    config = yaml.safe_load((REPO / "tests" / "config.tiny.yaml").read_text())
    config["masks"].update(model="fcis", **masks)
    config["device"] = "cpu"
    return config


# --- layout and assembling ------------------------------------------------------------------------------------------


def test_channel_layout_worked_example_of_the_docstring():
    k, classes, size = 3, 3, 6
    maps = torch.arange(2 * classes * k * k, dtype=torch.float64)[None, :, None, None].expand(1, -1, 8, 8)
    out = assemble(maps, torch.tensor([[0.0, 1.0, 1.0, 6.0, 6.0]], dtype=torch.float64), k, size, 1.0)
    assert out.shape == (1, 2, classes, size, size)
    assert out[0, 1, 2, 1, 5].item() == pytest.approx(47)  # outside, class 2, cell (1, 5) -> bin (0, 2)
    assert out[0, 0, 1, 4, 0].item() == pytest.approx(15)  # inside, class 1, cell (4, 0) -> bin (2, 0)
    cell_bin = torch.arange(size) * k // size
    expected = ((torch.arange(2)[:, None, None, None] * classes + torch.arange(classes)[:, None, None]) * k
                + cell_bin[:, None]) * k + cell_bin
    torch.testing.assert_close(out[0], expected.double())


@pytest.mark.parametrize("k, size, ratio", [(3, 6, 1), (3, 7, 2), (2, 5, 3), (7, 14, 1)])
def test_assembling_matches_the_per_roi_per_bin_loop_in_values_and_gradients(k, size, ratio):
    gen = torch.Generator().manual_seed(k * 100 + size)
    maps = torch.randn(2, 2 * 4 * k * k, 9, 11, generator=gen, dtype=torch.float64, requires_grad=True)
    rois = torch.tensor([
        [0, 1.3, 2.2, 30.1, 27.7],
        [1, 0.0, 0.0, 43.0, 35.0],
        [0, 10.0, 5.0, 12.0, 9.0],  # smaller than a feature pixel
        [1, -13.0, -12.0, 50.0, 60.0],  # beyond the map on every side
        [0, 39.0, 33.0, 52.0, 55.0],  # partly outside, bottom right
    ], dtype=torch.float64)
    fast = assemble(maps, rois, k, size, 0.25, ratio)
    naive = assemble_naive(maps, rois, k, size, 0.25, ratio)
    assert fast.shape == (5, 2, 4, size, size)
    assert torch.equal(fast, naive)  # same sample points and taps, summed in the same order
    upstream = torch.randn(fast.shape, generator=gen, dtype=torch.float64)
    (grad_fast,) = torch.autograd.grad(fast, maps, upstream)
    (grad_naive,) = torch.autograd.grad(naive, maps, upstream)
    assert grad_fast.abs().sum() > 0
    torch.testing.assert_close(grad_fast, grad_naive, rtol=0, atol=1e-12)  # scatter order differs: rounding only


def test_roi_outputs_follow_the_joint_formulation():
    torch.manual_seed(0)
    heads = fcis(num_classes=3, min_size=32, max_size=64, k=3).roi_heads
    features = torch.randn(1, 96, 6, 8)
    boxes = [torch.tensor([[2.0, 3.0, 30.0, 40.0], [10.0, 0.0, 60.0, 20.0]])]
    hidden = heads.reduce(features)
    maps = heads.inside_outside(hidden), heads.box_maps(hidden)
    class_logits, mask_logits, deltas = heads._roi_outputs(maps, boxes)
    assembled = assemble(maps[0], torch.cat([torch.zeros(2, 1), boxes[0]], 1), 3, heads.roi_size, heads.spatial_scale)
    inside, outside = assembled[:, 0], assembled[:, 1]
    torch.testing.assert_close(class_logits, torch.maximum(inside, outside).mean((2, 3)))
    torch.testing.assert_close(mask_logits.sigmoid(), torch.stack([inside, outside], 1).softmax(1)[:, 0])
    assert deltas.shape == (2, 4)


# --- mask voting ----------------------------------------------------------------------------------------------------


def test_mask_voting_averages_overlapping_same_class_masks_by_score():
    box = torch.tensor([[0.0, 0.0, 8.0, 8.0]])
    mine, other = torch.full((1, 1, 4, 4), 0.2), torch.full((1, 1, 4, 4), 0.8)
    pool_boxes = torch.tensor([[0.0, 0.0, 8.0, 8.0], [0.0, 0.0, 8.0, 8.0], [0.0, 0.0, 8.0, 8.0], [20.0, 20, 28, 28]])
    pool_masks = torch.cat([mine, other, other, other])
    voted = mask_voting(box, torch.tensor([1]), mine, pool_boxes, torch.tensor([1, 1, 2, 1]),
                        torch.tensor([0.75, 0.25, 0.9, 0.9]), pool_masks)
    # class 2 and the far box do not vote: (0.75 * 0.2 + 0.25 * 0.8) / 1.0
    torch.testing.assert_close(voted, torch.full((1, 1, 4, 4), 0.35))


def test_mask_voting_resamples_a_shifted_voter_into_the_kept_box():
    kept = torch.tensor([[0.0, 0.0, 8.0, 8.0]])
    voter = torch.tensor([[0.0, 0.0, 8.0, 8.0], [4.0, 0.0, 12.0, 8.0]])  # IoU 1/3: below 0.5, then at 0.3
    masks = torch.ones(2, 1, 4, 4)
    kept_mask = torch.ones(1, 1, 4, 4)
    labels = torch.tensor([1])
    alone = mask_voting(kept, labels, kept_mask, voter, torch.tensor([1, 1]), torch.tensor([1.0, 1.0]), masks)
    torch.testing.assert_close(alone, kept_mask)
    joined = mask_voting(kept, labels, kept_mask, voter, torch.tensor([1, 1]), torch.tensor([1.0, 1.0]), masks,
                         iou_thresh=0.3)
    # the shifted voter covers the right half of the kept box only: its left cells count as 0
    assert torch.all(joined[0, 0, :, :2] == 0.5) and torch.all(joined[0, 0, :, 3] == 1.0)


# --- contract, training, checkpoints --------------------------------------------------------------------------------


def _targets(height=48, width=64):
    masks = torch.zeros(2, height, width, dtype=torch.uint8)
    masks[0, 5:20, 5:25] = 1
    masks[1, 20:40, 30:60] = 1
    return {"boxes": torch.tensor([[5.0, 5.0, 25.0, 20.0], [30.0, 20.0, 60.0, 40.0]]),
            "labels": torch.tensor([1, 2]), "masks": masks}


def test_train_and_eval_returns_follow_maskrcnn_and_empty_frames_are_normal():
    torch.manual_seed(0)
    model = fcis(num_classes=3, min_size=48, max_size=96, k=3)
    empty = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64),
             "masks": torch.zeros(0, 48, 80, dtype=torch.uint8)}
    losses = model.train()([torch.rand(3, 48, 64), torch.rand(3, 48, 80)], [_targets(), empty])
    assert set(losses) == set(train_module.LOSS_KEYS) and all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    assert model.roi_heads.inside_outside.weight.grad.abs().sum() > 0
    model.eval().roi_heads.score_thresh = 0.0
    with torch.no_grad():
        outputs = model([torch.rand(3, 48, 64), torch.rand(3, 30, 50)])
    for out, (h, w) in zip(outputs, [(48, 64), (30, 50)]):
        n = len(out["boxes"])
        assert set(out) == {"boxes", "labels", "scores", "masks"} and 0 < n <= 100
        assert out["masks"].shape == (n, 1, h, w) and out["masks"].dtype == torch.float32
        assert ((out["masks"] >= 0) & (out["masks"] <= 1)).all() and set(out["labels"].tolist()) <= {1, 2}
        assert (out["scores"][:-1] >= out["scores"][1:]).all()
    with pytest.raises(ValueError, match="needs targets"):
        model.train()([torch.rand(3, 48, 64)])


def test_tiny_backbone_runs_fcis_at_stride_4_or_8_and_mask_rcnn_at_16():
    image = torch.zeros(1, 3, 96, 128)
    rpn_features, head_features = DilatedTinyBody(8)(image)
    assert rpn_features.shape == (1, 16, 24, 32) and head_features.shape == (1, 32, 24, 32)
    rpn_features, head_features = DilatedTinyBody(8, 8)(image)  # for 320-px frames
    assert rpn_features.shape == (1, 16, 12, 16) and head_features.shape == (1, 32, 12, 16)
    assert TinyBody(8)(image).shape == (1, 32, 6, 8)  # Mask R-CNN's body, unchanged
    with pytest.raises(ValueError, match="output_stride"):
        TinyBody(8, output_stride=2)
    with pytest.raises(ValueError, match="4 or 8"):
        DilatedTinyBody(8, 16)
    assert fcis(num_classes=3, min_size=48, max_size=64, tiny_stride=8).roi_heads.spatial_scale == 1 / 8


def test_builder_dispatches_on_model_and_rejects_conflicting_arguments():
    assert isinstance(build_mask_model(model="fcis", num_classes=3, min_size=48, max_size=64), FCIS)
    with pytest.raises(ValueError, match="FCIS backbone"):
        build_mask_model(model="fcis", backbone="resnet50_fpn", num_classes=3, min_size=48, max_size=64)
    with pytest.raises(ValueError, match="Mask R-CNN backbone"):
        build_mask_model(model="maskrcnn", backbone="resnet101", num_classes=3, min_size=48, max_size=64)
    with pytest.raises(ValueError, match="model must be one of"):
        build_mask_model(model="yolact", num_classes=3, min_size=48, max_size=64)
    with pytest.raises(ValueError, match="imagenet_weights"):
        fcis(num_classes=3, min_size=48, max_size=64, imagenet_weights="w.pth")
    assert mask_model_options({"model": "maskrcnn", "fcis_k": 3}) == {"model": "maskrcnn"}
    assert mask_model_options(_tiny_config()["masks"]) == {
        "model": "fcis", "k": 3, "mask_voting": True, "imagenet_weights": None, "tiny_stride": 4}


@pytest.fixture(scope="module")
def shard(tmp_path_factory):
    return make_frames_shard(tmp_path_factory.mktemp("frames") / "shard-000.h5", videos=4, frames=3)


def test_tiny_fcis_trains_on_the_tiny_config_and_its_checkpoint_gives_the_same_detections(shard, tmp_path):
    torch.set_num_threads(1)
    config = _tiny_config(iterations=30, checkpoint_every=10, optimizer="adamw", lr=0.002)
    out = tmp_path / "model.pt"
    checkpoint = train_module.train_mask_model(config, "dataset", [shard], out)
    assert checkpoint["builder"]["model"] == "fcis" and checkpoint["builder"]["k"] == 3
    with open(out.with_name("loss.csv")) as f:
        losses = [float(row["loss"]) for row in csv.DictReader(f)]
    assert len(losses) == 30 and np.mean(losses[-5:]) < 0.7 * np.mean(losses[:5])

    model, loaded = load_mask_model(out)
    assert isinstance(model, FCIS) and loaded["source"] == "dataset"
    reference = build_mask_model(**checkpoint["builder"])
    reference.load_state_dict(checkpoint["model"])
    reference.eval().roi_heads.score_thresh = model.roi_heads.score_thresh = 0.0
    images = [torch.rand(3, 48, 64, generator=torch.Generator().manual_seed(i)) for i in range(2)]
    with torch.no_grad():
        first, again = reference(images), model(images)
    for a, b in zip(first, again):
        assert len(a["boxes"]) > 0
        for key in ("boxes", "labels", "scores", "masks"):
            torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)

    cache = tmp_path / "dataset.h5"  # the region cache writer takes FCIS unchanged
    cache_regions(config, "dataset", shard, cache, model_path=out)
    with MaskCache(cache) as regions:
        assert len(regions.keys()) == 12
        for key in regions.keys():
            r = regions.read(*key)
            assert len(r) <= config["masks"]["max_regions"] and np.isin(r.labels, range(1, 8)).all()
            assert r.masks.shape[1:] == (48, 64) and ((0 <= r.masks) & (r.masks <= 1)).all()


def test_generic_fcis_from_a_project_format_coco_file_is_used_as_is(shard, tmp_path):
    torch.manual_seed(3)
    coco = fcis(num_classes=91, min_size=48, max_size=96, k=3)
    path = tmp_path / "fcis_coco.pth"
    torch.save(coco.state_dict(), path)
    config = _tiny_config(coco_checkpoint=str(path))
    checkpoint = train_module.train_mask_model(config, "generic", [shard], tmp_path / "g" / "model.pt")
    assert checkpoint["steps"] == 0 and checkpoint["builder"]["num_classes"] == 91
    for key, value in coco.state_dict().items():
        torch.testing.assert_close(checkpoint["model"][key], value, msg=key)
    # the dataset model starts from it: all but the class-specific score maps
    fresh = load_coco_checkpoint(fcis(num_classes=8, min_size=48, max_size=96, k=3), path)
    assert sorted(fresh) == ["roi_heads.inside_outside.bias", "roi_heads.inside_outside.weight"]


def test_resnet_backbone_starts_from_a_torchvision_imagenet_file(tmp_path):
    torch.manual_seed(0)
    net = resnet50(weights=None)
    path = tmp_path / "resnet50.pth"
    torch.save(net.state_dict(), path)
    model = fcis(backbone="resnet50", num_classes=3, min_size=64, max_size=96, imagenet_weights=path)
    body = model.backbone.body
    torch.testing.assert_close(body.layer4[0].conv2.weight, net.layer4[0].conv2.weight)
    torch.testing.assert_close(body.bn1.running_var, net.bn1.running_var)
    assert body.layer4[1].conv2.dilation == (2, 2) and not body.layer1[0].conv1.weight.requires_grad
    torch.save({"conv1.weight": torch.zeros(3)}, tmp_path / "other.pth")
    shapes = r"conv1.weight \(3\) in the file, \(64, 3, 7, 7\) in the model"  # said once, with both shapes
    with pytest.raises(A2DError, match=r"other.pth: not a ResNet-50 \(ImageNet, torchvision layout\) checkpoint: "
                                       r"264 of the model's tensors missing from the file: .*; 1 of another shape: "
                                       + shapes):
        fcis(backbone="resnet50", num_classes=3, min_size=64, max_size=96, imagenet_weights=tmp_path / "other.pth")
    (tmp_path / "junk.pth").write_text("not a checkpoint")
    with pytest.raises(A2DError, match="junk.pth: ImageNet ResNet weights .* is not a readable torch checkpoint"):
        fcis(backbone="resnet50", num_classes=3, min_size=64, max_size=96, imagenet_weights=tmp_path / "junk.pth")
    with pytest.raises(A2DError, match="missing.pth: ImageNet ResNet weights .* not found"):
        fcis(backbone="resnet50", num_classes=3, min_size=64, max_size=96, imagenet_weights=tmp_path / "missing.pth")
