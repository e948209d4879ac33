"""A procedural "shapes world": scenes, prompts and the questions a video must answer.

Why: with no model hub and no GPU, a small model can only be *trained* here on data we
make, and Focal Guidance can only be *measured* against ground truth we know.  Each
scene has 1-3 coloured shapes and one event from the paper's three instruction
dimensions:

* ``dynamic_attribute``: "the red square turns green."
* ``motion``: "the blue circle moves to the left."
* ``interaction``: "the yellow circle pushes the green triangle."

Colours are unique within a scene, so a colour names a shape for the scorer.  Held-out
combinations of (subject kind, subject colour, dimension) never occur in the training
split, so evaluation asks for unseen compositions.
"""

from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 225),
    "yellow": (235, 200, 30),
    "purple": (150, 60, 190),
}
KINDS = ("circle", "square", "triangle")
DIMENSIONS = ("dynamic_attribute", "motion", "interaction")
DIRECTIONS: dict[str, tuple[int, int]] = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}
#: How far (in frame widths) a moving subject travels over the clip.
MOTION_DISTANCE = 0.3
SIZE_RANGE = (0.07, 0.1)  # shape "radius" in frame widths

# One held-out (kind, colour) pair per colour, rotating the kind with the dimension:
# 5 of 15 pairs per dimension (a third) are unseen in training, every kind and colour
# still appears in training for every dimension.
HELD_OUT: frozenset[tuple[str, str, str]] = frozenset(
    (KINDS[(i + d) % len(KINDS)], colour, dimension)
    for d, dimension in enumerate(DIMENSIONS)
    for i, colour in enumerate(COLOURS)
)

VOCABULARY: list[str] = sorted(
    set(COLOURS) | set(KINDS) | {"the", "turns", "moves", "to", "left", "right", "up", "down", "pushes"}
)


@dataclass
class Shape:
    kind: str
    colour: str
    x: float  # centre, in frame widths / heights
    y: float
    size: float


@dataclass
class Event:
    dimension: str
    subject: int
    direction: str | None = None  # motion and interaction
    target_colour: str | None = None  # dynamic_attribute
    obj: int | None = None  # interaction


@dataclass
class Scene:
    shapes: list[Shape]
    event: Event
    background: str = "plain"
    texture_seed: int = 0
    prompt: str = field(default="")

    def __post_init__(self) -> None:
        if not self.prompt:
            self.prompt = make_prompt(self)

    @property
    def subject(self) -> Shape:
        return self.shapes[self.event.subject]

    @property
    def dimension(self) -> str:
        return self.event.dimension

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Scene:
        return cls(
            shapes=[Shape(**s) for s in data["shapes"]],
            event=Event(**data["event"]),
            background=data["background"],
            texture_seed=data["texture_seed"],
            prompt=data["prompt"],
        )


def make_prompt(scene: Scene) -> str:
    subject, event = scene.subject, scene.event
    if event.dimension == "dynamic_attribute":
        return f"the {subject.colour} {subject.kind} turns {event.target_colour}."
    if event.dimension == "motion":
        where = f"to the {event.direction}" if event.direction in ("left", "right") else event.direction
        return f"the {subject.colour} {subject.kind} moves {where}."
    obj = scene.shapes[event.obj]
    return f"the {subject.colour} {subject.kind} pushes the {obj.colour} {obj.kind}."


def subject_key(scene: Scene) -> tuple[str, str, str]:
    return scene.subject.kind, scene.subject.colour, scene.dimension


def _sweep_box(shape: Shape, dx: float, dy: float) -> tuple[float, float, float, float]:
    """Bounding box of a shape over its whole path (start to start + (dx, dy))."""
    xs, ys = (shape.x, shape.x + dx), (shape.y, shape.y + dy)
    return min(xs) - shape.size, min(ys) - shape.size, max(xs) + shape.size, max(ys) + shape.size


def _overlap(a: tuple[float, ...], b: tuple[float, ...], margin: float = 0.03) -> bool:
    return not (a[2] + margin < b[0] or b[2] + margin < a[0] or a[3] + margin < b[1] or b[3] + margin < a[1])


