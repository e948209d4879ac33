"""Score a generated video against its prompt's questions, from pixels only.

The scorer reads the scene's *questions* (which colours, which direction, thresholds) and
the reference image, never the ground-truth trajectories.  Per frame it:

1. labels each pixel with its nearest palette colour if within ``COLOUR_DISTANCE`` and
   nearer than the background (plain grey and the frame border's median colour);
2. splits each colour into connected components and drops specks below ``MIN_AREA``;
3. tracks a colour's shape as its largest component in frame 0, then the component
   nearest the previous position in later frames.

Colours are unique in a scene, so a colour names a shape.  A prompt counts only if all
its questions pass (the paper's all-correct rule).  Frames are subsampled to at most
``WORK_SIZE`` pixels a side first: positions are frame fractions, so any T >= 2 and any
H x W score alike.

Reference points, measured with :func:`chance_level` on 200 scenes per split (9 frames,
256x256): ground truth passes 100% in every dimension (also at T=2, 64x64, 96x160, with
Gaussian noise sigma=10 or JPEG quality 50); a static video (the reference repeated) and
the time-reversed video pass 0%; shuffled pairing (scene i scored on scene j's video)
passes 0.5% (train) / 2.5% (held-out, whose few subject combinations share colours more
often): only coincidences, e.g. another red shape turning the same colour.  Mean
per-question accuracy, for comparison: static 0.33, reversed 0.28, shuffled 0.12-0.15.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from layerscope_testbed.shapes.world import COLOURS, DIMENSIONS, DIRECTIONS, Question, Scene, questions

#: A pixel is a shape colour if this close to it (RGB distance) and nearer to it than to the background.
COLOUR_DISTANCE = 70.0
MIN_AREA = 0.002  # of the frame: smaller components are specks (the smallest shape is ~0.008)
WORK_SIZE = 128  # frames are subsampled (nearest pixel) to at most this many pixels a side
GREY = (128.0, 128.0, 128.0)


# ---------------------------------------------------------------- segmentation


def _work_grid(video: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Subsampled frames and the frame-fraction coordinates of their pixel centres (x per column, y per row)."""
    height, width = video.shape[1:3]
    sy, sx = max(1, -(-height // WORK_SIZE)), max(1, -(-width // WORK_SIZE))
    rows, cols = np.arange(0, height, sy), np.arange(0, width, sx)
    return video[:, ::sy, ::sx], (cols + 0.5) / width, (rows + 0.5) / height


def colour_labels(frames: np.ndarray) -> np.ndarray:
    """(T, H, W) int: index into ``COLOURS`` of each pixel's shape colour, or -1 for background.

    ``frames`` is (T, H, W, 3); a single (H, W, 3) frame gives (H, W).  Each frame's
    background is plain grey or its border's median colour, whichever is nearer.
    """
    if frames.ndim == 3:
        return colour_labels(frames[None])[0]
    planes = [frames[..., k].astype(np.float32) for k in range(3)]  # channel planes: fast elementwise math

    def squared_distance(colour: np.ndarray) -> np.ndarray:  # colour: (3,) or per-frame (T, 3)
        colour = np.asarray(colour, dtype=np.float32).reshape(-1, 3)[:, :, None, None]
        return sum((plane - colour[:, k]) ** 2 for k, plane in enumerate(planes))

    border = np.concatenate([frames[:, 0], frames[:, -1], frames[:, :, 0], frames[:, :, -1]], axis=1)
    to_background = np.minimum(squared_distance(GREY), squared_distance(np.median(border, axis=1)))
    labels = np.full(frames.shape[:3], -1, dtype=np.int64)
    best = np.full(frames.shape[:3], COLOUR_DISTANCE**2, dtype=np.float32)
    for index, colour in enumerate(COLOURS.values()):
        distance = squared_distance(colour)
        closer = (distance <= best) & (distance < to_background)
        labels[closer], best[closer] = index, distance[closer]
    return labels


def connected_components(mask: np.ndarray) -> list[np.ndarray]:
    """4-connected components of a boolean mask, as boolean masks (numpy only).

    Min-label propagation with pointer jumping: each pixel starts with its own index,
    repeatedly takes the smallest label among itself and its neighbours, then the label
    of the pixel its label points to; this converges in a few dozen vectorised steps.
    """
    rows, cols = np.nonzero(mask.any(axis=1))[0], np.nonzero(mask.any(axis=0))[0]
    if not len(rows):
        return []
    window = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))  # label the bounding box only
    inner = mask[window]
    height, width = inner.shape
    big = height * width
    labels = np.where(inner, np.arange(big).reshape(height, width), big)
    while True:
        spread = labels.copy()
        spread[1:] = np.minimum(spread[1:], labels[:-1])
        spread[:-1] = np.minimum(spread[:-1], labels[1:])
        spread[:, 1:] = np.minimum(spread[:, 1:], labels[:, :-1])
        spread[:, :-1] = np.minimum(spread[:, :-1], labels[:, 1:])
        spread = np.where(inner, spread, big)
        flat = np.append(spread.ravel(), big)
        spread = np.minimum(spread, flat[spread])  # pointer jumping
        if np.array_equal(spread, labels):
            break
        labels = spread
    components = []
    for value in np.unique(labels[inner]):
        component = np.zeros_like(mask)
        component[window] = labels == value
        components.append(component)
    return components


