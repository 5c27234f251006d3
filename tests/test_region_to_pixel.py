"""Region-to-pixel layer: forward and backward against the naive per-region loop, coverage, ties, edge cases."""

from __future__ import annotations

import doctest

import pytest
import torch

import a2dpipe.segmentation.models.region_to_pixel as r2p_module
from a2dpipe.segmentation.models.region_to_pixel import (
    box_pixel_ranges,
    region_log_probs,
    region_to_pixel,
    region_to_pixel_reference,
)


def random_regions(seed: int, n: int = 7, k: int = 5, height: int = 13, width: int = 17,
                   dtype: torch.dtype = torch.float64):
    """Overlapping boxes, some partly or wholly outside the frame; soft masks with exact 0s and 1s, nonzero
    values also outside their boxes (which must be ignored); softmax scores."""
    g = torch.Generator().manual_seed(seed)
    centre = torch.rand(n, 2, generator=g) * torch.tensor([width * 1.3, height * 1.3]) - torch.tensor(
        [width * 0.15, height * 0.15])
    half = (torch.rand(n, 2, generator=g) * 0.4 + 0.1) * torch.tensor([width, height])
    boxes = torch.cat([centre - half, centre + half], 1).to(dtype)
    fixed = torch.tensor([[2.0, 3.0, 9.0, 8.0], [-4.5, -2.2, 6.7, 5.5]])  # integer edges; partly outside
    boxes[: min(n, 2)] = fixed[: min(n, 2)].to(dtype)
    masks = (torch.rand(n, height, width, generator=g, dtype=dtype) * 1.6 - 0.3).clamp(0, 1)
    scores = torch.softmax(torch.randn(n, k, generator=g, dtype=dtype) * 2, dim=1)
    uncovered = torch.zeros(k, dtype=dtype)
    uncovered[0] = 1.0
    return scores, masks, boxes, uncovered


def with_grads(fn, scores, masks, boxes, uncovered, upstream, **kwargs):
    s = scores.clone().requires_grad_(True)
    m = masks.clone().requires_grad_(True)
    out = fn(s, m, boxes, uncovered, **kwargs)
    (out * upstream).sum().backward()
    return out.detach(), s.grad, m.grad


@pytest.mark.parametrize("seed", range(6))
def test_forward_equals_reference(seed):
    scores, masks, boxes, uncovered = random_regions(seed, dtype=torch.float32)
    expected = region_to_pixel_reference(scores, masks, boxes, uncovered)
    assert torch.equal(region_to_pixel(scores, masks, boxes, uncovered), expected)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("chunk_pixels", [1 << 18, 5])