def _inside(box: tuple[float, ...]) -> bool:
    return box[0] >= 0.02 and box[1] >= 0.02 and box[2] <= 0.98 and box[3] <= 0.98


def _sample_one(rng: np.random.Generator, dimension: str, kind: str, colour: str) -> Scene | None:
    size = float(rng.uniform(*SIZE_RANGE))
    palette = [c for c in COLOURS if c != colour]
    rng.shuffle(palette)
    if dimension == "interaction":
        direction = str(rng.choice(["left", "right"]))
        sign = DIRECTIONS[direction][0]
        obj_size = float(rng.uniform(*SIZE_RANGE))
        gap = float(rng.uniform(0.08, 0.14))  # free space the subject crosses before contact
        push = 0.12  # how far the object is pushed
        subject = Shape(kind, colour, float(rng.uniform(0.15, 0.85)), float(rng.uniform(0.2, 0.8)), size)
        obj_x = subject.x + sign * (size + gap + obj_size)
        obj = Shape(str(rng.choice(KINDS)), palette.pop(), obj_x, subject.y, obj_size)
        travel = sign * (gap + push)
        paths = [(subject, travel, 0.0), (obj, sign * push, 0.0)]
        event = Event("interaction", 0, direction=direction, obj=1)
        shapes = [subject, obj]
    else:
        subject = Shape(kind, colour, float(rng.uniform(0.15, 0.85)), float(rng.uniform(0.15, 0.85)), size)
        if dimension == "motion":
            direction = str(rng.choice(list(DIRECTIONS)))
            dx, dy = (MOTION_DISTANCE * v for v in DIRECTIONS[direction])
            event = Event("motion", 0, direction=direction)
        else:
            dx = dy = 0.0
            event = Event("dynamic_attribute", 0, target_colour=palette.pop())
        paths = [(subject, dx, dy)]
        shapes = [subject]
    boxes = [_sweep_box(s, dx, dy) for s, dx, dy in paths]
    if not all(_inside(b) for b in boxes):
        return None
    for _ in range(int(rng.integers(0, 3 - len(shapes) + 1))):  # 0.. distractors, at most 3 shapes
        distractor = Shape(
            str(rng.choice(KINDS)),
            palette.pop(),
            float(rng.uniform(0.12, 0.88)),
            float(rng.uniform(0.12, 0.88)),
            float(rng.uniform(*SIZE_RANGE)),
        )
        box = _sweep_box(distractor, 0.0, 0.0)
        if _inside(box) and not any(_overlap(box, b) for b in boxes):
            shapes.append(distractor)
            boxes.append(box)
    background = "textured" if rng.random() < 0.5 else "plain"
    return Scene(shapes, event, background=background, texture_seed=int(rng.integers(0, 2**31 - 1)))


def sample_scenes(count: int, split: str = "train", seed: int = 0) -> list[Scene]:
    """``count`` scenes of ``split`` ("train" or "heldout"), deterministic from ``seed``.

    Dimensions are balanced (round robin); subject (kind, colour) pairs are drawn from
    the split's allowed combinations.
    """
    if split not in ("train", "heldout"):
        raise ValueError(f"split must be 'train' or 'heldout', not {split!r}")
    rng = np.random.default_rng([seed, 0 if split == "train" else 1])
    allowed = {
        dimension: [
            (kind, colour)
            for kind, colour in itertools.product(KINDS, COLOURS)
            if ((kind, colour, dimension) in HELD_OUT) == (split == "heldout")
        ]
        for dimension in DIMENSIONS
    }
    scenes: list[Scene] = []
    while len(scenes) < count:
        dimension = DIMENSIONS[len(scenes) % len(DIMENSIONS)]
        kind, colour = allowed[dimension][int(rng.integers(0, len(allowed[dimension])))]
        scene = _sample_one(rng, dimension, kind, colour)
        if scene is not None:
            scenes.append(scene)
    return scenes
