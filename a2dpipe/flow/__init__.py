"""Optical flow stage: estimators (DIS, FlowNet family, RAFT), flow-as-RGB encodings, .flo files, the flow cache.

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
