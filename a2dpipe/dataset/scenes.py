"""Scenes of the synthetic benchmark: how each actor class looks and each action moves, the clip plan, and the
drawing of a clip's frames with the annotations of its annotated frames (:func:`draw_clip`, :func:`render_clip`).

Everything is drawn from the generator it is given; :mod:`.synthetic` writes what is drawn in the A2D layout.
"""

from __future__ import annotations

import math
import string
from collections.abc import Iterator
from dataclasses import dataclass

import cv2
import numpy as np

from a2dpipe import labels
from a2dpipe.dataset.annotation import Annotation

ID_ALPHABET = string.ascii_letters + string.digits + "-_"  # YouTube-style ids, as A2D's


@dataclass(frozen=True)
class ActorLook:
    """Appearance of an actor class: body shape (half-extents in units of the actor radius), colour, texture, limb."""

    shape: str  # ellipse | rect | diamond
    half: tuple[float, float]
    colour: tuple[int, int, int]
    texture: str
    head: bool = False  # a rigid round head on top of the body
    limb: tuple[float, float, float, float] | None = None  # anchor u, anchor v, length, half-width; None: no limb
    limb_angle: float = 0.0  # rest direction of the limb (radians, image axes: 0 = right, pi/2 = down)


# Limbs are thick enough (>= 4 px at the default size) for a patch-based flow method to see them move.
LOOKS: dict[int, ActorLook] = {
    1: ActorLook(
        "ellipse", (0.45, 1.0), (205, 55, 45), "hstripes", head=True, limb=(0.3, -0.5, 1.0, 0.22), limb_angle=0.6
    ),
    2: ActorLook(
        "ellipse", (0.7, 0.75), (245, 160, 70), "dots", head=True, limb=(0.45, -0.2, 0.8, 0.24), limb_angle=0.3
    ),
    3: ActorLook("ellipse", (1.0, 1.0), (235, 215, 40), "checker"),
    4: ActorLook("diamond", (1.05, 0.55), (45, 160, 60), "diag", limb=(0.0, -0.2, 0.95, 0.22), limb_angle=-1.9),
    5: ActorLook("rect", (1.1, 0.5), (40, 80, 205), "vstripes"),
    6: ActorLook("ellipse", (0.9, 0.55), (145, 55, 170), "vstripes", limb=(-0.8, -0.1, 0.9, 0.2), limb_angle=-2.5),
    7: ActorLook("ellipse", (0.95, 0.6), (125, 80, 35), "rings", limb=(0.75, -0.35, 0.7, 0.2), limb_angle=-0.7),
}
ACTOR_SIZE = {1: 1.15, 2: 0.85, 3: 0.6, 4: 0.7, 5: 1.2, 6: 0.9, 7: 0.95}  # relative radius per class

# Non-actor colours (greys, cyan, white, olive): object-like, but never an actor's colour.
DISTRACTOR_COLOURS = ((128, 128, 128), (225, 225, 220), (50, 190, 195), (45, 45, 50), (150, 150, 70))
DISTRACTOR_SHAPES = ("ellipse", "rect", "diamond")
TEXTURES = ("hstripes", "vstripes", "checker", "dots", "diag", "rings", "plain")


@dataclass(frozen=True)
class Motion:
    """How an action moves an actor, in pixels per frame at 96-pixel frame height.

    ``speed`` is the body's horizontal speed (sign drawn per actor), ``rise`` its upward speed, ``hop`` the
    height of repeated jumps, ``spin`` makes the body roll (angular speed = speed / radius), ``swing`` and
    ``period`` the amplitude (radians) and period (frames) of the limb's oscillation.
    """

    speed: float = 0.0
    rise: float = 0.0
    hop: float = 0.0
    spin: bool = False
    bob: float = 0.0
    swing: float = 0.0
    period: float = 8.0


