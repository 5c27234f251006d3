"""Command ``a2dpipe flow``: optical flow and its RGB encoding for every annotated frame of one shard.

    a2dpipe flow --config config.yaml --frames results/frames/shard-000.h5 --out results/flow/dis/shard-000.h5

Reads the frames store (``a2dpipe.dataset.frames.FrameStore``): each record's flow partner is ``neighbour``; with
``direction`` 'next' the flow goes from the frame to the neighbour (t -> t+1), with 'previous' from the neighbour
to the frame (t-1 -> t). Writes the flow cache described in ``a2dpipe.flow.store`` with its atomic ``FlowWriter``.
Config: section ``flow`` (method, dis_preset, encoding, wheel_max, weights, raft_variant, batch_size) and the
top-level ``device``.

The job's CPUs (``--threads``, the rule's threads: one for DIS, the loader's workers + 1 for a neural method, as
training) share the work around the estimator: beyond the first, worker processes read the frame pairs ahead of it
(neural methods), a thread pool encodes the flow images and one thread writes the cache (``FlowWriter``), so that
a GPU's frames are not held up by the CPU's.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path
from typing import NamedTuple

import numpy as np

from a2dpipe.flow.estimators import METHODS, NEURAL_METHODS, build_estimator
from a2dpipe.flow.store import FlowWriter
from a2dpipe.settings import add_config_arguments, read_settings
from a2dpipe.devices import describe_device
from a2dpipe.errors import A2DError
from a2dpipe.progress import progress

__all__ = ["configure_parser", "run", "compute_shard", "read_pair", "Pair"]

log = logging.getLogger("a2dpipe.flow")


def configure_parser(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser, "flow")
    parser.add_argument("--frames", required=True, help="frames store of the shard (results/frames/shard-NNN.h5)")
    parser.add_argument("--out", required=True, help="flow cache to write (results/flow/<method>/shard-NNN.h5)")
    parser.add_argument("--method", choices=METHODS, help="override config flow.method (the rule passes its wildcard)")
    parser.add_argument("--threads", type=int, default=1,
                        help="CPUs of the job (the rule's threads): OpenCV's and PyTorch's threads; beyond one, "
                             "flow-image encoders and (neural methods) frame readers")


def run(args: argparse.Namespace) -> None:
    import cv2

    cv2.setNumThreads(args.threads)  # OpenCV and PyTorch would otherwise take every core the scheduler gave others
    settings = read_settings(args, "flow")
    flow_cfg = dict(settings["flow"])
    if args.method:
        flow_cfg["method"] = args.method
    neural = flow_cfg["method"] in NEURAL_METHODS  # DIS runs on the CPU whatever the device setting
    if neural:  # only they need PyTorch, whose import costs a DIS job more CPU time than its flow on a small shard
        import torch

        torch.set_num_threads(args.threads)
    compute_shard(args.frames, args.out, flow_cfg, device=settings["device"] if neural else "cpu",
                  threads=args.threads)


class Pair(NamedTuple):
    """A record's flow input, as the flow job reads it: ``source`` -> ``target`` follows its direction."""

    video: str
    frame: int
    source: np.ndarray
    target: np.ndarray
    direction: str
    neighbour_frame: int


def read_pair(store, video: str, frame: int) -> Pair:
    """The frame pair of one record of a frames store (``FrameStore``): only its image and its neighbour's, not
    the labels and instances the flow has no use for."""
    arrays = store.read_arrays(video, frame, ("rgb", "neighbour"))
    attrs = store.group_attrs(video, frame)
    direction, neighbour = str(attrs["direction"]), int(attrs["neighbour_frame"])
    if direction == "next":
        return Pair(video, frame, arrays["rgb"], arrays["neighbour"], direction, neighbour)
    if direction == "previous":
        return Pair(video, frame, arrays["neighbour"], arrays["rgb"], direction, neighbour)
    raise A2DError(f"{store.path}: video {video} frame {frame}: unknown flow direction {direction!r}")


class _PairReader:
    """The pairs of ``keys`` by index, for a DataLoader's worker processes: each opens the frames store itself."""

    def __init__(self, path, keys):
        self.path, self.keys, self._store = path, keys, None

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, i: int) -> Pair:
        if self._store is None:
            from a2dpipe.dataset.frames import FrameStore

            self._store = FrameStore(self.path)
        return read_pair(self._store, *self.keys[i])


