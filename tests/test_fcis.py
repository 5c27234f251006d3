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

from a2dpipe.checkpoint import save_model_file
from a2dpipe.errors import A2DError
from a2dpipe.masks import MaskCache
from a2dpipe.masks import train as train_module
from a2dpipe.masks.backbones import DilatedTinyBody, TinyBody
from a2dpipe.masks.fcis import FCIS, assemble, assemble_naive, fcis, mask_voting
from a2dpipe.masks.fcis_training import FCISLossRecipe, box_coder, hardest_rois, kept_losses, per_roi_losses
from a2dpipe.masks.model import build_mask_model, load_coco_checkpoint, load_mask_model, mask_model_options
from a2dpipe.masks.stage import cache_regions
from a2dpipe.settings import plain

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
    class_logits, mask_logits, deltas = heads.roi_outputs(maps, boxes)
    assembled = assemble(maps[0], torch.cat([torch.zeros(2, 1), boxes[0]], 1), 3, heads.roi_size, heads.spatial_scale)
    inside, outside = assembled[:, 0], assembled[:, 1]
    torch.testing.assert_close(class_logits, torch.maximum(inside, outside).mean((2, 3)))
    torch.testing.assert_close(mask_logits.sigmoid(), torch.stack([inside, outside], 1).softmax(1)[:, 0])
    assert deltas.shape == (2, 4)


# --- mask voting ----------------------------------------------------------------------------------------------------


def _quadrants(*cells) -> torch.Tensor:
    """A 4 x 4 mask with ones in the given 2 x 2 quadrants ((row, col) in {0, 1}^2)."""
    mask = torch.zeros(4, 4)
    for r, c in cells:
        mask[2 * r:2 * r + 2, 2 * c:2 * c + 2] = 1
    return mask


def test_mask_voting_weights_every_overlapping_roi_by_class_probability_and_refits_the_box():
    kept = torch.tensor([[0.0, 0.0, 8.0, 8.0], [0.0, 0.0, 8.0, 8.0]])
    boxes = torch.tensor([[0.0, 0.0, 8.0, 8.0], [0.0, 0.0, 8.0, 8.0], [0.0, 0.0, 8.0, 4.0], [20.0, 20, 28, 28]])
    probs = torch.tensor([[0.1, 0.3, 0.6], [0.1, 0.3, 0.6], [0.5, 0.4, 0.1], [0.0, 0.9, 0.1]])
    masks = torch.stack([_quadrants((0, 0), (1, 0)), _quadrants((0, 0), (0, 1)), torch.ones(4, 4),
                         torch.ones(4, 4)])[:, None].expand(-1, 3, -1, -1)  # every class's mask the same
    boxes_out, masks_out, index = mask_voting(kept, torch.tensor([1, 2]), boxes, probs, masks)
    assert index.tolist() == [0, 1]
    # class 1: weights 0.3, 0.3, 0.4 (the far box does not vote); the third voter covers the top half. Canvas
    # quadrants: top-left 1.0, top-right 0.7, bottom-left 0.3, bottom-right 0: only the top half reaches 0.4
    torch.testing.assert_close(boxes_out[0], torch.tensor([0.0, 0.0, 8.0, 4.0]))
    torch.testing.assert_close(masks_out[0, 0], torch.ones(4, 4))
    # class 2: weights 6/13, 6/13, 1/13: top-left 1, top-right and bottom-left 7/13, bottom-right 1/13
    torch.testing.assert_close(boxes_out[1], torch.tensor([0.0, 0.0, 8.0, 8.0]))
    torch.testing.assert_close(masks_out[1, 0], 1 - _quadrants((1, 1)))


