"""Optical-flow estimators behind one interface.

``build_estimator(method, **cfg)`` returns a callable ``estimator(frames1, frames2) -> (B, H, W, 2) float32``
numpy flow in pixels from frames1[b] to frames2[b] (u right, v down), where frames are (B, H, W, 3) uint8 RGB
arrays (or sequences of (H, W, 3) arrays of one size). Methods:

- ``dis``: OpenCV's DIS optical flow on grey images (no weights; presets ultrafast | fast | medium);
- ``flownets`` | ``flownetc`` | ``flownetsd`` | ``flownet2``: the pure-PyTorch FlowNet family (``flownet.py``),
  weights from a flownet2-pytorch checkpoint; frames are resized to the next multiple of 64 px and the flow
  resized back and rescaled;
- ``raft``: torchvision's RAFT small or large, weights from a torchvision state dict; frames are padded (edge
  replication, bottom and right) to a multiple of 8 px and at least 128 px, and the flow cropped back.

A neural method needs ``weights`` (a local file): without one ``build_estimator`` raises ``A2DError``, unless
``random_init=True`` asks explicitly for untrained networks (speed measurements, tests).
"""

from __future__ import annotations

import logging
import os
from typing import Sequence

import numpy as np

from a2dpipe.errors import A2DError

__all__ = ["METHODS", "NEURAL_METHODS", "DIS_PRESETS", "build_estimator", "DISEstimator", "TorchEstimator",
           "load_checkpoint_state", "load_state_strict"]

log = logging.getLogger("a2dpipe.flow")

NEURAL_METHODS = ("flownets", "flownetc", "flownetsd", "flownet2", "raft")
METHODS = ("dis",) + NEURAL_METHODS
DIS_PRESETS = ("ultrafast", "fast", "medium")
RAFT_MIN_SIZE = 128  # torchvision's RAFT needs 1/8-resolution features of at least 16 px for its 4-level pyramid


def _as_batch(frames) -> np.ndarray:
    array = np.asarray(frames)
    if array.ndim == 3:
        array = array[None]
    if array.ndim != 4 or array.shape[-1] != 3:
        raise ValueError(f"frames must be (B, H, W, 3) or (H, W, 3) RGB, got {array.shape}")
    return array


class DISEstimator:
    """OpenCV DIS flow, one pair at a time (OpenCV's own threads, ``cv2.setNumThreads``, set the parallelism).

    ``finest_scale`` and ``refinement_iterations`` override the preset's values when given.
    """

    batched = False

    def __init__(self, preset: str = "medium", *, finest_scale: int | None = None,
                 refinement_iterations: int | None = None):
        import cv2

        if preset not in DIS_PRESETS:
            raise A2DError(f"config flow.dis_preset: unknown preset {preset!r}; expected one of {DIS_PRESETS}")
        self._cv2 = cv2
        codes = {
            "ultrafast": cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST,
            "fast": cv2.DISOPTICAL_FLOW_PRESET_FAST,
            "medium": cv2.DISOPTICAL_FLOW_PRESET_MEDIUM,
        }
        self.preset = preset
        self._dis = cv2.DISOpticalFlow_create(codes[preset])
        if finest_scale is not None:
            self._dis.setFinestScale(int(finest_scale))
        if refinement_iterations is not None:
            self._dis.setVariationalRefinementIterations(int(refinement_iterations))

    def __call__(self, frames1, frames2) -> np.ndarray:
        frames1, frames2 = _as_batch(frames1), _as_batch(frames2)
        flows = [self._dis.calc(self._grey(a), self._grey(b), None) for a, b in zip(frames1, frames2)]
        return np.stack(flows).astype(np.float32)

    def _grey(self, rgb: np.ndarray) -> np.ndarray:
        return self._cv2.cvtColor(np.ascontiguousarray(rgb, np.uint8), self._cv2.COLOR_RGB2GRAY)