@dataclass
class Blob:
    """One connected component of one colour in one frame (positions in frame fractions)."""

    mask: np.ndarray  # on the work grid
    area: float  # fraction of the frame
    x: float
    y: float


def _blobs(mask: np.ndarray, xs: np.ndarray, ys: np.ndarray) -> list[Blob]:
    if mask.mean() < MIN_AREA:
        return []
    blobs = []
    for component in connected_components(mask):
        area = float(component.mean())
        if area >= MIN_AREA:
            rows, cols = np.nonzero(component)
            blobs.append(Blob(component, area, float(xs[cols].mean()), float(ys[rows].mean())))
    return blobs


class Tracks:
    """Per colour and frame, the tracked shape (or None); computed lazily, only for colours asked about."""

    def __init__(self, video: np.ndarray):
        frames, self.xs, self.ys = _work_grid(video)
        self.labels = colour_labels(frames)
        self.names = list(COLOURS)
        self._cache: dict[str, list[Blob | None]] = {}
        self._blobs: dict[tuple[str, int], list[Blob]] = {}
        self.cell = 1.0 / max(len(self.xs), len(self.ys))  # one work pixel, as a frame fraction

    def __len__(self) -> int:
        return len(self.labels)

    def blobs(self, colour: str, t: int) -> list[Blob]:
        """All components of ``colour`` in frame ``t`` (above ``MIN_AREA``)."""
        if (colour, t) not in self._blobs:
            self._blobs[colour, t] = _blobs(self.labels[t] == self.names.index(colour), self.xs, self.ys)
        return self._blobs[colour, t]

    def __getitem__(self, colour: str) -> list[Blob | None]:
        if colour not in self._cache:
            track: list[Blob | None] = []
            last: Blob | None = None
            for t in range(len(self)):
                found = self.blobs(colour, t)
                if not found:
                    track.append(None)
                    continue
                if last is None:
                    chosen = max(found, key=lambda b: b.area)
                else:
                    chosen = min(found, key=lambda b: (b.x - last.x) ** 2 + (b.y - last.y) ** 2)
                track.append(chosen)
                last = chosen
            self._cache[colour] = track
        return self._cache[colour]


# ---------------------------------------------------------------- questions


def _dilate(mask: np.ndarray, steps: int) -> np.ndarray:
    out = mask.copy()
    for _ in range(steps):
        grown = out.copy()
        grown[1:] |= out[:-1]
        grown[:-1] |= out[1:]
        grown[:, 1:] |= out[:, :-1]
        grown[:, :-1] |= out[:, 1:]
        out = grown
    return out


def _touching(a: Blob, b: Blob, tolerance: float, cell: float) -> bool:
    """Outlines within ``tolerance`` of each other (adjacent or overlapping masks)."""
    return bool((_dilate(a.mask, max(1, int(np.ceil(tolerance / cell)))) & b.mask).any())


def _present(tracks: Tracks, p: dict[str, Any]) -> bool:
    return tracks[p["colour"]][0] is not None


def _colour_at_end(tracks: Tracks, p: dict[str, Any]) -> bool:
    """At the end, the target colour sits where the subject was (similar size) and the old colour is gone there."""
    start = tracks[p["colour"]][0]
    if start is None:
        return False
    reach = max(3 * np.sqrt(start.area / np.pi), 0.1)

    def near(blob: Blob) -> bool:
        return np.hypot(blob.x - start.x, blob.y - start.y) <= reach

    end = len(tracks) - 1
    new = [b for b in tracks.blobs(p["target"], end) if near(b) and 0.4 <= b.area / start.area <= 2.5]
    old = [b for b in tracks.blobs(p["colour"], end) if near(b) and b.area >= 0.3 * start.area]
    return bool(new) and not old


def _moved(tracks: Tracks, p: dict[str, Any]) -> bool:
    """Visible at start and end, displaced along the direction by enough, and more along it than across."""
    track = tracks[p["colour"]]
    start, end = track[0], track[-1]
    if start is None or end is None:
        return False
    ux, uy = DIRECTIONS[p["direction"]]
    along = (end.x - start.x) * ux + (end.y - start.y) * uy
    across = abs((end.x - start.x) * uy - (end.y - start.y) * ux)
    return along >= p["min_distance"] and across < along


