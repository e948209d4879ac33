"""A procedural "shapes world": scenes, their dynamics, prompts and the questions a video must answer.

Why: with no model hub and no GPU, a small model can only be *trained* here on data we
make, and Focal Guidance can only be *measured* against ground truth we know.  Each
scene has 1-3 coloured shapes and exactly one event from the paper's three instruction
dimensions:

* ``dynamic_attribute``: "the red square turns green."
* ``motion``: "the blue circle moves to the left."
* ``interaction``: "the yellow circle pushes the green triangle." (the subject moves to
  the object until their outlines touch, then both move on in the same direction).

Colours are unique within a scene (a colour change's target colour too), so a colour
names a shape: the scorer needs nothing but colour segmentation to find the shapes.

Held-out split: the subject's (kind, colour, dimension) combination.  :data:`HELD_OUT`
lists 9 of the 45 combinations (20%); ``split="train"`` never samples them and
``split="heldout"`` samples only them, so evaluation asks for unseen compositions of
words that all occur in training (see :data:`HELD_OUT` for why every part is seen).

Coordinates are fractions of the frame: x in [0, 1] left to right, y in [0, 1] top to
bottom; a shape's ``size`` is its "radius" in the same units (on a non-square frame the
shapes stretch with it).
"""

from __future__ import annotations

import functools
import itertools
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

#: The shape palette: pairwise RGB distance >= 117, and >= 94 from *any* grey, so no
#: background pixel (plain or textured, both grey) can be taken for a shape.
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
BACKGROUNDS = ("plain", "textured")

SIZE_RANGE = (0.07, 0.1)  # shape "radius", in frame widths
SQUARE_HALF = 0.85  # a square's half side, in units of its size (similar area to the circle)
TRIANGLE_BASE = 0.7  # an (upward) triangle spans y in [-1, TRIANGLE_BASE] * size around its centre
#: How far a moving subject travels over the clip (>= 25% of the frame, clearly visible).
MOTION_DISTANCE = 0.3
#: Interaction: free space between the two shapes' boxes before the subject sets off...
GAP_RANGE = (0.08, 0.14)
#: ...and how far the object is pushed after contact.
PUSH_DISTANCE = 0.12
FRAME_MARGIN = 0.02  # every shape stays at least this far inside the frame, all clip long

# What the scorer must see; half of the rendered effect, so ground truth passes with room
# to spare while a static or backwards video cannot.
MIN_MOVE = MOTION_DISTANCE / 2
MIN_APPROACH = GAP_RANGE[0] / 2
MIN_PUSH = PUSH_DISTANCE / 2
CONTACT_TOLERANCE = 0.03  # two outlines closer than this (frame fraction) are in contact

#: The held-out subject combinations (kind, colour, dimension): 3 per dimension, 9 of 45.
#: Chosen so that training still shows every (kind, colour) pair (in the other two
#: dimensions), every (kind, dimension) pair (with the other four colours) and every
#: (colour, dimension) pair (with the other kinds): only the combination is new.
HELD_OUT: frozenset[tuple[str, str, str]] = frozenset(
    {
        ("circle", "red", "dynamic_attribute"),
        ("square", "green", "dynamic_attribute"),
        ("triangle", "blue", "dynamic_attribute"),
        ("circle", "blue", "motion"),
        ("square", "yellow", "motion"),
        ("triangle", "purple", "motion"),
        ("circle", "purple", "interaction"),
        ("square", "red", "interaction"),
        ("triangle", "green", "interaction"),
    }
)

#: ``testbed train --push-scenes`` draws its extra interaction scenes with ``seed + PUSH_SEED_OFFSET``:
#: a stream that no other scene set of the same seed uses (evaluation and planting use other offsets).
PUSH_SEED_OFFSET = 7000