class TorchEstimator:
    """A PyTorch flow network run in eval mode on batches of ``batch_size`` pairs.

    ``model(image1, image2)`` takes (B, 3, H, W) float tensors and returns flow: the FlowNets take 0..255 at
    multiples of 64 (``_flownet`` resizes), RAFT takes -1..1 at multiples of 8 (``_raft`` pads).
    """

    batched = True

    def __init__(self, model, *, kind: str, device, batch_size: int = 8):
        self.model = model.to(device).eval()
        self.kind = kind  # "flownet" | "raft"
        self.device = device
        self.batch_size = batch_size

    def __call__(self, frames1, frames2) -> np.ndarray:
        frames1, frames2 = _as_batch(frames1), _as_batch(frames2)
        if frames1.shape != frames2.shape:
            raise ValueError(f"frame batches differ in shape: {frames1.shape} vs {frames2.shape}")
        out = [self._run(frames1[i : i + self.batch_size], frames2[i : i + self.batch_size])
               for i in range(0, len(frames1), self.batch_size)]
        return np.concatenate(out).astype(np.float32)

    def _run(self, frames1: np.ndarray, frames2: np.ndarray) -> np.ndarray:
        import torch

        image1, image2 = (torch.from_numpy(np.ascontiguousarray(f)).to(self.device).permute(0, 3, 1, 2).float()
                          for f in (frames1, frames2))
        with torch.inference_mode():
            flow = self._flownet(image1, image2) if self.kind == "flownet" else self._raft(image1, image2)
        return flow.permute(0, 2, 3, 1).float().cpu().numpy()

    def _flownet(self, image1, image2):
        """Resize to multiples of 64, run, resize the flow back and rescale u and v with the image axes."""
        import torch
        import torch.nn.functional as F

        from a2dpipe.flow.flownet_layers import SIZE_MULTIPLE

        height, width = image1.shape[-2:]
        size = (-(-height // SIZE_MULTIPLE) * SIZE_MULTIPLE, -(-width // SIZE_MULTIPLE) * SIZE_MULTIPLE)
        if size == (height, width):
            return self.model(image1, image2)
        image1, image2 = (F.interpolate(x, size=size, mode="bilinear", align_corners=False) for x in (image1, image2))
        flow = F.interpolate(self.model(image1, image2), size=(height, width), mode="bilinear", align_corners=False)
        return flow * torch.tensor([width / size[1], height / size[0]], device=flow.device).view(1, 2, 1, 1)

    def _raft(self, image1, image2):
        """Scale to -1..1, pad (edge replication) to multiples of 8 and at least 128 px, crop the last estimate."""
        import torch.nn.functional as F

        height, width = image1.shape[-2:]
        pad_h = max(RAFT_MIN_SIZE, -(-height // 8) * 8) - height
        pad_w = max(RAFT_MIN_SIZE, -(-width // 8) * 8) - width
        image1, image2 = (F.pad(x / 127.5 - 1.0, (0, pad_w, 0, pad_h), mode="replicate") for x in (image1, image2))
        return self.model(image1, image2)[-1][:, :, :height, :width]


def load_checkpoint_state(path: str | os.PathLike, keys: Sequence[str] = ("state_dict", "model")) -> dict:
    """The state dict in a local weights file: the file itself, or the first of ``keys`` it holds.

    Read as data only (:func:`a2dpipe.checkpoint.read_checkpoint`): the numpy scalars that flownet2-pytorch's
    files keep beside their weights are allowed, anything that would run code is refused.
    """
    from a2dpipe.checkpoint import read_checkpoint, state_dict_of

    return state_dict_of(read_checkpoint(path, "weights file (config flow.weights)"), path, keys)


def load_state_strict(model, state: dict, path, name: str) -> None:
    """:func:`a2dpipe.checkpoint.load_state_strict` (imported on use: the DIS path needs no torch)."""
    from a2dpipe.checkpoint import load_state_strict as load

    load(model, state, path, name)


def _build_flownet(method: str, weights):
    from a2dpipe.flow import flownet

    model = getattr(flownet, method)()
    if weights is not None:
        flownet.load_flownet_weights(model, weights)
    return model


def _build_raft(variant: str, weights):
    from torchvision.models.optical_flow import raft_large, raft_small

    if variant not in ("small", "large"):
        raise A2DError(f"config flow.raft_variant: unknown variant {variant!r}; expected small or large")
    model = (raft_small if variant == "small" else raft_large)(weights=None, progress=False)
    if weights is not None:
        load_state_strict(model, load_checkpoint_state(weights), weights, f"torchvision raft_{variant}")
    return model


def build_estimator(
    method: str,
    /,
    *,
    dis_preset: str = "medium",
    dis_finest_scale: int | None = None,
    dis_refinement_iterations: int | None = None,
    weights: str | os.PathLike | None = None,
    raft_variant: str = "small",
    batch_size: int = 8,
    device="auto",
    random_init: bool = False,
    **_ignored,
):
    """The estimator for ``method`` (config ``flow.method``); other keywords are the ``flow`` config keys.

    Extra keys of the config section (encoding, wheel_max, ...) are accepted and ignored so that
    ``build_estimator(cfg["method"], **cfg)`` works.
    """
    if method == "dis":
        return DISEstimator(dis_preset, finest_scale=dis_finest_scale, refinement_iterations=dis_refinement_iterations)
    if method not in NEURAL_METHODS:
        raise A2DError(f"config flow.method: unknown method {method!r}; expected one of {METHODS}")
    if weights is None and not random_init:
        raise A2DError(
            f"config flow.weights: method {method!r} needs a local checkpoint file and none is configured "
            f"(no weights are downloaded; use method 'dis' to run without one)"
        )
    if weights is None:
        log.warning("%s runs with random weights: its flow is meaningless (speed measurements only)", method)
    from a2dpipe.devices import select_device

    device = select_device(device) if isinstance(device, str) else device
    if method == "raft":
        return TorchEstimator(_build_raft(raft_variant, weights), kind="raft", device=device,
                              batch_size=batch_size)
    return TorchEstimator(_build_flownet(method, weights), kind="flownet", device=device,
                          batch_size=batch_size)
