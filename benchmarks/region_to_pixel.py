"""Benchmark: the region-to-pixel layer against the naive per-region loop, forward and forward + backward.

    python benchmarks/region_to_pixel.py [--regions 50] [--classes 44] [--height 320] [--width 568]
                                         [--max-side 0.5] [--threads 1] [--repeats 5] [--device cpu]
                                         [--alternatives] [--count-calls [--batch 1]]

Regions imitate an instance segmenter's candidates: box sides uniform in [0.05, max_side] of the frame, centres
anywhere (so some boxes cross the frame edge), soft elliptical masks that fade to exactly 0 outside about 1.2 box
half-widths (nonzero mask outside the box is ignored by the layer), per-region softmax scores. Both layers run
interleaved in one process with a fixed number of torch threads; each time is the median of ``--repeats`` runs.
Outputs must be identical and gradients equal to rounding, or the script fails. The layer's work is the sum of box
areas x classes, the loop's N x frame area x classes: the speed-up falls as boxes grow (try ``--max-side 0.9``).
``--alternatives`` also times a vectorised (pixel, region)-pair gather + ``scatter_reduce('amax')`` forward, the
design the layer replaced.

``--count-calls`` instead counts, with ``torch.profiler`` on the CPU, the operator calls that would each launch a
kernel on a GPU (:func:`count_kernel_calls`) in one stage-2 training step of the region back-end (RoI pooling, FC
layers, region-to-pixel, loss, backward) on ``--batch`` frames of ``--regions`` regions each, for both paths of
the layer (``loop``: the CPU's; ``dense``: CUDA's), and times that step on this CPU.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from a2dpipe.segmentation.models.region_to_pixel import (box_pixel_ranges, count_kernel_calls, region_to_pixel,
                                                         region_to_pixel_reference)


def make_regions(n, k, height, width, max_side, seed=0, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    size = torch.tensor([width, height], dtype=torch.float32)
    half = (torch.rand(n, 2, generator=g) * (max_side - 0.05) + 0.05) * size / 2
    centre = torch.rand(n, 2, generator=g) * size
    boxes = torch.cat([centre - half, centre + half], 1)
    rows = torch.arange(height, dtype=torch.float32)[None, :, None]
    cols = torch.arange(width, dtype=torch.float32)[None, None, :]
    d2 = ((cols - centre[:, 0, None, None]) / half[:, 0, None, None]) ** 2 + (
        (rows - centre[:, 1, None, None]) / half[:, 1, None, None]) ** 2
    masks = torch.sigmoid(4 * (1 - d2)) * (d2 < 1.5)
    scores = torch.softmax(torch.randn(n, k, generator=g) * 2, dim=1)
    uncovered = torch.zeros(k)
    uncovered[0] = 1.0
    return [t.to(device) for t in (scores, masks, boxes, uncovered)]


def scatter_forward(scores, masks, boxes, uncovered):
    """Vectorised alternative: gather (pixel, region) pairs inside boxes with mask > 0, ``scatter_reduce`` amax."""
    n, height, width = masks.shape
    inside = torch.zeros_like(masks, dtype=torch.bool)
    for i, (r0, r1, c0, c1) in enumerate(box_pixel_ranges(boxes, height, width)):  # (N, H, W) setup only
        inside[i, r0:r1, c0:c1] = True
    eff = (masks * inside).view(n, -1)
    region, pixel = eff.nonzero(as_tuple=True)
    values = eff[region, pixel][:, None] * scores[region]
    out = scores.new_zeros((height * width, scores.shape[1]))
    out.scatter_reduce_(0, pixel[:, None].expand_as(values), values, "amax")
    covered = torch.zeros(height * width, dtype=torch.bool, device=masks.device)
    covered[pixel] = True
    return torch.where(covered[:, None], out, uncovered).t().reshape(-1, height, width)


def timed(fn, device):
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    result = fn()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - start, result


def forward_backward(layer, scores, masks, boxes, uncovered, upstream):
    s = scores.clone().requires_grad_(True)
    m = masks.clone().requires_grad_(True)
    out = layer(s, m, boxes, uncovered)
    (out * upstream).sum().backward()
    return out.detach(), s.grad, m.grad


def memory_estimate(n, k, height, width, chunk_pixels=1 << 18):
    """Peak bytes held by the layer beyond its inputs (float32), from its allocations (see the module)."""
    frame = k * height * width * 4
    step = k * min(max(chunk_pixels, width), height * width) * 4
    forward = frame + height * width + step  # output (running max), coverage map, product buffer
    # saved output and coverage, gradient copy, mask gradient, product/gradient/bool buffers
    backward = 2 * frame + height * width + n * height * width * 4 + 2 * step + step // 4
    return forward, backward


def stage2_step_calls(regions: int, batch: int, height: int, width: int, repeats: int) -> None:
    """Operator calls and CPU time of one stage-2 step of the region back-end, per region-to-pixel path."""
    from a2dpipe.segmentation.models import segmentation_loss
    from a2dpipe.segmentation.models.backends import build_region_back_end

    torch.manual_seed(0)
    back_end = build_region_back_end(64, roi_size=7, fc_dim=256, roi_channels=32)
    features = torch.randn(batch, 64, -(-height // 8), -(-width // 8))
    frames = []
    for b in range(batch):
        _, masks, boxes, _ = make_regions(regions, 2, height, width, 0.5, seed=b)
        frames.append({"boxes": boxes.clamp(min=0), "masks": masks})
    target = torch.randint(0, 8, (batch, height, width), generator=torch.Generator().manual_seed(2))

    def step():
        back_end.zero_grad(set_to_none=True)
        out = back_end(features, frames, (height, width))
        sum(segmentation_loss(out, target, target).values()).backward()

    print(f"stage-2 step of the region back-end: {batch} frame(s) of {height} x {width}, {regions} regions each")
    for path in ("loop", "dense"):
        back_end.region_to_pixel.path = path
        step()
        calls = count_kernel_calls(step)
        times = []
        for _ in range(repeats):
            start = time.process_time()
            step()
            times.append(time.process_time() - start)
        print(f"  {path:5s}: {calls:6d} operator calls per step ({calls / (batch * regions):5.1f} per region), "
              f"CPU {1000 * statistics.median(times):7.1f} ms per step")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--regions", type=int, default=50)
    p.add_argument("--classes", type=int, default=44)
    p.add_argument("--height", type=int, default=320)
    p.add_argument("--width", type=int, default=568)
    p.add_argument("--max-side", type=float, default=0.5, help="largest box side, as a fraction of the frame")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--device", default="cpu")
    p.add_argument("--alternatives", action="store_true")
    p.add_argument("--count-calls", action="store_true", help="operator calls of a stage-2 step, both paths")
    p.add_argument("--batch", type=int, default=1, help="frames per step of --count-calls")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    if a.count_calls:
        stage2_step_calls(a.regions, a.batch, a.height, a.width, a.repeats)
        return
    scores, masks, boxes, uncovered = make_regions(a.regions, a.classes, a.height, a.width, a.max_side,
                                                   device=a.device)
    upstream = torch.randn(a.classes, a.height, a.width, generator=torch.Generator().manual_seed(1)).to(a.device)
    ranges = box_pixel_ranges(boxes, a.height, a.width)
    areas = [max(0, r1 - r0) * max(0, c1 - c0) for r0, r1, c0, c1 in ranges]
    print(f"{a.regions} regions, {a.classes} classes, {a.height} x {a.width}, device {a.device}, "
          f"{torch.get_num_threads()} torch threads; sum of box areas = {sum(areas) / (a.height * a.width):.2f} "
          f"frames (mean box {100 * statistics.mean(areas) / (a.height * a.width):.1f}% of the frame)")

    cases = {
        "forward": (lambda: region_to_pixel(scores, masks, boxes, uncovered),
                    lambda: region_to_pixel_reference(scores, masks, boxes, uncovered)),
        "forward+backward": (lambda: forward_backward(region_to_pixel, scores, masks, boxes, uncovered, upstream),
                             lambda: forward_backward(region_to_pixel_reference, scores, masks, boxes, uncovered,
                                                      upstream)),
    }
    if a.alternatives:
        cases["forward (scatter_reduce pairs)"] = (lambda: scatter_forward(scores, masks, boxes, uncovered),
                                                   cases["forward"][1])
    for name, (fast, naive) in cases.items():
        fast_times, naive_times = [], []
        for _ in range(a.repeats + 1):  # the first round warms up
            t, got = timed(fast, a.device)
            fast_times.append(t)
            t, want = timed(naive, a.device)
            naive_times.append(t)
        got, want = (got,) if torch.is_tensor(got) else got, (want,) if torch.is_tensor(want) else want
        assert torch.equal(got[0], want[0]), f"{name}: outputs differ"
        for g, w in zip(got[1:], want[1:]):
            # float32 sums over thousands of pixels in another order: equal to rounding of the largest value
            torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-5 * float(w.abs().max()))
        f, n = statistics.median(fast_times[1:]), statistics.median(naive_times[1:])
        print(f"{name:32s} layer {1000 * f:8.1f} ms   naive loop {1000 * n:8.1f} ms   speed-up {n / f:5.1f}x"
              "   (outputs identical" + (", gradients equal)" if len(got) > 1 else ")"))
    forward, backward = memory_estimate(a.regions, a.classes, a.height, a.width)
    print(f"peak memory beyond inputs (estimate): forward {forward / 2**20:.0f} MiB, backward {backward / 2**20:.0f} "
          f"MiB; an N x K x H x W tensor would be {a.regions * a.classes * a.height * a.width * 4 / 2**20:.0f} MiB")
    if a.device.startswith("cuda"):
        print(f"CUDA max allocated: {torch.cuda.max_memory_allocated() / 2**20:.0f} MiB (naive loop included)")


if __name__ == "__main__":
    main()
