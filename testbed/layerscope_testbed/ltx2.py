"""A tiny offline LTX-2 image-to-video pipeline built from the real diffusers/transformers classes.

Why: LTX-2's checkpoint is a 19B audio-video transformer plus Gemma-3-12B behind a model hub
this project never reaches, yet what the adapter depends on only shows up in the real code
path: ``LTX2ImageToVideoPipeline`` left-pads the Gemma prompt to 1024 tokens, stacks every
Gemma layer's hidden states, and ``LTX2TextConnectors`` moves the valid rows to the front and
fills the tail with learned registers before the transformer's ``attn2`` sees them; classifier-
free guidance is one batched call (``[uncond; cond]`` rows) and the image is latent frame 0.
Every component is the real class at toy size, shaped as the published LTX-2.0 pipeline is
(``scripts/convert_ltx2_to_diffusers.py``, version ``2.0``):

* ``GemmaTokenizer`` (byte-fallback BPE, spaces normalised to ``▁``, ``<bos>`` prepended, left
  padding) over a small vocabulary trained here, so prompts tokenize as Gemma's do;
* ``Gemma3ForConditionalGeneration`` (2 text layers, width 32, a tiny SigLIP tower the
  pipeline never calls): the pipeline stacks its 3 hidden states (embeddings + 2 layers);
* ``LTX2TextConnectors`` with 128 learned registers per connector (as published), so the
  row reordering the keyword rows rely on runs for real; ``text_proj_in_factor`` 3;
* ``LTX2VideoTransformer3DModel`` (4 blocks, video width 32, audio width 16, split RoPE);
* ``AutoencoderKLLTX2Video`` with the published down/up-sampling layout (patch 4, then
  spatial, temporal and two spatiotemporal stages: 32 px and 8 frames per latent);
* ``AutoencoderKLLTX2Audio`` and ``LTX2Vocoder`` at the sizes of diffusers' own fast tests;
* ``FlowMatchEulerDiscreteScheduler`` with the published non-distilled shift settings.

Saved with ``save_pretrained``, it loads through ``layerscope record --model DIR``.  Weights
are random: the maps show the machinery, not semantics.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

MODEL_NAME = "layerscope-tiny-ltx2-i2v-random"
RANDOM_NOTE = (
    "random weights: a tiny LTX-2-I2V-architecture pipeline built offline from the real classes; "
    "its maps show the recording machinery, not learned semantics"
)
_TEXT_DIM = 32
_TEXT_LAYERS = 2
_LATENT_CHANNELS = 8
_REGISTERS = 128  # published: 128 learned registers per connector (1024 rows = 8 repeats)
#: CPU-sized generation: 9 frames -> 2 latent frames, 160 px / 32 -> a 5 x 5 token grid
GENERATION_DEFAULTS = {
    "record": {"steps": 2, "frames": 9, "height": 160, "width": 160},
    "bench": {"steps": 2, "frames": 9, "height": 160, "width": 160},
}
_CORPUS = [
    "the red circle moves to the left and the blue square jumps to the right.",
    "a green triangle rotates slowly while the yellow star grows bigger",
    "the cat walks across the room and a dog runs in the park",
    "a man raises his hand and the woman smiles at the camera.",
    "the purple circle shrinks, the orange square bounces up and down",
    "two shapes move toward each other on a white background",
]


def build_gemma_tokenizer() -> Any:
    """A ``GemmaTokenizer`` shaped as Gemma 3's: byte-fallback BPE, ``▁`` for spaces, ``<bos>`` first.

    The vocabulary is trained here on a small corpus, splitting at ``▁`` and punctuation so
    no merge crosses a word (Gemma's SentencePiece vocabulary has none either); the
    tokenizer itself is transformers' ``GemmaTokenizer`` with that vocabulary, so its
    normaliser, padding side (left) and special tokens are the real class's.
    """
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
    from transformers import GemmaTokenizer

    trainer_side = Tokenizer(models.BPE(byte_fallback=True, unk_token="<unk>"))
    trainer_side.normalizer = normalizers.Replace(" ", "▁")
    trainer_side.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Split("▁", behavior="merged_with_next"), pre_tokenizers.Punctuation()]
    )
    specials = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>"] + [f"<0x{i:02X}>" for i in range(256)]
    trainer = trainers.BpeTrainer(vocab_size=460, special_tokens=specials, initial_alphabet=["▁"], show_progress=False)
    trainer_side.train_from_iterator(_CORPUS, trainer=trainer)
    model = json.loads(trainer_side.to_str())["model"]
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in model["merges"]]
    return GemmaTokenizer(
        vocab=model["vocab"], merges=merges, model_max_length=1024, add_bos_token=True, add_eos_token=False
    )


def build_tiny_pipeline(seed: int = 0) -> Any:
    """The tiny ``LTX2ImageToVideoPipeline`` in memory, deterministic from ``seed``."""
    import torch
    from diffusers import (
        AutoencoderKLLTX2Audio,
        AutoencoderKLLTX2Video,
        FlowMatchEulerDiscreteScheduler,
        LTX2ImageToVideoPipeline,
        LTX2VideoTransformer3DModel,
    )
    from diffusers.pipelines.ltx2 import LTX2TextConnectors
    from diffusers.pipelines.ltx2.vocoder import LTX2Vocoder
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration

    tokenizer = build_gemma_tokenizer()
    torch.manual_seed(seed)
    text_encoder = Gemma3ForConditionalGeneration(
        Gemma3Config(
            text_config={
                "vocab_size": len(tokenizer),
                "hidden_size": _TEXT_DIM,
                "intermediate_size": 64,
                "num_hidden_layers": _TEXT_LAYERS,
                "num_attention_heads": 2,
                "num_key_value_heads": 1,
                "head_dim": 16,
                "query_pre_attn_scalar": 16,
                "max_position_embeddings": 2048,
                "sliding_window": 512,
                "pad_token_id": tokenizer.pad_token_id,
                "bos_token_id": tokenizer.bos_token_id,
                "eos_token_id": tokenizer.eos_token_id,
            },
            # never run by the pipeline (no images reach the text encoder), but part of the class
            vision_config={
                "hidden_size": 16,
                "intermediate_size": 32,
                "num_hidden_layers": 1,
                "num_attention_heads": 2,
                "image_size": 16,
                "patch_size": 4,
            },
            mm_tokens_per_image=4,
            boi_token_index=tokenizer.bos_token_id,
            eoi_token_index=tokenizer.eos_token_id,
            image_token_index=len(tokenizer) + 1,
        )
    )
    torch.manual_seed(seed + 1)
    connectors = LTX2TextConnectors(
        caption_channels=_TEXT_DIM,
        text_proj_in_factor=_TEXT_LAYERS + 1,  # embeddings + every layer, as 49 = 48 + 1 for Gemma-3-12B
        video_connector_num_attention_heads=2,
        video_connector_attention_head_dim=16,
        video_connector_num_layers=1,
        video_connector_num_learnable_registers=_REGISTERS,
        audio_connector_num_attention_heads=2,
        audio_connector_attention_head_dim=16,
        audio_connector_num_layers=1,
        audio_connector_num_learnable_registers=_REGISTERS,
        connector_rope_base_seq_len=4096,
        rope_type="split",
    )
    torch.manual_seed(seed + 2)
    vae = AutoencoderKLLTX2Video(
        latent_channels=_LATENT_CHANNELS,
        block_out_channels=(8, 8, 8, 8),
        decoder_block_out_channels=(8, 16, 32),  # doubling per stage, as published (256, 512, 1024)
        layers_per_block=(1, 1, 1, 1, 1),
        decoder_layers_per_block=(1, 1, 1, 1),
        spatial_compression_ratio=32,
        temporal_compression_ratio=8,
        decoder_causal=False,
    )
    torch.manual_seed(seed + 3)
    audio_vae = AutoencoderKLLTX2Audio(
        base_channels=4,
        output_channels=2,
        ch_mult=(1,),
        num_res_blocks=1,
        attn_resolutions=None,
        in_channels=2,
        resolution=32,
        latent_channels=2,
        norm_type="pixel",
        causality_axis="height",
        dropout=0.0,
        mid_block_add_attention=False,
        sample_rate=16000,
        mel_hop_length=160,
        is_causal=True,
        mel_bins=8,
    )
    torch.manual_seed(seed + 4)
    vocoder = LTX2Vocoder(
        in_channels=audio_vae.config.output_channels * audio_vae.config.mel_bins,
        hidden_channels=16,
        out_channels=2,
        upsample_kernel_sizes=[4, 4],
        upsample_factors=[2, 2],
        resnet_kernel_sizes=[3],
        resnet_dilations=[[1, 3, 5]],
        leaky_relu_negative_slope=0.1,
        output_sampling_rate=16000,
    )
    latent_mel_bins = audio_vae.config.mel_bins // audio_vae.mel_compression_ratio
    torch.manual_seed(seed + 5)
    transformer = LTX2VideoTransformer3DModel(
        in_channels=_LATENT_CHANNELS,
        out_channels=_LATENT_CHANNELS,
        patch_size=1,
        patch_size_t=1,
        num_attention_heads=2,
        attention_head_dim=16,
        cross_attention_dim=32,  # attn2's keys come from caption_projection: the inner width (4096 published)
        audio_in_channels=audio_vae.config.latent_channels * latent_mel_bins,
        audio_out_channels=audio_vae.config.latent_channels * latent_mel_bins,
        audio_num_attention_heads=2,
        audio_attention_head_dim=8,
        audio_cross_attention_dim=16,
        num_layers=4,
        caption_channels=_TEXT_DIM,
        rope_type="split",
    )
    # LTX-2.0's non-distilled scheduler (resolution-dependent shift, terminal sigma 0.1)
    scheduler = FlowMatchEulerDiscreteScheduler(
        use_dynamic_shifting=True,
        base_shift=0.95,
        max_shift=2.05,
        base_image_seq_len=1024,
        max_image_seq_len=4096,
        shift_terminal=0.1,
    )
    for module in (text_encoder, connectors, vae, audio_vae, vocoder, transformer):
        module.eval()
    return LTX2ImageToVideoPipeline(
        scheduler=scheduler,
        vae=vae,
        audio_vae=audio_vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        connectors=connectors,
        transformer=transformer,
        vocoder=vocoder,
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
        "family": "ltx-2-i2v",
        "seed": seed,
        "weights": "random",
        "note": RANDOM_NOTE,
        "generation_defaults": GENERATION_DEFAULTS,
    }
    target = write_tiny_pipeline(out, build_tiny_pipeline(seed), info)
    return target


def build(out: Path, seed: int, condition_type: str | None) -> Path:
    """``testbed build-tiny --family ltx-2-i2v``.

    ``condition_type`` is ignored: LTX-2 has one image conditioning (latent frame 0), and the
    CLI passes its HunyuanVideo default to every family.
    """
    return save_tiny_pipeline(out, seed)
