"""The embedded models: tiny Wan2.1-architecture image-to-video pipelines.

No model hub is reachable from the machines this project runs on, so LayerScope's models
are built from the *real* diffusers/transformers classes at small sizes
(``WanImageToVideoPipeline``, ``WanTransformer3DModel`` with the image-context branch,
``AutoencoderKLWan``, ``UMT5EncoderModel`` with a SentencePiece-style Unigram tokenizer,
``CLIPVisionModel``, ``FlowMatchEulerDiscreteScheduler``):

* ``--model default``: the *trained* shapes-world model shipped in
  ``testbed/layerscope_testbed/models/shapes-wan-i2v`` (see its ``MODEL_CARD.md``;
  :mod:`layerscope_testbed.shapes.train` made it);
* ``--model random``: the same architecture family with random weights, deterministic
  from a seed, for fast tests.  It is written once with ``save_pretrained``
  (safetensors) into a cache directory; every store and report made with it says so
  through :data:`RANDOM_WEIGHTS_NOTE`.

Both are loaded through ``from_pretrained(local_dir)``, the code path a real checkpoint takes.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from layerscope.clip import CLIP_SUBFOLDER
from layerscope.loading import MODEL_INFO_FILE, model_info  # noqa: F401  (re-exported for the testbed's users)

DEFAULT_MODEL_NAME = "layerscope-tiny-wan-i2v-random"
TRAINED_MODEL_NAME = "layerscope-shapes-wan-i2v"
#: Bump when the architecture or the build recipe changes, so caches are rebuilt.
DEFAULT_MODEL_VERSION = 2
DEFAULT_SEED = 0
RANDOM_WEIGHTS_NOTE = (
    "random weights: the built-in tiny Wan-architecture model is untrained, so its maps "
    "show the recording machinery, not learned semantics"
)

# The default example the CLI uses when no --image/--prompt/--keywords are given.
EXAMPLE_PROMPT = "the red circle moves to the left."
EXAMPLE_KEYWORDS = ("red", "circle")
EXAMPLE_HEIGHT = 256
EXAMPLE_WIDTH = 256
EXAMPLE_FRAMES = 9
EXAMPLE_STEPS = 6
#: What ``record``/``bench``/``finetune`` use on the testbed's models unless told otherwise
#: (``layerscope_model.json`` -> ``generation_defaults``, read by the core's CLI).
GENERATION_DEFAULTS = {
    "record": {"steps": EXAMPLE_STEPS, "frames": EXAMPLE_FRAMES, "height": EXAMPLE_HEIGHT, "width": EXAMPLE_WIDTH},
    "bench": {"steps": 12, "frames": EXAMPLE_FRAMES, "height": EXAMPLE_HEIGHT, "width": EXAMPLE_WIDTH},
}

# Words the tiny tokenizer is trained on.  Anything else still tokenizes (into
# characters), so arbitrary prompts work; these words become single pieces.
_VOCABULARY_SENTENCES = [
    "a red circle moves to the left while the blue square turns green",
    "the green triangle moves to the right and the yellow circle turns red",
    "a blue square moves up then the red triangle moves down",
    "the circle pushes the triangle and the square spins slowly",
    "a purple star jumps over the orange box on a white background",
    "the cat walks across the room and a dog runs in the park",
    "a man raises his hand and the woman smiles at the camera",
    "the car drives along the road under the bright sky",
    "bright colours low quality blurry static still picture worst quality",
    "the ball bounces and rolls towards the wall near the tree",
]

_TEXT_DIM = 32
#: Attention heads per layer of the text encoder (``testbed train --text-role-heads`` counts them).
TEXT_HEADS = 4
_IMAGE_SIZE = 112
_IMAGE_PATCH = 14
_VISION_DIM = 48
_Z_DIM = 8
#: The CLIP of the default model: its vision tower (converted to transformers) is the
#: pipeline's image encoder, its text tower serves Focal Guidance's keyword selection.
CLIP_CONFIG = {
    "embed_dim": 32,
    "vision_cfg": {
        "layers": 3,
        "width": _VISION_DIM,
        "head_width": 12,
        "patch_size": _IMAGE_PATCH,
        "image_size": _IMAGE_SIZE,
        "mlp_ratio": 2.0,
    },
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 4, "layers": 2},
}


#: The trained shapes-world model ships inside the package (see MODEL_CARD.md there).
SHIPPED_MODEL_DIR = Path(__file__).resolve().parent / "models" / "shapes-wan-i2v"


def shipped_model_dir() -> Path | None:
    """The trained default model's directory, if this installation ships it."""
    return SHIPPED_MODEL_DIR if (SHIPPED_MODEL_DIR / "model_index.json").exists() else None


