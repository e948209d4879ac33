"""A tiny offline HunyuanVideo-I2V pipeline built from the real diffusers/transformers classes.

Why: the real checkpoint is 13B parameters behind a model hub this project never reaches,
yet the adapter's hardest parts (the templated LLaVA prompt, ``crop_start``, the image rows
kept by ``image_embed_interleave``, single-stream rows ``[visual; text]``, true CFG without
``cache_context``) only show up in the real code path.  This builder makes every
component at toy size (``LlavaForConditionalGeneration`` over a 2-layer ``LlamaConfig``
and a CLIP vision tower, ``CLIPTextModel``, ``AutoencoderKLHunyuanVideo``,
``HunyuanVideoTransformer3DModel`` with 2 double- and 4 single-stream blocks) and saves it
with ``save_pretrained``; it loads through ``layerscope record --model DIR`` like any
checkpoint.  Weights are random: the maps show the machinery, not semantics.

The Llama tokenizer is a byte-level BPE trained offline on a small corpus, with
Llama-3's header tokens (``<|start_header_id|>``, ``<|end_header_id|>``, ``<|eot_id|>``)
and an ``<image>`` token, so diffusers' template and crop logic run unchanged.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

CONDITION_TYPES = ("token_replace", "latent_concat")
MODEL_NAME = "layerscope-tiny-hunyuan-video-i2v-random"
RANDOM_NOTE = (
    "random weights: a tiny HunyuanVideo-I2V-architecture pipeline built offline from the real classes; "
    "its maps show the recording machinery, not learned semantics"
)
SPECIAL_TOKENS = ["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>", "<image>", "<pad>"]
_LLAMA_DIM = 32
_CLIP_TEXT_DIM = 24
_LATENT_CHANNELS = 4

_CORPUS = [
    "Describe the video by detailing the following aspects according to the reference image:",
    "1. The main content and theme of the video.",
    "2. The color, shape, size, texture, quantity, text, and spatial relationships of the objects.",
    "3. Actions, events, behaviors temporal relationships, physical movement changes of the objects.",
    "4. background environment, light, style and atmosphere.",
    "5. camera angles, movements, and transitions used in the video:",
    # Llama-3's role names are single tokens (they follow <|start_header_id|> with no space);
    # repeated so BPE merges them whole
    *["system", "user", "assistant"] * 4,
    "the red circle moves to the left while the blue square turns green",
    "a man raises his hand and the woman smiles at the camera",
    "the green triangle moves to the right and the yellow circle turns red",
    "the cat walks across the room and a dog runs in the park",
]


def build_llama_tokenizer() -> Any:
    """A Llama-3-shaped byte-level BPE fast tokenizer (offsets work, header tokens are special)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=1200,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_CORPUS, trainer=trainer)
    bos = tokenizer.token_to_id("<|begin_of_text|>")
    # Llama-3 prepends <|begin_of_text|>; offsets stay those of the text
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<|begin_of_text|> $A", special_tokens=[("<|begin_of_text|>", bos)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token="<|begin_of_text|>",
        eos_token="<|eot_id|>",
        pad_token="<pad>",
        model_max_length=1024,
    )


