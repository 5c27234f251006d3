"""Frames of a user's video for ``a2dpipe segment``: any video OpenCV reads, or a folder of images, decoded one
frame at a time (memory does not grow with the video's length).

Every frame comes out as (H, W, 3) uint8 RGB of one size: grey and 4-channel images become RGB (alpha dropped),
16-bit images 8-bit, and a frame whose size differs from the first is resized to it; each is said once in the log.
Problems with the file itself are :class:`A2DError` naming it: not found, not a video or image, no frame at all.
A video that stops before the frame count its header gives (truncated) ends there, with a warning.

>>> source = open_frames("clip.mp4")              # doctest: +SKIP
>>> source.fps, source.size, source.expected     # doctest: +SKIP
(25.0, (272, 640), 250)
>>> for number, rgb in source:                    # doctest: +SKIP
...     ...                                       # number: 1-based, as A2D numbers frames
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from a2dpipe.errors import A2DError

__all__ = ["FrameSource", "open_frames", "IMAGE_SUFFIXES", "VIDEO_SUFFIXES", "as_rgb"]

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
VIDEO_SUFFIXES = (".mp4", ".avi", ".mkv", ".webm", ".mov", ".m4v", ".mpg", ".mpeg")
DEFAULT_FPS = 25.0  # frame rate of a folder of images, and of a video whose header gives none


def as_rgb(image: np.ndarray, path, warned: set) -> np.ndarray:
    """An image as OpenCV reads it unchanged (grey, BGR, BGRA; 8 or 16 bit) -> (H, W, 3) uint8 RGB."""
    import cv2

    if image.dtype == np.uint16:
        _once(warned, "16bit", "%s: 16-bit frames, scaled to 8 bits", path)
        image = (image >> 8).astype(np.uint8)
    elif image.dtype != np.uint8:
        raise A2DError(f"{path}: {image.dtype} pixels; expected 8- or 16-bit images")
    if image.ndim == 2 or image.shape[2] == 1:
        _once(warned, "grey", "%s: grey frames, given to the networks as RGB", path)
        return cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    if image.shape[2] == 4:
        _once(warned, "alpha", "%s: 4-channel frames, alpha channel dropped", path)
        return cv2.cvtColor(image, cv2.COLOR_BGRA2RGB)
    if image.shape[2] != 3:
        raise A2DError(f"{path}: frames of {image.shape[2]} channels; expected grey, RGB or RGBA")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def _once(warned: set, key: str, message: str, *args) -> None:
    if key not in warned:
        warned.add(key)
        log.warning(message, *args)


class FrameSource:
    """The frames of one video or image folder; iterate for ``(number, rgb)``, numbers 1-based.

    Attributes: ``path``, ``name`` (the output folder's name: the file's stem or the folder's name), ``fps``,
    ``size`` (height, width) of the first frame, ``expected`` (the header's frame count; 0 when unknown).
    """

    def __init__(self, path: Path, fps: float, size: tuple[int, int], expected: int):
        self.path, self.fps, self.size, self.expected = path, fps, size, expected
        self.name = path.stem if path.is_file() else path.name
        self.decoded = 0
        self._warned: set = set()

    def _frames(self):
        raise NotImplementedError

    def __iter__(self):
        import cv2

        self.decoded = 0
        for image in self._frames():
            rgb = as_rgb(image, self.path, self._warned)
            if rgb.shape[:2] != self.size:
                _once(self._warned, "size", "%s: frame %d is %dx%d, the first %dx%d: frames are resized to the "
                      "first one's size", self.path, self.decoded + 1, rgb.shape[1], rgb.shape[0], self.size[1],
                      self.size[0])
                rgb = cv2.resize(rgb, (self.size[1], self.size[0]), interpolation=cv2.INTER_AREA)
            self.decoded += 1
            yield self.decoded, rgb
        if self.expected and self.decoded < self.expected:
            log.warning("%s: decoding stopped after %d of the %d frames its header gives (truncated?); the outputs "
                        "cover the frames decoded", self.path, self.decoded, self.expected)


class VideoFrames(FrameSource):
    def _frames(self):
        import cv2

        cap = cv2.VideoCapture(str(self.path))
        try:
            while True:
                ok, bgr = cap.read()
                if not ok:
                    return
                yield bgr
        finally:
            cap.release()


class FolderFrames(FrameSource):
    def __init__(self, path: Path, files: list[Path], fps: float, size: tuple[int, int]):
        super().__init__(path, fps, size, len(files))
        self.files = files

    def _frames(self):
        for file in self.files:
            image = _read_image(file)
            if image is None:
                raise A2DError(f"{file}: not an image OpenCV can read (remove it from the folder, or convert it)")
            yield image


def _read_image(file: Path):
    import cv2

    return cv2.imread(str(file), cv2.IMREAD_UNCHANGED)


def open_frames(path: str | Path, fps: float | None = None) -> FrameSource:
    """A :class:`FrameSource` for a video file or a folder of images (sorted by name); its first frame is decoded
    here, so a file that is no video fails before anything is written. ``fps`` overrides the frame rate."""
    import cv2

    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise A2DError(f"{path}: a folder with no images ({', '.join(IMAGE_SUFFIXES)}); give a video or a "
                           f"folder of frames")
        first = _read_image(files[0])
        if first is None:
            raise A2DError(f"{files[0]}: not an image OpenCV can read (remove it from the folder, or convert it)")
        size = as_rgb(first, files[0], set()).shape[:2]
        return FolderFrames(path, files, float(fps or DEFAULT_FPS), size)
    if not path.is_file():
        raise A2DError(f"{path}: no such video or folder of frames")
    cap = cv2.VideoCapture(str(path))
    try:
        ok, bgr = cap.read() if cap.isOpened() else (False, None)
        if not ok:
            raise A2DError(f"{path}: not a video OpenCV can read, or one with no frame (empty or truncated "
                           f"before its first frame); convert it, e.g. ffmpeg -i {path.name} out.mp4")
        header_fps = cap.get(cv2.CAP_PROP_FPS)
        expected = max(int(cap.get(cv2.CAP_PROP_FRAME_COUNT)), 0)
    finally:
        cap.release()
    if fps is None and not (header_fps and np.isfinite(header_fps) and 0 < header_fps <= 1000):
        log.warning("%s: no frame rate in the header; taking %g (set --fps)", path, DEFAULT_FPS)
        header_fps = DEFAULT_FPS
    size = as_rgb(bgr, path, set()).shape[:2]
    return VideoFrames(path, float(fps or header_fps), size, expected)
