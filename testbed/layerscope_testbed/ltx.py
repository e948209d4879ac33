"""A tiny offline LTX-Video image-to-video pipeline built from the real diffusers/transformers classes.

Why: the published LTX-Video checkpoints are 2B-13B parameters behind a model hub this
project never reaches, yet what the adapter depends on only shows up in the real code
path: ``LTXImageToVideoPipeline`` pads the T5 prompt to ``max_sequence_length`` and masks
the padding with an additive bias, runs classifier-free guidance as one batched call
(``[uncond; cond]`` rows) and conditions on the image through the first latent frame
(its tokens get timestep 0).  Every component here is the real class at toy size:
``LTXVideoTransformer3DModel`` (4 blocks, width 32), ``AutoencoderKLLTXVideo`` with the
published compression (spatial 32 = patch 4 x three 2x stages, temporal 8),
``T5EncoderModel`` over a 2-layer ``T5Config`` with the Wan testbed's offline T5-style
tokenizer, and ``FlowMatchEulerDiscreteScheduler`` with LTX-Video's published shift
settings.  Saved with ``save_pretrained``, it loads through ``layerscope record --model DIR``
like any checkpoint.  Weights are random: the maps show the machinery, not semantics.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

MODEL_NAME = "layerscope-tiny-ltx-video-i2v-random"
RANDOM_NOTE = (
    "random weights: a tiny LTX-Video-I2V-architecture pipeline built offline from the real classes; "
    "its maps show the recording machinery, not learned semantics"
)
_TEXT_DIM = 32
_LATENT_CHANNELS = 8
#: CPU-sized generation: 9 frames -> 2 latent frames, 160 px / 32 -> a 5 x 5 token grid
GENERATION_DEFAULTS = {
    "record": {"steps": 3, "frames": 9, "height": 160, "width": 160},
    "bench": {"steps": 3, "frames": 9, "height": 160, "width": 160},
}


def build_tiny_pipeline(seed: int = 0) -> Any:
    """The tiny ``LTXImageToVideoPipeline`` in memory, deterministic from ``seed``."""
    import torch
    from diffusers import (
        AutoencoderKLLTXVideo,
        FlowMatchEulerDiscreteScheduler,
        LTXImageToVideoPipeline,
        LTXVideoTransformer3DModel,
    )

    from layerscope_testbed import _build_tokenizer
    from layerscope_testbed.tiny_families import tiny_t5_encoder

    tokenizer = _build_tokenizer()
    torch.manual_seed(seed)
    text_encoder = tiny_t5_encoder(tokenizer, _TEXT_DIM)
    torch.manual_seed(seed + 2)
    stages = (True, True, True, False)  # the published VAE: patch 4 x 2^3 = 32 px, 2^3 = 8 frames per latent
    vae = AutoencoderKLLTXVideo(
        latent_channels=_LATENT_CHANNELS,
        block_out_channels=(8, 8, 8, 8),
        decoder_block_out_channels=(8, 8, 8, 8),
        layers_per_block=(1, 1, 1, 1, 1),
        decoder_layers_per_block=(1, 1, 1, 1, 1),
        spatio_temporal_scaling=stages,
        decoder_spatio_temporal_scaling=stages,
        decoder_inject_noise=(False,) * 5,
        upsample_residual=(False,) * 4,
        upsample_factor=(1,) * 4,
        patch_size=4,
        patch_size_t=1,
    )
    torch.manual_seed(seed + 3)
    transformer = LTXVideoTransformer3DModel(
        in_channels=_LATENT_CHANNELS,
        out_channels=_LATENT_CHANNELS,
        patch_size=1,
        patch_size_t=1,
        num_attention_heads=2,
        attention_head_dim=16,
        cross_attention_dim=32,  # attn2's keys come from caption_projection: the inner width
        num_layers=4,
        caption_channels=_TEXT_DIM,
    )
    # LTX-Video 0.9's scheduler settings (resolution-dependent shift, terminal sigma 0.1)
    scheduler = FlowMatchEulerDiscreteScheduler(
        use_dynamic_shifting=True,
        base_image_seq_len=1024,
        max_image_seq_len=4096,
        base_shift=0.95,
        max_shift=2.05,
        shift_terminal=0.1,
    )
    for module in (text_encoder, vae, transformer):
        module.eval()
    return LTXImageToVideoPipeline(
        scheduler=scheduler, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, transformer=transformer
    )


def save_tiny_pipeline(out: str | os.PathLike, seed: int = 0) -> Path:
    """Build and write the tiny pipeline (safetensors) with its ``layerscope_model.json``.

    Written to a hidden sibling and renamed, so an interrupted build never leaves a folder
    that looks like a finished model.
    """
    from layerscope_testbed.tiny_families import write_tiny_pipeline

    info = {
        "name": MODEL_NAME,
        "version": 1,
        "family": "ltx-video-i2v",
        "seed": seed,
        "weights": "random",
        "note": RANDOM_NOTE,
        "generation_defaults": GENERATION_DEFAULTS,
    }
    target = write_tiny_pipeline(out, build_tiny_pipeline(seed), info)
    return target


def build(out: Path, seed: int, condition_type: str | None) -> Path:
    """``testbed build-tiny --family ltx-video-i2v``.

    ``condition_type`` is ignored: LTX-Video has one image conditioning (the first latent
    frame), and the CLI passes its HunyuanVideo default to every family.
    """
    return save_tiny_pipeline(out, seed)
