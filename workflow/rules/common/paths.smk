# Artifact paths, the contracts between stages (formats documented in the modules that write them), and the shards
# they come in. Reads the video list when the Snakefile is parsed: the number of shards follows from it.
import math

from a2dpipe.dataset.a2d import read_videoset
from a2dpipe.variants import KINDS, NONE, TEST_SOURCES


def count_videos():
    """Videos the index will hold: known from config for the synthetic benchmark, from videoset.csv otherwise."""
    if config["dataset"]["synthetic"] and config["synthetic"]["metadata"] is not None:
        from a2dpipe.dataset.synthetic import count_metadata_videos

        return count_metadata_videos(
            config["synthetic"], config["dataset"]["exclude_videos"]
        )
    if config["dataset"]["synthetic"]:
        return config["synthetic"]["videos"]
    videos = read_videoset(Path(config["dataset"]["root"], "videoset.csv"))
    return int((~videos["video"].isin(config["dataset"]["exclude_videos"])).sum())


SHARDS = [
    f"{s:03d}"
    for s in range(math.ceil(count_videos() / config["dataset"]["shard_size"]))
]
# The splits a variant is predicted and scored on: test for the tables, val for the validate target.
SPLITS = ("test", "val")


wildcard_constraints:
    shard=r"\d{3}",
    input="|".join(INPUTS),
    source="|".join(MASK_SOURCES),
    trained_source="|".join(TRAINED_MASK_SOURCES),
    kind="|".join(KINDS),
    train_source="|".join((NONE, *TRAINED_MASK_SOURCES)),
    test_source="|".join((NONE, *TEST_SOURCES)),
    split="|".join(SPLITS),


# Made once per run, or once for every seed's run and the mask-model comparison (shared(): see makes()).
INDEX = shared("index.csv")
FRAMES = shared("frames", "shard-{shard}.h5")
FLOW = shared("flow", "{method}", "shard-{shard}.h5")
# Ground truth's region caches: the annotations as regions, no model and no setting, hence shared like the frames.
GT_MASK_CACHE = shared("masks", "{source}", "shard-{shard}.h5")
# Made by each run: what a training setting changes.
MASK_MODEL = res("masks", "models", "{trained_source}", "model.pt")
MASK_CACHE = res("masks", "{source}", "shard-{shard}.h5")
MASK_QUALITY = res("masks", "quality.csv")
STAGE1 = str(Path(STAGE1_RESULTS, "models", "stage1", "{input}", "model.pt"))
STAGE2 = res("models", "stage2", "{input}-{trained_source}", "model.pt")
# A prediction variant is four wildcards, one folder each (a2dpipe.variants; `none` for a source a kind does not use),
# under the split it is predicted and scored on.
VARIANT = "{kind}/{input}/{train_source}/{test_source}"
PREDICTIONS = res("predictions", "{split}", f"{VARIANT}.h5")
EVALUATION = res("evaluation", "{split}", f"{VARIANT}.json")
EVALUATION_VIDEOS = res("evaluation", "{split}", f"{VARIANT}.videos.npz")


def get_mask_caches(source):
    """Region caches of `source`, every shard: ground truth's shared, a trained source's this run's."""
    pattern = GT_MASK_CACHE if source == "gt" else MASK_CACHE
    return expand(pattern, source=source, shard=SHARDS)


def get_synthetic_metadata(wildcards):
    """Inputs of `synthesize`: the real metadata files its A2D-shaped mode reads (none without metadata)."""
    folder = config["synthetic"]["metadata"]
    if folder is None:
        return {}
    from a2dpipe.dataset.synthetic import ANNOTATED_FILE, VIDEOSET_FILE

    return {
        "videoset": str(Path(folder, VIDEOSET_FILE)),
        "annotated": str(Path(folder, ANNOTATED_FILE)),
    }


def get_dataset_root():
    """The dataset folder: produced by `synthesize` for the embedded default, an existing copy otherwise."""
    return config["dataset"]["root"]


def get_flow_inputs(wildcards):
    """Flow caches of every shard, when the input uses flow."""
    if wildcards.input == "rgb":
        return []
    return expand(FLOW, method=config["flow"]["method"], shard=SHARDS)


def get_mask_model(wildcards):
    """The mask model behind a trained region-mask source."""
    return MASK_MODEL.format(trained_source=wildcards.source)


def get_stage2_masks(wildcards):
    """Region caches of the mask source stage 2 trains on (ground truth is added by the trainer)."""
    return get_mask_caches(wildcards.trained_source)
