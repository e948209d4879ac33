"""A tiny offline CogVideoX-I2V pipeline built from the real diffusers/transformers classes.

Why: the adapter's load-bearing facts (text rows first in the joint sequence, norms over
(B, H, S, d), the rotary embedding on visual rows only, CFG batched as ``[uncond; cond]``
in one call, CogVideoX1.5's temporal patching) only show up in diffusers' own code path.
This builder makes each component at toy size (``CogVideoXTransformer3DModel`` with 4
blocks, ``AutoencoderKLCogVideoX`` with strides 8/4, ``T5EncoderModel`` over a 2-layer
``T5Config`` with the testbed's offline SentencePiece-style T5 tokenizer,
``CogVideoXDDIMScheduler``) and saves it with ``save_pretrained``; it loads through
``layerscope record --model DIR`` like a checkpoint.  Weights are random: maps show the
machinery, not semantics.

Two variants: ``"1.0"`` is CogVideoX-5b-I2V's layout (rotary and *learned* positional
embeddings, so the size is fixed at ``sample_height`` x ``sample_width`` latents: 64x64
pixels here); ``"1.5"`` is CogVideoX1.5-5B-I2V's (``patch_size_t`` 2, an ``ofs``
embedding, any size).  ``build-tiny`` writes ``1.0``; CogVideoX conditions on the image
by latent concatenation only, so ``--condition-type`` has nothing to choose.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

VERSIONS = ("1.0", "1.5")
MODEL_NAME = "layerscope-tiny-cogvideox-i2v-random"
RANDOM_NOTE = (
    "random weights: a tiny CogVideoX-I2V-architecture pipeline built offline from the real classes; "
    "its maps show the recording machinery, not learned semantics"
)
#: pixels of the 1.0 variant's fixed size (learned positional embeddings over 8x8 latents)
SIZE = 64
_T5_DIM = 32
_LATENT = 4
#: CPU-sized generation for ``record``/``bench`` on this model (``layerscope_model.json``)
GENERATION_DEFAULTS = {
    "record": {"steps": 3, "frames": 9, "height": SIZE, "width": SIZE},
    "bench": {"steps": 3, "frames": 9, "height": SIZE, "width": SIZE},
}


def build_tiny_pipeline(version: str = "1.0", seed: int = 0) -> Any:
    """The tiny ``CogVideoXImageToVideoPipeline`` in memory, deterministic from ``seed``."""
    import torch
    from diffusers import (
        AutoencoderKLCogVideoX,
        CogVideoXDDIMScheduler,
        CogVideoXImageToVideoPipeline,
        CogVideoXTransformer3DModel,
    )

    from layerscope_testbed import _build_tokenizer
    from layerscope_testbed.tiny_families import tiny_t5_encoder

    if version not in VERSIONS:
        raise ValueError(f"CogVideoX version {version!r}; choose one of {', '.join(VERSIONS)}")
    tokenizer = _build_tokenizer()
    torch.manual_seed(seed)
    text_encoder = tiny_t5_encoder(tokenizer, _T5_DIM)
    torch.manual_seed(seed + 1)
    vae = AutoencoderKLCogVideoX(
        block_out_channels=(8, 8, 16, 16),  # 4 blocks: spatial stride 8
        latent_channels=_LATENT,
        layers_per_block=1,
        norm_num_groups=4,
        temporal_compression_ratio=4,
        sample_height=SIZE,
        sample_width=SIZE,
    )
    torch.manual_seed(seed + 2)
    # 1.0: the learned embeddings' fixed size; 1.5: the rotary grid's largest size (128 px)
    latent_size = SIZE // 8 if version == "1.0" else 2 * SIZE // 8
    transformer = CogVideoXTransformer3DModel(
        num_attention_heads=2,
        attention_head_dim=16,
        in_channels=2 * _LATENT,  # noisy latents + the image latent, concatenated on channels
        out_channels=_LATENT,
        time_embed_dim=32,
        ofs_embed_dim=32 if version == "1.5" else None,
        text_embed_dim=_T5_DIM,
        num_layers=4,
        sample_width=latent_size,
        sample_height=latent_size,
        sample_frames=9,
        patch_size=2,
        patch_size_t=2 if version == "1.5" else None,
        max_text_seq_length=226,
        use_rotary_positional_embeddings=True,
        use_learned_positional_embeddings=version == "1.0",
    )
    scheduler = CogVideoXDDIMScheduler(
        beta_schedule="scaled_linear",
        prediction_type="v_prediction",
        timestep_spacing="trailing",
        rescale_betas_zero_snr=True,
        clip_sample=False,
        set_alpha_to_one=True,
    )
    for module in (text_encoder, vae, transformer):
        module.eval()
    return CogVideoXImageToVideoPipeline(
        tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, transformer=transformer, scheduler=scheduler
    )


def save_tiny_pipeline(out: str | os.PathLike, version: str = "1.0", seed: int = 0) -> Path:
    """Build and write the tiny pipeline (safetensors) and its ``layerscope_model.json``.

    Written to a hidden sibling and renamed, so an interrupted build never leaves a folder
    that looks like a finished model.
    """

    from layerscope_testbed.tiny_families import write_tiny_pipeline

    info = {
        "name": f"{MODEL_NAME}-{version}",
        "version": 1,
        "family": "cogvideox-i2v",
        "cogvideox_version": version,
        "seed": seed,
        "weights": "random",
        "note": RANDOM_NOTE,
        "generation_defaults": GENERATION_DEFAULTS,
    }
    target = write_tiny_pipeline(out, build_tiny_pipeline(version, seed=seed), info)
    return target


def build(out: Path, seed: int, condition_type: str | None) -> Path:
    """``testbed build-tiny --family cogvideox-i2v`` (see :mod:`layerscope_testbed.tiny_families`).

    ``condition_type`` is ignored: CogVideoX-I2V has one image conditioning (latent channels).
    """
    return save_tiny_pipeline(out, "1.0", seed=seed)