def _as_is(pair: Pair) -> Pair:
    return pair


def _pairs(path, keys, readers: int):
    """The pairs of ``keys`` in order: read in this process, or by ``readers`` worker processes ahead of it (HDF5
    reads one call at a time per process, and this process's writer thread writes the cache)."""
    if not readers:
        from a2dpipe.dataset.frames import FrameStore

        with FrameStore(path) as store:
            yield from (read_pair(store, video, frame) for video, frame in keys)
        return
    import torch

    yield from torch.utils.data.DataLoader(_PairReader(path, keys), batch_size=None, num_workers=readers,
                                           collate_fn=_as_is, prefetch_factor=4)


def _batches(pairs, batch_size: int):
    """Pairs in groups of at most ``batch_size`` sharing one frame size (a network batch needs one size)."""
    batch = []
    for pair in pairs:
        if batch and (len(batch) == batch_size or batch[0].source.shape != pair.source.shape):
            yield batch
            batch = []
        batch.append(pair)
    if batch:
        yield batch


def compute_shard(frames_path, out_path, flow_cfg: dict, *, device="auto", threads: int = 1) -> dict:
    """Compute the flow cache ``out_path`` from the frames store ``frames_path``; returns the root attributes.

    ``flow_cfg`` holds the ``flow`` keys the method reads (declared in :mod:`a2dpipe.settings`); the cache records
    them. With ``threads`` > 1, ``threads - 1`` threads encode the flow images beside the estimator (the writer's
    pool) and, for the neural methods, ``threads - 1`` worker processes read the frame pairs ahead of it.
    """
    from a2dpipe.dataset.frames import FrameStore

    method, encoding = flow_cfg["method"], flow_cfg["encoding"]
    wheel_max = flow_cfg["wheel_max"] if encoding == "wheel" else None
    neural = method in NEURAL_METHODS
    batch_size = flow_cfg["batch_size"] if neural else 1  # DIS runs pair by pair
    helpers = max(int(threads) - 1, 0)  # the job's other CPUs; this thread runs the estimator
    if not Path(frames_path).is_file():
        raise A2DError(f"{frames_path}: frames store not found")
    with FrameStore(frames_path) as store:  # closed before any reader process starts
        keys = store.keys()
    estimator = build_estimator(method, **{**flow_cfg, "device": device})
    if neural:
        log.info("%s on %s, batches of %d, %d reader(s), %d encoder thread(s)", method, estimator.device,
                 batch_size, helpers, helpers)
    attrs = {"method": method, "encoding": encoding,
             "wheel_max": wheel_max if encoding == "wheel" else None,
             "dis_preset": flow_cfg["dis_preset"] if method == "dis" else None,
             "device": describe_device(estimator.device) if neural else None}
    made_with = {"flow": flow_cfg, **({"device": str(device)} if neural else {})}
    seconds, frames = 0.0, 0
    with FlowWriter(out_path, settings=made_with, threads=helpers, **attrs) as writer:
        bar = progress(total=len(keys), desc=f"flow {method}")
        for batch in _batches(_pairs(frames_path, keys, helpers if neural else 0), batch_size):
            start = time.perf_counter()
            flows = estimator(np.stack([p.source for p in batch]), np.stack([p.target for p in batch]))
            seconds += time.perf_counter() - start
            # the writer encodes what it stores (half precision), so that a reader can re-derive the image from
            # the field, and makes the mirror image with it (flow_images: the two share most of their work)
            for pair, flow in zip(batch, flows):
                writer.write(pair.video, pair.frame, flow, direction=pair.direction,
                             neighbour_frame=pair.neighbour_frame)
            frames += len(batch)
            bar.update(len(batch))
        bar.close()
        writer.seconds_per_frame = seconds / frames if frames else 0.0
        attrs = {**attrs, "seconds_per_frame": seconds / max(frames, 1), "frames": frames}
    log.info("wrote %s: %d frames, %.4f s per frame (%s)", out_path, attrs["frames"], attrs["seconds_per_frame"], method)
    return attrs