MOTIONS: dict[int, Motion] = {
    1: Motion(rise=1.3),  # climbing: slow steady rise
    2: Motion(speed=0.7, swing=0.25, period=10),  # crawling: slow, small limb movement
    3: Motion(swing=0.8, period=6),  # eating: body still, only the limb moves
    4: Motion(speed=2.2, rise=1.1, bob=0.8),  # flying: fast diagonal with a bob
    5: Motion(hop=12.0, period=9),  # jumping: hops in place
    6: Motion(speed=2.0, spin=True),  # rolling: translation with rotation
    7: Motion(speed=3.4, swing=0.6, period=5),  # running: fast, limb swings quickly
    8: Motion(speed=1.5, swing=0.45, period=9),  # walking: medium, limb swings
    9: Motion(),  # none: still
}


# --------------------------------------------------------------------------------------------------------------
# The clip plan
# --------------------------------------------------------------------------------------------------------------

def _video_ids(rng: np.random.Generator, n: int) -> list[str]:
    ids: set[str] = set()
    alphabet = np.array(list(ID_ALPHABET))
    while len(ids) < n:
        ids.add("".join(rng.choice(alphabet, 11)))
    return sorted(ids)  # A2D's videoset.csv is sorted by id


def plan_clips(s: dict, rng: np.random.Generator) -> list[dict]:
    """Per clip: id, split, width, actor pairs. Pairs cycle through the 43 valid ones within each split."""
    n = s["videos"]
    n_test = min(n - 1, max(1, round(n * s["test_fraction"])))
    videos = _video_ids(rng, n)
    usage = np.zeros(n, dtype=int)
    usage[rng.permutation(n)[:n_test]] = 1
    counts = rng.integers(1, s["max_actors"] + 1, size=n)
    plan = [
        {"video": v, "usage": int(u), "width": int(rng.choice(s["widths"])), "pairs": []} for v, u in zip(videos, usage)
    ]
    for split in (0, 1):
        members = [i for i in range(n) if usage[i] == split]
        slots = int(counts[members].sum())
        reps = math.ceil(slots / len(labels.VALID_PAIRS))
        pairs = np.concatenate([rng.permutation(labels.VALID_PAIRS) for _ in range(reps)])[:slots]
        k = 0
        for i in members:
            plan[i]["pairs"] = [int(p) for p in pairs[k : k + counts[i]]]
            k += counts[i]
    return plan


# --------------------------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------------------------


