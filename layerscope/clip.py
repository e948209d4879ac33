"""open_clip models from local safetensors, per-token joint-space features, and conversion
of an open_clip vision tower into the transformers ``CLIPVisionModel`` the Wan pipeline uses.

Why here: Focal Guidance's keyword selection (paper Eq. 6) needs the CLIP text tower
that matches the pipeline's image encoder.  For the built-in model we make that pair
ourselves: one open_clip model whose vision tower, converted to transformers, *is* the
pipeline's image encoder, so text and image tokens share a joint space by construction.

Checkpoints are read with safetensors only (never pickles) from a directory holding
``open_clip_config.json`` (``{"embed_dim": .., "vision_cfg": {..}, "text_cfg": {..}}``
or ``{"model_name": "ViT-H-14"}``) and ``open_clip_model.safetensors``, or a transformers
``CLIPModel`` saved with ``save_pretrained`` (``config.json`` + ``model.safetensors`` +
its tokenizer), e.g. ``openai/clip-vit-large-patch14-336`` for HunyuanVideo-I2V's
LLaVA image tower: :func:`load_clip` takes either.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from layerscope.errors import LayerScopeError

#: Where a pipeline folder keeps the open_clip model matching its image encoder (FSG, Eq. 6).
CLIP_SUBFOLDER = "clip"
CONFIG_NAME = "open_clip_config.json"
WEIGHTS_NAME = "open_clip_model.safetensors"


class ClipError(LayerScopeError):
    """A CLIP checkpoint is missing, unsafe or does not match the pipeline (a usage error)."""


def build_open_clip(config: dict[str, Any]) -> Any:
    """An open_clip ``CLIP`` from a custom config or a named architecture, random weights."""
    import open_clip
    from open_clip.model import CLIPTextCfg, CLIPVisionCfg

    if "model_name" in config:
        return open_clip.create_model(config["model_name"], pretrained=None)
    return open_clip.CLIP(
        embed_dim=config["embed_dim"],
        vision_cfg=CLIPVisionCfg(**config["vision_cfg"]),
        text_cfg=CLIPTextCfg(**config["text_cfg"]),
    )


def save_open_clip(model: Any, config: dict[str, Any], directory: str | os.PathLike) -> Path:
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / CONFIG_NAME).write_text(json.dumps(config, indent=2))
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, directory / WEIGHTS_NAME)
    return directory


def load_open_clip(directory: str | os.PathLike) -> Any:
    """Load an open_clip model saved by :func:`save_open_clip` (safetensors only)."""
    from safetensors.torch import load_file

    directory = Path(directory)
    config_path, weights_path = directory / CONFIG_NAME, directory / WEIGHTS_NAME
    if not config_path.exists() or not weights_path.exists():
        raise ClipError(
            f"no CLIP checkpoint in {directory}: expected {CONFIG_NAME} and {WEIGHTS_NAME} (open_clip) or "
            "config.json, *.safetensors and the tokenizer (a transformers CLIPModel folder); pass --clip DIR"
        )
    model = build_open_clip(json.loads(config_path.read_text()))
    missing, unexpected = model.load_state_dict(load_file(weights_path), strict=False)
    if missing or unexpected:
        raise ClipError(f"CLIP checkpoint in {directory} does not fit its config (missing {missing[:3]}...)")
    return model.eval()


class TransformersClip:
    """A transformers ``CLIPModel`` and its tokenizer behind the two calls Eq. 6 needs.

    Same features as the open_clip path: per-token text features through the final layer
    norm and ``text_projection``; penultimate-layer patch tokens through ``post_layernorm``
    and ``visual_projection``.
    """

    def __init__(self, model: Any, tokenizer: Any):
        self.model = model.eval()
        self.tokenizer = tokenizer

    @property
    def image_size(self) -> int:
        return int(self.model.config.vision_config.image_size)

    def token_features(self, text: str) -> tuple[Any, list[str]]:
        import torch

        encoded = self.tokenizer(text, return_tensors="pt", truncation=True)
        with torch.no_grad():
            hidden = self.model.text_model(**encoded).last_hidden_state  # final layer norm applied
            features = self.model.text_projection(hidden)[0]
        pieces = self.tokenizer.convert_ids_to_tokens(encoded["input_ids"][0])
        return features[1:-1], pieces[1:-1]  # start/end tokens dropped, as for open_clip

    def patch_features(self, pixels: Any) -> tuple[Any, Any]:
        import torch

        with torch.no_grad():
            out = self.model.vision_model(pixel_values=pixels, output_hidden_states=True)
            tokens = out.hidden_states[-2][0, 1:]  # penultimate layer, CLS dropped
            joint = self.model.visual_projection(self.model.vision_model.post_layernorm(tokens))
        return tokens, joint


def clip_image_size(model: Any) -> int:
    """Input side in pixels of an open_clip model or a :class:`TransformersClip`."""
    if isinstance(model, TransformersClip):
        return model.image_size
    size = model.visual.image_size
    return int(size[0] if isinstance(size, (tuple, list)) else size)


def load_clip(directory: str | os.PathLike) -> Any:
    """An open_clip checkpoint (:func:`load_open_clip`) or a transformers ``CLIPModel`` folder."""
    directory = Path(directory)
    config = directory / "config.json"
    if (directory / CONFIG_NAME).exists() or not config.exists():
        return load_open_clip(directory)
    try:
        model_type = json.loads(config.read_text(encoding="utf-8")).get("model_type")
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        model_type = None
    if model_type != "clip":
        raise ClipError(
            f"{directory} holds a {model_type or 'unreadable'} config, not a CLIP model; pass --clip with an "
            f"open_clip checkpoint ({CONFIG_NAME}) or a transformers CLIPModel folder"
        )
    if not any(directory.glob("*.safetensors")):
        raise ClipError(f"{directory} has no .safetensors weights; LayerScope never loads pickled checkpoints")
    if not (directory / "tokenizer.json").is_file() and not (directory / "vocab.json").is_file():
        # without them transformers builds some other tokenizer, and every keyword would map to no token
        raise ClipError(
            f"{directory} holds a CLIPModel but no tokenizer (tokenizer.json or vocab.json + merges.txt); "
            "save the model's CLIPTokenizer into the same folder"
        )
    from transformers import AutoTokenizer, CLIPModel

    try:
        model = CLIPModel.from_pretrained(directory, use_safetensors=True, local_files_only=True)
        tokenizer = AutoTokenizer.from_pretrained(directory, local_files_only=True)
    except (OSError, ValueError) as error:
        raise ClipError(f"cannot load the CLIP model in {directory}: {str(error).splitlines()[0]}") from None
    return TransformersClip(model, tokenizer)


def tokenizer_for(model: Any) -> Any:
    """open_clip's BPE tokenizer (the vocabulary ships inside open_clip: works offline)."""
    from open_clip.tokenizer import SimpleTokenizer

    return SimpleTokenizer(context_length=model.context_length)


