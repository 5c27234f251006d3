"""Segmentation network: shapes, output stride, checkpoint loading, back-ends, joint prediction."""

import numpy as np
import pytest
import torch
import torchvision
from torchvision.models.resnet import BasicBlock

from a2dpipe.errors import A2DError
from a2dpipe.labels import VALID_PAIRS
from a2dpipe.segmentation.models import (
    OUTPUT_STRIDE,
    build_front_end,
    joint_prediction,
    segmentation_loss,
)
from a2dpipe.segmentation.models.backends import RegionBackEnd, build_region_back_end
from a2dpipe.segmentation.models.frontend import DilatedBasicBlock
from conftest import complete, segmenter

torch.set_num_threads(1)

SMALL = complete({"segmentation": {"width": 8, "aspp_rates": [1, 2], "stage2": {"fc_dim": 16, "roi_size": 3}}})


@pytest.mark.parametrize("backbone", ["tiny", "resnet18"])
@pytest.mark.parametrize("streams", [("rgb",), ("rgb", "flow")])
def test_front_end_output_stride_and_channels(backbone, streams):
    fe = build_front_end(backbone=backbone, width=8, streams=streams).eval()
    x = torch.zeros(2, 3, 50, 75)
    out = fe(x, x if "flow" in streams else None)
    per_stream = 64 if backbone == "tiny" else 512
    assert out.shape == (2, per_stream * len(streams), -(-50 // OUTPUT_STRIDE), -(-75 // OUTPUT_STRIDE))


def test_front_end_refuses_missing_or_extra_flow():
    fe = build_front_end(backbone="tiny", width=4, streams=("rgb",))
    with pytest.raises(ValueError, match="flow"):
        fe(torch.zeros(1, 3, 16, 16), torch.zeros(1, 3, 16, 16))


def test_dilated_basic_block_where_torchvision_refuses():
    with pytest.raises(NotImplementedError):
        BasicBlock(8, 8, dilation=2)
    block = DilatedBasicBlock(8, 8, dilation=4).eval()
    assert block(torch.randn(1, 8, 9, 11)).shape == (1, 8, 9, 11)


@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
def test_imagenet_checkpoint_loads_into_both_streams(tmp_path, arch):
    reference = getattr(torchvision.models, arch)(weights=None)
    path = tmp_path / f"{arch}.pth"
    torch.save(reference.state_dict(), path)
    fe = build_front_end(backbone=arch, streams=("rgb", "flow"), rgb_weights=str(path), flow_weights=str(path))
    for name in ("rgb", "flow"):
        state = fe.streams[name].state_dict()
        for key, value in reference.state_dict().items():
            if not key.startswith("fc."):
                assert torch.equal(state[key], value), key


def test_bad_checkpoint_names_the_file(tmp_path):
    path = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), path)
    with pytest.raises(A2DError, match="resnet18.pth"):
        build_front_end(backbone="tiny", width=8, rgb_weights=str(path))
    with pytest.raises(A2DError, match="not found"):
        build_front_end(backbone="resnet18", rgb_weights=str(tmp_path / "missing.pth"))


@pytest.mark.parametrize("input", ["rgb", "rgbflow"])
def test_segmenter_baseline_returns_log_probs_at_frame_size(input):
    torch.manual_seed(0)
    model = segmenter(SMALL, input=input).eval()
    x = torch.randn(2, 3, 37, 53)
    out = model(x, x if input == "rgbflow" else None)
    assert out["actor"].shape == (2, 8, 37, 53) and out["action"].shape == (2, 10, 37, 53)
    for v in out.values():
        torch.testing.assert_close(v.exp().sum(1), torch.ones(2, 37, 53))


def _regions(h, w):
    masks = torch.zeros(2, h, w)
    masks[0, 4:20, 5:30] = 1.0
    masks[1, 10:30, 20:45] = 0.7
    return {"boxes": torch.tensor([[5.0, 4, 30, 20], [20, 10, 45, 30]]), "masks": masks}


