"""Which builder writes a tiny offline pipeline of each model family (``testbed build-tiny``).

Why a table: every family's builder lives in its own module (real diffusers/transformers
classes at toy size, random weights, saved with ``save_pretrained``), and the CLI's
``--family`` choices come from here without importing any of them.  Adding a family is one
builder module plus one line below.  A builder is ``build(out, seed, condition_type) -> Path``:
it writes the pipeline to ``out`` atomically (a hidden sibling, renamed when complete).
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Any

#: ``--family`` name -> ``module:function`` of its builder.
TINY_FAMILIES: dict[str, str] = {
    "wan-i2v": "layerscope_testbed.tiny_families:build_wan",
    "hunyuan-video-i2v": "layerscope_testbed.hunyuan_video:build_tiny",
    "ltx-video-i2v": "layerscope_testbed.ltx:build",
    "cogvideox-i2v": "layerscope_testbed.cogvideox:build",
    "skyreels-v2-i2v": "layerscope_testbed.skyreels_v2:build",
    "hunyuan-video-1.5-i2v": "layerscope_testbed.hunyuan_video15:build",
    "cosmos-predict2-video2world": "layerscope_testbed.cosmos:build",
    "ltx-2-i2v": "layerscope_testbed.ltx2:build",
}


def build_tiny(family: str, out: str | os.PathLike, seed: int = 0, condition_type: str | None = None) -> Path:
    """Write ``family``'s tiny pipeline to ``out`` and return its folder."""
    module, _, function = TINY_FAMILIES[family].partition(":")
    return getattr(importlib.import_module(module), function)(Path(out), seed, condition_type)


def write_tiny_pipeline(out: str | os.PathLike, pipe: Any, info: dict[str, Any], clip: Any = None) -> Path:
    """Write ``pipe`` (safetensors), ``clip`` (open_clip, under ``clip/``, for FG) and ``info``
    (``layerscope_model.json``) to a hidden sibling of ``out``, then rename it.

    Why: an interrupted build never leaves a folder that looks like a finished model; every
    family's builder writes through here.
    """
    import json
    import shutil

    from layerscope.clip import CLIP_SUBFOLDER, save_open_clip
    from layerscope.loading import MODEL_INFO_FILE

    target = Path(out)
    staging = target.with_name(f".{target.name}.partial-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        pipe.save_pretrained(staging, safe_serialization=True)
        if clip is not None:
            from layerscope_testbed import CLIP_CONFIG

            save_open_clip(clip, CLIP_CONFIG, staging / CLIP_SUBFOLDER)
        (staging / MODEL_INFO_FILE).write_text(json.dumps(info, indent=2))
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def tiny_t5_encoder(tokenizer: Any, width: int) -> Any:
    """A 2-layer ``T5EncoderModel`` of ``width`` over the testbed's offline tokenizer: the text
    encoder of the tiny LTX-Video, CogVideoX and Cosmos pipelines (seed torch before calling)."""
    from transformers import T5Config, T5EncoderModel

    config = T5Config(
        vocab_size=len(tokenizer), d_model=width, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
        relative_attention_num_buckets=8, dropout_rate=0.0, pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id, decoder_start_token_id=tokenizer.pad_token_id,
    )  # fmt: skip
    return T5EncoderModel(config)


def build_wan(out: Path, seed: int, condition_type: str | None) -> Path:
    """The random tiny Wan2.1-I2V pipeline (``--model random``'s architecture)."""
    from layerscope_testbed import ensure_default_model

    return Path(ensure_default_model(out))
