"""I2V subject and background consistency, computed as VBench-I2V does, from image features.

VBench-I2V (``vbench2_beta_i2v``) scores a video against its conditioning image:

* conformity: ``c_i = max(0, cos(f(image), f(frame_i)))`` for every frame i;
* consecutive similarity: ``s_i = max(0, cos(f(frame_{i-1}), f(frame_i)))`` for i >= 1;
* subject consistency ``= 0.5 max(c) + 0.5 mean(s)`` (features: DINO);
* background consistency ``= 0.4 max(c) + 0.3 mean(s) + 0.3 min(s)`` (features: DreamSim).

No hub is reachable, so the features here come from a local open_clip image tower
(``--clip``; default the shipped testbed model's CLIP) for both; the weights and the
formula are VBench's, the feature extractor is not, so absolute values are comparable
between our runs, not with the paper's Table 2.  Frames are encoded in chunks straight
from the mp4: memory does not grow with the video's length.

Pre-processing as VBench's ``clip_transform``: the shorter side resized to the model's
input size (bicubic, aspect ratio kept), then a centre crop to a square.  (VBench's DINO
transform resizes without a crop and its DreamSim transform squashes to a square; with
one CLIP tower for both scores we follow its CLIP transform.)  A 480x832 Wan frame is
therefore compared on its central 480x480, not squashed.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

SUBJECT_WEIGHTS = (0.5, 0.5, 0.0)  # max conformity, mean consecutive, min consecutive
BACKGROUND_WEIGHTS = (0.4, 0.3, 0.3)
CHUNK = 16


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def consistency_from_features(reference: np.ndarray, frames: np.ndarray) -> dict[str, Any]:
    """Both scores from the reference image's feature (D,) and the frames' features (T, D), T >= 2."""
    reference, frames = _unit(reference), _unit(frames)
    if frames.ndim != 2 or len(frames) < 2:
        raise ValueError(f"consistency needs the features of at least 2 frames, got shape {frames.shape}")
    conformity = np.maximum(0.0, frames @ reference)
    consecutive = np.maximum(0.0, np.sum(frames[1:] * frames[:-1], axis=1))

    def score(weights: tuple[float, float, float]) -> float:
        return float(weights[0] * conformity.max() + weights[1] * consecutive.mean() + weights[2] * consecutive.min())

    return {
        "subject_consistency": score(SUBJECT_WEIGHTS),
        "background_consistency": score(BACKGROUND_WEIGHTS),
        "conformity": conformity.tolist(),
        "consecutive": consecutive.tolist(),
    }


def resize_and_crop(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """VBench's CLIP pre-processing: shorter side to ``min(size)`` (bicubic, aspect kept), centre crop.

    Returns (size[0], size[1], 3) float32 in 0..255.
    """
    from PIL import Image

    picture = Image.fromarray(np.asarray(image, dtype=np.uint8))
    height, width = size
    scale = max(height / picture.height, width / picture.width)
    new_w, new_h = max(width, round(picture.width * scale)), max(height, round(picture.height * scale))
    resized = picture.resize((new_w, new_h), Image.BICUBIC)
    left, top = (new_w - width) // 2, (new_h - height) // 2
    return np.asarray(resized.crop((left, top, left + width, top + height)), dtype=np.float32)


class ClipFeatures:
    """Image features (the pooled, projected embedding) of a local open_clip model."""

    def __init__(self, directory: str | os.PathLike, device: str = "cpu"):
        from layerscope.clip import load_open_clip

        self.directory = Path(directory)
        self.device = device
        self.model = load_open_clip(directory).to(device)
        size = self.model.visual.image_size
        self.size = tuple(size) if isinstance(size, (tuple, list)) else (size, size)
        config = getattr(self.model.visual, "preprocess_cfg", {}) or {}
        from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

        self.mean = np.array(config.get("mean", OPENAI_DATASET_MEAN), dtype=np.float32)
        self.std = np.array(config.get("std", OPENAI_DATASET_STD), dtype=np.float32)

    def describe(self) -> dict[str, Any]:
        return {"features": "open_clip image embedding", "clip": str(self.directory), "size": list(self.size)}

    def _pixels(self, images: list[np.ndarray]) -> Any:
        import torch

        batch = [(resize_and_crop(image, self.size) / 255.0 - self.mean) / self.std for image in images]
        return torch.from_numpy(np.stack(batch)).permute(0, 3, 1, 2).to(self.device)

    def encode(self, images: list[np.ndarray]) -> np.ndarray:
        """(N, E) float64 features of (H, W, 3) uint8 images."""
        import torch

        with torch.no_grad():
            return self.model.encode_image(self._pixels(images)).double().cpu().numpy()

    def video(self, reference: np.ndarray, video_path: str | os.PathLike) -> dict[str, Any]:
        """Consistency of the mp4 at ``video_path`` with the conditioning image ``reference``."""
        from layerscope.bench.video_io import iter_frames

        features, chunk = [], []
        for frame in iter_frames(video_path):
            chunk.append(frame)
            if len(chunk) == CHUNK:
                features.append(self.encode(chunk))
                chunk = []
        if chunk:
            features.append(self.encode(chunk))
        return consistency_from_features(self.encode([reference])[0], np.concatenate(features))
