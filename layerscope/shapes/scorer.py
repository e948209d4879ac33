"""Score a generated video against its prompt, from pixels only.

The scorer knows what the prompt says (subject colour, target colour, direction, object
colour) but never the ground-truth trajectory: it segments each palette colour, follows
each colour's centroid over time and answers the prompt's questions.  A prompt passes
only if every question passes (the paper's all-correct rule).  Colours are unique in a
scene, so a colour identifies a shape.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from layerscope.shapes.world import COLOURS, DIMENSIONS, DIRECTIONS, Scene

#: A pixel belongs to a colour if it is this close (RGB distance) and closer than to grey.
COLOUR_DISTANCE = 70.0
MIN_AREA = 0.004  # of the frame: smaller blobs are noise
MOVE_THRESHOLD = 0.12  # of the frame, along the asked direction
PUSH_THRESHOLD = 0.05
CONTACT_DISTANCE = 0.03  # gap between the two masks' facing edges, of the frame width


def colour_masks(frame: np.ndarray) -> dict[str, np.ndarray]:
    """Boolean mask per palette colour (pixels nearest to it, within COLOUR_DISTANCE)."""
    pixels = frame.astype(np.float32)
    names = list(COLOURS)
    palette = np.array([COLOURS[n] for n in names] + [(128, 128, 128)], dtype=np.float32)
    distance = np.linalg.norm(pixels[..., None, :] - palette, axis=-1)  # H, W, C+1
    nearest = distance.argmin(-1)
    close = distance.min(-1) <= COLOUR_DISTANCE
    return {name: (nearest == i) & close for i, name in enumerate(names)}


def track(video: np.ndarray) -> dict[str, list[dict[str, Any] | None]]:
    """Per colour and frame: area fraction, centroid (x, y) and horizontal extent, or None."""
    height, width = video.shape[1:3]
    tracks: dict[str, list[dict[str, Any] | None]] = {name: [] for name in COLOURS}
    for frame in video:
        for name, mask in colour_masks(frame).items():
            area = mask.mean()
            if area < MIN_AREA:
                tracks[name].append(None)
                continue
            ys, xs = np.nonzero(mask)
            tracks[name].append(
                {
                    "area": float(area),
                    "x": float(xs.mean() + 0.5) / width,
                    "y": float(ys.mean() + 0.5) / height,
                    "left": float(xs.min()) / width,
                    "right": float(xs.max() + 1) / width,
                }
            )
    return tracks


def _first(track: list[dict[str, Any] | None]) -> dict[str, Any] | None:
    return track[0]


def _last_seen(track: list[dict[str, Any] | None]) -> dict[str, Any] | None:
    return next((t for t in reversed(track) if t is not None), None)


def _displacement(track: list[dict[str, Any] | None], direction: str) -> float:
    start, end = _first(track), _last_seen(track)
    if start is None or end is None:
        return 0.0
    dx, dy = DIRECTIONS[direction]
    return (end["x"] - start["x"]) * dx + (end["y"] - start["y"]) * dy


def questions(scene: Scene) -> list[str]:
    """The questions of a scene's prompt, in order."""
    event = scene.event
    if event.dimension == "dynamic_attribute":
        return ["subject visible at the start", f"subject turned {event.target_colour}", "old colour gone"]
    if event.dimension == "motion":
        return ["subject visible at the start", f"subject moved {event.direction}", "subject still visible"]
    return ["subject approached the object", "contact", f"object moved {event.direction}"]


def score_video(scene: Scene, video: np.ndarray, reference: np.ndarray | None = None) -> dict[str, Any]:
    """Answers to the scene's questions, ``all_correct`` and first-frame consistency."""
    video = np.asarray(video, dtype=np.uint8)
    tracks = track(video)
    event, subject = scene.event, scene.subject
    own = tracks[subject.colour]
    if event.dimension == "dynamic_attribute":
        start, target = _first(own), tracks[event.target_colour][-1]
        answers = [
            start is not None,
            target is not None
            and start is not None
            and target["area"] >= 0.4 * start["area"]
            and abs(target["x"] - start["x"]) + abs(target["y"] - start["y"]) < 3 * subject.size,
            start is not None and (own[-1] is None or own[-1]["area"] < 0.3 * start["area"]),
        ]
    elif event.dimension == "motion":
        moved = _displacement(own, event.direction)
        dx, dy = DIRECTIONS[event.direction]
        start, end = _first(own), _last_seen(own)
        sideways = (
            0.0 if start is None or end is None else abs((end["x"] - start["x"]) * dy + (end["y"] - start["y"]) * dx)
        )
        answers = [start is not None, moved >= MOVE_THRESHOLD and sideways < moved, own[-1] is not None]
    else:
        other = tracks[scene.shapes[event.obj].colour]
        sign = DIRECTIONS[event.direction][0]
        approached = _displacement(own, event.direction) >= MOVE_THRESHOLD / 2
        contact = any(_gap(a, b, sign) <= CONTACT_DISTANCE for a, b in zip(own, other) if a and b)
        pushed = _displacement(other, event.direction) >= PUSH_THRESHOLD
        answers = [approached, contact, pushed]
    reference = video[0] if reference is None else reference
    consistency = _consistency(video[0], reference)
    return {
        "prompt": scene.prompt,
        "dimension": event.dimension,
        "questions": dict(zip(questions(scene), (bool(a) for a in answers))),
        "all_correct": bool(all(answers)),
        "first_frame_consistency": consistency,
    }


def _gap(subject: dict[str, Any], obj: dict[str, Any], sign: int) -> float:
    """Free space between the subject's front edge and the object's back edge."""
    return obj["left"] - subject["right"] if sign > 0 else subject["left"] - obj["right"]


def _consistency(frame: np.ndarray, reference: np.ndarray) -> float:
    if frame.shape != reference.shape:
        from PIL import Image

        reference = np.asarray(Image.fromarray(reference).resize(frame.shape[1::-1]))
    return float(1.0 - np.abs(frame.astype(np.float32) - reference.astype(np.float32)).mean() / 255.0)


def evaluate(scenes: list[Scene], videos: list[np.ndarray], references: list[np.ndarray] | None = None) -> dict:
    """All-correct rate per dimension and overall, and mean first-frame consistency."""
    from layerscope.shapes.render import reference_image

    if references is None:
        references = [reference_image(s, *np.asarray(v).shape[1:3]) for s, v in zip(scenes, videos)]
    scores = [score_video(s, v, r) for s, v, r in zip(scenes, videos, references)]
    per_dimension = {}
    for dimension in DIMENSIONS:
        chosen = [s for s in scores if s["dimension"] == dimension]
        if chosen:
            per_dimension[dimension] = {
                "count": len(chosen),
                "all_correct": float(np.mean([s["all_correct"] for s in chosen])),
                "questions": float(np.mean([np.mean(list(s["questions"].values())) for s in chosen])),
            }
    return {
        "per_dimension": per_dimension,
        "overall": {
            "count": len(scores),
            "all_correct": float(np.mean([s["all_correct"] for s in scores])) if scores else float("nan"),
            "first_frame_consistency": float(np.mean([s["first_frame_consistency"] for s in scores])),
        },
        "scores": scores,
    }