def test_mask_voting_binarises_each_voter_at_0_4_and_drops_a_detection_left_without_mask():
    kept = torch.tensor([[0.0, 0.0, 4.0, 4.0]])
    boxes = torch.tensor([[0.0, 0.0, 4.0, 4.0], [0.0, 0.0, 4.0, 4.0]])
    probs = torch.tensor([[0.5, 0.5], [0.5, 0.5]])
    soft = torch.full((2, 2, 4, 4), 0.45)  # above 0.4: each votes 1, not 0.45
    _, voted, index = mask_voting(kept, torch.tensor([1]), boxes, probs, soft)
    assert index.tolist() == [0] and torch.equal(voted[0, 0], torch.ones(4, 4))
    faint = torch.full((2, 2, 4, 4), 0.35)
    boxes_out, voted, index = mask_voting(kept, torch.tensor([1]), boxes, probs, faint)
    assert len(index) == 0 and voted.shape == (0, 1, 4, 4) and boxes_out.shape == (0, 4)


def test_mask_voting_takes_each_voters_top_class_mask_background_included_or_the_detections_class():
    kept, boxes = torch.tensor([[0.0, 0.0, 4.0, 4.0]]), torch.tensor([[0.0, 0.0, 4.0, 4.0], [0.0, 0.0, 4.0, 4.0]])
    probs = torch.tensor([[0.1, 0.2, 0.7], [0.5, 0.45, 0.05]])  # top classes 2 and background
    masks = torch.ones(2, 3, 4, 4)
    masks[1, 0] = 0  # the second voter's background mask is empty
    masks[0, 2] = 0  # the first one's class-2 mask too
    # FCIS: both give their top class's mask, empty: nothing reaches 0.4, the detection is dropped
    assert len(mask_voting(kept, torch.tensor([1]), boxes, probs, masks)[2]) == 0
    _, voted, index = mask_voting(kept, torch.tensor([1]), boxes, probs, masks, own_class=False)
    assert index.tolist() == [0] and torch.equal(voted[0, 0], torch.ones(4, 4))


# --- losses, OHEM, box coding, frozen layers (FCIS's training) ------------------------------------------------------


def test_ohem_keeps_the_highest_loss_rois_of_each_image_whatever_their_label():
    losses = torch.tensor([0.1, 5.0, 0.3, 4.0, 0.2, 1.0, 0.5, 3.0, 2.0])
    foreground = torch.tensor([True, False, False, False, True, True, False, False, False])
    keep = hardest_rois([5, 4], losses, foreground, 2)
    assert sorted(keep.tolist()) == [1, 3, 7, 8]  # no foreground among the hardest: none kept
    quota = hardest_rois([5, 4], losses, foreground, 2, fg_fraction=0.5)
    assert sorted(quota.tolist()) == [1, 4, 5, 7]  # the departure: one foreground per image, then the hardest


def test_fcis_losses_are_fcis_sums_and_weights_over_the_kept_rois():
    torch.manual_seed(0)
    recipe = FCISLossRecipe()
    labels = torch.tensor([1, 0, 0, 2])
    logits, deltas = torch.randn(4, 3), torch.randn(4, 4)
    fg = torch.tensor([0, 3])
    mask_logits, targets, wanted = torch.randn(2, 5, 5), torch.rand(2, 5, 5), torch.randn(2, 4)
    cls, mask, box = per_roi_losses(logits, labels, mask_logits, targets, deltas, wanted, fg, recipe)
    pixels = torch.nn.functional.binary_cross_entropy_with_logits(mask_logits, (targets >= 0.4).float(),
                                                                  reduction="none")
    torch.testing.assert_close(mask[fg], pixels.mean((1, 2)))
    assert mask[1] == 0 and box[2] == 0
    smooth = torch.where((deltas[fg] - wanted).abs() < 1, 0.5 * (deltas[fg] - wanted) ** 2,
                         (deltas[fg] - wanted).abs() - 0.5)  # beta 1
    torch.testing.assert_close(box[fg], smooth.sum(1))
    losses = kept_losses(cls, mask, box, labels, [4], recipe, 3, 25, torch.zeros(()))
    keep = (cls + 10 * mask + box).topk(3).indices
    fg_kept = keep[labels[keep] > 0]
    torch.testing.assert_close(losses["loss_classifier"], cls[keep].mean())
    assert len(fg_kept) > 0
    kept_pixels = sum(pixels[row].sum() for row, roi in enumerate(fg.tolist()) if roi in fg_kept.tolist())
    torch.testing.assert_close(losses["loss_mask"], 10 / 3 * kept_pixels)  # summed over pixels, 10 / N
    torch.testing.assert_close(losses["loss_box_reg"], box[fg_kept].sum() / 3)


