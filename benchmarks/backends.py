"""Back-end cost side by side: ASPP baseline vs region back-end on the same fused features.

    python benchmarks/backends.py [--channels 4096] [--fc-dim 1024] [--regions 50] [--pixel-stride 1 2]

Both back-ends get the same random fused features of a 320 x 568 frame (output stride 8: 40 x 71) and produce
log-probabilities at frame size; the region back-end also gets ``--regions`` boxes with soft masks. Timings are
medians over ``--repeats`` forward passes (no grad) after a warm-up, interleaved so that machine load hits both
alike. The ratio region / ASPP is what the segmentation issue targets (at most 1.3).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from a2dpipe.segmentation.models.backends import ASPPBaseline, build_region_back_end


def random_regions(n: int, h: int, w: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
    xy = torch.rand(n, 2, generator=generator) * torch.tensor([w * 0.7, h * 0.7])
    wh = (0.1 + 0.3 * torch.rand(n, 2, generator=generator)) * torch.tensor([w, h])
    boxes = torch.cat([xy, (xy + wh).clamp(max=torch.tensor([w - 1.0, h - 1.0]))], 1)
    masks = torch.zeros(n, h, w)
    for i, (x1, y1, x2, y2) in enumerate(boxes.round().int().tolist()):  # setup only, not timed
        masks[i, y1:y2 + 1, x1:x2 + 1] = torch.rand(y2 - y1 + 1, x2 - x1 + 1, generator=generator)
    return {"boxes": boxes, "masks": masks}


def seconds_of(fn, device) -> float:
    """Seconds of one call of ``fn``, the device's queue drained before and after."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--channels", type=int, default=4096, help="fused channels (two ResNet-101 streams: 4096)")
    parser.add_argument("--fc-dim", type=int, default=1024)
    parser.add_argument("--roi-channels", type=int, default=None, help="1x1 conv width before RoI pooling (none: off)")
    parser.add_argument("--roi-size", type=int, default=7)
    parser.add_argument("--regions", type=int, default=50)
    parser.add_argument("--height", type=int, default=320)
    parser.add_argument("--width", type=int, default=568)
    parser.add_argument("--pixel-stride", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    gen = torch.Generator().manual_seed(0)
    h, w = args.height, args.width
    features = torch.randn(1, args.channels, -(-h // 8), -(-w // 8), generator=gen).to(device)
    regions = [{k: v.to(device) for k, v in random_regions(args.regions, h, w, gen).items()}]
    aspp = ASPPBaseline(args.channels).to(device).eval()
    region = {s: build_region_back_end(args.channels, roi_size=args.roi_size, fc_dim=args.fc_dim, pixel_stride=s,
                                       roi_channels=args.roi_channels).to(device).eval()
              for s in args.pixel_stride}
    runs = {"aspp": lambda: aspp(features, (h, w))}
    runs.update({f"region (pixel_stride {s})": (lambda m=m: m(features, regions, (h, w))) for s, m in region.items()})
    times = {name: [] for name in runs}
    with torch.no_grad():
        for fn in runs.values():
            fn()  # warm-up
        for _ in range(args.repeats):
            for name, fn in runs.items():
                times[name].append(seconds_of(fn, device))
    base = statistics.median(times["aspp"])
    print(f"device {device}, threads {torch.get_num_threads()}, features {tuple(features.shape)}, "
          f"{args.regions} regions, frame {h}x{w}, fc_dim {args.fc_dim}, roi_channels {args.roi_channels}")
    for name, t in times.items():
        med = statistics.median(t)
        print(f"{name:26s} {med * 1000:9.1f} ms   ratio to aspp {med / base:5.2f}")


if __name__ == "__main__":
    main()