_GRAMMAR_WORDS = ("the", "a", "and", "beside", "turns", "moves", "to", "pushes", *DIRECTIONS)
#: Every word a prompt can contain (prompts are these words, spaces and a final ".").
VOCABULARY: list[str] = sorted(set(_GRAMMAR_WORDS) | set(COLOURS) | set(KINDS))


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
    subject: int  # index into Scene.shapes
    direction: str | None = None  # motion and interaction (the push direction)
    target_colour: str | None = None  # dynamic_attribute
    obj: int | None = None  # interaction


@dataclass
class Question:
    """One yes/no check on a video, as data: ``kind`` picks the scorer's test, ``params`` feed it.

    Params name shapes by colour and carry thresholds, never trajectories, so the scorer
    can answer from pixels alone.
    """

    kind: str  # present | colour_at_end | moved | approached | contact | pushed
    params: dict[str, Any]
    text: str


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
        """Plain JSON types only (``json.dumps`` works on the result)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Scene:
        return cls(
            shapes=[Shape(**s) for s in data["shapes"]],
            event=Event(**data["event"]),
            background=data.get("background", "plain"),
            texture_seed=int(data.get("texture_seed", 0)),
            prompt=data.get("prompt", ""),
        )


def _name(shape: Shape) -> str:
    return f"{shape.colour} {shape.kind}"


def make_prompt(scene: Scene, describe_others: bool = False) -> str:
    """The scene's one-sentence instruction; ``describe_others`` appends "beside a ..." for the other shapes."""
    subject, event = scene.subject, scene.event
    if event.dimension == "dynamic_attribute":
        sentence = f"the {_name(subject)} turns {event.target_colour}"
    elif event.dimension == "motion":
        where = f"to the {event.direction}" if event.direction in ("left", "right") else event.direction
        sentence = f"the {_name(subject)} moves {where}"
    else:
        sentence = f"the {_name(subject)} pushes the {_name(scene.shapes[event.obj])}"
    others = [s for i, s in enumerate(scene.shapes) if i not in (event.subject, event.obj)]
    if describe_others and others:
        sentence += " beside " + " and ".join(f"a {_name(s)}" for s in others)
    return sentence + "."


def questions(scene: Scene) -> list[Question]:
    """What a video must show for the scene's prompt; the prompt passes only if all hold."""
    event, subject = scene.event, scene.subject
    name, colour = _name(subject), subject.colour
    present = Question("present", {"colour": colour}, f"the {name} is visible at the start")
    if event.dimension == "dynamic_attribute":
        target = event.target_colour
        return [
            present,
            Question("colour_at_end", {"colour": colour, "target": target}, f"the {name} is {target} at the end"),
        ]
    if event.dimension == "motion":
        return [
            present,
            Question(
                "moved",
                {"colour": colour, "direction": event.direction, "min_distance": MIN_MOVE},
                f"the {name} moved {event.direction} by at least {MIN_MOVE:g} of the frame",
            ),
        ]
    obj = scene.shapes[event.obj]
    pair = {"subject": colour, "object": obj.colour, "tolerance": CONTACT_TOLERANCE}
    return [
        Question("approached", {**pair, "min_distance": MIN_APPROACH}, f"the {name} approached the {_name(obj)}"),
        Question("contact", pair, f"the {name} touched the {_name(obj)}"),
        Question(
            "pushed",
            {**pair, "min_distance": MIN_PUSH},
            f"the {_name(obj)} moved on, away from the {name}, after contact",
        ),
    ]


def subject_key(scene: Scene) -> tuple[str, str, str]:
    """The combination the held-out split is defined on: (subject kind, subject colour, dimension)."""
    return scene.subject.kind, scene.subject.colour, scene.dimension


# ---------------------------------------------------------------- geometry and dynamics


