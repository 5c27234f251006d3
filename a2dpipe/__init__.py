"""a2dpipe: actor-action semantic segmentation with region masks, as a reproducible Snakemake pipeline."""

__version__ = "0.1.0"
