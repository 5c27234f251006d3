"""The mask-vote control: stage-1 probabilities averaged inside each test region, through Ours' region-to-pixel."""

from __future__ import annotations

import math

import h5py
import numpy as np
import pytest
import torch

from a2dpipe.labels import is_valid
from a2dpipe.segmentation.models.region_to_pixel import RegionToPixel
from a2dpipe.errors import A2DError
from a2dpipe.segmentation.predict import mask_vote, predict, region_average
from a2dpipe.segmentation.samples import ArraySamples
from a2dpipe.segmentation.train import train
from a2dpipe.variants import NONE, Variant, all_variants, check_variant, variant_name, variant_of
from conftest import complete

torch.set_num_threads(1)

CONFIG = complete({
    "seed": 0,
    "device": "cpu",
    "segmentation": {
        "width": 8, "aspp_rates": [1, 2], "crop": [32, 40],
        "stage1": {"iterations": 2, "batch_size": 2, "checkpoint_every": 2},
        "stage2": {"uncovered_background": 1.0, "pixel_stride": 1},
    },
})


def test_variant_names():
    assert variant_name(Variant("maskvote", "rgbflow", NONE, "dataset")) == "maskvote-rgbflow-dataset"
    assert variant_name(Variant("baseline", "rgb")) == "baseline-rgb"
    assert variant_name(Variant("ours", "rgbflow", "dataset", "gt")) == "ours-rgbflow-dataset-gt"
    bad = {Variant("maskvote", "rgb"): "maskvote variant takes test source",
           Variant("maskvote", "rgb", "dataset", "dataset"): "maskvote variant takes train source none",
           Variant("maskvote", "depth", NONE, "gt"): "variant input 'depth'",
           Variant("baseline", "rgb", NONE, "gt"): "baseline variant takes test source none",
           Variant("ours", "rgb", "gt", "gt"): "ours variant takes train source dataset or generic",
           Variant("votes", "rgb"): "variant kind 'votes'"}
    for variant, message in bad.items():
        with pytest.raises(A2DError, match=message):
            check_variant(variant)


def test_a_kind_takes_the_sources_it_uses_and_every_variant_has_its_own_name():
    assert variant_of("baseline", "rgb", "generic", "gt") == Variant("baseline", "rgb")
    assert variant_of("maskvote", "rgbflow") == Variant("maskvote", "rgbflow", NONE, "dataset")
    assert variant_of("ours", "rgb", test_source="gt") == Variant("ours", "rgb", "dataset", "gt")
    names = [variant_name(v) for v in all_variants()]  # variant_name checks each
    assert len(names) == len(set(names)) == 2 + 2 * 3 + 2 * 2 * 3  # baseline, mask vote, ours x inputs x sources


def test_region_average_weights_by_mask_inside_the_box_only():
    probs = torch.zeros(2, 4, 6)
    probs[0] = 1.0
    probs[:, :, 3:] = torch.tensor([0.25, 0.75])[:, None, None]  # the right half says class 1
    masks = torch.zeros(3, 4, 6)
    masks[0] = 1.0  # whole frame, but its box holds the left half only
    masks[1, :, 3:] = 0.5  # soft mask on the right half
    boxes = torch.tensor([[0.0, 0.0, 2.0, 3.0], [0.0, 0.0, 5.0, 3.0], [0.0, 0.0, 5.0, 3.0]])
    avg = region_average(probs, masks, boxes)
    torch.testing.assert_close(avg[0], torch.tensor([1.0, 0.0]))
    torch.testing.assert_close(avg[1], torch.tensor([0.25, 0.75]))
    torch.testing.assert_close(avg[2], torch.tensor([0.0, 0.0]))  # an empty mask votes for nothing


def test_mask_vote_makes_labels_consistent_within_a_mask_and_background_outside():
    to_pixel = RegionToPixel(8, 10, uncovered_background=1.0)
    h, w = 6, 8
    actor = torch.full((1, 8, h, w), 0.01)
    actor[0, 0] = 0.93
    actor[0, 0, 1:5, 1:5] = 0.03
    actor[0, 2, 1:5, 1:5] = 0.9  # the stage-1 actor map says "actor 2" inside the box ...
    actor[0, 2, 1:3, 1:3] = 0.03
    actor[0, 4, 1:3, 1:3] = 0.9  # ... except a corner that says "actor 4"
    action = torch.full((1, 10, h, w), 0.1)
    outputs = {"actor": actor.log(), "action": action.log()}
    masks = torch.zeros(1, h, w)
    masks[0, 1:5, 1:5] = 1.0
    regions = [{"boxes": torch.tensor([[1.0, 1.0, 4.0, 4.0]]), "masks": masks}]
    voted = mask_vote(to_pixel, outputs, regions)
    assert voted["actor"].shape == (1, 8, h, w) and voted["action"].shape == (1, 10, h, w)
    labels = voted["actor"].argmax(1)[0]
    assert (labels[1:5, 1:5] == 2).all()  # the majority of the mask wins everywhere in it
    outside = torch.ones(h, w, dtype=torch.bool)
    outside[1:5, 1:5] = False
    assert (labels[outside] == 0).all()  # uncovered pixels get the background score, as in Ours
    torch.testing.assert_close(voted["actor"].exp().sum(1), torch.ones(1, h, w))


def test_predict_mask_vote_with_a_stage1_model(tmp_path):
    rng = np.random.default_rng(0)
    samples = []
    for k in range(3):
        label = np.zeros((32, 40), np.uint8)
        label[8:20, 10:30] = 11
        masks = (label > 0).astype(np.float32)[None]
        samples.append({"video": f"v{k}", "frame": 1, "rgb": rng.integers(0, 255, (32, 40, 3), dtype=np.uint8),
                        "label": label, "boxes": np.array([[10, 8, 29, 19]], np.float32), "masks": masks})
    samples = ArraySamples(samples)
    model = tmp_path / "stage1.pt"
    train(CONFIG, stage=1, input="rgb", samples=samples, out=model)
    out = tmp_path / "pred.h5"
    seconds = predict(CONFIG, variant=Variant("maskvote", "rgb", NONE, "gt"), model=model, samples=samples, out=out)
    assert math.isfinite(seconds)
    with h5py.File(out) as f:
        assert f.attrs["variant"].decode() == "maskvote-rgb-gt"
        for k in range(3):
            g = f[f"v{k}/00001"]
            joint = g["joint"][()]
            assert is_valid(joint).all()
            assert len(np.unique(g["actor"][()][8:20, 10:30])) == 1  # one label per mask
            assert (g["actor"][()][:8] == 0).all()
