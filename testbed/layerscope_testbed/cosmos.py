"""A tiny offline Cosmos-Predict2 Video2World pipeline built from the real diffusers/transformers classes.

Why: the published Cosmos-Predict2 checkpoints (2B, 14B) sit behind a model hub this
project never reaches, yet what the adapter depends on only shows up in the real code path:
``Cosmos2VideoToWorldPipeline`` pads the T5 prompt to 512 rows and *zeroes* the padding rows
after encoding (no attention mask reaches the transformer), runs classifier-free guidance as
two transformer calls per step (cond, then uncond, no ``cache_context``), and conditions on
the image through latent frame 0 (its own timestep and a ``condition_mask`` channel).
Every model component is the real class at toy size: ``CosmosTransformer3DModel`` (4 blocks,
width 32, the published patch (1, 2, 2) and 2B RoPE scale), ``AutoencoderKLWan`` with the
published strides (8x spatial, 4x temporal), ``T5EncoderModel`` over a 2-layer ``T5Config``
with the Wan testbed's offline T5-style tokenizer, and ``FlowMatchEulerDiscreteScheduler``
with Karras sigmas, as diffusers' conversion script saves it.

The safety checker: ``Cosmos2VideoToWorldPipeline.__init__`` replaces ``safety_checker=None``
with ``cosmos_guardrail.CosmosSafetyChecker()`` (an ImportError without that package, and it
fetches NVIDIA's guardrail models), and ``__call__`` refuses to run without one.  Neither
can happen offline, so this random-weight toy carries :class:`PassThroughSafetyChecker`
(a real ``ModelMixin`` saved with the pipeline, loaded by diffusers from this module): it
passes prompts and frames through unchanged.  It exists only for this toy; a real Cosmos
checkpoint keeps NVIDIA's guardrail (its licence forbids bypassing it) and LayerScope does
not touch it.  Weights are random: the maps show the machinery, not semantics.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config

MODEL_NAME = "layerscope-tiny-cosmos-predict2-video2world-random"
RANDOM_NOTE = (
    "random weights: a tiny Cosmos-Predict2-Video2World-architecture pipeline built offline from the real "
    "classes, with a pass-through safety checker; its maps show the recording machinery, not learned semantics"
)
_TEXT_DIM = 32
_Z_DIM = 8
#: CPU-sized generation: 9 frames -> 3 latent frames, 64 x 80 px / 16 -> a 4 x 5 token grid
GENERATION_DEFAULTS = {
    "record": {"steps": 3, "frames": 9, "height": 64, "width": 80},
    "bench": {"steps": 3, "frames": 9, "height": 64, "width": 80},
}


class PassThroughSafetyChecker(ModelMixin, ConfigMixin):
    """The toy pipeline's stand-in for ``cosmos_guardrail.CosmosSafetyChecker``: checks nothing.

    Same interface the pipeline calls (``check_text_safety``, ``check_video_safety``, ``to``);
    one zero buffer-like parameter so ``save_pretrained`` writes safetensors the loader accepts.
    """

    @register_to_config
    def __init__(self) -> None:
        import torch

        super().__init__()
        self.placeholder = torch.nn.Parameter(torch.zeros(1), requires_grad=False)

    def check_text_safety(self, prompt: str) -> bool:
        return True

    def check_video_safety(self, frames: Any) -> Any:
        return frames


def build_tiny_pipeline(seed: int = 0) -> Any:
    """The tiny ``Cosmos2VideoToWorldPipeline`` in memory, deterministic from ``seed``."""
    import torch
    from diffusers import (
        AutoencoderKLWan,
        Cosmos2VideoToWorldPipeline,
        CosmosTransformer3DModel,
        FlowMatchEulerDiscreteScheduler,
    )

    from layerscope_testbed import _build_tokenizer
    from layerscope_testbed.tiny_families import tiny_t5_encoder

    tokenizer = _build_tokenizer()
    torch.manual_seed(seed)
    text_encoder = tiny_t5_encoder(tokenizer, _TEXT_DIM)
    torch.manual_seed(seed + 2)
    # the Wan2.1 VAE's strides (what the published pipeline loads): 2^3 = 8 px, 2^2 = 4 frames per latent
    vae = AutoencoderKLWan(
        base_dim=16,
        z_dim=_Z_DIM,
        dim_mult=[1, 2, 2, 2],
        num_res_blocks=1,
        temperal_downsample=[False, True, True],
        latents_mean=[0.0] * _Z_DIM,
        latents_std=[1.0] * _Z_DIM,
    )
    torch.manual_seed(seed + 3)
    transformer = CosmosTransformer3DModel(
        in_channels=_Z_DIM + 1,  # the latents plus the pipeline's condition_mask channel
        out_channels=_Z_DIM,
        num_attention_heads=2,
        attention_head_dim=16,
        num_layers=4,
        mlp_ratio=2.0,
        text_embed_dim=_TEXT_DIM,  # attn2's keys and values are T5 rows, no caption projection
        adaln_lora_dim=16,
        max_size=(32, 64, 64),
        patch_size=(1, 2, 2),
        rope_scale=(1.0, 3.0, 3.0),  # Cosmos-2.0-Diffusion-2B-Video2World
        concat_padding_mask=True,
        extra_pos_embed_type=None,
    )
    scheduler = FlowMatchEulerDiscreteScheduler(use_karras_sigmas=True)  # as convert_cosmos_to_diffusers.py saves it
    for module in (text_encoder, vae, transformer):
        module.eval()
    return Cosmos2VideoToWorldPipeline(
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        transformer=transformer,
        vae=vae,
        scheduler=scheduler,
        safety_checker=PassThroughSafetyChecker(),
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
        "family": "cosmos-predict2-video2world",
        "seed": seed,
        "weights": "random",
        "note": RANDOM_NOTE,
        "generation_defaults": GENERATION_DEFAULTS,
    }
    target = write_tiny_pipeline(out, build_tiny_pipeline(seed), info)
    return target


def build(out: Path, seed: int, condition_type: str | None) -> Path:
    """``testbed build-tiny --family cosmos-predict2-video2world``.

    ``condition_type`` is ignored: Cosmos-Predict2 conditions on the image one way (latent
    frame 0), and the CLI passes its HunyuanVideo default to every family.
    """
    return save_tiny_pipeline(out, seed)