def shape_mask(kind: str, cx: float, cy: float, size: float, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Which points (x, y) lie inside the shape: the one definition the renderer and the physics share."""
    if kind == "circle":
        return (x - cx) ** 2 + (y - cy) ** 2 <= size**2
    if kind == "square":
        half = size * SQUARE_HALF
        return (np.abs(x - cx) <= half) & (np.abs(y - cy) <= half)
    if kind == "triangle":  # pointing up, base below the centre
        top, bottom = cy - size, cy + size * TRIANGLE_BASE
        return (y >= top) & (y <= bottom) & (np.abs(x - cx) <= (y - top) / (bottom - top) * size)
    raise ValueError(f"unknown shape kind {kind!r}")


def shape_box(kind: str, cx: float, cy: float, size: float) -> tuple[float, float, float, float]:
    """Tight bounding box (x0, y0, x1, y1) of a shape."""
    if kind == "square":
        half = size * SQUARE_HALF
        return cx - half, cy - half, cx + half, cy + half
    if kind == "triangle":
        return cx - size, cy - size, cx + size, cy + size * TRIANGLE_BASE
    return cx - size, cy - size, cx + size, cy + size


def contact_distance(mover: Shape, target: Shape, direction: str) -> float:
    """How far ``mover`` travels along ``direction`` until its outline touches ``target``'s (inf if never)."""
    return _contact_distance(
        mover.kind, mover.size, target.kind, target.size, target.x - mover.x, target.y - mover.y, direction
    )


@functools.lru_cache(maxsize=4096)
def _contact_distance(
    kind_a: str, size_a: float, kind_b: str, size_b: float, dx: float, dy: float, direction: str
) -> float:
    # Rasterise both shapes finely (1/1000 of the frame) around the mover, then per row
    # (horizontal push) or column (vertical push): the free run between a's front and b's back.
    step = 1e-3
    boxes = [shape_box(kind_a, 0.0, 0.0, size_a), shape_box(kind_b, dx, dy, size_b)]
    xs = np.arange(min(b[0] for b in boxes), max(b[2] for b in boxes) + step, step)
    ys = np.arange(min(b[1] for b in boxes), max(b[3] for b in boxes) + step, step)
    x, y = np.meshgrid(xs, ys)
    in_a, in_b = shape_mask(kind_a, 0.0, 0.0, size_a, x, y), shape_mask(kind_b, dx, dy, size_b, x, y)
    ux, uy = DIRECTIONS[direction]
    along = x * ux + y * uy
    axis = 1 if ux else 0  # reduce along rows for a horizontal push, along columns for a vertical one
    front = np.where(in_a, along, -np.inf).max(axis=axis)
    back = np.where(in_b, along, np.inf).min(axis=axis)
    gaps = back - front
    gaps = gaps[np.isfinite(gaps)]
    return float(max(0.0, gaps.min())) if gaps.size else float("inf")


def shape_state(scene: Scene, index: int, fraction: float) -> tuple[float, float, str]:
    """Ground-truth centre (x, y) and colour of shape ``index`` at time ``fraction`` in [0, 1].

    * motion: linear, ``MOTION_DISTANCE`` in total;
    * colour change: a switch at the midpoint (not a blend), so every frame shows palette
      colours only and the change is unambiguous in any clip of >= 2 frames;
    * interaction: the subject reaches contact at the midpoint, then subject and object
      move ``PUSH_DISTANCE`` together, touching, until the end.
    """
    shape, event = scene.shapes[index], scene.event
    x, y, colour = shape.x, shape.y, shape.colour
    if event.dimension == "motion" and index == event.subject:
        ux, uy = DIRECTIONS[event.direction]
        x, y = x + ux * MOTION_DISTANCE * fraction, y + uy * MOTION_DISTANCE * fraction
    elif event.dimension == "dynamic_attribute" and index == event.subject and fraction >= 0.5:
        colour = event.target_colour
    elif event.dimension == "interaction" and index in (event.subject, event.obj):
        ux, uy = DIRECTIONS[event.direction]
        pushed = PUSH_DISTANCE * max(0.0, 2 * fraction - 1)
        travel = pushed
        if index == event.subject:
            approach = contact_distance(scene.subject, scene.shapes[event.obj], event.direction)
            travel += approach * min(1.0, 2 * fraction)
        x, y = x + ux * travel, y + uy * travel
    return x, y, colour


# ---------------------------------------------------------------- sampling


def _sweep_box(shape: Shape, dx: float, dy: float) -> tuple[float, float, float, float]:
    """Bounding box of a shape over its straight path from its start to start + (dx, dy)."""
    a = shape_box(shape.kind, shape.x, shape.y, shape.size)
    b = shape_box(shape.kind, shape.x + dx, shape.y + dy, shape.size)
    return min(a[0], b[0]), min(a[1], b[1]), max(a[2], b[2]), max(a[3], b[3])


def _overlap(a: tuple[float, ...], b: tuple[float, ...], margin: float = 0.03) -> bool:
    return not (a[2] + margin < b[0] or b[2] + margin < a[0] or a[3] + margin < b[1] or b[3] + margin < a[1])


def _inside(box: tuple[float, ...]) -> bool:
    lo, hi = FRAME_MARGIN, 1.0 - FRAME_MARGIN
    return box[0] >= lo and box[1] >= lo and box[2] <= hi and box[3] <= hi


def _uniform(rng: np.random.Generator, bounds: tuple[float, float]) -> float:
    return float(rng.uniform(*bounds))


def _sample_one(
    rng: np.random.Generator, dimension: str, kind: str, colour: str, describe_others: float
) -> Scene | None:
    """One scene with the given subject, or None if the draw does not fit the frame (caller redraws)."""
    size = _uniform(rng, SIZE_RANGE)
    palette = [c for c in COLOURS if c != colour]
    rng.shuffle(palette)  # colours are popped from here: unique in the scene, target included
    subject = Shape(kind, colour, _uniform(rng, (0.12, 0.88)), _uniform(rng, (0.12, 0.88)), size)
    shapes = [subject]
    if dimension == "interaction":
        direction = str(rng.choice(list(DIRECTIONS)))
        ux, uy = DIRECTIONS[direction]
        obj_size = _uniform(rng, SIZE_RANGE)
        reach = size + _uniform(rng, GAP_RANGE) + obj_size
        sideways = _uniform(rng, (-0.2, 0.2)) * min(size, obj_size)  # off-axis, still a square hit
        centre = (subject.x + ux * reach - uy * sideways, subject.y + uy * reach + ux * sideways)
        obj = Shape(str(rng.choice(KINDS)), palette.pop(), *centre, obj_size)
        shapes.append(obj)
        travel = contact_distance(subject, obj, direction) + PUSH_DISTANCE
        paths = [(subject, ux * travel, uy * travel), (obj, ux * PUSH_DISTANCE, uy * PUSH_DISTANCE)]
        event = Event("interaction", 0, direction=direction, obj=1)
    elif dimension == "motion":
        direction = str(rng.choice(list(DIRECTIONS)))
        ux, uy = DIRECTIONS[direction]
        paths = [(subject, ux * MOTION_DISTANCE, uy * MOTION_DISTANCE)]
        event = Event("motion", 0, direction=direction)
    else:
        paths = [(subject, 0.0, 0.0)]
        event = Event("dynamic_attribute", 0, target_colour=palette.pop())
    boxes = [_sweep_box(s, dx, dy) for s, dx, dy in paths]
    if not all(_inside(b) for b in boxes):
        return None
    for _ in range(int(rng.integers(0, 3 - len(shapes) + 1))):  # distractors: at most 3 shapes in all
        distractor = Shape(
            str(rng.choice(KINDS)),
            palette.pop(),
            _uniform(rng, (0.1, 0.9)),
            _uniform(rng, (0.1, 0.9)),
            _uniform(rng, SIZE_RANGE),
        )
        box = _sweep_box(distractor, 0.0, 0.0)
        if _inside(box) and not any(_overlap(box, b) for b in boxes):
            shapes.append(distractor)
            boxes.append(box)
    background = BACKGROUNDS[int(rng.integers(0, len(BACKGROUNDS)))]
    scene = Scene(shapes, event, background=background, texture_seed=int(rng.integers(0, 2**31 - 1)))
    if rng.random() < describe_others:
        scene.prompt = make_prompt(scene, describe_others=True)
    return scene


def swap_roles(scene: Scene) -> Scene | None:
    """The same first frame with the roles of an interaction reversed: the object pushes the subject.

    Why: in a push scene the first frame does not say which shape will move; only the
    word order does ("the A pushes the B" and "the B pushes the A" start from the same
    image).  Training on both halves of such a pair is the direct lesson that the
    sentence, not the picture, picks the mover; the held-out failures were the object
    moving towards the subject (see ``testbed train --push-swaps``).

    None when the swap does not exist within the training split: the scene is not an
    interaction, the new subject's (kind, colour) is a held-out interaction combination
    (the held-out subjects must stay unseen), or the reversed paths leave the frame or
    cross another shape.  Background, texture, sizes and positions are the original's,
    so frame 0 renders identically; the prompt names the other shapes iff the original's did.
    """
    event = scene.event
    if event.dimension != "interaction" or event.obj is None:
        return None
    mover, pushed = scene.shapes[event.obj], scene.shapes[event.subject]
    if (mover.kind, mover.colour, "interaction") in HELD_OUT:
        return None
    ux, uy = DIRECTIONS[event.direction]
    direction = next(name for name, (dx, dy) in DIRECTIONS.items() if (dx, dy) == (-ux, -uy))
    travel = contact_distance(mover, pushed, direction) + PUSH_DISTANCE
    boxes = [
        _sweep_box(mover, -ux * travel, -uy * travel),
        _sweep_box(pushed, -ux * PUSH_DISTANCE, -uy * PUSH_DISTANCE),
    ]
    if not all(_inside(box) for box in boxes):
        return None
    others = [shape for i, shape in enumerate(scene.shapes) if i not in (event.subject, event.obj)]
    if any(_overlap(_sweep_box(other, 0.0, 0.0), box) for other in others for box in boxes):
        return None
    swapped = Scene(
        [Shape(**asdict(shape)) for shape in scene.shapes],
        Event("interaction", event.obj, direction=direction, obj=event.subject),
        background=scene.background,
        texture_seed=scene.texture_seed,
    )
    if scene.prompt != make_prompt(scene):
        swapped.prompt = make_prompt(swapped, describe_others=True)
    return swapped


def allowed_subjects(split: str) -> dict[str, list[tuple[str, str]]]:
    """Per dimension, the subject (kind, colour) pairs that ``split`` may use."""
    if split not in ("train", "heldout"):
        raise ValueError(f"split must be 'train' or 'heldout', not {split!r}")
    return {
        dimension: [
            (kind, colour)
            for kind, colour in itertools.product(KINDS, COLOURS)
            if ((kind, colour, dimension) in HELD_OUT) == (split == "heldout")
        ]
        for dimension in DIMENSIONS
    }


def sample_scenes(
    count: int,
    split: str = "train",
    seed: int = 0,
    describe_others: float = 0.5,
    dimensions: tuple[str, ...] = DIMENSIONS,
) -> list[Scene]:
    """``count`` scenes of ``split`` ("train" or "heldout"), deterministic from ``seed``.

    ``dimensions`` take turns (balanced; all three by default, and then the draws are
    those of every earlier version); the subject (kind, colour) is drawn uniformly from
    the split's allowed pairs for that dimension.  ``describe_others`` is the probability
    that the prompt also names the other shapes ("... beside a blue circle.").
    """
    unknown = [d for d in dimensions if d not in DIMENSIONS]
    if not dimensions or unknown:
        raise ValueError(f"dimensions must be a non-empty subset of {DIMENSIONS}, got {dimensions!r}")
    allowed = allowed_subjects(split)
    rng = np.random.default_rng([seed, 0 if split == "train" else 1])
    scenes: list[Scene] = []
    while len(scenes) < count:
        dimension = dimensions[len(scenes) % len(dimensions)]
        kind, colour = allowed[dimension][int(rng.integers(0, len(allowed[dimension])))]
        scene = _sample_one(rng, dimension, kind, colour, describe_others)
        if scene is not None:
            scenes.append(scene)
    return scenes
