"""Render a shapes-world scene to its ground-truth video (uint8, frame 0 = the reference image).

The dynamics (where each shape is, in which colour, at time t / (T - 1)) live in
:func:`layerscope_testbed.shapes.world.shape_state`; this module only paints them.  Why no
anti-aliasing: every shape pixel is then an exact palette colour and every background
pixel an exact grey, which keeps training targets crisp and the ground truth trivially
segmentable.  At the default 9 frames x 256x256 a motion covers 77 pixels, a push 31.
"""

from __future__ import annotations

import numpy as np

from layerscope_testbed.shapes.world import COLOURS, Scene, shape_box, shape_mask, shape_state

PLAIN_GREY = (128, 128, 128)
#: Textured background: grey levels 128 +- this, in tiles of 1/32 of the frame.  Any grey
#: is >= 94 RGB units from every palette colour, so texture can never pass for a shape.
TEXTURE_AMPLITUDE = 14
TEXTURE_TILES = 32


def background(scene: Scene, height: int, width: int) -> np.ndarray:
    """The scene's (H, W, 3) uint8 background: plain grey, or low-contrast grey tiles from ``texture_seed``."""
    image = np.empty((height, width, 3), dtype=np.uint8)
    if scene.background != "textured":
        image[:] = PLAIN_GREY
        return image
    rng = np.random.default_rng(scene.texture_seed)
    tiles = rng.integers(-TEXTURE_AMPLITUDE, TEXTURE_AMPLITUDE + 1, size=(TEXTURE_TILES, TEXTURE_TILES))
    rows = np.arange(height) * TEXTURE_TILES // height  # tiles scale with the frame: same look at any size
    cols = np.arange(width) * TEXTURE_TILES // width
    image[:] = (PLAIN_GREY[0] + tiles[rows][:, cols])[..., None].astype(np.uint8)
    return image


def _paint(frame: np.ndarray, kind: str, cx: float, cy: float, size: float, colour: tuple[int, int, int]) -> None:
    """Fill the shape's pixels (pixel centres inside it), touching only its bounding box."""
    height, width = frame.shape[:2]
    x0, y0, x1, y1 = shape_box(kind, cx, cy, size)
    c0, c1 = max(0, int(np.floor(x0 * width))), min(width, int(np.ceil(x1 * width)) + 1)
    r0, r1 = max(0, int(np.floor(y0 * height))), min(height, int(np.ceil(y1 * height)) + 1)
    if c0 >= c1 or r0 >= r1:
        return
    x = ((np.arange(c0, c1) + 0.5) / width)[None, :]
    y = ((np.arange(r0, r1) + 0.5) / height)[:, None]
    frame[r0:r1, c0:c1][shape_mask(kind, cx, cy, size, x, y)] = colour


def render_frame(
    scene: Scene, fraction: float, height: int = 256, width: int = 256, backdrop: np.ndarray | None = None
) -> np.ndarray:
    """The (H, W, 3) uint8 frame at time ``fraction`` in [0, 1] (``backdrop``: a precomputed :func:`background`)."""
    frame = background(scene, height, width) if backdrop is None else backdrop.copy()
    for index, shape in enumerate(scene.shapes):
        x, y, colour = shape_state(scene, index, fraction)
        _paint(frame, shape.kind, x, y, shape.size, COLOURS[colour])
    return frame


def render_video(scene: Scene, num_frames: int = 9, height: int = 256, width: int = 256) -> np.ndarray:
    """(T, H, W, 3) uint8 ground-truth video; frame t shows time t / (T - 1)."""
    if num_frames < 1:
        raise ValueError("num_frames must be >= 1")
    fractions = np.linspace(0.0, 1.0, num_frames) if num_frames > 1 else np.zeros(1)
    backdrop = background(scene, height, width)
    return np.stack([render_frame(scene, float(f), height, width, backdrop) for f in fractions])


def reference_image(scene: Scene, height: int = 256, width: int = 256) -> np.ndarray:
    """The conditioning image: the scene at time 0, identical to frame 0 of :func:`render_video`."""
    return render_frame(scene, 0.0, height, width)
