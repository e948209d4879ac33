"""Focal Guidance wired into HunyuanVideo-I2V's single-stream blocks (MMDiT).

The paper applies FG to single-stream layers 17-32 of HunyuanVideo-I2V.  We number layers
across both block kinds (20 double then 40 single blocks in the released model), 0-based:
single-stream block ``s`` is layer ``20 + s``.  The paper does not say whether its
numbers are 0- or 1-based; read as 0-based single-stream indices, 17-32 are layers 37-52.
Rankings name global layers, so no translation is needed when FG takes its layers
from ``layerscope rank --stream single``.

Where each equation acts, in every weak single block (one ``to_q/k/v`` over
``[visual; text]``, text = ``[image rows; prompt rows]``):

* Anchors (Eq. 6-7): S_k is computed with a CLIP given by path (``--clip``; default the
  model folder's ``clip/``) on its patch grid and resampled twice: onto LLaVA's patch grid
  and subsampled like diffusers' ``image_embed_interleave`` (the image rows of the text
  sequence), and onto the frame-0 token grid (Eq. 9's region).  V_k^vis is the
  S_k-weighted sum of the block's own ``to_v`` rows of the image tokens: the same value
  space the keyword rows live in (DESIGN: "rows of the single block's shared to_v
  output").  They are computed from the block's input each call (a layer norm and
  ``to_v``'s weights on the image rows, without firing any hook).
* Eq. 8: a forward hook on ``attn.to_v`` adds lambda_txt * V_k^vis to the keyword rows
  (after the visual rows); queries and keys are untouched.
* Eq. 9 + Eq. 13, ``inject_at="hidden"``: d (z_ref rows inside R_k, plus the cache term on
  every visual row) enters the block's residual stream: the block computes
  ``(z + d) + gate * proj_out([attn(norm(z + d)); mlp(norm(z + d))])``.  Hooks: the block's
  pre-hook reads z and computes d and norm(z + d); pre-hooks on ``attn`` and ``proj_mlp``
  swap in norm(z + d); the block's forward hook adds d to its visual output.  The
  probes' hooks on ``attn`` run first (``prepend``), so the recorded maps stay intrinsic;
  every later single block offers the recorder norm(z - carried), its attention input
  without the terms the residual carried in (``CarriedTerms``, ``IntrinsicInputs``).
  ``inject_at="attn-input"``: d is added to the attention's visual input only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from fg_intervene import fsg
from fg_intervene.attention_cache import inject
from fg_intervene.config import ConfigError, FocalGuidanceConfig
from fg_intervene.installation import CarriedTerms, FocalGuidanceHandle, install_step_source

_TRACKER = "fg_intervene_hunyuan_step_tracker"


@dataclass
class HunyuanGuidance:
    """Per-run data: which keywords, where their rows are, how to weigh the image rows."""

    keywords: list[str]
    token_indices: list[list[int]]  # rows of the text sequence ([image rows; prompt rows])
    keyword_sims: torch.Tensor  # (K, N_clip) S_k on the CLIP patch grid
    image_row_weights: torch.Tensor  # (K, n_img) anchor weights over the image rows
    region: torch.Tensor  # (K, H', W') Eq. 9 weights on frame 0, zero outside R_k
    grid: tuple[int, int, int]
    scores: list[dict[str, Any]] = field(default_factory=list)


def image_row_weights(keyword_sims: torch.Tensor, clip_side: int, image_tokens: int, interleave: int) -> torch.Tensor:
    """S_k resampled onto LLaVA's patch grid, subsampled like the image rows, then normalised.

    The image rows are LLaVA's patch tokens in row-major order, every ``interleave``-th kept
    (diffusers ``image_embed_interleave``); the weights are Eq. 6's anchor weights on them.
    """
    side = int(round(image_tokens**0.5))
    if side * side != image_tokens:
        raise ConfigError(f"the text encoder's {image_tokens} image tokens are not a square patch grid")
    k = keyword_sims.shape[0]
    grid = keyword_sims.float().reshape(k, 1, clip_side, clip_side)
    resized = F.interpolate(grid, size=(side, side), mode="bilinear", align_corners=False).reshape(k, -1)
    if 0 < interleave < 6:
        resized = resized[:, ::interleave]
    return fsg.anchor_weights(resized)


def check_supported(pipe: Any, adapter: Any, weak_layers: list[int]) -> None:
    """FG acts on single-stream blocks (the paper's choice); refuse others in one line."""
    single = adapter.single_stream_layers()
    if not weak_layers:
        raise ConfigError("no weak layers: pass --ranking ranking.json or set weak_layers in the config")
    outside = [layer for layer in weak_layers if layer not in single]
    if outside:
        raise ConfigError(
            f"layer {outside[0]} is not a single-stream block; Focal Guidance on HunyuanVideo-I2V acts on "
            f"single-stream layers {single[0]}-{single[-1]} (rank with --stream single)"
        )


def prepare_guidance(pipe: Any, adapter: Any, config: FocalGuidanceConfig, inputs: Any, clip: Any) -> HunyuanGuidance:
    """Select keywords (Eq. 6), map them to text rows, weigh image rows and frame-0 cells."""
    from layerscope.clip import clip_image_size, image_patch_features, text_token_features
    from layerscope.keywords import KeywordError

    check_supported(None, adapter, config.weak_layers)
    pixels = pipe.image_processor(images=inputs.image, return_tensors="pt")["pixel_values"].float()
    size = clip_image_size(clip)
    if pixels.shape[-1] != size:
        pixels = F.interpolate(pixels, size=(size, size), mode="bicubic", align_corners=False)
    _, patch_joint = image_patch_features(clip, pixels)
    text_features, pieces = text_token_features(clip, inputs.prompt.lower())
    sign = config.resolved_for(getattr(inputs, "model_dir", None))[0].selection_sign
    similarity = fsg.similarity_matrix(text_features, patch_joint, sign)
    words = fsg.group_words(pieces)
    scores = fsg.score_words(similarity, words, config.tau_sel, config.stopwords)
    keywords = config.keywords or fsg.select_keywords(scores, config.tau_sel)
    try:
        mapped = adapter.map_keywords(inputs.prompt, list(keywords))
    except KeywordError as error:
        raise ConfigError(f"Focal Guidance keywords: {error}") from None
    keyword_sims = torch.stack([fsg.keyword_similarity(similarity, words, k) for k in keywords])
    side = int(round(patch_joint.shape[0] ** 0.5))
    _, height, width = inputs.grid
    return HunyuanGuidance(
        keywords=list(keywords),
        token_indices=[list(m.token_indices) for m in mapped],
        keyword_sims=keyword_sims,
        image_row_weights=image_row_weights(
            keyword_sims, side, adapter.image_tokens(), adapter.image_embed_interleave()
        ),
        region=fsg.region_weights(keyword_sims, (side, side), (height, width), config.tau_region),
        grid=tuple(inputs.grid),
        scores=[{"word": s.word, "score": round(s.score, 6), "selected": s.selected} for s in scores],
    )


def _token_replace(block: torch.nn.Module) -> bool:
    """Token-replace blocks modulate the first frame's rows with their own embedding."""
    return type(block.norm).__name__ == "HunyuanVideoTokenReplaceAdaLayerNormZeroSingle"


def block_visual_values(block: torch.nn.Module, args: tuple, weights: torch.Tensor, n_img: int) -> torch.Tensor:
    """V_k^vis (K, D): anchor-weighted ``to_v`` rows of the image tokens, as this block computes them.

    The image rows are the first ``n_img`` text rows; the block normalises them with the
    same modulation as every text row (token-replace blocks: the non-first-frame one).
    ``F.linear`` with ``to_v``'s weights keeps every hook (probes, Eq. 8) out of this.
    """
    encoder, temb = args[1], args[2]
    rows = encoder[:, :n_img]
    if _token_replace(block):
        normed = block.norm(rows, temb, args[5], 0)[0]
    else:
        normed = block.norm(rows, emb=temb)[0]
    to_v = block.attn.to_v
    values = F.linear(normed, to_v.weight, to_v.bias)[0]  # (n_img, D)
    return weights.to(device=values.device, dtype=torch.float32) @ values.float()


def _norm_visual(block: torch.nn.Module, hidden: torch.Tensor, args: tuple) -> torch.Tensor:
    """The block's input normalisation of visual rows only (token-replace: first frame its own)."""
    temb = args[2]
    if _token_replace(block):
        return block.norm(hidden, temb, args[5], args[6])[0]
    return block.norm(hidden, emb=temb)[0]


class _BlockGuide:
    """The hooks of one weak single-stream block."""

    def __init__(self, block, layer, guidance: HunyuanGuidance, config, cache, state, active, n_img, carried=None):
        self.block, self.layer, self.guidance, self.config = block, layer, guidance, config
        self.cache, self.state, self.active, self.n_img = cache, state, active, n_img
        self.carried: CarriedTerms | None = carried
        self.call: dict[str, Any] = {}

    def delta(self, hidden: torch.Tensor, values: torch.Tensor) -> torch.Tensor | None:
        total = None
        if self.config.fsg and self.config.lambda_lat > 0:
            zero = torch.zeros_like(hidden)
            region = self.guidance.region.to(hidden.device)
            total = fsg.inject_reference_frame(zero, region, values, self.config.lambda_lat)
        if self.cache is not None and self.config.lambda_cache > 0:
            aggregated = self.cache.current(self.config.tau_cache, self.state.branch)
            if aggregated is not None:
                base = torch.zeros_like(hidden) if total is None else total
                total = inject(base, aggregated, values, self.config.lambda_cache)
        return total

    def before_block(self, module, args, kwargs):
        self.call = {}
        if not self.active():
            return None
        hidden = args[0]
        # in the graph when autograd is on (post-training) and anchors learn; a constant otherwise
        with torch.set_grad_enabled(torch.is_grad_enabled() and self.config.anchor_gradients):
            values = block_visual_values(self.block, args, self.guidance.image_row_weights, self.n_img)
        self.call = {"values": values, "n_visual": hidden.shape[1]}
        change = self.delta(hidden, values)
        if change is None:
            return None
        self.call["delta"] = change
        if self.config.inject_at == "hidden":
            self.call["shifted"] = _norm_visual(self.block, hidden + change, args)
        return None

    def swap_attention_input(self, module, args, kwargs):
        change = self.call.get("delta")
        if change is None:
            return None
        current = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
        shifted = self.call["shifted"] if self.config.inject_at == "hidden" else current + change.to(current.dtype)
        if "hidden_states" in kwargs:
            return args, {**kwargs, "hidden_states": shifted.to(current.dtype)}
        return (shifted.to(current.dtype), *args[1:]), kwargs

    def swap_mlp_input(self, module, args):
        shifted = self.call.get("shifted")
        if shifted is None:
            return None
        x = args[0].clone()
        x[:, : shifted.shape[1]] = shifted.to(x.dtype)
        return (x, *args[1:])

    def fuse_values(self, module, args, output):
        if "values" not in self.call or not self.config.fsg or self.config.lambda_txt == 0:
            return None
        n = self.call["n_visual"]
        text = fsg.fuse_text_values(
            output[:, n:], self.guidance.token_indices, self.call["values"], self.config.lambda_txt
        )
        return torch.cat([output[:, :n], text], dim=1)

    def carry_residual(self, module, args, output):
        change = self.call.pop("delta", None)
        self.call = {}
        if change is None or self.config.inject_at != "hidden":
            return None
        hidden, encoder = output
        if self.carried is not None:
            self.carried.add(change.to(hidden.dtype))
        return hidden + change.to(hidden.dtype), encoder

    def install(self) -> list[Any]:
        block = self.block
        handles = [
            block.register_forward_pre_hook(self.before_block, with_kwargs=True),
            block.attn.register_forward_pre_hook(self.swap_attention_input, with_kwargs=True),
            block.attn.to_v.register_forward_hook(self.fuse_values),
            block.register_forward_hook(self.carry_residual),
        ]
        if self.config.inject_at == "hidden":
            handles.append(block.proj_mlp.register_forward_pre_hook(self.swap_mlp_input))
        return [h.remove for h in handles]


def _hook_carried_terms(blocks: list, carried: CarriedTerms, intrinsic: Any) -> list[Any]:
    """Reset the carried sum at the first weak block; later blocks offer norm(z - carried) (lazily).

    ``blocks``: the single blocks from the first weak one on.
    """
    removers = [blocks[0].register_forward_pre_hook(lambda module, args: carried.reset()).remove]
    if intrinsic is None:
        return removers
    for block in blocks[1:]:

        def offer(module, args, block=block):
            total = carried.total
            if total is not None:
                hidden = args[0]
                intrinsic.offer(block.attn, lambda: _norm_visual(block, hidden - total.to(hidden.dtype), args))

        def withdraw(module, args, output, block=block):
            intrinsic.withdraw(block.attn)

        removers.append(block.register_forward_pre_hook(offer).remove)
        removers.append(block.attn.register_forward_hook(withdraw).remove)
    return removers


def apply_focal_guidance(adapter: Any, config: FocalGuidanceConfig, guidance: HunyuanGuidance, intrinsic: Any = None):
    """Install FSG and/or the Attention Cache on the weak single-stream blocks.

    ``intrinsic``: the recorder's channel for the later blocks' unguided attention inputs.
    """
    check_supported(None, adapter, config.weak_layers)
    removers: list[Any] = []
    carried = CarriedTerms() if config.inject_at == "hidden" else None
    try:
        state, cache, active = install_step_source(
            adapter, config, guidance.token_indices, guidance.grid, removers, _TRACKER
        )
        transformer = adapter.denoisers()[0]
        offset = len(transformer.transformer_blocks)
        if carried is not None:
            singles = list(transformer.single_transformer_blocks)
            removers.extend(_hook_carried_terms(singles[min(config.weak_layers) - offset :], carried, intrinsic))
        for layer in config.weak_layers:
            block = transformer.single_transformer_blocks[layer - offset]
            guide = _BlockGuide(block, layer, guidance, config, cache, state, active, adapter.image_rows(), carried)
            removers.extend(guide.install())
    except BaseException:
        for remover in reversed(removers):
            remover()
        raise
    return FocalGuidanceHandle(removers, state, cache)
