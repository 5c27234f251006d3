"""Segment any video with a run's models: ``a2dpipe segment VIDEO... --run RESULTS [--variant V] --out DIR``.

``VIDEO`` is a video OpenCV reads (mp4, avi, mkv, webm, ...) or a folder of frame images, of any size and with no
annotation. One process runs the variant's whole chain on it, streaming, in chunks of frames (memory does not grow
with the video's length): frames resized to the height the run's networks were trained at, flow with the run's
estimator (rgbflow), region masks with the run's mask model (``ours``, ``maskvote``), the network, the joint
actor-action map, and the maps taken back to the frame's own size. The parts and their settings come from the run
(:mod:`.run_parts`), and each step is the pipeline's own code (flow estimators and encodings, the masks stage's
model and region selection, ``predict``'s network and label maps), with the flow and the masks rounded as the
flow and mask caches store them: a frame the pipeline annotated gets exactly ``predict``'s label maps.

Outputs, in ``DIR/<name>/`` (``<name>``: the video's file stem or the folder's name), written to a temporary
folder and renamed when complete, so ``DIR`` never holds a partial result:

- ``overlay.mp4``: every frame at its own size and the video's frame rate, the joint labels blended in in the
  report's legend colours (:data:`a2dpipe.labels.PALETTE`) and each actor-action's name on its largest region;
  with ``--every N`` a frame between two segmented ones shows the last segmented frame's labels;
- ``labels.h5`` (``--maps h5``, the predictions format, :mod:`.predictions`: schema ``a2dpipe.predictions/2``,
  one group ``<name>/<frame:05d>`` per segmented frame, 1-based, with uint8 ``actor``, ``action`` and ``joint``
  maps at the frame's size) or ``labels/{actor,action,joint}/<frame:05d>.png`` (``--maps png``);
- ``summary.json``: the video, the variant, frames decoded and segmented, sizes, seconds per stage and frames per
  second, and per actor-action found: its frames (count and spans), mean area (fraction of the frame and pixels
  where it appears) and mean score (the joint probability of its pixels);
- ``overlays.png``: four evenly spaced segmented frames of the overlay side by side, at most 160 px high.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from a2dpipe.devices import select_device
from a2dpipe.errors import A2DError
from a2dpipe.io import atomic_path
from a2dpipe.memory import release_free_memory
from a2dpipe.segmentation.frames_in import FrameSource, open_frames
from a2dpipe.segmentation.run_parts import DEFAULT_VARIANT, RunParts, find_parts, parse_variant
from a2dpipe.segmentation.segment_outputs import Outputs, model_size

if TYPE_CHECKING:  # torch loads when a chain is built, not when the command line is parsed
    import torch

__all__ = ["configure_parser", "run", "Chain", "segment_source", "resize_frame"]

log = logging.getLogger(__name__)

PIXEL_BUDGET = 24 * 640 * 360  # original pixels held per chunk: 24 frames of 640 x 360, 2 of 4K
MAP_NAMES = ("actor", "action", "joint")  # the predictions format's maps


def configure_parser(parser) -> None:
    parser.add_argument("videos", nargs="+", help="video files (any OpenCV reads) or folders of frame images")
    parser.add_argument("--run", required=True, help="results folder of a finished run (its models and stamps)")
    parser.add_argument("--shared", help="the run's shared_results folder (frames, flow), when it set one")
    parser.add_argument("--variant", default=DEFAULT_VARIANT,
                        help="kind/input[/train source[/test source]], e.g. ours/rgbflow/dataset, baseline/rgb, "
                             "maskvote/rgbflow/dataset (default %(default)s)")
    parser.add_argument("--out", required=True, help="folder receiving one folder per video")
    parser.add_argument("--every", type=int, default=1, help="segment one frame in N (default 1: every frame)")
    parser.add_argument("--device", help="cpu, cuda, cuda:N or auto (default: the run's device setting)")
    parser.add_argument("--maps", choices=("h5", "png"), default="h5", help="per-frame label maps format")
    parser.add_argument("--chunk", type=int, default=16, help="frames decoded and segmented together (default 16; "
                        "fewer for large frames, so that memory stays bounded)")
    parser.add_argument("--fps", type=float, help="frame rate of a folder of frames (default 25) or override")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads for torch and OpenCV (0: their default)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args) -> None:
    if args.every < 1:
        raise A2DError(f"--every {args.every}: give a positive number of frames")
    if args.chunk < 1:
        raise A2DError(f"--chunk {args.chunk}: give a positive number of frames")
    parts = find_parts(args.run, parse_variant(args.variant), args.shared)
    sources = [open_frames(path, args.fps) for path in args.videos]  # every input checked before any output
    names = Counter(source.name for source in sources)
    twice = [name for name, count in names.items() if count > 1]
    if twice:
        raise A2DError(f"{twice[0]}: two inputs share this name, and so the output folder {Path(args.out, twice[0])}; "
                       f"rename one")
    if args.threads:
        import cv2
        import torch

        torch.set_num_threads(args.threads)
        cv2.setNumThreads(args.threads)
    chain = Chain.from_parts(parts, select_device(args.device or parts.settings["device"]))
    for source in sources:
        segment_source(chain, source, Path(args.out), every=args.every, maps=args.maps, chunk=args.chunk,
                       progress=not args.no_progress)


class Chain:
    """The variant's chain: ``chain(frames, partners)`` -> per frame ``actor``, ``action``, ``joint`` (uint8) and
    ``score`` (float32, the joint probability of the pixel's label) maps, at the size of the frames given.

    ``frames``: (H, W, 3) uint8 RGB frames of one size (the model's height); ``partners``: per frame its flow
    partner and the direction (``"next"``: flow from the frame to the partner; ``"previous"``: from the partner to
    the frame), as :func:`a2dpipe.dataset.frames.neighbour_of` pairs them; None without flow. Parts are injected
    (:meth:`from_parts` loads a run's): ``net`` a trained segmenter in eval mode; ``estimator`` a flow estimator
    (:func:`a2dpipe.flow.build_estimator`) or None; ``mask_model`` from :func:`a2dpipe.masks.stage.load_region_model`
    or None; ``settings`` shaped like a config (frames.neighbour, flow.encoding / wheel_max, masks inference keys,
    segmentation.inference_batch and, for the mask vote, stage2). ``seconds`` and ``cpu_seconds`` add up the wall
    and process CPU time of each stage.
    """

    def __init__(self, variant, *, net, settings: dict, height: int, device, amp: torch.dtype | None = None,
                 estimator=None, mask_model=None, agnostic: bool = False):
        from a2dpipe.segmentation.predict import vote_layer
        from a2dpipe.segmentation.train import flow_encoding_settings

        self.variant, self.net, self.settings, self.height, self.device = variant, net, settings, height, device
        self.amp, self.estimator, self.mask_model, self.agnostic = amp, estimator, mask_model, agnostic
        self.neighbour = settings["frames"]["neighbour"]
        self.encoding = flow_encoding_settings(settings, variant.input)
        self.masks = settings.get("masks", {})
        self.vote = vote_layer(settings, variant, device)
        self.batch = int(settings["segmentation"]["inference_batch"])
        self.seconds: Counter = Counter()
        self.cpu_seconds: Counter = Counter()
        self.regions = 0  # regions the mask model kept, over all frames
        self.parts: RunParts | None = None

    @classmethod
    def from_parts(cls, parts: RunParts, device) -> "Chain":
        """The chain of a run's variant (:func:`.run_parts.find_parts`) on ``device``."""
        from a2dpipe.accelerator import autocast_dtype
        from a2dpipe.flow.estimators import build_estimator
        from a2dpipe.segmentation.predict import load_network

        settings, v = parts.settings, parts.variant
        estimator = mask_model = None
        agnostic = False
        if v.input == "rgbflow":
            flow = settings["flow"]
            neural = flow["method"] != "dis"  # DIS runs on the CPU whatever the device, as the flow stage runs it
            estimator = build_estimator(flow["method"], **{**flow, "device": device if neural else "cpu"})
        if v.kind != "baseline":
            from a2dpipe.masks.stage import load_region_model

            mask_model, agnostic = load_region_model(parts.mask_model, settings, v.test_source, device)
        net, trained = load_network(settings, v, parts.network, device)
        chain = cls(v, net=net, settings=settings, height=parts.height, device=device,
                    amp=autocast_dtype(device, bool(trained["amp"])), estimator=estimator, mask_model=mask_model,
                    agnostic=agnostic)
        chain.parts = parts
        return chain

    @property
    def uses_flow(self) -> bool:
        return self.estimator is not None

    def __call__(self, frames: list[np.ndarray], partners) -> list[dict[str, np.ndarray]]:
        return self.network(self.samples(frames, partners))

    def samples(self, frames: list[np.ndarray], partners) -> list[dict]:
        """The network's inputs, as :class:`.samples.StoreSamples` gives a stored frame's: ``rgb``, ``flow_rgb``
        (rgbflow), ``boxes`` and ``masks`` (with regions), and an empty ``label``."""
        samples = [{"video": "", "frame": i, "rgb": rgb, "label": np.zeros(rgb.shape[:2], np.uint8)}
                   for i, rgb in enumerate(frames)]
        if self.uses_flow:
            for sample, image in zip(samples, self._flow_images(frames, partners)):
                sample["flow_rgb"] = image
        if self.mask_model is not None:
            for sample, regions in zip(samples, self._regions(frames)):
                sample["boxes"], sample["masks"] = regions
        return samples

    def _timed(self, stage: str, started: tuple[float, float]) -> None:
        if self.device.type == "cuda":
            import torch

            torch.cuda.synchronize()
        self.seconds[stage] += time.perf_counter() - started[0]
        self.cpu_seconds[stage] += time.process_time() - started[1]

    def _flow_images(self, frames, partners) -> list[np.ndarray]:
        """Flow-as-RGB of each frame, from the field rounded to half precision as the flow cache stores it."""
        from a2dpipe.flow.encode import flow_to_rgb

        started = _now()
        sources = [rgb if direction == "next" else partner for rgb, (partner, direction) in zip(frames, partners)]
        targets = [partner if direction == "next" else rgb for rgb, (partner, direction) in zip(frames, partners)]
        flows = self.estimator(np.stack(sources), np.stack(targets)).astype(np.float16).astype(np.float32)
        images = flow_to_rgb(flows, self.encoding["flow_encoding"], self.encoding["wheel_max"])
        self._timed("flow", started)
        return list(images)

    def _regions(self, frames) -> list[tuple[np.ndarray, np.ndarray]]:
        """(boxes, masks) of each frame's regions, the masks quantised as the region-mask cache stores them."""
        from a2dpipe.masks.stage import predict_regions

        started = _now()
        out = []
        size = max(1, int(self.masks["batch_size"]))
        for k in range(0, len(frames), size):
            for regions in predict_regions(self.mask_model, frames[k:k + size], self.masks, self.agnostic,
                                           self.device):
                out.append((regions.boxes.astype(np.float32), _as_cached(regions.masks)))
                self.regions += len(regions)
        self._timed("masks", started)
        return out

    def network(self, samples: list[dict]) -> list[dict[str, np.ndarray]]:
        """Label maps and scores of :meth:`samples`' frames, through ``predict``'s batches and forward pass."""
        import torch

        from a2dpipe.segmentation.loader import collate, to_device
        from a2dpipe.segmentation.predict import label_maps, log_probs

        started = _now()
        out = []
        for k in range(0, len(samples), self.batch):
            batch = to_device(collate(samples[k:k + self.batch]), self.device, with_flow=self.net.uses_flow)
            outputs = log_probs(self.net, self.variant, batch, self.vote, self.amp)
            maps = label_maps(outputs)
            with torch.no_grad():
                joint = maps["joint"].long()
                score = (outputs["actor"].gather(1, (joint // 10)[:, None])
                         + outputs["action"].gather(1, (joint % 10)[:, None]))[:, 0].exp()
            maps = {name: value.to(torch.uint8).cpu().numpy() for name, value in maps.items()}
            score = score.float().cpu().numpy()
            out += [{**{name: maps[name][j] for name in MAP_NAMES}, "score": score[j]} for j in range(len(score))]
        self._timed("network", started)
        return out


def _now() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def _as_cached(masks: np.ndarray) -> np.ndarray:
    """Soft masks as a region-mask cache gives them back: uint8 ``rint(mask * 255)``, then float32 times 1/255."""
    scaled = np.rint(np.clip(np.multiply(masks, np.float32(255.0), dtype=np.float32), 0.0, 255.0))
    return scaled.astype(np.uint8).astype(np.float32) * np.float32(1.0 / 255.0)


# -- streaming -----------------------------------------------------------------------------------------------------


def resize_frame(rgb: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``rgb`` at ``size`` (height, width), as the networks take it: area averaging to shrink, bilinear to grow."""
    import cv2

    if rgb.shape[:2] == size:
        return rgb
    shrink = size[0] < rgb.shape[0]
    return cv2.resize(rgb, (size[1], size[0]), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)


def _with_partners(frames, neighbour: str):
    """``(number, original, small, partner)`` per frame, ``partner`` (small frame, direction) as
    :func:`a2dpipe.dataset.frames.neighbour_of` pairs frames: one frame of look-ahead."""
    previous = current = None
    for item in frames:
        if current is not None:
            yield (*current, _partner(previous, current, item, neighbour))
        previous, current = current, item
    if current is None:
        return
    yield (*current, _partner(previous, current, None, neighbour))


def _partner(previous, current, following, neighbour: str):
    if following is not None and (neighbour == "next" or previous is None):
        return following[2], "next"
    if previous is not None:
        return previous[2], "previous"
    return None  # a one-frame video


def _chunks(items, limit: int, pixels: int):
    chunk = []
    for item in items:
        chunk.append(item)
        if len(chunk) >= limit or len(chunk) * pixels >= PIXEL_BUDGET:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def segment_source(chain: Chain, source: FrameSource, out: Path, *, every: int = 1, maps: str = "h5",
                   chunk: int = 16, progress: bool = True) -> Path:
    """Segment every ``every``-th frame of ``source`` (from the first) and write ``out/<name>/`` (module
    docstring), atomically; returns that folder."""
    final = Path(out) / source.name
    small_size = model_size(source.size, chain.height)
    if small_size != source.size:
        log.info("%s: %dx%d frames, segmented at %dx%d (the run's frame height) and mapped back", source.path,
                 source.size[1], source.size[0], small_size[1], small_size[0])
    chain.seconds.clear()
    chain.cpu_seconds.clear()
    chain.regions = 0
    started = time.perf_counter()
    with atomic_path(final) as tmp:
        tmp.mkdir()
        with Outputs(tmp, source, chain, maps=maps, every=every) as outputs:
            decoded = _decoded(source, small_size, chain)
            items = _with_partners(decoded, chain.neighbour) if chain.uses_flow else (
                (*item, None) for item in decoded)
            limit = max(1, min(chunk, PIXEL_BUDGET // (source.size[0] * source.size[1])))
            bar = _progress(source, progress)
            for part in _chunks(items, limit, source.size[0] * source.size[1]):
                todo = [item for item in part if (item[0] - 1) % every == 0]
                if todo and chain.uses_flow and todo[0][3] is None:
                    raise A2DError(f"{source.path}: one frame only; flow needs two (use an rgb variant)")
                results = chain([item[2] for item in todo], [item[3] for item in todo]) if todo else []
                by_number = dict(zip((item[0] for item in todo), results))
                t0 = _now()
                for number, original, _, _ in part:
                    outputs.add(number, original, by_number.get(number))
                    bar.update(1)
                chain._timed("output", t0)
                del part, todo, results, by_number
                release_free_memory()
            bar.close()
            if not outputs.count:
                raise A2DError(f"{source.path}: no frame decoded")
            outputs.finish(chain.seconds, chain.cpu_seconds, time.perf_counter() - started, chain.regions)
    return final


def _decoded(source: FrameSource, small_size, chain: Chain):
    """``(number, original, small)`` per frame, the time spent decoding and resizing counted as ``decode``."""
    frames = iter(source)
    while True:
        t0 = _now()
        item = next(frames, None)
        if item is None:
            chain._timed("decode", t0)
            return
        number, rgb = item
        small = resize_frame(rgb, small_size)
        chain._timed("decode", t0)
        yield number, rgb, small


def _progress(source: FrameSource, show: bool):
    from tqdm import tqdm

    return tqdm(total=source.expected or None, desc=source.name, unit="frame", mininterval=1, disable=not show)
