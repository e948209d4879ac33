"""Load pipelines and images from local paths only.

No model hub is ever contacted: ``default`` is the embedded tiny model (built into a
cache directory on first use), anything else must be a local diffusers pipeline
directory, loaded with ``local_files_only=True`` and safetensors weights only.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np


class LoadError(ValueError):
    """A model directory or image cannot be used (a usage error)."""


DTYPES = ("float32", "bfloat16", "float16")


def resolve_model_dir(model: str | os.PathLike) -> Path:
    """``default`` (trained shapes-world model), ``random`` (random tiny model), or a checked local path."""
    if str(model) == "default":
        from layerscope.testbed import default_model_dir

        return default_model_dir()
    if str(model) == "random":
        from layerscope.testbed import ensure_default_model

        return ensure_default_model()
    path = Path(model).expanduser()
    if not path.is_dir():
        raise LoadError(f"--model {model}: no such directory; pass a local diffusers pipeline directory or 'default'")
    index = path / "model_index.json"
    if not index.exists():
        raise LoadError(
            f"--model {model}: not a diffusers pipeline directory (no model_index.json); "
            "pass the folder of e.g. Wan2.1-I2V-14B-480P-Diffusers"
        )
    from layerscope.adapters.base import supported_pipeline_classes

    try:
        class_name = json.loads(index.read_text()).get("_class_name", "?")
    except json.JSONDecodeError as error:
        raise LoadError(f"--model {model}: model_index.json is not valid JSON ({error})") from None
    supported = supported_pipeline_classes()
    if class_name not in supported:
        raise LoadError(
            f"--model {model}: pipeline class {class_name} is not supported; supported: {', '.join(supported)}"
        )
    return path


def load_pipeline(
    model: str | os.PathLike = "default",
    *,
    dtype: str = "float32",
    device: str = "cpu",
    cpu_offload: bool = False,
) -> tuple[Any, Path]:
    """Load a pipeline from a local directory; return it and the directory it came from."""
    if dtype not in DTYPES:
        raise LoadError(f"--dtype {dtype} is not supported; choose one of {', '.join(DTYPES)}")
    path = resolve_model_dir(model)
    import torch
    from diffusers import DiffusionPipeline
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    # Loading bars say nothing useful for local files; the denoising bar stays.
    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()
    pipe = DiffusionPipeline.from_pretrained(
        path, local_files_only=True, use_safetensors=True, dtype=getattr(torch, dtype)
    )
    if cpu_offload:
        pipe.enable_model_cpu_offload(device=device)
    else:
        pipe.to(device)
    return pipe, path


def load_image(path: str | os.PathLike) -> np.ndarray:
    """Read an RGB image as uint8 (H, W, 3), or fail with a one-line reason."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"))
    except FileNotFoundError:
        raise LoadError(f"--image {path}: no such file") from None
    except (UnidentifiedImageError, OSError) as error:
        raise LoadError(f"--image {path}: not a readable image ({type(error).__name__}); pass a PNG or JPEG") from None