def text_token_features(model: Any, text: str) -> tuple[Any, list[str]]:
    """Per-token joint-space features (M, E) of ``text`` and the BPE pieces they belong to.

    Unlike ``encode_text`` (which pools at the end-of-text token), every token is run
    through ``ln_final`` and the text projection, as Eq. 6 compares each token t_m.
    Start/end tokens are dropped.
    """
    import torch

    if isinstance(model, TransformersClip):
        return model.token_features(text)
    tokenizer = tokenizer_for(model)
    ids = tokenizer([text])
    length = int((ids[0] != 0).sum())
    with torch.no_grad():
        x = model.token_embedding(ids) + model.positional_embedding
        x = model.transformer(x, attn_mask=model.attn_mask)
        x = model.ln_final(x)
        x = (
            model.text_projection(x)
            if isinstance(model.text_projection, torch.nn.Linear)
            else x @ model.text_projection
        )
    pieces = [tokenizer.decoder[int(i)] for i in ids[0, 1 : length - 1]]
    return x[0, 1 : length - 1], pieces


def image_patch_features(model: Any, pixels: Any) -> tuple[Any, Any]:
    """Penultimate-layer patch tokens (N, D) and their joint-space projection (N, E).

    The projection applies the vision tower's ``ln_post`` and ``proj`` to each patch
    token (as for the pooled token), which puts patches and words in one space.
    """
    import torch

    if isinstance(model, TransformersClip):
        return model.patch_features(pixels)
    visual = model.visual
    with torch.no_grad():
        out = visual.forward_intermediates(pixels, indices=[len(visual.transformer.resblocks) - 2], output_fmt="NLC")
        tokens = out["image_intermediates"][0][0]  # (N, D), prefix (CLS) tokens removed
        joint = visual.ln_post(tokens) @ visual.proj
    return tokens, joint