def _push_axis(tracks: Tracks, p: dict[str, Any]) -> tuple[float, float] | None:
    """Unit vector from subject to object in frame 0: the push direction, read from the image."""
    subject, obj = tracks[p["subject"]][0], tracks[p["object"]][0]
    if subject is None or obj is None:
        return None
    dx, dy = obj.x - subject.x, obj.y - subject.y
    norm = float(np.hypot(dx, dy))
    return (dx / norm, dy / norm) if norm > 0 else None


def _displacement(track: list[Blob | None], axis: tuple[float, float], t: int) -> float:
    start, now = track[0], track[t]
    if start is None or now is None:
        return 0.0
    return (now.x - start.x) * axis[0] + (now.y - start.y) * axis[1]


def _approached(tracks: Tracks, p: dict[str, Any]) -> bool:
    axis = _push_axis(tracks, p)
    return axis is not None and _displacement(tracks[p["subject"]], axis, len(tracks) - 1) >= p["min_distance"]


def _first_contact(tracks: Tracks, subject: str, obj: str, tolerance: float) -> int | None:
    for t, (a, b) in enumerate(zip(tracks[subject], tracks[obj])):
        if a is not None and b is not None and _touching(a, b, tolerance, tracks.cell):
            return t
    return None


def _contact(tracks: Tracks, p: dict[str, Any]) -> bool:
    return _first_contact(tracks, p["subject"], p["object"], p["tolerance"]) is not None


def _pushed(tracks: Tracks, p: dict[str, Any]) -> bool:
    """The object ends displaced along subject -> object, and most of that came after the first contact."""
    axis = _push_axis(tracks, p)
    if axis is None:
        return False
    track = tracks[p["object"]]
    total = _displacement(track, axis, len(tracks) - 1)
    if total < p["min_distance"]:
        return False
    contact = _first_contact(tracks, p["subject"], p["object"], p["tolerance"])
    if contact is None:  # the object moved on its own: not a push
        return False
    return contact == 0 or _displacement(track, axis, contact - 1) < total / 2


def roles_reversed(tracks: Tracks, p: dict[str, Any]) -> bool:
    """The *object* moved towards the subject, by at least ``min_distance`` along subject -> object.

    A diagnostic, not a question (it does not enter ``all_correct``): it tells a model that
    cannot push from one that reads the sentence backwards.  Why: on v6's held-out push
    prompts this was the most common failure (10 of 20 videos, against 3 of 20 on fresh
    training-split prompts), the evidence behind ``testbed train --push-swaps``.
    """
    axis = _push_axis(tracks, p)
    return axis is not None and -_displacement(tracks[p["object"]], axis, len(tracks) - 1) >= p["min_distance"]


ANSWER = {
    "present": _present,
    "colour_at_end": _colour_at_end,
    "moved": _moved,
    "approached": _approached,
    "contact": _contact,
    "pushed": _pushed,
}


def answer(question: Question, tracks: Tracks) -> bool:
    """The video's answer to one question."""
    return bool(ANSWER[question.kind](tracks, question.params))


# ---------------------------------------------------------------- scoring


def first_frame_consistency(frame: np.ndarray, reference: np.ndarray) -> float:
    """1 - mean absolute pixel difference / 255, in [0, 1]; the reference is resized to the frame if needed."""
    if frame.shape != reference.shape:
        from PIL import Image

        reference = np.asarray(Image.fromarray(reference).resize(frame.shape[1::-1], Image.BILINEAR))
    return float(1.0 - np.abs(frame.astype(np.float32) - reference.astype(np.float32)).mean() / 255.0)


def score_video(scene: Scene, video: np.ndarray, reference: np.ndarray | None = None) -> dict[str, Any]:
    """Answers to the scene's questions, ``all_correct`` and first-frame consistency.

    ``video`` is (T, H, W, 3) uint8 with T >= 2.  ``reference`` (the conditioning image)
    defaults to the scene's rendered frame 0 at the video's size.
    """
    video = np.asarray(video)
    if video.ndim != 4 or video.shape[-1] != 3 or len(video) < 2:
        raise ValueError(f"expected a (T >= 2, H, W, 3) video, got shape {video.shape}")
    if not np.issubdtype(video.dtype, np.integer):
        # a float video in [0, 1] cast to uint8 would be black and fail every question silently
        raise ValueError(
            f"expected a uint8 video (0-255), got {video.dtype}; convert with layerscope.recording.to_uint8"
        )
    video = video.astype(np.uint8, copy=False)
    if reference is None:
        from layerscope_testbed.shapes.render import reference_image

        reference = reference_image(scene, *video.shape[1:3])
    tracks = Tracks(video)
    asked = questions(scene)
    answers = [answer(q, tracks) for q in asked]
    diagnostics = {}
    if scene.dimension == "interaction":
        approached = next(q for q in asked if q.kind == "approached")
        diagnostics["roles_reversed"] = roles_reversed(tracks, approached.params)
    return {
        "prompt": scene.prompt,
        "dimension": scene.dimension,
        "questions": {q.text: a for q, a in zip(asked, answers)},
        "answers": answers,
        "kinds": [q.kind for q in asked],
        "all_correct": all(answers),
        "first_frame_consistency": first_frame_consistency(video[0], np.asarray(reference, dtype=np.uint8)),
        **diagnostics,
    }