def build_clip_tokenizer() -> Any:
    """A word-level tokenizer for the pooled CLIP text encoder (``tokenizer_2``)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    words = sorted({w.strip(".,:").lower() for line in _CORPUS for w in line.split()} - {""})
    vocab = {"<pad>": 0, "<unk>": 1, "<start>": 2, "<end>": 3}
    for word in words:
        vocab.setdefault(word, len(vocab))
    tokenizer = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<start> $A <end>", special_tokens=[("<start>", 2), ("<end>", 3)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        pad_token="<pad>",
        unk_token="<unk>",
        bos_token="<start>",
        eos_token="<end>",
        model_max_length=77,
    )


def build_tiny_pipeline(condition_type: str = "token_replace", seed: int = 0, clip: Any = None) -> Any:
    """The tiny ``HunyuanVideoImageToVideoPipeline`` in memory, deterministic from ``seed``.

    ``token_replace`` (the released 16-channel weights: guidance embedding, first-frame rows
    with their own modulation) or ``latent_concat`` (33 channels: latents, image latents
    and a mask; no guidance embedding).  The LLaVA vision tower is the open_clip model's
    tower converted to transformers (``clip``), so Focal Guidance's CLIP and the text
    encoder's image rows see the same patches.
    """
    import torch
    from diffusers import (
        AutoencoderKLHunyuanVideo,
        FlowMatchEulerDiscreteScheduler,
        HunyuanVideoImageToVideoPipeline,
        HunyuanVideoTransformer3DModel,
    )
    from transformers import (
        CLIPImageProcessor,
        CLIPTextConfig,
        CLIPTextModel,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
    )

    from layerscope.clip import vision_tower_to_transformers
    from layerscope_testbed import _IMAGE_SIZE, build_default_clip

    if condition_type not in CONDITION_TYPES:
        raise ValueError(f"condition type {condition_type!r}; choose one of {', '.join(CONDITION_TYPES)}")
    tokenizer = build_llama_tokenizer()
    tokenizer_2 = build_clip_tokenizer()
    clip = clip if clip is not None else build_default_clip(seed)
    vision = vision_tower_to_transformers(clip)
    torch.manual_seed(seed)
    text_config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=_LLAMA_DIM,
        intermediate_size=64,
        num_hidden_layers=3,  # diffusers takes hidden_states[-3]
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    patches = (vision.config.image_size // vision.config.patch_size) ** 2
    llava_config = LlavaConfig(
        vision_config=vision.config.to_dict(),
        text_config=text_config.to_dict(),
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        image_seq_length=patches,
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
    )
    llava_config.pad_token_id = tokenizer.pad_token_id
    text_encoder = LlavaForConditionalGeneration(llava_config)
    tower = text_encoder.model.vision_tower
    tower.load_state_dict(vision.state_dict())
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": _IMAGE_SIZE}, crop_size={"height": _IMAGE_SIZE, "width": _IMAGE_SIZE}
    )
    torch.manual_seed(seed + 1)
    text_encoder_2 = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer_2),
            hidden_size=_CLIP_TEXT_DIM,
            intermediate_size=48,
            num_hidden_layers=1,
            num_attention_heads=2,
            max_position_embeddings=77,
            pad_token_id=0,
            bos_token_id=2,
            eos_token_id=3,
        )
    )
    torch.manual_seed(seed + 2)
    vae = AutoencoderKLHunyuanVideo(
        latent_channels=_LATENT_CHANNELS,
        block_out_channels=(8, 8, 16, 16),
        layers_per_block=1,
        norm_num_groups=4,
        mid_block_add_attention=False,
    )
    torch.manual_seed(seed + 3)
    transformer = HunyuanVideoTransformer3DModel(
        in_channels=_LATENT_CHANNELS if condition_type == "token_replace" else 2 * _LATENT_CHANNELS + 1,
        out_channels=_LATENT_CHANNELS,
        num_attention_heads=2,
        attention_head_dim=16,
        num_layers=2,
        num_single_layers=4,
        num_refiner_layers=1,
        patch_size=2,
        patch_size_t=1,
        guidance_embeds=condition_type == "token_replace",
        text_embed_dim=_LLAMA_DIM,
        pooled_projection_dim=_CLIP_TEXT_DIM,
        rope_axes_dim=(4, 6, 6),
        image_condition_type=condition_type,
    )
    return HunyuanVideoImageToVideoPipeline(
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        transformer=transformer,
        vae=vae,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=7.0),
        text_encoder_2=text_encoder_2,
        tokenizer_2=tokenizer_2,
        image_processor=image_processor,
    )


def save_tiny_pipeline(out: str | os.PathLike, condition_type: str = "token_replace", seed: int = 0) -> Path:
    """Build and write the tiny pipeline (safetensors) plus its open_clip model under ``clip/``.

    Written to a hidden sibling and renamed, so an interrupted build never leaves a folder
    that looks like a finished model.
    """
    from layerscope_testbed import build_default_clip
    from layerscope_testbed.tiny_families import write_tiny_pipeline

    clip = build_default_clip(seed)
    info = {
        "name": f"{MODEL_NAME}-{condition_type}",
        "version": 1,
        "family": "hunyuan-video-i2v",
        "condition_type": condition_type,
        "seed": seed,
        "weights": "random",
        "note": RANDOM_NOTE,
        # what `layerscope record --model DIR` uses when no size is given (CPU-sized)
        "record_defaults": {"steps": 4, "frames": 9, "height": 64, "width": 64},
    }
    pipe = build_tiny_pipeline(condition_type, seed=seed, clip=clip)
    target = write_tiny_pipeline(out, pipe, info, clip=clip)
    return target


def build_tiny(out: Path, seed: int, condition_type: str | None) -> Path:
    """``testbed build-tiny --family hunyuan-video-i2v`` (see :mod:`layerscope_testbed.tiny_families`)."""
    return save_tiny_pipeline(out, condition_type or "token_replace", seed=seed)
