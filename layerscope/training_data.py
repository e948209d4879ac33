"""Captioned videos for ``layerscope finetune``: the one reader of the training-data JSONL.

One clip a line::

    {"video": "clips/cat.mp4", "caption": "a cat jumps onto the sofa", "keywords": ["cat"],
     "image": "refs/cat.png"}

``video`` is a file imageio can decode (mp4/webm through PyAV, gif, ...) or a folder of
frames (sorted by name); ``image`` (optional) is the conditioning frame, by default the
clip's first frame; ``keywords`` (optional) must be words of the caption.  Paths are
relative to the JSONL file.  Every clip is decoded and checked when the file is read, so a
broken clip, a caption without its keyword or a frame count outside the model's 4n+1
rule is one line before any model loads.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from layerscope.errors import LayerScopeError

_KNOWN_KEYS = {"video", "caption", "keywords", "image"}
_FRAME_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


class TrainingDataError(LayerScopeError):
    """The training data cannot be used as given (a usage error)."""


@dataclass(frozen=True)
class TrainingClip:
    """One decoded, checked clip: frames (F, H, W, 3) uint8 and its conditioning image."""

    line: int
    video: Path
    caption: str
    keywords: tuple[str, ...]
    frames: np.ndarray
    image: np.ndarray


def decode_video(path: Path) -> np.ndarray:
    """Frames (F, H, W, 3) uint8 of a video file or a folder of frame images."""
    import imageio.v3 as iio

    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in _FRAME_SUFFIXES)
        if not files:
            raise ValueError("the folder holds no frame images (png/jpg/webp/bmp)")
        frames = np.stack([_rgb(iio.imread(f)) for f in files])
    else:
        frames = np.asarray(iio.imread(path, index=None))
        if frames.ndim == 3:  # one image, not a video
            frames = frames[None]
        frames = np.stack([_rgb(f) for f in frames])
    return frames


def _rgb(frame: np.ndarray) -> np.ndarray:
    frame = np.asarray(frame)
    if frame.dtype != np.uint8:
        raise ValueError(f"frames must be 8-bit (got {frame.dtype})")
    if frame.ndim == 2:
        frame = np.repeat(frame[..., None], 3, axis=-1)
    return frame[..., :3]


def read_training_data(path: str | os.PathLike, *, frame_rule: int = 4) -> list[TrainingClip]:
    """Read and check every clip of a training JSONL (see the module docstring)."""
    from layerscope.keywords import check_keywords_in_prompt
    from layerscope.loading import load_image
    from layerscope.outputs import read_jsonl_objects

    fix = "write one JSON object per line with video and caption (see `layerscope finetune --help`)"
    base = Path(path).parent
    clips = []
    lines = read_jsonl_objects(
        path, "--data", fix, TrainingDataError, allowed=_KNOWN_KEYS, required=("video", "caption")
    )
    for number, where, data in lines:
        keywords = data.get("keywords", [])
        if not isinstance(keywords, list) or not all(isinstance(k, str) and k.strip() for k in keywords):
            raise TrainingDataError(f"{where}: 'keywords' must be a list of words of the caption")
        if keywords:
            try:
                check_keywords_in_prompt(data["caption"], keywords)
            except LayerScopeError as error:
                raise TrainingDataError(f"{where}: {error}") from None
        video = (base / data["video"]).resolve()
        try:
            frames = decode_video(video)
        except (OSError, ValueError, RuntimeError) as error:
            reason = " ".join(str(error).split())[:200] or type(error).__name__
            raise TrainingDataError(f"{where}: cannot decode video {data['video']} ({reason})") from None
        if (len(frames) - 1) % frame_rule:
            raise TrainingDataError(
                f"{where}: video {data['video']} has {len(frames)} frames; the model takes {frame_rule}n+1 "
                f"(e.g. {len(frames) - (len(frames) - 1) % frame_rule}); trim the clip"
            )
        image = frames[0]
        if data.get("image"):
            try:
                image = load_image(base / data["image"])
            except LayerScopeError as error:
                raise TrainingDataError(f"{where}: {error}") from None
        clips.append(TrainingClip(number, video, data["caption"], tuple(k.strip() for k in keywords), frames, image))
    if not clips:
        raise TrainingDataError(f"--data {path} has no clips; {fix}")
    return clips


def data_hash(clips: list[TrainingClip]) -> str:
    """A digest of the decoded clips and captions: provenance, and the key of the encoding cache."""
    import hashlib

    digest = hashlib.sha256()
    for clip in clips:
        digest.update(clip.caption.encode())
        digest.update(np.ascontiguousarray(clip.frames).tobytes())
        digest.update(np.ascontiguousarray(clip.image).tobytes())
    return digest.hexdigest()[:16]
