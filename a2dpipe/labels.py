"""A2D label space: actor and action ids, the 43 valid pairs, the three evaluation settings.

A2D stores one id per pixel: ``actor * 10 + action`` (``0`` is background). Only 43 of the 7 x 9 combinations
occur in the dataset; every other value (including annotation mistakes) is *ignored* in training and evaluation.

The three evaluation settings map an id map to dense class indices:

=============  ==========  ===================================================
setting        classes     class index
=============  ==========  ===================================================
``actor``      8           0 background, ``actor`` (1..7)
``action``     10          0 background, ``action`` (1..9)
``actor_action`` 44        0 background, 1..43 = position in ``VALID_PAIRS`` + 1
=============  ==========  ===================================================

Example:
    >>> import numpy as np
    >>> ids = np.array([[0, 11], [79, 14]], dtype=np.uint8)   # 14 = adult-flying is not a valid pair
    >>> to_setting(ids, "actor").tolist()
    [[0, 1], [7, 255]]
    >>> to_setting(ids, "actor_action").tolist()
    [[0, 1], [43, 255]]
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "ACTORS",
    "ACTIONS",
    "VALID_PAIRS",
    "BACKGROUND",
    "IGNORE",
    "SETTINGS",
    "NUM_CLASSES",
    "pair_id",
    "actor_of",
    "action_of",
    "is_valid",
    "pair_name",
    "class_names",
    "to_setting",
    "joint_class_to_id",
    "PALETTE",
    "colorize",
]

ACTORS: tuple[str, ...] = ("adult", "baby", "ball", "bird", "car", "cat", "dog")
ACTIONS: tuple[str, ...] = (
    "climbing",
    "crawling",
    "eating",
    "flying",
    "jumping",
    "rolling",
    "running",
    "walking",
    "none",
)

BACKGROUND = 0
IGNORE = 255  # label value that every loss and metric leaves out

# The actions each actor performs in A2D (Xu et al., CVPR 2015); 43 pairs in all.
_ACTIONS_OF_ACTOR: dict[str, tuple[str, ...]] = {
    "adult": ("climbing", "crawling", "eating", "jumping", "rolling", "running", "walking", "none"),
    "baby": ("climbing", "crawling", "rolling", "walking", "none"),
    "ball": ("flying", "jumping", "rolling", "none"),
    "bird": ("climbing", "eating", "flying", "jumping", "rolling", "walking", "none"),
    "car": ("flying", "jumping", "rolling", "running", "none"),
    "cat": ("climbing", "eating", "jumping", "rolling", "running", "walking", "none"),
    "dog": ("crawling", "eating", "jumping", "rolling", "running", "walking", "none"),
}


def pair_id(actor: str | int, action: str | int) -> int:
    """A2D id of an actor-action pair, from names or 1-based indices."""
    a = ACTORS.index(actor) + 1 if isinstance(actor, str) else int(actor)
    b = ACTIONS.index(action) + 1 if isinstance(action, str) else int(action)
    return a * 10 + b


VALID_PAIRS: tuple[int, ...] = tuple(
    sorted(pair_id(actor, action) for actor, actions in _ACTIONS_OF_ACTOR.items() for action in actions)
)

SETTINGS: tuple[str, ...] = ("actor", "action", "actor_action")
NUM_CLASSES: dict[str, int] = {"actor": len(ACTORS) + 1, "action": len(ACTIONS) + 1, "actor_action": len(VALID_PAIRS) + 1}


def actor_of(ids):
    """Actor index (0 background, 1..7) of ids; works on ints and arrays."""
    return ids // 10


def action_of(ids):
    """Action index (0 background, 1..9) of ids; works on ints and arrays."""
    return ids % 10


def is_valid(ids) -> np.ndarray:
    """True where an id is background or one of the 43 valid pairs."""
    return _LOOKUP["actor_action"][np.asarray(ids, dtype=np.int64).clip(0, 255)] != IGNORE


def pair_name(pid: int) -> str:
    """``'adult-climbing'`` for 11, ``'background'`` for 0."""
    if pid == BACKGROUND:
        return "background"
    return f"{ACTORS[actor_of(pid) - 1]}-{ACTIONS[action_of(pid) - 1]}"


def class_names(setting: str) -> list[str]:
    """Names of the classes of a setting, index order (background first)."""
    _check_setting(setting)
    if setting == "actor":
        return ["background", *ACTORS]
    if setting == "action":
        return ["background", *ACTIONS]
    return ["background", *(pair_name(p) for p in VALID_PAIRS)]


def _build_lookups() -> dict[str, np.ndarray]:
    # One 256-entry table per setting turns an id map into class indices with a single gather.
    tables = {s: np.full(256, IGNORE, dtype=np.uint8) for s in SETTINGS}
    for table in tables.values():
        table[BACKGROUND] = 0
    for k, pid in enumerate(VALID_PAIRS, start=1):
        tables["actor"][pid] = actor_of(pid)
        tables["action"][pid] = action_of(pid)
        tables["actor_action"][pid] = k
    return tables


_LOOKUP = _build_lookups()
_JOINT_TO_ID = np.array([BACKGROUND, *VALID_PAIRS], dtype=np.uint8)


def _check_setting(setting: str) -> None:
    if setting not in SETTINGS:
        raise ValueError(f"unknown evaluation setting {setting!r}; expected one of {SETTINGS}")


def to_setting(id_map: np.ndarray, setting: str) -> np.ndarray:
    """Map an A2D id map (any integer dtype) to the class map of a setting (uint8, ``IGNORE`` for invalid ids)."""
    _check_setting(setting)
    ids = np.asarray(id_map)
    if ids.dtype != np.uint8:
        ids = np.where((ids < 0) | (ids > 255), IGNORE, ids).astype(np.uint8)
    return _LOOKUP[setting][ids]


def joint_class_to_id(classes: np.ndarray) -> np.ndarray:
    """Inverse of ``to_setting(., 'actor_action')``: class index 0..43 -> A2D id (uint8)."""
    return _JOINT_TO_ID[np.asarray(classes, dtype=np.int64)]


def _palette() -> np.ndarray:
    """(256, 3) uint8 colours: background black, one hue per actor, shade per action, ignore white.

    Hues follow the actor order; within an actor the shade darkens with the action index, so that
    the actor stays readable at a glance and the action is told apart up close.
    """
    actor_hues = np.array(
        [
            [230, 25, 75],  # adult
            [245, 130, 48],  # baby
            [255, 225, 25],  # ball
            [60, 180, 75],  # bird
            [0, 130, 200],  # car
            [145, 30, 180],  # cat
            [240, 50, 230],  # dog
        ],
        dtype=np.float64,
    )
    pal = np.zeros((256, 3), dtype=np.uint8)
    for actor in range(1, len(ACTORS) + 1):
        for action in range(1, len(ACTIONS) + 1):
            shade = 1.0 - 0.07 * (action - 1)
            pal[actor * 10 + action] = np.round(actor_hues[actor - 1] * shade)
    pal[IGNORE] = 255
    return pal


PALETTE = _palette()


def colorize(id_map: np.ndarray) -> np.ndarray:
    """(H, W) A2D id map -> (H, W, 3) uint8 RGB image in ``PALETTE``."""
    return PALETTE[np.asarray(id_map, dtype=np.uint8)]
