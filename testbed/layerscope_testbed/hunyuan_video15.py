"""A tiny offline HunyuanVideo-1.5 I2V pipeline built from the real diffusers/transformers classes.

Why: the released checkpoints (8.3B transformer, Qwen2.5-VL-7B, byT5, SigLIP) sit behind a
model hub this project never reaches, yet the adapter's hard parts only show up in the real
code path: the Qwen chat template cropped at a *hardcoded* ``crop_start=108``, the byT5
glyph rows and SigLIP image rows that the transformer puts before the prompt rows, the
guider component instead of a ``guidance_scale`` argument, and a video size the pipeline
picks itself from the image's aspect ratio and ``target_size``.  Every component is the
class the pipeline declares, at toy size: ``Qwen2_5_VLTextModel`` (3 layers; diffusers reads
``hidden_states[-3]``), ``Qwen2Tokenizer``, ``T5EncoderModel`` with the (file-free)
``ByT5Tokenizer``, ``SiglipVisionModel`` with ``SiglipImageProcessor``,
``AutoencoderKLHunyuanVideo15`` (strides 16 and 4), ``HunyuanVideo15Transformer3DModel``
(4 double-stream blocks), ``FlowMatchEulerDiscreteScheduler`` and ``ClassifierFreeGuidance``.
Weights are random: the maps show the machinery, not semantics.

The Qwen tokenizer is a byte-level BPE with Qwen2's pre-tokenizer, trained offline on the
pipeline's own system message; its vocabulary size is chosen so that the chat template's
head is exactly the 108 tokens diffusers crops (the released tokenizer's count), so the
pipeline's crop runs unchanged and the adapter's check of it is exercised.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

MODEL_NAME = "layerscope-tiny-hunyuan-video-1.5-i2v-random"
MODEL_VERSION = 1
RANDOM_NOTE = (
    "random weights: a tiny HunyuanVideo-1.5-I2V-architecture pipeline built offline from the real classes; "
    "its maps show the recording machinery, not learned semantics"
)
#: the transformer's ``target_size``: square images give 128 x 128 videos (8 x 8 tokens)
TARGET_SIZE = 128
GENERATION_DEFAULTS = {
    "record": {"steps": 3, "frames": 5, "height": TARGET_SIZE, "width": TARGET_SIZE},
    "bench": {"steps": 4, "frames": 5, "height": TARGET_SIZE, "width": TARGET_SIZE},
}
#: Qwen2's pre-tokenizer split (its tokenizer.json), then byte-level
QWEN_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
#: Qwen2.5's chat template for string contents (the released one also handles images and tools)
CHAT_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + "
    "'<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
_CORPUS_EXTRA = [
    "system",
    "user",
    "assistant",
    "the red circle moves to the left while the blue square turns green",
    "the green triangle moves to the right and the yellow circle turns red",
    "a man raises his hand and the woman smiles at the camera",
    "the cat walks across the room and a dog runs in the park",
]
_QWEN_DIM = 32
_BYT5_DIM = 16
_SIGLIP_DIM = 24
_LATENT_CHANNELS = 4


def _qwen_tokenizer_with(vocab_size: int, corpus: list[str]) -> Any:
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers, trainers
    from transformers import Qwen2Tokenizer

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN_PATTERN), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=SPECIAL_TOKENS,
        show_progress=False,
    )
    tokenizer.train_from_iterator(corpus, trainer=trainer)
    model = json.loads(tokenizer.to_str())["model"]
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in model["merges"]]
    qwen = Qwen2Tokenizer(vocab=model["vocab"], merges=merges, model_max_length=2048)
    qwen.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    qwen.chat_template = CHAT_TEMPLATE
    return qwen


def template_head_tokens(tokenizer: Any, system: str) -> int:
    """Tokens of the chat template before the user's prompt (what diffusers' ``crop_start`` must be)."""
    from diffusers.pipelines.hunyuan_video1_5.pipeline_hunyuan_video1_5_image2video import format_text_input

    marker = "\x00"
    text = tokenizer.apply_chat_template(
        format_text_input([marker], system), add_generation_prompt=True, tokenize=False
    )
    text = text[0] if isinstance(text, list) else text
    return len(tokenizer(text[: text.index(marker)], add_special_tokens=False)["input_ids"])


def build_qwen_tokenizer(system: str, crop_start: int = 108) -> Any:
    """A ``Qwen2Tokenizer`` whose chat-template head is exactly ``crop_start`` tokens.

    The head's token count falls as the BPE vocabulary grows; the smallest vocabulary that
    gives ``crop_start`` is taken (deterministic for a given ``tokenizers`` version).
    """
    corpus = [system, *_CORPUS_EXTRA]
    for vocab_size in range(300, 1200):
        tokenizer = _qwen_tokenizer_with(vocab_size, corpus)
        count = template_head_tokens(tokenizer, system)
        if count == crop_start:
            return tokenizer
        if count < crop_start:
            break
    raise RuntimeError(f"no BPE vocabulary gives a {crop_start}-token template head (last: {count} tokens)")


def build_pipeline(seed: int = 0) -> Any:
    """The tiny ``HunyuanVideo15ImageToVideoPipeline`` in memory, deterministic from ``seed``."""
    import torch
    from diffusers import (
        AutoencoderKLHunyuanVideo15,
        ClassifierFreeGuidance,
        FlowMatchEulerDiscreteScheduler,
        HunyuanVideo15ImageToVideoPipeline,
        HunyuanVideo15Transformer3DModel,
    )
    from transformers import (
        ByT5Tokenizer,
        Qwen2_5_VLTextConfig,
        Qwen2_5_VLTextModel,
        SiglipImageProcessor,
        SiglipVisionConfig,
        SiglipVisionModel,
        T5Config,
        T5EncoderModel,
    )

    system = _pipeline_system_message()
    tokenizer = build_qwen_tokenizer(system)
    tokenizer_2 = ByT5Tokenizer()
    torch.manual_seed(seed)
    text_encoder = Qwen2_5_VLTextModel(
        Qwen2_5_VLTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=_QWEN_DIM,
            intermediate_size=64,
            num_hidden_layers=3,  # diffusers reads hidden_states[-3]
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=2048,
            rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [1, 1, 2]},
            bos_token_id=None,
            eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"),
            pad_token_id=tokenizer.pad_token_id,
        )
    )
    torch.manual_seed(seed + 1)
    text_encoder_2 = T5EncoderModel(
        T5Config(
            vocab_size=len(tokenizer_2),
            d_model=_BYT5_DIM,
            d_kv=8,
            d_ff=32,
            num_layers=1,
            num_heads=2,
            relative_attention_num_buckets=8,
            pad_token_id=tokenizer_2.pad_token_id,
            eos_token_id=tokenizer_2.eos_token_id,
            decoder_start_token_id=tokenizer_2.pad_token_id,
        )
    )
    torch.manual_seed(seed + 2)
    image_encoder = SiglipVisionModel(
        SiglipVisionConfig(
            hidden_size=_SIGLIP_DIM,
            intermediate_size=48,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=64,
            patch_size=16,  # 16 image rows (the released SigLIP: 384 / 14 -> 729)
        )
    )
    feature_extractor = SiglipImageProcessor(size={"height": 64, "width": 64})
    torch.manual_seed(seed + 3)
    vae = AutoencoderKLHunyuanVideo15(
        latent_channels=_LATENT_CHANNELS,
        block_out_channels=(8, 8, 16, 16, 16),
        layers_per_block=1,
        spatial_compression_ratio=16,
        temporal_compression_ratio=4,
    )
    torch.manual_seed(seed + 4)
    transformer = HunyuanVideo15Transformer3DModel(
        in_channels=2 * _LATENT_CHANNELS + 1,  # [latents; image latent on frame 0; mask]
        out_channels=_LATENT_CHANNELS,
        num_attention_heads=2,
        attention_head_dim=16,
        num_layers=4,
        num_refiner_layers=1,
        mlp_ratio=2.0,
        patch_size=1,
        patch_size_t=1,
        text_embed_dim=_QWEN_DIM,
        text_embed_2_dim=_BYT5_DIM,
        image_embed_dim=_SIGLIP_DIM,
        rope_axes_dim=(4, 6, 6),
        target_size=TARGET_SIZE,
        task_type="i2v",
    )
    for module in (text_encoder, text_encoder_2, image_encoder, vae, transformer):
        module.eval()
    return HunyuanVideo15ImageToVideoPipeline(
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        transformer=transformer,
        vae=vae,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=5.0),
        text_encoder_2=text_encoder_2,
        tokenizer_2=tokenizer_2,
        guider=ClassifierFreeGuidance(guidance_scale=6.0),
        image_encoder=image_encoder,
        feature_extractor=feature_extractor,
    )


def _pipeline_system_message() -> str:
    """diffusers' system message (the default of its prompt encoder; ``__init__`` sets the same text)."""
    import inspect

    from diffusers import HunyuanVideo15ImageToVideoPipeline

    signature = inspect.signature(HunyuanVideo15ImageToVideoPipeline._get_mllm_prompt_embeds)
    return signature.parameters["system_message"].default


def build(out: Path, seed: int, condition_type: str | None) -> Path:
    """``testbed build-tiny --family hunyuan-video-1.5-i2v``: write the pipeline atomically.

    ``condition_type`` is ignored (the I2V checkpoints have one conditioning: latents, the
    image latent and a mask on channels, plus SigLIP rows in the text sequence).  ``clip/``
    holds an open_clip model for Focal Guidance's keyword selection (Eq. 6): SigLIP's patch
    tokens have no joint-space projection, so FG uses a separate CLIP
    (:mod:`fg_intervene.hunyuan_video15`, deviation D4).
    """
    from layerscope_testbed import build_default_clip
    from layerscope_testbed.tiny_families import write_tiny_pipeline

    info = {
        "name": MODEL_NAME,
        "version": MODEL_VERSION,
        "family": "hunyuan-video-1.5-i2v",
        "seed": seed,
        "weights": "random",
        "note": RANDOM_NOTE,
        "generation_defaults": GENERATION_DEFAULTS,
    }
    target = write_tiny_pipeline(out, build_pipeline(seed), info, clip=build_default_clip(seed))
    return target
