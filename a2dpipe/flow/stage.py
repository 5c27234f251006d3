"""Command ``a2dpipe flow``: optical flow and its RGB encoding for every annotated frame of one shard.

    a2dpipe flow --config config.yaml --frames results/frames/shard-000.h5 --out results/flow/dis/shard-000.h5

Reads the frames store (``a2dpipe.dataset.frames.FrameStore``): each record's flow partner is ``neighbour``; with
``direction`` 'next' the flow goes from the frame to the neighbour (t -> t+1), with 'previous' from the neighbour
to the frame (t-1 -> t). Writes the flow cache described in ``a2dpipe.flow.store`` with its atomic ``FlowWriter``.
Config: section ``flow`` (method, dis_preset, encoding, wheel_max, weights, raft_variant, batch_size) and the
top-level ``device``.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import numpy as np

from a2dpipe.flow.estimators import METHODS, NEURAL_METHODS, build_estimator
from a2dpipe.flow.store import FlowWriter
from a2dpipe.settings import add_config_arguments, read_settings
from a2dpipe.devices import describe_device
from a2dpipe.errors import A2DError
from a2dpipe.progress import progress

__all__ = ["configure_parser", "run", "compute_shard"]

log = logging.getLogger("a2dpipe.flow")


def configure_parser(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser, "flow")
    parser.add_argument("--frames", required=True, help="frames store of the shard (results/frames/shard-NNN.h5)")
    parser.add_argument("--out", required=True, help="flow cache to write (results/flow/<method>/shard-NNN.h5)")
    parser.add_argument("--method", choices=METHODS, help="override config flow.method (the rule passes its wildcard)")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads for OpenCV and PyTorch (the rule's threads)")


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
    compute_shard(args.frames, args.out, flow_cfg, device=settings["device"] if neural else "cpu")


def _pair(record) -> tuple[np.ndarray, np.ndarray]:
    """(source, target) images of a record's flow, following its direction."""
    if record.direction == "next":
        return record.rgb, record.neighbour
    if record.direction == "previous":
        return record.neighbour, record.rgb
    raise A2DError(f"video {record.video} frame {record.frame}: unknown flow direction {record.direction!r}")


def _batches(store, keys, batch_size: int):
    """Records in groups of at most ``batch_size`` sharing one frame size (a network batch needs one size)."""
    batch = []
    for video, frame in keys:
        record = store.read(video, frame)
        if batch and (len(batch) == batch_size or batch[0].rgb.shape != record.rgb.shape):
            yield batch
            batch = []
        batch.append(record)
    if batch:
        yield batch


def compute_shard(frames_path, out_path, flow_cfg: dict, *, device="auto") -> dict:
    """Compute the flow cache ``out_path`` from the frames store ``frames_path``; returns the root attributes.

    ``flow_cfg`` holds the ``flow`` keys the method reads (declared in :mod:`a2dpipe.settings`); the cache records
    them.
    """
    from a2dpipe.dataset.frames import FrameStore

    method, encoding = flow_cfg["method"], flow_cfg["encoding"]
    wheel_max = flow_cfg["wheel_max"] if encoding == "wheel" else None
    batch_size = flow_cfg["batch_size"] if method in NEURAL_METHODS else 1  # DIS runs pair by pair
    if not Path(frames_path).is_file():
        raise A2DError(f"{frames_path}: frames store not found")
    estimator = build_estimator(method, **{**flow_cfg, "device": device})
    if method in NEURAL_METHODS:
        log.info("%s on %s, batches of %d", method, estimator.device, batch_size)
    attrs = {"method": method, "encoding": encoding,
             "wheel_max": wheel_max if encoding == "wheel" else None,
             "dis_preset": flow_cfg["dis_preset"] if method == "dis" else None,
             "device": describe_device(estimator.device) if method in NEURAL_METHODS else None}
    made_with = {"flow": flow_cfg, **({"device": str(device)} if method in NEURAL_METHODS else {})}
    seconds = 0.0
    with FrameStore(frames_path) as frames, FlowWriter(out_path, settings=made_with, **attrs) as writer:
        keys = frames.keys()
        bar = progress(total=len(keys), desc=f"flow {method}")
        for batch in _batches(frames, keys, batch_size):
            sources, targets = zip(*(_pair(r) for r in batch))
            start = time.perf_counter()
            flows = estimator(np.stack(sources), np.stack(targets))
            seconds += time.perf_counter() - start
            # the writer encodes what it stores (half precision), so that a reader can re-derive the image from
            # the field, and makes the mirror image with it (flow_images: the two share most of their work)
            for record, flow in zip(batch, flows):
                writer.write(record.video, record.frame, flow,
                             direction=record.direction, neighbour_frame=int(record.neighbour_frame))
            bar.update(len(batch))
        bar.close()
        writer.seconds_per_frame = seconds / writer.count if writer.count else 0.0
        attrs = {**attrs, "seconds_per_frame": seconds / max(writer.count, 1), "frames": writer.count}
    log.info("wrote %s: %d frames, %.4f s per frame (%s)", out_path, attrs["frames"], attrs["seconds_per_frame"], method)
    return attrs