def test_backward_equals_reference(seed, chunk_pixels):
    scores, masks, boxes, uncovered = random_regions(seed)
    upstream = torch.randn(scores.shape[1], *masks.shape[1:], generator=torch.Generator().manual_seed(99),
                           dtype=scores.dtype)
    out, gs, gm = with_grads(region_to_pixel, scores, masks, boxes, uncovered, upstream, chunk_pixels=chunk_pixels)
    ref, rs, rm = with_grads(region_to_pixel_reference, scores, masks, boxes, uncovered, upstream)
    assert torch.equal(out, ref)
    torch.testing.assert_close(gs, rs, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(gm, rm, rtol=1e-12, atol=1e-12)
    assert gs.abs().sum() > 0 and gm.abs().sum() > 0


def test_uncovered_pixels_take_every_class_of_the_uncovered_vector():
    scores, masks, boxes, _ = random_regions(4, n=3, k=5, height=9, width=11)
    masks[:, :, :3] = 0  # the first columns are covered by no region
    uncovered = torch.tensor([0.5, 0.0, 2.0, 0.0, 0.25], dtype=scores.dtype)
    out = region_to_pixel(scores, masks, boxes, uncovered)
    assert torch.equal(out, region_to_pixel_reference(scores, masks, boxes, uncovered))
    assert torch.equal(out[:, :, 0], uncovered[:, None].expand(5, 9))


def test_gradcheck_without_zero_masks():
    scores, masks, boxes, uncovered = random_regions(3, n=4, k=3, height=6, width=7)
    masks = masks * 0.9 + 0.05  # strictly positive: a small step never changes which pixels are covered
    torch.autograd.gradcheck(
        lambda s, m: region_to_pixel(s, m, boxes, uncovered),
        (scores.requires_grad_(True), masks.requires_grad_(True)),
    )


def test_box_membership_is_closed_and_clipped():
    boxes = torch.tensor([[2.0, 3.0, 9.0, 8.0], [-4.5, -2.2, 6.7, 5.5], [20.0, 0.0, 30.0, 5.0], [4.2, 1.0, 4.8, 9.0]])
    assert box_pixel_ranges(boxes, 13, 17) == [(3, 9, 2, 10), (0, 6, 0, 7), (0, 6, 17, 17), (1, 10, 5, 5)]


def test_uncovered_pixels_get_uncovered():
    k, height, width = 4, 6, 8
    uncovered = torch.tensor([1.0, 0.0, 0.25, 0.0])
    masks = torch.zeros(2, height, width)
    masks[0, 1:3, 1:4] = 0.5  # inside box 0
    masks[0, 5, 7] = 1.0  # outside box 0: ignored
    masks[1] = 0.7  # everywhere, but box 1 holds only column 6 rows 0-1
    boxes = torch.tensor([[0.0, 0.0, 4.0, 4.0], [6.0, 0.0, 6.0, 1.0]])
    scores = torch.softmax(torch.randn(2, k, generator=torch.Generator().manual_seed(0)), 1)
    out = region_to_pixel(scores, masks, boxes, uncovered)
    covered = torch.zeros(height, width, dtype=torch.bool)
    covered[1:3, 1:4] = True
    covered[0:2, 6] = True
    assert torch.equal(out[:, ~covered], uncovered[:, None].expand(-1, int((~covered).sum())))
    assert torch.equal(out[:, 1, 1], 0.5 * scores[0])
    assert torch.equal(out[:, 0, 6], 0.7 * scores[1])
    # in-box pixels whose mask is 0 are uncovered too, and pass no gradient
    s = scores.clone().requires_grad_(True)
    m = masks.clone().requires_grad_(True)
    region_to_pixel(s, m, boxes, uncovered)[:, ~covered].sum().backward()
    assert not s.grad.any() and not m.grad.any()


def test_zero_regions():
    uncovered = torch.tensor([1.0, 0.0, 0.0])
    scores = torch.zeros(0, 3, requires_grad=True)
    masks = torch.zeros(0, 4, 5, requires_grad=True)
    out = region_to_pixel(scores, masks, torch.zeros(0, 4), uncovered)
    assert out.shape == (3, 4, 5)
    assert torch.equal(out, uncovered[:, None, None].expand(3, 4, 5))
    out.sum().backward()
    assert scores.grad.shape == (0, 3) and masks.grad.shape == (0, 4, 5)
    assert torch.equal(region_to_pixel_reference(scores, masks, torch.zeros(0, 4), uncovered), out)


def test_single_region():
    scores, masks, boxes, uncovered = random_regions(5, n=1, dtype=torch.float32)
    boxes = torch.tensor([[3.5, 2.0, 12.0, 10.9]])
    out = region_to_pixel(scores, masks, boxes, uncovered)
    inside = masks[0, 2:11, 4:13]
    expected = torch.where(inside > 0, inside * scores[0][:, None, None], uncovered[:, None, None])
    assert torch.equal(out[:, 2:11, 4:13], expected)
    outside = torch.ones(13, 17, dtype=torch.bool)
    outside[2:11, 4:13] = False
    assert (out[:, outside] == uncovered[:, None]).all()


def test_gradient_goes_only_to_winner_and_ties_to_lowest_index():
    boxes = torch.tensor([[0.0, 0.0, 3.0, 0.0], [2.0, 0.0, 5.0, 0.0], [2.0, 0.0, 5.0, 0.0]])
    masks = torch.tensor([[[1.0, 1, 1, 1, 0, 0]], [[0.0, 0, 0.5, 0.5, 0.5, 0.5]], [[0.0, 0, 0.5, 0.5, 0.5, 0.5]]])
    scores = torch.tensor([[0.6, 0.4], [0.3, 0.7], [0.3, 0.7]])  # regions 1 and 2 are duplicates
    s = scores.clone().requires_grad_(True)
    m = masks.clone().requires_grad_(True)
    out = region_to_pixel(s, m, boxes, torch.tensor([1.0, 0.0]))
    # column 2: class 0 -> region 0 (0.6 > 0.15), class 1 -> region 0 (0.4 > 0.35)
    assert torch.equal(out[:, 0, 2], torch.tensor([0.6, 0.4]))
    out[:, 0, 2].sum().backward()
    assert torch.equal(s.grad, torch.tensor([[1.0, 1.0], [0, 0], [0, 0]]))
    assert torch.equal(m.grad[:, 0, 2], torch.tensor([1.0, 0, 0]))
    # column 4: regions 1 and 2 tie exactly; all the gradient goes to region 1
    s.grad = m.grad = None
    out = region_to_pixel(s, m, boxes, torch.tensor([1.0, 0.0]))
    out[:, 0, 4].sum().backward()
    assert torch.equal(s.grad, torch.tensor([[0.0, 0.0], [0.5, 0.5], [0, 0]]))
    assert torch.equal(m.grad[:, 0, 4], torch.tensor([0.0, 1.0, 0.0]))


def test_chunked_forward_equals_unchunked():
    scores, masks, boxes, uncovered = random_regions(11, dtype=torch.float32)
    full = region_to_pixel(scores, masks, boxes, uncovered)
    for chunk in (1, 7, 40):
        assert torch.equal(region_to_pixel(scores, masks, boxes, uncovered, chunk_pixels=chunk), full)


def test_dtype_follows_inputs():
    scores, masks, boxes, uncovered = random_regions(2, dtype=torch.float64)
    assert region_to_pixel(scores, masks, boxes, uncovered.float()).dtype == torch.float64


def test_bad_shapes_raise():
    scores, masks, boxes, uncovered = random_regions(0)
    with pytest.raises(ValueError, match="scores"):
        region_to_pixel(scores[:-1], masks, boxes, uncovered)
    with pytest.raises(ValueError, match="boxes"):
        region_to_pixel(scores, masks, boxes[:, :3], uncovered)
    with pytest.raises(ValueError, match="uncovered"):
        region_to_pixel(scores, masks, boxes, uncovered[:-1])
    with pytest.raises(ValueError, match="masks"):
        region_to_pixel(scores, masks[0], boxes, uncovered)
    with pytest.raises(ValueError, match="finite"):
        region_to_pixel(scores, masks, boxes * float("nan"), uncovered)
    with pytest.raises(ValueError, match="chunk_pixels"):
        region_to_pixel(scores, masks, boxes, uncovered, chunk_pixels=0)


def test_region_log_probs_normalises_safely():
    scores, masks, boxes, uncovered = random_regions(4, dtype=torch.float32)
    pixel = region_to_pixel(scores, masks, boxes, uncovered)
    pixel[:, 0, 0] = 0.0  # all-zero vector
    logp = region_log_probs(pixel)
    assert torch.isfinite(logp).all()
    torch.testing.assert_close(logp.exp().sum(0), torch.ones(pixel.shape[1:]))
    torch.testing.assert_close(logp[:, 0, 0], torch.full((pixel.shape[0],), -torch.log(torch.tensor(5.0))))
    covered = pixel[:, 6, 8]
    torch.testing.assert_close(logp[:, 6, 8].exp(), covered / covered.sum(), atol=1e-4, rtol=1e-4)
    batched = region_log_probs(torch.stack([pixel, pixel]))
    assert torch.equal(batched[1], logp)
    with pytest.raises(ValueError):
        region_log_probs(pixel, eps=0.0)


def test_docstring_example():
    assert doctest.testmod(r2p_module).failed == 0


# --- the dense formulation (CUDA's path) --------------------------------------------------------------------------


def _batch(seeds, counts, k=5, height=13, width=17, dtype=torch.float64):
    """Per-frame regions of one frame size, ``counts[i]`` regions in frame i (0 allowed)."""
    frames = []
    for seed, n in zip(seeds, counts):
        scores, masks, boxes, uncovered = random_regions(seed, n=max(n, 1), k=k, height=height, width=width,
                                                         dtype=dtype)
        frames.append((scores[:n], masks[:n], boxes[:n]))
    return frames, uncovered


@pytest.mark.parametrize("counts", [(7,), (7, 3, 0, 5), (0, 0), (1, 9)])
def test_dense_batch_equals_the_loop_frame_by_frame_in_values_and_gradients(counts):
    from a2dpipe.segmentation.models.region_to_pixel_dense import pad_regions, region_to_pixel_dense

    frames, uncovered = _batch(range(20, 20 + len(counts)), counts)
    upstream = torch.randn(len(counts), 5, 13, 17, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    loop = [with_grads(region_to_pixel, s, m, b, uncovered, u) for (s, m, b), u in zip(frames, upstream)]
    leaves = [(s.clone().requires_grad_(True), m.clone().requires_grad_(True)) for s, m, _ in frames]
    scores, masks, boxes = pad_regions([s for s, _ in leaves], [m for _, m in leaves], [b for _, _, b in frames])
    out = region_to_pixel_dense(scores, masks, boxes, uncovered)
    if out.requires_grad:
        (out * upstream).sum().backward()
    for i, (want, (s, m)) in enumerate(zip(loop, leaves)):
        assert torch.equal(out[i].detach(), want[0]), f"frame {i}"
        if len(s):
            torch.testing.assert_close(s.grad, want[1], rtol=1e-12, atol=1e-12)
            torch.testing.assert_close(m.grad, want[2], rtol=1e-12, atol=1e-12)


def test_dense_gradient_goes_to_the_winner_and_ties_to_the_lowest_index():
    from a2dpipe.segmentation.models.region_to_pixel_dense import region_to_pixel_dense

    boxes = torch.tensor([[[0.0, 0.0, 3.0, 0.0], [2.0, 0.0, 5.0, 0.0], [2.0, 0.0, 5.0, 0.0]]])
    masks = torch.tensor([[[[1.0, 1, 1, 1, 0, 0]], [[0.0, 0, 0.5, 0.5, 0.5, 0.5]], [[0.0, 0, 0.5, 0.5, 0.5, 0.5]]]])
    s = torch.tensor([[[0.6, 0.4], [0.3, 0.7], [0.3, 0.7]]], requires_grad=True)
    m = masks.clone().requires_grad_(True)
    out = region_to_pixel_dense(s, m, boxes, torch.tensor([1.0, 0.0]))
    out[0, :, 0, 4].sum().backward()  # regions 1 and 2 tie exactly: all to region 1
    assert torch.equal(s.grad[0], torch.tensor([[0.0, 0.0], [0.5, 0.5], [0, 0]]))
    assert torch.equal(m.grad[0, :, 0, 4], torch.tensor([0.0, 1.0, 0.0]))


@pytest.mark.parametrize("pixel_stride", [1, 2])
def test_region_to_pixel_layer_paths_agree_on_a_batch(pixel_stride):
    """The layer forced onto each path on the CPU: equal log-probabilities, gradients equal to rounding."""
    from a2dpipe.segmentation.models.region_to_pixel import RegionToPixel

    frames, _ = _batch((31, 32, 33), (6, 0, 4), k=18, height=14, width=18, dtype=torch.float32)
    grads, outputs = {}, {}
    for path in ("loop", "dense"):
        layer = RegionToPixel(8, 10, pixel_stride=pixel_stride, path=path)
        leaves = [s.clone().requires_grad_(True) for s, _, _ in frames]
        out = layer.forward_batch(leaves, [m for _, m, _ in frames], [b for _, _, b in frames], (14, 18))
        (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
        outputs[path], grads[path] = out.detach(), [s.grad for s in leaves if len(s)]
    assert torch.equal(outputs["dense"], outputs["loop"])
    for dense, loop in zip(grads["dense"], grads["loop"]):
        torch.testing.assert_close(dense, loop, rtol=1e-5, atol=1e-5)
    assert RegionToPixel(8, 10).dense_on(torch.device("cuda")) and not RegionToPixel(8, 10).dense_on("cpu")
    with pytest.raises(ValueError, match="path must be one of"):
        RegionToPixel(8, 10, path="gpu")


def _operator_calls(fn) -> int:
    """Operator calls that ``fn`` makes which launch a kernel on a device (:func:`count_kernel_calls`)."""
    from a2dpipe.segmentation.models.region_to_pixel import count_kernel_calls

    return count_kernel_calls(fn)


def test_dense_operator_count_grows_with_neither_regions_nor_frames_and_the_loops_does():
    from a2dpipe.segmentation.models.region_to_pixel import RegionToPixel

    def step(path, counts):
        frames, _ = _batch(range(len(counts)), counts, k=18, height=24, width=30, dtype=torch.float32)
        layer = RegionToPixel(8, 10, path=path)
        leaves = [s.clone().requires_grad_(True) for s, _, _ in frames]
        return lambda: layer.forward_batch(leaves, [m for _, m, _ in frames], [b for _, _, b in frames],
                                           (24, 30)).sum().backward()

    dense = {counts: _operator_calls(step("dense", counts)) for counts in ((5, 5), (50, 50), (50, 50, 50, 50))}
    loop = {counts: _operator_calls(step("loop", counts)) for counts in ((5, 5), (50, 50))}
    # padding copies one tensor per frame and input, and each frame's scores get their gradient: a few calls
    # per frame, none per region
    assert dense[(5, 5)] == dense[(50, 50)], dense
    assert dense[(50, 50, 50, 50)] - dense[(50, 50)] <= 2 * 8, dense
    assert loop[(50, 50)] > 5 * loop[(5, 5)] / 2 and loop[(50, 50)] > 10 * dense[(50, 50)], (loop, dense)