def example() -> tuple[np.ndarray, str, list[str]]:
    """``layerscope record`` without inputs: the packaged example (image, prompt, keywords)."""
    return example_image(), EXAMPLE_PROMPT, list(EXAMPLE_KEYWORDS)


def random_model_dir() -> Path:
    """``--model random``: the tiny random model, built once into the cache.

    A copy built before models declared their ``generation_defaults`` gets them added, so
    it keeps the testbed's small sizes.
    """
    path = ensure_default_model()
    marker = path / MODEL_INFO_FILE
    info = json.loads(marker.read_text(encoding="utf-8"))
    if "generation_defaults" not in info:
        marker.write_text(json.dumps({**info, "generation_defaults": GENERATION_DEFAULTS}, indent=2))
    return path


def default_model_dir() -> Path:
    """``--model default``: the trained shapes-world model, else the random tiny model."""
    return shipped_model_dir() or ensure_default_model()


def resolve_model(model: str | os.PathLike) -> Path:
    """``default`` (the shipped trained model), ``random`` (the tiny random model, built once) or a path.

    The names belong to the testbed, so the CLI resolves them here and hands the core
    (:func:`layerscope.loading.load_pipeline`) a plain directory.
    """
    if str(model) == "default":
        return default_model_dir()
    if str(model) == "random":
        return ensure_default_model()
    return Path(model)


def default_cache_dir() -> Path:
    """Where the default model is built: ``$LAYERSCOPE_CACHE`` or ``~/.cache/layerscope``."""
    root = os.environ.get("LAYERSCOPE_CACHE")
    base = Path(root) if root else Path.home() / ".cache" / "layerscope"
    return base / "models" / f"{DEFAULT_MODEL_NAME}-v{DEFAULT_MODEL_VERSION}-seed{DEFAULT_SEED}"


def _build_tokenizer(extra_words: list[str] | None = None):
    """A T5-style SentencePiece (Unigram + Metaspace) fast tokenizer for our vocabulary.

    Wan2.1 uses UMT5's SentencePiece tokenizer; keyword mapping must meet the same
    "▁"-prefixed pieces.  The Unigram vocabulary is written directly (whole "▁word"
    pieces scored by frequency, then single characters as a fallback) because the
    trainer prunes a corpus this small into sub-word fragments.
    """
    import math
    import string
    from collections import Counter

    from transformers import T5Tokenizer

    counts = Counter(word for sentence in _VOCABULARY_SENTENCES for word in sentence.split())
    counts.update(w.lower() for w in (extra_words or []) if w.isalpha())
    total = sum(counts.values())
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    pieces += [(f"▁{word}", math.log(n / total)) for word, n in sorted(counts.items())]
    fallback = math.log(1.0 / (100.0 * total))
    chars = "▁" + string.ascii_letters + string.digits + string.punctuation
    pieces += [(ch, fallback) for ch in chars]
    return T5Tokenizer(vocab=pieces, extra_ids=0, model_max_length=512)


def build_default_clip(seed: int = DEFAULT_SEED) -> Any:
    """The default model's open_clip model (random weights, deterministic from ``seed``)."""
    import torch

    from layerscope.clip import build_open_clip

    torch.manual_seed(seed + 1)
    return build_open_clip(CLIP_CONFIG).eval()


