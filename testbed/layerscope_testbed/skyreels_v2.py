"""A tiny offline SkyReels-V2-I2V pipeline built from the real diffusers classes.

Why it reuses the Wan tiny model: SkyReels-V2-I2V is Wan2.1-I2V's architecture (same
UMT5 text encoder, CLIP image encoder, Wan VAE, and a transformer whose blocks are Wan's
under another name).  So the tokenizer, text encoder, VAE and CLIP come from
:func:`layerscope_testbed.build_default_pipeline`, and ``SkyReelsV2Transformer3DModel``
is built with the Wan tiny transformer's configuration and *loads its weights strictly*:
a renamed or reshaped parameter in a future diffusers fails the build instead of
silently differing.  What is SkyReels' own: the pipeline class, the transformer class,
``CLIPVisionModelWithProjection`` as image encoder and ``CLIPProcessor`` as its
processor (the classes the pipeline declares; it reads the encoder's penultimate hidden
states, so the projection is unused) and the UniPC flow-matching scheduler.  Weights
are random: the maps show the machinery.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

MODEL_NAME = "layerscope-tiny-skyreels-v2-i2v-random"
MODEL_VERSION = 1
RANDOM_NOTE = (
    "random weights: a tiny SkyReels-V2-I2V-architecture pipeline built offline from the real classes "
    "(the Wan tiny model's weights); its maps show the recording machinery, not learned semantics"
)
#: CPU-sized settings (8x8 tokens per latent frame) read by record/bench when none are given.
GENERATION_DEFAULTS = {
    "record": {"steps": 3, "frames": 5, "height": 128, "width": 128},
    "bench": {"steps": 4, "frames": 5, "height": 128, "width": 128},
}


def _with_projection(vision: Any) -> Any:
    """The same vision tower as ``CLIPVisionModelWithProjection`` (what SkyReels-V2 ships)."""
    from transformers import CLIPVisionModelWithProjection

    model = CLIPVisionModelWithProjection(vision.config)
    model.vision_model.load_state_dict(vision.state_dict(), strict=True)
    return model.eval()


def _clip_processor(image_processor: Any) -> Any:
    """``CLIPProcessor`` (the class the pipeline declares) around the Wan model's image processor.

    The pipeline only ever calls it with ``images=``, so its tokenizer is a letters-only BPE
    written in memory (offline); it exists so that loading names no type mismatch.
    """
    import string

    from transformers import CLIPProcessor, CLIPTokenizer

    vocab: dict[str, int] = {}
    for letter in string.ascii_lowercase:
        vocab.setdefault(letter, len(vocab))
        vocab.setdefault(f"{letter}</w>", len(vocab))
    for special in ("<|startoftext|>", "<|endoftext|>"):
        vocab[special] = len(vocab)
    return CLIPProcessor(image_processor=image_processor, tokenizer=CLIPTokenizer(vocab=vocab, merges=[]))


def build_pipeline(seed: int = 0, clip: Any = None) -> Any:
    """The tiny ``SkyReelsV2ImageToVideoPipeline`` in memory, deterministic from ``seed``."""
    import inspect

    from diffusers import SkyReelsV2ImageToVideoPipeline, SkyReelsV2Transformer3DModel, UniPCMultistepScheduler

    from layerscope_testbed import build_default_pipeline

    wan = build_default_pipeline(seed, clip=clip)
    accepted = inspect.signature(SkyReelsV2Transformer3DModel.__init__).parameters
    config = {key: value for key, value in wan.transformer.config.items() if key in accepted}
    transformer = SkyReelsV2Transformer3DModel(**config)
    transformer.load_state_dict(wan.transformer.state_dict(), strict=True)
    scheduler = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=5.0)
    return SkyReelsV2ImageToVideoPipeline(
        tokenizer=wan.tokenizer,
        text_encoder=wan.text_encoder,
        image_encoder=_with_projection(wan.image_encoder),
        image_processor=_clip_processor(wan.image_processor),
        transformer=transformer.eval(),
        vae=wan.vae,
        scheduler=scheduler,
    )


def build(out: Path, seed: int, condition_type: str | None) -> Path:
    """``testbed build-tiny --family skyreels-v2-i2v``: write the pipeline and its open_clip model.

    ``condition_type`` is ignored (SkyReels-V2-I2V has one conditioning: Wan's channel
    concatenation).  Written to a hidden sibling and renamed, so an interrupted build never
    leaves a folder that looks like a finished model.
    """
    from layerscope_testbed import build_default_clip
    from layerscope_testbed.tiny_families import write_tiny_pipeline

    clip = build_default_clip(seed)
    info = {
        "name": MODEL_NAME,
        "version": MODEL_VERSION,
        "family": "skyreels-v2-i2v",
        "seed": seed,
        "weights": "random",
        "note": RANDOM_NOTE,
        "generation_defaults": GENERATION_DEFAULTS,
    }
    target = write_tiny_pipeline(out, build_pipeline(seed, clip=clip), info, clip=clip)
    return target
