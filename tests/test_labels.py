import numpy as np
import pytest

from a2dpipe import labels


def test_there_are_43_valid_pairs_over_7_actors_and_9_actions():
    assert len(labels.VALID_PAIRS) == 43
    assert {labels.actor_of(p) for p in labels.VALID_PAIRS} == set(range(1, 8))
    assert {labels.action_of(p) for p in labels.VALID_PAIRS} == set(range(1, 10))
    assert labels.NUM_CLASSES == {"actor": 8, "action": 10, "actor_action": 44}


def test_known_pairs():
    assert labels.pair_id("adult", "climbing") == 11
    assert labels.pair_id("dog", "walking") == 78
    assert labels.pair_name(43) == "bird-eating"
    assert 14 not in labels.VALID_PAIRS  # adults do not fly in A2D
    assert 79 in labels.VALID_PAIRS and 71 not in labels.VALID_PAIRS


def test_to_setting_maps_ids_and_ignores_invalid_ones():
    ids = np.array([[0, 11, 14], [79, 43, 200]], dtype=np.uint8)
    assert labels.to_setting(ids, "actor").tolist() == [[0, 1, 255], [7, 4, 255]]
    assert labels.to_setting(ids, "action").tolist() == [[0, 1, 255], [9, 3, 255]]
    joint = labels.to_setting(ids, "actor_action")
    assert joint.tolist() == [[0, 1, 255], [43, labels.VALID_PAIRS.index(43) + 1, 255]]


def test_to_setting_handles_wide_integer_types():
    ids = np.array([-1, 0, 11, 300], dtype=np.int64)
    assert labels.to_setting(ids, "actor").tolist() == [255, 0, 1, 255]


def test_joint_class_round_trip():
    classes = np.arange(44)
    ids = labels.joint_class_to_id(classes)
    assert labels.to_setting(ids, "actor_action").tolist() == classes.tolist()


def test_class_names_follow_class_indices():
    names = labels.class_names("actor_action")
    assert len(names) == 44 and names[0] == "background" and names[1] == "adult-climbing"
    with pytest.raises(ValueError, match="unknown evaluation setting"):
        labels.class_names("pose")


def test_palette_gives_distinct_colours_to_valid_ids():
    colours = {tuple(labels.PALETTE[p]) for p in (0, *labels.VALID_PAIRS)}
    assert len(colours) == 44
    assert labels.colorize(np.zeros((2, 3), np.uint8)).shape == (2, 3, 3)
