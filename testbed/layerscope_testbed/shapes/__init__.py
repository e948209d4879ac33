"""The shapes world: procedural scenes for image-to-video experiments, their renderer and a pixel-only scorer.

Why a package of its own: a model can be trained and Focal Guidance measured here only
on data whose ground truth we know.  :mod:`.world` describes and samples scenes,
:mod:`.render` paints them, :mod:`.scorer` checks a generated video against a scene's
questions.  Importing needs numpy only (PIL is loaded when a reference must be resized).
"""

from __future__ import annotations

from layerscope_testbed.shapes.render import reference_image, render_video
from layerscope_testbed.shapes.scorer import chance_level, evaluate, score_video
from layerscope_testbed.shapes.world import (
    COLOURS,
    DIMENSIONS,
    HELD_OUT,
    KINDS,
    VOCABULARY,
    Event,
    Question,
    Scene,
    Shape,
    questions,
    sample_scenes,
)

__all__ = [
    "COLOURS",
    "DIMENSIONS",
    "HELD_OUT",
    "KINDS",
    "VOCABULARY",
    "Event",
    "Question",
    "Scene",
    "Shape",
    "chance_level",
    "evaluate",
    "questions",
    "reference_image",
    "render_video",
    "sample_scenes",
    "score_video",
]
