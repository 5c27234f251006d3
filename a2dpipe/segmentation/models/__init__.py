"""Segmentation network: dilated two-stream front-end, ASPP baseline and region back-ends (paper 3.2-3.3).

``build_segmenter(**segmenter_arguments(segmentation, input=...))`` assembles the network from a config's
``segmentation`` section.
"""

from a2dpipe.segmentation.models.backends import (
    ASPPBaseline,
    RegionBackEnd,
    RegionPredictor,
    RoIPooler,
    build_region_back_end,
)
from a2dpipe.segmentation.models.frontend import OUTPUT_STRIDE, FrontEnd, build_front_end, load_imagenet_checkpoint
from a2dpipe.segmentation.models.segmenter import (
    Segmenter,
    build_segmenter,
    class_argmax,
    joint_prediction,
    segmenter_arguments,
    segmentation_loss,
)

__all__ = [
    "ASPPBaseline",
    "RegionBackEnd",
    "RegionPredictor",
    "RoIPooler",
    "build_region_back_end",
    "FrontEnd",
    "OUTPUT_STRIDE",
    "build_front_end",
    "load_imagenet_checkpoint",
    "Segmenter",
    "build_segmenter",
    "class_argmax",
    "joint_prediction",
    "segmenter_arguments",
    "segmentation_loss",
]