def test_region_back_end_shapes_gradient_and_empty_frames():
    torch.manual_seed(0)
    model = segmenter(SMALL, input="rgb")
    x = torch.randn(2, 3, 40, 56)
    empty = {"boxes": torch.zeros(0, 4), "masks": torch.zeros(0, 40, 56)}
    out = model.forward_regions(x, None, [_regions(40, 56), empty])
    assert out["actor"].shape == (2, 8, 40, 56) and out["action"].shape == (2, 10, 40, 56)
    assert [len(s) for s in out["region_scores"]] == [2, 0]
    torch.testing.assert_close(out["region_scores"][0][:, :8].sum(1), torch.ones(2))  # per-region softmax
    # a frame without regions is uniformly "uncovered": one distribution everywhere, background most likely
    flat = out["actor"][1].flatten(1)
    assert torch.allclose(flat, flat[:, :1].expand_as(flat)) and flat[:, 0].argmax() == 0
    assert flat[0, 0] > flat[1, 0]
    target = torch.zeros(2, 40, 56, dtype=torch.long)
    loss = sum(segmentation_loss(out, target, target).values())
    loss.backward()
    assert model.region.box_head.fc6.weight.grad.abs().sum() > 0
    assert model.front_end.streams["rgb"].conv1.weight.grad is not None


def _golden_inputs():
    torch.manual_seed(0)
    model = segmenter(SMALL, input="rgb").eval()
    x = torch.rand(2, 3, 40, 56, generator=torch.Generator().manual_seed(1))
    return model, x, [_regions(40, 56), {"boxes": torch.zeros(0, 4), "masks": torch.zeros(0, 40, 56)}]


def test_segmenter_outputs_match_the_single_module_back_end():
    # golden values of the back-end before it was split into parts (same seed, same inputs): the parts are built
    # in the same order, so a seed gives the same weights, and compute exactly what the single module did
    model, x, regions = _golden_inputs()
    with torch.no_grad():
        ours, base = model.forward_regions(x, None, regions), model.forward_baseline(x)
    sums = [t.double().sum().item() for t in (ours["actor"], ours["action"], base["actor"], base["action"])]
    np.testing.assert_allclose(sums, [-369793.9196776289, -476872.1333311315, -74747.06509399414,
                                      -103501.19719052315], rtol=1e-6)
    np.testing.assert_allclose(ours["actor"][0, :, 12, 15].tolist(), [
        -2.054377794265747, -1.9993648529052734, -2.3110511302948, -1.9387251138687134, -1.8960574865341187,
        -2.136070966720581, -2.1493470668792725, -2.2207813262939453], rtol=1e-6)
    np.testing.assert_allclose(ours["region_scores"][0][0, :4].tolist(), [
        0.12817256152629852, 0.13542135059833527, 0.09915674477815628, 0.14388743042945862], rtol=1e-6)


def test_region_back_end_takes_its_parts():
    from torchvision.models.detection.faster_rcnn import TwoMLPHead

    from a2dpipe.segmentation.models import RegionPredictor, RoIPooler
    from a2dpipe.segmentation.models.region_to_pixel import RegionToPixel

    region = RegionBackEnd(RoIPooler(2, 1 / 4, kind="max"), TwoMLPHead(16 * 4, 8), RegionPredictor(8),
                           RegionToPixel(8, 10, pixel_stride=2))
    out = region(torch.randn(1, 16, 10, 14), [_regions(40, 56)], (40, 56))
    assert out["actor"].shape == (1, 8, 40, 56) and out["region_scores"][0].shape == (2, 18)
    torch.testing.assert_close(out["action"].exp().sum(1), torch.ones(1, 40, 56))
    with pytest.raises(ValueError, match="pool"):
        RoIPooler(7, 1 / 8, kind="average")


def test_region_boxes_stay_float32_at_roi_align_under_bfloat16_autocast(monkeypatch):
    from a2dpipe.segmentation.models import backends

    seen = []

    def spy(features, rois, *args, **kwargs):
        seen.append((features.dtype, [r.dtype for r in rois]))
        return torchvision.ops.roi_align(features, rois, *args, **kwargs)

    monkeypatch.setattr(backends, "roi_align", spy)
    model, x, regions = _golden_inputs()
    regions[0]["boxes"] = torch.tensor([[300.25, 4.0, 330.75, 20.0], [20.0, 10.0, 45.0, 30.0]])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model.forward_regions(x, None, regions)
    assert seen == [(torch.float32, [torch.float32, torch.float32])]
    assert torch.isfinite(out["actor"]).all()
    # 300.25 is not a bfloat16 number (steps of 2 above 256): rounding it would move the box
    assert torch.tensor(300.25).bfloat16().float() != 300.25


