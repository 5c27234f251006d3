"""The outputs of ``a2dpipe segment`` for one video (:mod:`.segment` describes them): the overlay video, the label
maps (the predictions format, or PNGs), ``summary.json`` (schema :data:`SCHEMA`) and ``overlays.png`` (a strip of
a few evenly spaced segmented frames' overlays, which the HTML report shows), written into one folder.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from pathlib import Path

import numpy as np

from a2dpipe.devices import describe_device
from a2dpipe.errors import A2DError
from a2dpipe.variants import variant_name

__all__ = ["Outputs", "overlay", "model_size", "SCHEMA", "STAGES"]

log = logging.getLogger("a2dpipe.segmentation.segment")

SCHEMA = "a2dpipe.segment/1"  # of summary.json
STAGES = ("decode", "flow", "masks", "network", "output")
MAP_NAMES = ("actor", "action", "joint")
ALPHA = 0.6  # label colour over the frame, as in the report's overlays
STRIP_FRAMES = 4  # overlays in overlays.png: enough to see a video's course, small enough for the report
STRIP_KEPT = 32  # overlays held to choose them from (a few MB): the chosen ones are within 1/16 of even spacing
STRIP_HEIGHT = 160  # px of each overlay in the strip (smaller frames keep their own height)


def model_size(size: tuple[int, int], height: int) -> tuple[int, int]:
    """(height, width) a frame of ``size`` is segmented at: ``height`` high, its aspect kept."""
    h, w = size
    return (h, w) if h == height else (height, max(8, int(round(w * height / h))))


class Outputs:
    """The overlay video, the label maps and the summary of one video, written into ``folder``."""

    def __init__(self, folder: Path, source, chain, *, maps: str, every: int):
        self.folder, self.source, self.maps, self.every = folder, source, maps, every
        self.variant = variant_name(chain.variant)
        self.model = chain.parts.network.name if chain.parts else type(chain.net).__name__
        self.settings, self.height, self.device = chain.settings, chain.height, chain.device
        self.run_files = sorted(chain.parts.stamped) if chain.parts else []
        self.count = self.segmented = 0
        self.found: dict[int, dict] = {}
        self._last = None  # the latest segmented frame's joint map and names, shown until the next one
        self._video = self._labels = None
        self._strip = Strip()

    def __enter__(self):
        import cv2

        h, w = self.source.size
        path = self.folder / "overlay.mp4"
        self._video = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), self.source.fps, (w, h))
        if not self._video.isOpened():
            raise A2DError(f"{path}: OpenCV cannot write an mp4 video here (codec mp4v missing from its build?)")
        if self.maps == "h5":
            from a2dpipe.segmentation.predictions import PredictionWriter

            self._labels = PredictionWriter(self.folder / "labels.h5", variant=self.variant, model=self.model,
                                            device=describe_device(self.device), settings=self.settings)
            self._labels.__enter__()
        return self

    def __exit__(self, kind, error, trace):
        self._video.release()
        if self._labels is not None:
            self._labels.__exit__(kind, error, trace)
        return False

    def add(self, number: int, original: np.ndarray, result: dict | None) -> None:
        """One decoded frame; ``result`` its maps at the model's size (None: not segmented)."""
        import cv2

        self.count += 1
        if result is not None:
            self.segmented += 1
            full = {name: _to_size(result[name], original.shape[:2]) for name in MAP_NAMES}
            self._write_maps(number, full)
            self._tally(number, full["joint"], result)
            self._last = (full["joint"], _name_positions(result["joint"], original.shape[:2]))
        joint, names = self._last
        drawn = overlay(original, joint, names)
        self._video.write(cv2.cvtColor(drawn, cv2.COLOR_RGB2BGR))
        if result is not None:
            self._strip.add(number, drawn)

    def _write_maps(self, number: int, full: dict) -> None:
        import cv2

        if self._labels is not None:
            self._labels.write(self.source.name, number, full)
            return
        for name, image in full.items():
            path = self.folder / "labels" / name / f"{number:05d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            if not cv2.imwrite(str(path), image):
                raise A2DError(f"{path}: could not write the label map")

    def _tally(self, number: int, joint: np.ndarray, result: dict) -> None:
        pixels = np.bincount(joint.ravel(), minlength=256)
        small = result["joint"].ravel()
        scores = np.bincount(small, weights=result["score"].ravel(), minlength=256)
        small_pixels = np.bincount(small, minlength=256)
        for pid in np.flatnonzero(pixels[1:]) + 1:
            entry = self.found.setdefault(int(pid), {"frames": 0, "spans": [], "pixels": 0.0, "score": 0.0,
                                                    "score_pixels": 0})
            entry["frames"] += 1
            if entry["spans"] and entry["spans"][-1][1] == number - self.every:
                entry["spans"][-1][1] = number
            else:
                entry["spans"].append([number, number])
            entry["pixels"] += float(pixels[pid])
            entry["score"] += float(scores[pid])
            entry["score_pixels"] += int(small_pixels[pid])

    def finish(self, seconds: Counter, cpu_seconds: Counter, wall: float, regions: int = 0) -> None:
        from a2dpipe import __version__
        from a2dpipe.labels import pair_name

        if self._labels is not None:
            self._labels.seconds_per_frame = seconds["network"] / max(self.segmented, 1)
        h, w = self.source.size
        area = float(h * w)
        found = []
        for pid, e in sorted(self.found.items()):
            found.append({"id": pid, "name": pair_name(pid), "frames": e["frames"], "spans": e["spans"],
                          "area": e["pixels"] / e["frames"] / area, "pixels": e["pixels"] / e["frames"],
                          "mean_score": e["score"] / max(e["score_pixels"], 1)})
        busy = sum(seconds[s] for s in STAGES) or 1.0
        summary = {
            "schema": SCHEMA, "a2dpipe_version": __version__, "video": str(self.source.path),
            "name": self.source.name, "variant": self.variant, "run_files": self.run_files,
            "fps": self.source.fps, "frames": self.count, "frames_in_header": self.source.expected,
            "segmented": self.segmented, "every": self.every, "size": [h, w],
            "model_size": list(model_size((h, w), self.height)),
            "seconds": {s: round(seconds[s], 4) for s in STAGES}, "wall_seconds": round(wall, 3),
            "cpu_seconds": {s: round(cpu_seconds[s], 4) for s in STAGES},
            "stage_shares": {s: round(seconds[s] / busy, 4) for s in STAGES},
            "segmented_per_second": self.segmented / wall if wall else None,
            "regions_per_frame": regions / max(self.segmented, 1),
            "found": found,
        }
        (self.folder / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
        self._strip.write(self.folder / "overlays.png")
        log.info("%s: %d frames, %d segmented in %.1f s (%.2f frames/s); %s", self.source.path, self.count,
                 self.segmented, wall, self.segmented / wall if wall else 0.0,
                 ", ".join(f"{s} {summary['stage_shares'][s]:.0%}" for s in STAGES))


class Strip:
    """A few evenly spaced overlays of a video of unknown length, in bounded memory: every ``stride``-th one is
    kept, and when more than :data:`STRIP_KEPT` are held every other one is dropped and the stride doubles; the
    strip takes :data:`STRIP_FRAMES` of them evenly spaced."""

    def __init__(self):
        self.seen, self.stride, self.kept = 0, 1, []

    def add(self, number: int, drawn: np.ndarray) -> None:
        if self.seen % self.stride == 0:
            self.kept.append(_thumbnail(drawn, number))
            if len(self.kept) > STRIP_KEPT:
                self.kept, self.stride = self.kept[::2], self.stride * 2
        self.seen += 1

    def write(self, path: Path) -> None:
        """The chosen overlays side by side as a PNG (nothing when no frame was segmented)."""
        import cv2

        if not self.kept:
            return
        chosen = np.unique(np.linspace(0, len(self.kept) - 1, STRIP_FRAMES).round().astype(int))
        strip = np.concatenate([self.kept[i] for i in chosen], axis=1)
        if not cv2.imwrite(str(path), cv2.cvtColor(strip, cv2.COLOR_RGB2BGR)):
            raise A2DError(f"{path}: could not write the overlay strip")


def _thumbnail(drawn: np.ndarray, number: int) -> np.ndarray:
    """``drawn`` at most :data:`STRIP_HEIGHT` high, its frame number in the top left corner."""
    import cv2

    h, w = drawn.shape[:2]
    if h > STRIP_HEIGHT:
        drawn = cv2.resize(drawn, (max(1, round(w * STRIP_HEIGHT / h)), STRIP_HEIGHT), interpolation=cv2.INTER_AREA)
    else:
        drawn = drawn.copy()
    cv2.putText(drawn, f"frame {number}", (4, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (255, 255, 255), 1, cv2.LINE_AA)
    return drawn


def _to_size(label: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    import cv2

    if label.shape == tuple(size):
        return label
    return cv2.resize(label, (size[1], size[0]), interpolation=cv2.INTER_NEAREST)


def _name_positions(joint: np.ndarray, size: tuple[int, int]) -> list[tuple[int, int, int]]:
    """(id, x, y) in ``size`` pixels: each actor-action's name goes at the centre of its largest region."""
    import cv2

    scale_x, scale_y = size[1] / joint.shape[1], size[0] / joint.shape[0]
    out = []
    for pid in np.unique(joint):
        if pid == 0:
            continue
        count, _, stats, centres = cv2.connectedComponentsWithStats((joint == pid).astype(np.uint8), connectivity=8)
        largest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
        x, y = centres[largest]
        out.append((int(pid), int(x * scale_x), int(y * scale_y)))
    return out


def overlay(rgb: np.ndarray, joint: np.ndarray, names: list[tuple[int, int, int]]) -> np.ndarray:
    """(H, W, 3) uint8: ``rgb`` with each labelled pixel blended with its legend colour and each actor-action's
    name on a box of its colour at ``names``' positions."""
    import cv2

    from a2dpipe.labels import PALETTE, pair_name

    colour = PALETTE[joint]
    blended = cv2.addWeighted(rgb, 1 - ALPHA, colour, ALPHA, 0)
    out = np.where((joint > 0)[..., None], blended, rgb)
    scale = max(0.35, rgb.shape[0] / 600)
    thickness = max(1, int(round(scale * 1.5)))
    for pid, x, y in names:
        text = pair_name(pid)
        (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)
        x0 = int(np.clip(x - tw // 2, 0, max(rgb.shape[1] - tw, 0)))
        y0 = int(np.clip(y + th // 2, th, rgb.shape[0] - base))
        box = tuple(int(c) for c in PALETTE[pid])
        cv2.rectangle(out, (x0, y0 - th - 1), (x0 + tw, y0 + base), box, cv2.FILLED)
        ink = (0, 0, 0) if sum(box) > 380 else (255, 255, 255)
        cv2.putText(out, text, (x0, y0), cv2.FONT_HERSHEY_SIMPLEX, scale, ink, thickness, cv2.LINE_AA)
    return out
