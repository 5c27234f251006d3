"""Optical flow stage: estimators (DIS, FlowNet family, RAFT), flow-as-RGB encodings, .flo files, the flow cache.

Rule ``flow`` (``workflow/rules/flow.smk``) -> ``a2dpipe flow`` (:mod:`.stage`). :mod:`.estimators` builds every
method, the FlowNet networks from :mod:`.flownet` on the shared parts of :mod:`.flownet_layers`; :mod:`.encode`
turns flow into the motion stream's RGB, :mod:`.flo` reads and writes ``.flo`` files, and :mod:`.store` is the
flow cache's reader and writer. ``benchmarks/flow_methods.py`` measures every method's error and speed.

Heavy dependencies (torch, OpenCV) load only when an estimator or encoding is used.
"""

from a2dpipe.flow.encode import flow_to_rgb
from a2dpipe.flow.estimators import METHODS, NEURAL_METHODS, build_estimator
from a2dpipe.flow.flo import endpoint_error, read_flo, write_flo
from a2dpipe.flow.store import FlowStore, FlowWriter

__all__ = [
    "FlowStore",
    "FlowWriter",
    "METHODS",
    "NEURAL_METHODS",
    "build_estimator",
    "flow_to_rgb",
    "read_flo",
    "write_flo",
    "endpoint_error",
]
