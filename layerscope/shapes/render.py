"""Render a shapes-world scene to the ground-truth video (uint8, frame 0 = reference image).

Timing over T frames (fraction f = t / (T - 1)):
* motion: the subject moves linearly by ``MOTION_DISTANCE`` of the frame;
* colour change: the subject switches to the target colour from the middle frame on
  (a switch, not a blend, so every frame shows palette colours only);
* interaction: the subject closes the gap by the middle frame (contact), then pushes
  the object so both move together until the end.
"""

from __future__ import annotations

import numpy as np

from layerscope.shapes.world import COLOURS, DIRECTIONS, MOTION_DISTANCE, Scene, Shape

PLAIN_GREY = (128, 128, 128)


def _background(scene: Scene, height: int, width: int) -> np.ndarray:
    image = np.empty((height, width, 3), dtype=np.uint8)
    image[:] = PLAIN_GREY
    if scene.background == "textured":
        # low-contrast grey noise in 8x8 tiles: far from every shape colour
        rng = np.random.default_rng(scene.texture_seed)
        tiles = rng.integers(-14, 15, size=(height // 8 + 1, width // 8 + 1))
        noise = np.kron(tiles, np.ones((8, 8), dtype=np.int64))[:height, :width]
        image[:] = np.clip(128 + noise[..., None], 0, 255).astype(np.uint8)
    return image


def _mask(kind: str, cx: float, cy: float, size: float, height: int, width: int) -> np.ndarray:
    yy, xx = np.mgrid[0:height, 0:width]
    x, y = (xx + 0.5) / width, (yy + 0.5) / height
    if kind == "circle":
        return (x - cx) ** 2 + (y - cy) ** 2 <= size**2
    if kind == "square":
        half = size * 0.85
        return (np.abs(x - cx) <= half) & (np.abs(y - cy) <= half)
    # triangle pointing up, inscribed in the circle of radius `size`
    top, bottom = cy - size, cy + size * 0.7
    halfwidth = (y - top) / (bottom - top) * size
    return (y >= top) & (y <= bottom) & (np.abs(x - cx) <= halfwidth)


def shape_state(scene: Scene, index: int, fraction: float) -> tuple[float, float, str]:
    """Centre (x, y) and colour of shape ``index`` at time ``fraction`` in [0, 1]."""
    shape: Shape = scene.shapes[index]
    event = scene.event
    x, y, colour = shape.x, shape.y, shape.colour
    if event.dimension == "motion" and index == event.subject:
        dx, dy = DIRECTIONS[event.direction]
        x += dx * MOTION_DISTANCE * fraction
        y += dy * MOTION_DISTANCE * fraction
    elif event.dimension == "dynamic_attribute" and index == event.subject and fraction >= 0.5:
        colour = event.target_colour
    elif event.dimension == "interaction" and index in (event.subject, event.obj):
        subject, obj = scene.shapes[event.subject], scene.shapes[event.obj]
        sign = DIRECTIONS[event.direction][0]
        gap = abs(obj.x - subject.x) - subject.size - obj.size
        push = 0.12
        if index == event.subject:
            x += sign * (gap * min(1.0, 2 * fraction) + push * max(0.0, 2 * fraction - 1))
        else:
            x += sign * push * max(0.0, 2 * fraction - 1)
    return x, y, colour


def render_video(scene: Scene, num_frames: int = 9, height: int = 256, width: int = 256) -> np.ndarray:
    """(T, H, W, 3) uint8 video of ``scene``."""
    background = _background(scene, height, width)
    video = np.empty((num_frames, height, width, 3), dtype=np.uint8)
    for t in range(num_frames):
        fraction = t / (num_frames - 1) if num_frames > 1 else 0.0
        frame = background.copy()
        for index, shape in enumerate(scene.shapes):
            x, y, colour = shape_state(scene, index, fraction)
            frame[_mask(shape.kind, x, y, shape.size, height, width)] = COLOURS[colour]
        video[t] = frame
    return video


def reference_image(scene: Scene, height: int = 256, width: int = 256) -> np.ndarray:
    """The conditioning image: the first frame of the ground-truth video."""
    return render_video(scene, num_frames=1, height=height, width=width)[0]