def test_roi_channels_narrow_the_pooled_features():
    torch.manual_seed(0)
    wide = build_region_back_end(64, roi_size=3, fc_dim=16)
    narrow = build_region_back_end(64, roi_size=3, fc_dim=16, roi_channels=8)
    assert wide.box_head.fc6.in_features == 64 * 9 and narrow.box_head.fc6.in_features == 8 * 9
    features = torch.randn(1, 64, 5, 7)
    out = narrow(features, [_regions(40, 56)], (40, 56))
    assert out["actor"].shape == (1, 8, 40, 56)
    target = torch.ones(1, 40, 56, dtype=torch.long)
    sum(segmentation_loss(out, target, target).values()).backward()
    assert narrow.reduce.weight.grad.abs().sum() > 0


def test_soft_mask_pixels_mix_region_and_background():
    # a soft mask's weak pixel is mostly background, its strong pixel takes the region's class, a binary mask's
    # pixel takes exactly the region's distribution, and a pixel outside every region is exactly "uncovered"
    model = segmenter(SMALL, input="rgb").eval()
    scores = torch.tensor([[0.0, 1.0, *[0.0] * 6, 0.0, 1.0, *[0.0] * 8]])  # region says actor 1, action 1
    masks = torch.zeros(1, 8, 10)
    masks[0, :, :4] = 1.0
    masks[0, :, 4:6] = 0.9
    masks[0, :, 6:8] = 0.1
    pixel = model.region.region_to_pixel.pixel_scores(scores, masks, torch.tensor([[0.0, 0.0, 7.0, 7.0]]), (8, 10))
    actor = pixel[:8] / pixel[:8].sum(0)
    torch.testing.assert_close(actor[:, 0, 0], scores[0, :8])
    torch.testing.assert_close(actor[:2, 0, 4], torch.tensor([0.1, 0.9]))
    torch.testing.assert_close(actor[:2, 0, 6], torch.tensor([0.9, 0.1]))
    assert actor[:, 0, 9].argmax() == 0 and actor[0, 0, 9] == 1


def test_region_pooling_batched_equals_per_frame():
    torch.manual_seed(0)
    model = segmenter(SMALL, input="rgb").eval()
    feats = torch.randn(2, 64, 5, 7)
    regs = [_regions(40, 56), _regions(40, 56)]
    batched = model.region_heads(feats, (40, 56), regs)
    for b in range(2):
        single = model.region_heads(feats[b:b + 1], (40, 56), regs[b:b + 1])
        torch.testing.assert_close(single["actor"][0], batched["actor"][b])