def test_box_deltas_are_divided_by_fcis_standard_deviations_and_round_trip():
    coder = box_coder()
    proposal, truth = torch.tensor([[0.0, 0.0, 10.0, 10.0]]), torch.tensor([[1.0, 2.0, 11.0, 12.0]])
    deltas = coder.encode_single(truth, proposal)
    torch.testing.assert_close(deltas, torch.tensor([[0.1 / 0.2, 0.2 / 0.2, 0.0, 0.0]]))
    proposals = torch.tensor([[3.0, 4.0, 30.0, 20.0], [0.0, 0.0, 5.0, 50.0]])
    truths = torch.tensor([[5.0, 1.0, 25.0, 40.0], [2.0, 3.0, 9.0, 44.0]])
    torch.testing.assert_close(coder.decode_single(coder.encode_single(truths, proposals), proposals), truths)
    assert fcis(num_classes=3, min_size=48, max_size=64).roi_heads.box_coder.weights == (5.0, 5.0, 2.0, 2.0)


def test_frozen_layers_get_no_gradient_and_batch_norm_keeps_its_statistics():
    torch.manual_seed(0)
    model = fcis(num_classes=3, min_size=48, max_size=96, k=3, frozen_layers=True).train()
    body = model.backbone
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in body.modules())
    before = {k: v.clone() for k, v in body.state_dict().items()}
    losses = model([torch.rand(3, 48, 64)], [_targets()])
    sum(losses.values()).backward()
    frozen = [p for m in (body.stem, body.layer1) for p in m.parameters()]
    assert frozen and all(p.grad is None and not p.requires_grad for p in frozen)
    assert body.layer2.conv1.weight.grad.abs().sum() > 0 and body.layer3.conv2.weight.requires_grad
    for key, value in body.state_dict().items():
        assert torch.equal(value, before[key]), key  # running statistics untouched by a training forward


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
        "model": "fcis", "k": 3, "mask_voting": True, "imagenet_weights": None, "tiny_stride": 4,
        "layout": "torchvision", "ohem_fg_fraction": None, "mask_loss_weight": 0.1, "voting_own_class": False}


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
    # on random images a 30-step model's voted masks stay under 0.4, and voting drops them: compare without it
    reference.roi_heads.mask_voting = model.roi_heads.mask_voting = False
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


def test_fcis_freezes_its_layers_only_when_it_starts_from_trained_weights():
    cfg = _tiny_config()["masks"]
    assert train_module.model_arch(cfg, "dataset", 8, finetune=True)["frozen_layers"] is True
    assert train_module.model_arch(cfg, "generic", 2)["frozen_layers"] is False  # from scratch: everything learns
    assert train_module.model_arch({**cfg, "fcis_freeze_when_finetuning": False}, "dataset", 8,
                              finetune=True)["frozen_layers"] is False
    model = build_mask_model(**train_module.model_arch(cfg, "dataset", 8, finetune=True))
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.backbone.modules())


def test_a_start_model_of_the_other_fcis_layout_is_refused_as_another_architecture(tmp_path):
    """Settings that agree (a file stamped with this job's) still leave the layout to the architecture check."""
    config = _tiny_config()
    arch = train_module.model_arch(config["masks"], "dataset", 8, finetune=True)
    start = tmp_path / "official.pt"
    save_model_file(start, "mask model", builder={**arch, "layout": "official"}, weights={}, settings=plain(config),
                    meta={"source": "generic", "class_agnostic": True, "steps": 0, "start": "", "final_loss": 0.0})
    with pytest.raises(A2DError, match=r"official.pt: a mask model of another architecture \(layout 'official', "
                                       r"not 'torchvision'\): it cannot start this one"):
        train_module._load_start(build_mask_model(**arch), start, arch, config)