def vision_tower_to_transformers(model: Any) -> Any:
    """Convert an open_clip ViT vision tower into a transformers ``CLIPVisionModel``.

    Same weights, same numbers (checked in tests): the pipeline's image encoder and the
    CLIP used for keyword selection then agree token for token.
    """
    import torch
    from transformers import CLIPVisionConfig, CLIPVisionModel

    visual = model.visual
    width = visual.conv1.out_channels
    blocks = visual.transformer.resblocks
    config = CLIPVisionConfig(
        hidden_size=width,
        intermediate_size=blocks[0].mlp.c_fc.out_features,
        num_hidden_layers=len(blocks),
        num_attention_heads=blocks[0].attn.num_heads,
        image_size=visual.image_size[0] if isinstance(visual.image_size, tuple) else visual.image_size,
        patch_size=visual.patch_size[0] if isinstance(visual.patch_size, tuple) else visual.patch_size,
        hidden_act="gelu",
        layer_norm_eps=1e-5,
    )
    hf = CLIPVisionModel(config)
    state: dict[str, torch.Tensor] = {
        "vision_model.embeddings.class_embedding": visual.class_embedding,
        "vision_model.embeddings.patch_embedding.weight": visual.conv1.weight,
        "vision_model.embeddings.position_embedding.weight": visual.positional_embedding,
        "vision_model.pre_layrnorm.weight": visual.ln_pre.weight,
        "vision_model.pre_layrnorm.bias": visual.ln_pre.bias,
        "vision_model.post_layernorm.weight": visual.ln_post.weight,
        "vision_model.post_layernorm.bias": visual.ln_post.bias,
    }
    for i, block in enumerate(blocks):
        prefix = f"vision_model.encoder.layers.{i}."
        q, k, v = block.attn.in_proj_weight.chunk(3)
        qb, kb, vb = block.attn.in_proj_bias.chunk(3)
        state.update(
            {
                prefix + "self_attn.q_proj.weight": q,
                prefix + "self_attn.q_proj.bias": qb,
                prefix + "self_attn.k_proj.weight": k,
                prefix + "self_attn.k_proj.bias": kb,
                prefix + "self_attn.v_proj.weight": v,
                prefix + "self_attn.v_proj.bias": vb,
                prefix + "self_attn.out_proj.weight": block.attn.out_proj.weight,
                prefix + "self_attn.out_proj.bias": block.attn.out_proj.bias,
                prefix + "layer_norm1.weight": block.ln_1.weight,
                prefix + "layer_norm1.bias": block.ln_1.bias,
                prefix + "layer_norm2.weight": block.ln_2.weight,
                prefix + "layer_norm2.bias": block.ln_2.bias,
                prefix + "mlp.fc1.weight": block.mlp.c_fc.weight,
                prefix + "mlp.fc1.bias": block.mlp.c_fc.bias,
                prefix + "mlp.fc2.weight": block.mlp.c_proj.weight,
                prefix + "mlp.fc2.bias": block.mlp.c_proj.bias,
            }
        )
    # transformers 4 prefixes the vision transformer's keys with "vision_model.", 5 does not.
    if not any(key.startswith("vision_model.") for key in hf.state_dict()):
        state = {key.removeprefix("vision_model."): value for key, value in state.items()}
    missing, unexpected = hf.load_state_dict({k: v.detach().clone() for k, v in state.items()}, strict=False)
    missing = [m for m in missing if not m.endswith("position_ids")]
    if missing or unexpected:
        raise ClipError(f"cannot convert the vision tower: missing {missing[:3]}, unexpected {unexpected[:3]}")
    return hf.eval()