def summarise(scores: list[dict[str, Any]]) -> dict[str, Any]:
    """Per-dimension and overall all-correct rates, mean question accuracy and mean consistency."""

    def rates(chosen: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "count": len(chosen),
            "all_correct": float(np.mean([s["all_correct"] for s in chosen])) if chosen else float("nan"),
            "questions": float(np.mean([np.mean(s["answers"]) for s in chosen])) if chosen else float("nan"),
            "first_frame_consistency": (
                float(np.mean([s["first_frame_consistency"] for s in chosen])) if chosen else float("nan")
            ),
        }

    per_dimension = {d: rates([s for s in scores if s["dimension"] == d]) for d in DIMENSIONS}
    return {
        "per_dimension": {d: r for d, r in per_dimension.items() if r["count"]},
        "overall": rates(scores),
        "by_question": question_rates(scores),
    }


def question_rates(scores: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Per dimension, the share of videos passing each kind of question (e.g. interaction:
    approached / contact / pushed).

    Why: all-correct says *that* a dimension fails, this says at which step of the
    instruction; it is how the push failure was located (the subject seldom approaches).
    Interaction also gets ``roles_reversed``, the share of videos in which the object
    moved towards the subject (:func:`roles_reversed`; lower is better).  Scores without
    ``kinds`` (evals written before it was recorded) are left out.
    """
    answers: dict[str, dict[str, list[bool]]] = {}
    for score in scores:
        for kind, passed in zip(score.get("kinds", ()), score["answers"]):
            answers.setdefault(score["dimension"], {}).setdefault(kind, []).append(bool(passed))
        if "roles_reversed" in score:
            answers.setdefault(score["dimension"], {}).setdefault("roles_reversed", []).append(score["roles_reversed"])
    return {d: {kind: float(np.mean(values)) for kind, values in kinds.items()} for d, kinds in answers.items()}


def evaluate(
    scenes: list[Scene], videos: list[np.ndarray], references: list[np.ndarray] | None = None
) -> dict[str, Any]:
    """Score every (scene, video) pair: :func:`summarise` of the scores, plus the scores themselves."""
    if len(scenes) != len(videos):
        raise ValueError(f"{len(scenes)} scenes but {len(videos)} videos")
    references = references if references is not None else [None] * len(scenes)
    scores = [score_video(s, v, r) for s, v, r in zip(scenes, videos, references)]
    return {**summarise(scores), "scores": scores}


def chance_level(
    scenes: list[Scene], videos: list[np.ndarray] | None = None, seed: int = 0, size: int = 128, num_frames: int = 9
) -> dict[str, dict[str, Any]]:
    """What trivial "generators" score on ``scenes``: the floor a real model must beat.

    * ``static``: the reference image repeated (no event at all);
    * ``reversed``: the ground-truth video played backwards (the event undone);
    * ``shuffled``: each scene scored on another scene's ground-truth video (a derangement
      from ``seed``), with that video's own first frame as reference; left out for a
      single scene, which has nobody to swap with.

    ``videos`` default to the ground truth rendered at ``size`` x ``size``.  Returns
    :func:`summarise` dicts (no per-video scores).
    """
    from layerscope_testbed.shapes.render import render_video

    if videos is None:
        videos = [render_video(s, num_frames, size, size) for s in scenes]
    order = np.random.default_rng(seed).permutation(len(scenes))
    partner = np.empty(len(scenes), dtype=int)
    partner[order] = np.roll(order, -1)  # a cycle through all scenes: nobody gets their own video
    static = [np.repeat(v[:1], len(v), axis=0) for v in videos]
    result = {
        "static": summarise(evaluate(scenes, static)["scores"]),
        "reversed": summarise(evaluate(scenes, [v[::-1] for v in videos])["scores"]),
    }
    if len(scenes) >= 2:  # one scene has nobody to swap videos with
        shuffled = [videos[j] for j in partner]
        result["shuffled"] = summarise(evaluate(scenes, shuffled, [v[0] for v in shuffled])["scores"])
    return result