def build_default_pipeline(seed: int = DEFAULT_SEED, clip: Any = None, vocabulary: list[str] | None = None) -> Any:
    """Build the tiny Wan I2V pipeline in memory, deterministically from ``seed``."""
    import torch
    from diffusers import (
        AutoencoderKLWan,
        FlowMatchEulerDiscreteScheduler,
        WanImageToVideoPipeline,
        WanTransformer3DModel,
    )
    from transformers import CLIPImageProcessor, UMT5Config, UMT5EncoderModel

    from layerscope.clip import vision_tower_to_transformers

    tokenizer = _build_tokenizer(vocabulary)
    torch.manual_seed(seed)
    text_encoder = UMT5EncoderModel(
        UMT5Config(
            vocab_size=len(tokenizer),
            d_model=_TEXT_DIM,
            d_kv=8,
            d_ff=64,
            num_layers=2,
            num_heads=TEXT_HEADS,
            relative_attention_num_buckets=8,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
            decoder_start_token_id=tokenizer.pad_token_id,
        )
    )
    clip = clip if clip is not None else build_default_clip(seed)
    image_encoder = vision_tower_to_transformers(clip)
    # open_clip's preprocessing: resize the short side, centre crop, OpenAI CLIP mean/std.
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": _IMAGE_SIZE},
        crop_size={"height": _IMAGE_SIZE, "width": _IMAGE_SIZE},
    )
    torch.manual_seed(seed + 2)
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
    transformer = WanTransformer3DModel(
        patch_size=(1, 2, 2),
        num_attention_heads=4,
        attention_head_dim=16,
        in_channels=2 * _Z_DIM + 4,
        out_channels=_Z_DIM,
        text_dim=_TEXT_DIM,
        freq_dim=32,
        ffn_dim=128,
        num_layers=8,
        cross_attn_norm=True,
        image_dim=_VISION_DIM,
        added_kv_proj_dim=64,
        rope_max_seq_len=256,
    )
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0)
    # Ready for inference, as ``from_pretrained`` leaves a model: a freshly built UMT5 is in
    # training mode, and its dropout (0.1) made every prompt embedding a random draw (the
    # from-scratch training runs encoded their prompts so until 2026-12-03; training stages
    # switch their own module to training mode).
    for module in (text_encoder, vae, transformer, image_encoder):
        module.eval()
    return WanImageToVideoPipeline(
        tokenizer=tokenizer,
        text_encoder=text_encoder,
        vae=vae,
        scheduler=scheduler,
        image_processor=image_processor,
        image_encoder=image_encoder,
        transformer=transformer,
    )


def ensure_default_model(path: str | os.PathLike | None = None) -> Path:
    """Build and save the default pipeline once; return its local directory.

    Written to a temporary sibling and renamed, so a crash never leaves a directory
    that looks like a finished model.
    """
    target = Path(path) if path is not None else default_cache_dir()
    marker = target / MODEL_INFO_FILE
    if marker.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.with_name(target.name + f".partial-{os.getpid()}")
    from layerscope.clip import save_open_clip

    clip = build_default_clip(DEFAULT_SEED)
    pipe = build_default_pipeline(DEFAULT_SEED, clip=clip)
    pipe.save_pretrained(staging, safe_serialization=True)
    save_open_clip(clip, CLIP_CONFIG, staging / CLIP_SUBFOLDER)
    (staging / MODEL_INFO_FILE).write_text(
        json.dumps(
            {
                "name": DEFAULT_MODEL_NAME,
                "version": DEFAULT_MODEL_VERSION,
                "seed": DEFAULT_SEED,
                "weights": "random",
                "note": RANDOM_WEIGHTS_NOTE,
                "generation_defaults": GENERATION_DEFAULTS,
            },
            indent=2,
        )
    )
    try:
        staging.rename(target)
    except OSError:  # another process won the race; use its copy
        import shutil

        shutil.rmtree(staging, ignore_errors=True)
    return target


def example_scene() -> Any:
    """The packaged example as a shapes-world scene: a red circle (moving left) and a blue square."""
    from layerscope_testbed.shapes.world import Event, Scene, Shape

    shapes = [Shape("circle", "red", 0.62, 0.62, 0.09), Shape("square", "blue", 0.3, 0.22, 0.08)]
    return Scene(shapes, Event("motion", 0, direction="left"), prompt=EXAMPLE_PROMPT)


def example_image(height: int = EXAMPLE_HEIGHT, width: int = EXAMPLE_WIDTH) -> np.ndarray:
    """The packaged example reference image, rendered from :func:`example_scene`.

    Drawn procedurally so the repository ships no binary image and the picture matches
    the example prompt exactly.
    """
    from layerscope_testbed.shapes.render import reference_image

    return reference_image(example_scene(), height=height, width=width)