@pytest.mark.parametrize("path", ["loop", "dense"])
def test_region_heads_each_equals_per_frame_on_frames_of_different_sizes(path):
    """Stage 2 on cached whole frames runs the FC layers once for every frame's regions: same outputs and same
    gradients as one frame at a time, for frames of different sizes and a frame without regions; on the dense
    path (CUDA's, forced here) frames of one size share one region-to-pixel call."""
    torch.manual_seed(0)
    model = segmenter(SMALL, input="rgb", regions=True)
    model.region.region_to_pixel.path = path
    sizes = [(40, 56), (32, 64), (40, 48), (40, 56)]
    feats = [torch.randn(1, 64, h // 8, w // 8) for h, w in sizes]
    regs = [_regions(40, 56), _regions(32, 64), {"boxes": torch.zeros(0, 4), "masks": torch.zeros(0, 40, 48)},
            {k: v[:1] for k, v in _regions(40, 56).items()}]
    targets = [torch.randint(0, 8, (1, h, w)) for h, w in sizes]

    def loss_and_grad(outputs):
        model.zero_grad()
        loss = sum(sum(segmentation_loss(o, t, t).values()) for o, t in zip(outputs, targets))
        loss.backward()
        return loss.detach(), model.region.box_head.fc6.weight.grad.clone()

    together = model.region_heads_each(feats, sizes, regs)
    alone = [model.region_heads(f, size, [r]) for f, size, r in zip(feats, sizes, regs)]
    for t, a in zip(together, alone):
        torch.testing.assert_close(t["actor"], a["actor"])
        torch.testing.assert_close(t["action"], a["action"])
    assert [len(t["region_scores"][0]) for t in together] == [2, 2, 0, 1]
    (loss_t, grad_t), (loss_a, grad_a) = loss_and_grad(together), loss_and_grad(alone)
    torch.testing.assert_close(loss_t, loss_a)
    torch.testing.assert_close(grad_t, grad_a)


def test_reduced_resolution_region_to_pixel_stays_close():
    torch.manual_seed(0)
    cfg = {"segmentation": {**SMALL["segmentation"], "stage2": {**SMALL["segmentation"]["stage2"], "pixel_stride": 2}}}
    coarse = segmenter(cfg, input="rgb").eval()
    full = segmenter(SMALL, input="rgb").eval()
    full.load_state_dict(coarse.state_dict())
    feats = torch.randn(1, 64, 5, 7)
    a = coarse.region_heads(feats, (40, 56), [_regions(40, 56)])["actor"].argmax(1)
    b = full.region_heads(feats, (40, 56), [_regions(40, 56)])["actor"].argmax(1)
    assert (a == b).float().mean() > 0.9


def test_loss_on_unlabelled_batch_is_zero_not_nan():
    logp = torch.log_softmax(torch.randn(1, 8, 4, 4, requires_grad=True), 1)
    target = torch.full((1, 4, 4), 255)
    losses = segmentation_loss({"actor": logp, "action": torch.log_softmax(torch.randn(1, 10, 4, 4), 1)}, target, target)
    assert losses["loss_actor"].item() == 0.0 and not torch.isnan(losses["loss_action"])


def test_joint_prediction_never_invalid_even_when_heads_disagree():
    # actor "adult" (1) and action "flying" (4) each win by far, but adult-flying (14) is not a valid pair
    actor = torch.full((1, 8, 3, 3), -10.0)
    actor[:, 1] = -0.01
    action = torch.full((1, 10, 3, 3), -10.0)
    action[:, 4] = -0.01
    action[:, 7] = -3.0  # running: adult-running (17) is the best valid pair
    ids = joint_prediction(actor, action)
    assert (ids == 17).all()
    torch.manual_seed(0)
    ids = joint_prediction(torch.log_softmax(torch.randn(4, 8, 30, 30) * 5, 1),
                           torch.log_softmax(torch.randn(4, 10, 30, 30) * 5, 1))
    assert ids.dtype == torch.uint8
    assert np.isin(ids.numpy(), [0, *VALID_PAIRS]).all()


def test_joint_prediction_matches_brute_force():
    torch.manual_seed(1)
    actor = torch.log_softmax(torch.randn(2, 8, 2, 3), 1)  # two frames: the batch is taken frame by frame
    action = torch.log_softmax(torch.randn(2, 10, 2, 3), 1)
    ids = joint_prediction(actor, action)
    assert ids.shape == (2, 2, 3)
    for b, y, x in np.ndindex(2, 2, 3):
        cands = {0: actor[b, 0, y, x] + action[b, 0, y, x]}
        cands.update({p: actor[b, p // 10, y, x] + action[b, p % 10, y, x] for p in VALID_PAIRS})
        assert ids[b, y, x].item() == max(cands, key=lambda k: cands[k].item())


def test_loss_is_nll_losss_mean_bit_for_bit_and_zero_without_labelled_pixels():
    """The loss divides the sum by the labelled pixels' count on the device (no host check per head): the same
    bits as ``nll_loss``'s mean, values and gradients, and 0 with a zero gradient when nothing is labelled."""
    import torch.nn.functional as F

    from a2dpipe.labels import IGNORE

    g = torch.Generator().manual_seed(4)
    for height in (9, 31, 64):
        actor = torch.log_softmax(torch.randn(2, 8, height, 23, generator=g), 1).requires_grad_(True)
        action = torch.log_softmax(torch.randn(2, 10, height, 23, generator=g), 1).requires_grad_(True)
        targets = [torch.randint(0, k, (2, height, 23), generator=g) for k in (8, 10)]
        for t in targets:
            t[torch.rand(t.shape, generator=g) < 0.3] = IGNORE
        losses = segmentation_loss({"actor": actor, "action": action}, *targets)
        for name, logp, target in (("actor", actor, targets[0]), ("action", action, targets[1])):
            want = F.nll_loss(logp, target, ignore_index=IGNORE)
            assert torch.equal(losses[f"loss_{name}"], want), name
            got_grad, = torch.autograd.grad(losses[f"loss_{name}"], logp)
            want_grad, = torch.autograd.grad(want, logp)
            assert torch.equal(got_grad, want_grad), name
    nothing = torch.full((1, 4, 5), IGNORE)
    logp = torch.log_softmax(torch.randn(1, 8, 4, 5), 1).requires_grad_(True)
    loss = segmentation_loss({"actor": logp, "action": logp[:, :8]}, nothing, nothing)["loss_actor"]
    loss.backward()
    assert loss.item() == 0.0 and torch.equal(logp.grad, torch.zeros_like(logp))