def _reflect(x: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Fold positions into [lo, hi] as a body bouncing off the walls would."""
    if hi <= lo:
        return np.full_like(x, (lo + hi) / 2)
    span = hi - lo
    y = np.mod(x - lo, 2 * span)
    return lo + np.where(y > span, 2 * span - y, y)


def _texture(name: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Texture in [-1, 1] over body-local coordinates (it moves and turns with the body)."""
    if name == "hstripes":
        return np.sign(np.sin(3.5 * np.pi * v))
    if name == "vstripes":
        return np.sign(np.sin(3.5 * np.pi * u))
    if name == "checker":
        return np.sign(np.sin(3.0 * u) * np.sin(3.0 * v))
    if name == "dots":
        return np.where((np.mod(u * 2.5, 1) - 0.5) ** 2 + (np.mod(v * 2.5, 1) - 0.5) ** 2 < 0.06, -1.0, 0.6)
    if name == "diag":
        return np.sign(np.sin(2.5 * np.pi * (u + v)))
    if name == "rings":
        return np.sign(np.sin(3.0 * np.pi * np.hypot(u, v)))
    return 0.3 * (u - v)  # plain, lightly shaded


def _inside(shape: str, u: np.ndarray, v: np.ndarray, half: tuple[float, float]) -> np.ndarray:
    a, b = half
    if shape == "rect":
        return (np.abs(u) <= a) & (np.abs(v) <= b)
    if shape == "diamond":
        return np.abs(u) / a + np.abs(v) / b <= 1
    return (u / a) ** 2 + (v / b) ** 2 <= 1


def _draw(
    canvas: np.ndarray,
    owner: np.ndarray | None,
    index: int,
    look: ActorLook,
    cx: float,
    cy: float,
    radius: float,
    angle: float,
    limb_angle: float,
    mirror: bool = False,
) -> None:
    """Paint one object (body, optional head and limb) onto ``canvas`` and mark its pixels ``index`` in ``owner``.

    Only the object's bounding square is touched; the geometry is evaluated at pixel centres, vectorised.
    """
    h, w = canvas.shape[:2]
    reach = radius * 2.3
    x0, x1 = max(0, int(cx - reach)), min(w, int(cx + reach) + 1)
    y0, y1 = max(0, int(cy - reach)), min(h, int(cy + reach) + 1)
    if x0 >= x1 or y0 >= y1:
        return
    xs = np.arange(x0, x1) + 0.5 - cx
    ys = np.arange(y0, y1)[:, None] + 0.5 - cy
    c, s = math.cos(angle), math.sin(angle)
    u = (c * xs + s * ys) / radius
    v = (-s * xs + c * ys) / radius
    if mirror:  # facing left: the limb sits and swings on the other side
        u = -u
    body = _inside(look.shape, u, v, look.half)
    if look.head:
        hv = v + look.half[1] + 0.3
        head = u**2 + hv**2 <= 0.35**2
        body |= head
    # Textures are evaluated on the object's pixels only (a fraction of the square): same values, less work.
    shade = np.zeros(u.shape)
    shade[body] = 0.8 + 0.2 * _texture(look.texture, u[body], v[body])
    mask = body
    if look.limb is not None:
        au, av, length, half_width = look.limb
        pu, pv = u - au, v - av
        cl, sl = math.cos(limb_angle), math.sin(limb_angle)
        along = cl * pu + sl * pv
        across = -sl * pu + cl * pv
        limb = (along >= 0) & (along <= length) & (np.abs(across) <= half_width) & ~body
        shade[limb] = 0.65 + 0.2 * _texture(look.texture, along[limb], across[limb])
        mask = mask | limb
    colour = np.asarray(look.colour, dtype=np.float32)
    region = canvas[y0:y1, x0:x1]
    region[mask] = np.clip(colour * shade[mask][:, None], 0, 255)
    if owner is not None:
        owner[y0:y1, x0:x1][mask] = index


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A smooth, low-saturation scene (ground and wall tones) with fine grain: (height, width, 3) float32.

    Saturation is kept low so that colour stays an actor cue: no background patch looks like an actor class.
    """
    base = rng.uniform(85, 165) + rng.uniform(-12, 12, size=3)
    light = rng.normal(0, 22, size=(6, 8, 1)).astype(np.float32)
    tint = rng.normal(0, 6, size=(6, 8, 3)).astype(np.float32)
    fine = rng.normal(0, 8, size=(height // 4 + 1, width // 4 + 1, 1)).astype(np.float32)
    scene = cv2.resize(light + tint, (width, height), interpolation=cv2.INTER_CUBIC)
    scene += cv2.resize(fine, (width, height), interpolation=cv2.INTER_LINEAR)[:, :, None]
    horizon = int(rng.uniform(0.3, 0.7) * height)
    scene[horizon:] -= 15  # a ground plane a little darker than the wall
    return np.clip(scene + base, 0, 255).astype(np.float32)


def _camera(rng: np.random.Generator, frames: int, max_speed: float, max_pan: float) -> tuple[np.ndarray, int]:
    """Top-left of the view in world pixels per frame (pan + shake), and the world margin it needs.

    The pan covers at most ``max_pan`` pixels over the clip, so that part of the world stays in view throughout
    (a long clip would otherwise pan past its whole width).
    """
    speed = min(rng.uniform(0, max_speed), max_pan / max(frames - 1, 1))
    heading = rng.uniform(-0.3, 0.3) + (math.pi if rng.random() < 0.5 else 0.0)  # mostly horizontal pans
    t = np.arange(frames, dtype=np.float64)
    shake = 0.3 * max_speed * np.stack([np.sin(t * 1.7 + rng.uniform(0, 6)), np.sin(t * 2.3 + rng.uniform(0, 6))], 1)
    path = np.stack([math.cos(heading) * speed * t, math.sin(heading) * speed * t], 1) + shake
    margin = int(math.ceil(np.abs(path).max())) + 2
    return path + margin, margin


def _actor_tracks(rng, pair: int, radius: float, frames: int, box: tuple[float, float, float, float], near=None):
    """Centres (T, 2) in world pixels, body angles (T,), limb angles (T,) and whether the actor faces left."""
    actor, action = labels.actor_of(pair), labels.action_of(pair)
    m = MOTIONS[action]
    scale = radius / 12.0  # speeds are given for a radius-12 actor at 96-pixel frames
    t = np.arange(frames, dtype=np.float64)
    direction = 1.0 if rng.random() < 0.5 else -1.0
    lo_x, hi_x, lo_y, hi_y = box
    lo_x, hi_x, lo_y, hi_y = lo_x + radius, hi_x - radius, lo_y + radius, hi_y - radius
    speed = m.speed * max(scale, 0.6) * rng.uniform(0.85, 1.15)
    rise = m.rise * max(scale, 0.6) * rng.uniform(0.85, 1.15)
    if near is not None:  # start beside another actor so that they overlap
        x0 = float(np.clip(near[0] + rng.uniform(-1.2, 1.2) * radius, lo_x, hi_x))
        y0 = float(np.clip(near[1] + rng.uniform(-0.8, 0.8) * radius, lo_y, hi_y))
    else:
        # Start where the whole path fits when it can (a climber starts low), so few actors bounce off the edges.
        travel_x, travel_y = speed * (frames - 1), rise * (frames - 1)
        x0 = rng.uniform(lo_x, max(lo_x, hi_x - travel_x))
        x0 = x0 if direction > 0 else lo_x + hi_x - x0
        y0 = rng.uniform(min(hi_y, lo_y + travel_y), max(lo_y, hi_y))
    x = _reflect(x0 + direction * speed * t, lo_x, hi_x)
    hop = m.hop * max(scale, 0.5) * np.abs(np.sin(np.pi * t / m.period + rng.uniform(0, np.pi)))
    y = _reflect(y0 - rise * t + m.bob * np.sin(t * 0.9), lo_y + m.hop * scale, hi_y) - hop
    angle = np.zeros(frames)
    if m.spin:
        angle = direction * speed * t / radius
    swing = m.swing * np.sin(2 * np.pi * t / m.period + rng.uniform(0, 2 * np.pi))
    limb_angles = LOOKS[actor].limb_angle + swing
    return np.stack([x, y], 1), angle, limb_angles, direction < 0


def _annotation(owner: np.ndarray, pairs: list[int]) -> Annotation:
    """Visible instances of the actors (owner value k+1 = actor k) as an A2D annotation."""
    ids, masks, boxes = [], [], []
    id_map = np.zeros(owner.shape, dtype=np.uint8)
    for k, pair in enumerate(pairs):
        mask = owner == k + 1
        if not mask.any():
            continue  # fully hidden or out of view: not annotated, as in A2D
        rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
        id_map[mask] = pair
        ids.append(pair)
        masks.append(mask)
        boxes.append([cols[0], rows[0], cols[-1] + 1, rows[-1] + 1])
    h, w = owner.shape
    return Annotation(
        id_map=id_map,
        masks=np.array(masks, dtype=np.float32).reshape(len(ids), h, w),
        boxes=np.array(boxes, dtype=np.float32).reshape(len(ids), 4),
        ids=np.array(ids, dtype=np.uint8),
    )


def render_clip(
    s: dict, clip: dict, rng: np.random.Generator, distractor_maps: dict[int, np.ndarray] | None = None
) -> tuple[list[np.ndarray], dict[int, Annotation], list[int]]:
    """Frames (RGB uint8, before compression), annotations of the annotated frames (1-based) and those frames: all of
    :func:`draw_clip` at once (a long 320-px clip holds a few hundred MB of frames; writers stream instead)."""
    annotations: dict[int, Annotation] = {}
    images = list(draw_clip(s, clip, rng, annotations, distractor_maps))
    return images, annotations, sorted(annotations)


def _distractor(rng: np.random.Generator, unit: float, view) -> tuple:
    """(look, radius, world centre, angle) of one static non-actor object inside the world area ``view``."""
    look = ActorLook(
        shape=str(rng.choice(DISTRACTOR_SHAPES)),
        half=(float(rng.uniform(0.5, 1.1)), float(rng.uniform(0.5, 1.1))),
        colour=tuple(int(c) for c in DISTRACTOR_COLOURS[rng.integers(len(DISTRACTOR_COLOURS))]),
        texture=str(rng.choice(TEXTURES)),
    )
    r = unit * rng.uniform(0.6, 1.3)
    centre = (rng.uniform(view[0], view[1]), rng.uniform(view[2], view[3]))
    return look, r, centre, rng.uniform(0, np.pi)


def draw_clip(
    s: dict,
    clip: dict,
    rng: np.random.Generator,
    annotations: dict[int, Annotation],
    distractor_maps: dict[int, np.ndarray] | None = None,
) -> Iterator[np.ndarray]:
    """Yield the clip's frames (RGB uint8, before compression) one by one, and put the annotation of each annotated
    frame (1-based) into ``annotations`` as it is drawn; once exhausted, ``annotations`` holds every annotated frame.

    The clip's size and annotated frames come from ``s`` (``height``, ``frames``, ``annotated_frames`` drawn at
    random) unless ``clip`` gives them (``height``, ``frames``, ``annotated``: the real metadata's).
    ``distractor_maps``, when given, receives per annotated frame the visible distractors as an (H, W) uint8 map
    (0 none, k = distractor k): the ground truth of the generic mask source (see :func:`distractor_path`).
    """
    height, width, frames = clip.get("height", s["height"]), clip["width"], clip.get("frames", s["frames"])
    cam, margin = _camera(rng, frames, s["camera_motion"], 0.5 * min(height, width))
    world = _background(rng, height + 2 * margin, width + 2 * margin)
    # The world area that stays in view for the whole clip: actors live there (and bounce off its edges).
    view = (cam[:, 0].max(), cam[:, 0].min() + width, cam[:, 1].max(), cam[:, 1].min() + height)
    unit = height / 96 * 12.0  # radius of a medium actor
    actors = []
    for k, pair in enumerate(clip["pairs"]):
        size = ACTOR_SIZE[labels.actor_of(pair)] * unit * rng.uniform(0.8, 1.2)
        if rng.random() < 0.25:
            size *= 0.5  # small actors
        near = actors[0]["track"][0] if actors and rng.random() < 0.6 else None
        track, angle, limb, mirror = _actor_tracks(rng, pair, size, frames, view, near)
        actors.append({"pair": pair, "radius": size, "track": track, "angle": angle, "limb": limb, "mirror": mirror})
    depth = rng.permutation(len(actors))  # drawing order: later ones occlude earlier ones
    distractors = [_distractor(rng, unit, view) for _ in range(s["distractors"])]
    if "annotated" in clip:
        annotated = sorted(clip["annotated"])
    else:
        annotated = sorted(int(f) for f in rng.choice(np.arange(1, frames + 1), s["annotated_frames"], replace=False))

    for t in range(frames):
        cx, cy = cam[t]
        shift = np.float32([[1, 0, -cx], [0, 1, -cy]])
        canvas = cv2.warpAffine(world, shift, (width, height), flags=cv2.INTER_LINEAR)
        owner = np.zeros((height, width), dtype=np.int16)
        others = np.zeros((height, width), dtype=np.int16)
        for j, (look, r, (dx, dy), angle) in enumerate(distractors):  # static in the world: move with the background
            _draw(canvas, others, j + 1, look, dx - cx, dy - cy, r, angle, 0.0)
        for k in depth:
            a = actors[k]
            x, y = a["track"][t]
            look = LOOKS[labels.actor_of(a["pair"])]
            _draw(canvas, owner, k + 1, look, x - cx, y - cy, a["radius"], a["angle"][t], a["limb"][t], a["mirror"])
        canvas += rng.normal(0, 3.0, size=canvas.shape).astype(np.float32)  # sensor noise
        if t + 1 in annotated:
            annotations[t + 1] = _annotation(owner, clip["pairs"])
            if distractor_maps is not None:  # actors drawn later occlude distractors
                distractor_maps[t + 1] = np.where(owner == 0, others, 0).astype(np.uint8)
        yield np.clip(canvas, 0, 255).astype(np.uint8)
