"""The commands of ``a2dpipe`` and the module behind each: the command line (:mod:`a2dpipe.cli`) runs them, and the
code digests of :mod:`a2dpipe.integrity` follow each one's imports from its module."""

__all__ = ["COMMANDS"]

# command -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "synthesize": ("a2dpipe.dataset.synthetic", "write the synthetic A2D-format benchmark"),
    "index": ("a2dpipe.dataset.index", "list the annotated frames of a dataset and assign shards"),
    "extract-frames": ("a2dpipe.dataset.frames", "decode annotated frames and their flow neighbours for one shard"),
    "flow": ("a2dpipe.flow.stage", "optical flow and its RGB encoding for one shard"),
    "train-mask-model": ("a2dpipe.masks.train", "train the instance-segmentation model behind a mask source"),
    "region-masks": ("a2dpipe.masks.stage", "cache candidate region masks of one shard to HDF5"),
    "mask-quality": ("a2dpipe.masks.quality", "COCO mask AP of the mask sources on the test split"),
    "train": ("a2dpipe.segmentation.train", "train the segmentation network (stage 1 or stage 2)"),
    "predict": ("a2dpipe.segmentation.predict", "label maps for every test frame"),
    "segment": ("a2dpipe.segmentation.segment", "segment any video with a run's models: overlay, label maps, summary"),
    "evaluate": ("a2dpipe.evaluation.evaluate", "metrics of one prediction set"),
    "tables": ("a2dpipe.evaluation.tables", "the paper's tables from this run's metrics"),
    "aggregate": ("a2dpipe.evaluation.aggregate", "Tables 1-3 and the claims across the runs of several seeds"),
    "compare-masks": ("a2dpipe.evaluation.mask_models", "Table 3 and mask AP of runs with different mask models"),
    "timing": ("a2dpipe.evaluation.timing", "milliseconds per frame of each stage on this machine"),
    "estimate": ("a2dpipe.evaluation.estimate", "wall time of each stage on one GPU: FLOP count x assumed throughput"),
    "report": ("a2dpipe.evaluation.report", "figures of the HTML report (per-category bars, loss curves, overlays)"),
    "bench": ("a2dpipe.flow.bench", "speed and accuracy benchmarks"),
    "config-reference": ("a2dpipe.config_reference", "the configuration reference page, from the config schema"),
}
