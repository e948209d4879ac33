"""Focal Guidance wired into HunyuanVideo-1.5 I2V's double-stream blocks (MMDiT).

Every ``HunyuanVideo15TransformerBlock`` is double-stream: the visual stream z goes through
``norm1`` and ``to_q/k/v``, the context stream c (``[SigLIP image rows; byT5 glyph rows;
Qwen prompt rows; padding]``, :mod:`layerscope.adapters.hunyuan_video15`) through
``norm1_context`` and ``add_q/k/v_proj``, and one joint softmax mixes them.  So FG can act
on any block; layers are ``transformer_blocks`` indices, as the recorder and ``rank`` name
them.

Where each equation acts, in every weak block:

* V_k^vis (Eq. 7): the S_k-weighted sum of the block's own ``add_v_proj`` rows of the
  SigLIP image tokens, computed from the block's context input each call (``norm1_context``
  with this step's modulation, then ``add_v_proj``'s weights through ``F.linear``, so no
  hook fires).
* Eq. 8: a forward hook on ``attn.add_v_proj`` adds lambda_txt * V_k^vis to the keyword
  rows of the context values; queries and keys are untouched, no other row moves.
* Eq. 9 + Eq. 13, ``inject_at="hidden"`` (default): d = (Eq. 9's term on the frame-0 rows
  inside R_k) + (Eq. 13's term on every visual row) enters the residual stream at the
  block's input: a pre-hook on the block replaces z by z + d, so the block computes exactly
  ``block(z + d, c, ...)`` and d rides the residual into every later block.  The
  recorder's intrinsic map of this and every later block is computed on
  ``norm1(z - carried)`` (``CarriedTerms`` offered through ``IntrinsicInputs``), so no map
  credits FG with its own terms.  ``inject_at="attn-input"``: d is added to the
  attention's visual input ``norm1(z)`` only (after the probes read it).

Deviations (named; the paper's own model pair is Wan2.1 + CLIP and HunyuanVideo-I2V + CLIP):

* **D1 blocks.** The paper puts FG on HunyuanVideo-I2V's single-stream layers; this model
  has none.  Any double-stream block may be a weak layer; V_k^vis and V_k^text come from
  one projection, ``add_v_proj``, which this MMDiT uses for image and text rows alike
  (the paper's W_v^vis and W_v^text are one matrix here).
* **D2 anchor rows.** The anchor's visual tokens v_n are the first ``n_image`` context rows
  (the transformer puts the valid SigLIP rows first), row-major on SigLIP's
  (image_size / patch)^2 grid (27 x 27 = 729 in the release; SigLIP has no CLS).  They are
  SigLIP's *last* layer (diffusers feeds ``last_hidden_state`` to the DiT), not the
  penultimate layer Eq. 6 names: the DiT never sees the penultimate one.
* **D3 anchor space** (``anchor_source``).  ``"block-rows"`` (default, as
  :mod:`fg_intervene.hunyuan_video` does): V_k^vis = sum_n w_kn add_v_proj(norm1_context(c_l)_n)
  with c_l this block's context input.  In an MMDiT the image rows are rewritten by every
  block, so this is the anchor in the space block l actually attends to.  ``"projected"``
  (Eq. 7 literally): v_anchor = sum_n w_kn v_n on the SigLIP features, P_v = the
  transformer's ``image_embedder`` plus its image type embedding (``cond_type_embed[2]``),
  then block l's ``norm1_context`` and ``add_v_proj``: the paper's P_v, but a layer-0
  representation fed to layer l.  Chosen with ``prepare_guidance(..., anchor_source=...)``
  (Python; ``FocalGuidanceConfig`` has no family-specific field, so the CLI always uses the
  default).  Both use normalised weights w_kn (:func:`fg_intervene.fsg.anchor_weights`).
* **D4 Eq. 6 with a separate CLIP.** SigLIP (the pipeline's image encoder) has a text tower,
  but its patch tokens have no per-token map into the joint space (SigLIP pools with an
  attention head), so Eq. 6's word-patch cosine cannot be taken in SigLIP's own space.
  Keyword selection, S_k, R_k and the anchor weights therefore come from a CLIP given by
  path (``--clip DIR``; default the model folder's ``clip/``): an open_clip safetensors
  checkpoint or a transformers ``CLIPModel`` folder (:func:`layerscope.clip.load_clip`), e.g.
  ``openai/clip-vit-large-patch14-336`` for the released model.  No CLIP matches SigLIP
  token for token; the CLIP sees the pixels SigLIP sees (the bucket image squashed to
  SigLIP's square, SigLIP's normalisation undone and CLIP's applied), and S_k is resampled
  bilinearly from the CLIP patch grid onto SigLIP's grid (anchor weights) and onto the
  whole frame-0 token grid (R_k: SigLIP squashes, it does not centre-crop, so the square
  patch grid covers the full non-square frame).
* **D5 z_ref.** The reference frame is latent frame 0 (the I2V pipeline puts the image
  latent and its mask there, on channels): the first H'W' rows of the visual stream at the
  block's input.

Guidance applies to the configured branch (cond by default); hooks are removed after the
run and no weight is touched.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from fg_intervene import fsg
from fg_intervene.attention_cache import inject
from fg_intervene.config import ConfigError, FocalGuidanceConfig
from fg_intervene.hunyuan_video import image_row_weights
from fg_intervene.installation import CarriedTerms, FocalGuidanceHandle, install_step_source

_TRACKER = "fg_intervene_hunyuan15_step_tracker"
ANCHOR_SOURCES = ("block-rows", "projected")
#: the pixel statistics of OpenAI's CLIP (open_clip and transformers CLIP processors alike)
_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass
class HunyuanVideo15Guidance:
    """Per-run data: keywords, their context rows, the anchor weights and the frame-0 region."""

    keywords: list[str]
    token_indices: list[list[int]]  # context rows ([image; glyph; prompt; padding])
    keyword_sims: torch.Tensor  # (K, N_clip) S_k on the CLIP patch grid
    image_row_weights: torch.Tensor  # (K, n_image) normalised anchor weights over the SigLIP rows
    region: torch.Tensor  # (K, H', W') Eq. 9 weights on frame 0, zero outside R_k
    grid: tuple[int, int, int]
    anchor_source: str = "block-rows"
    projected: torch.Tensor | None = None  # (K, dim) P_v(v_anchor) for anchor_source="projected"
    scores: list[dict[str, Any]] = field(default_factory=list)


def check_supported(pipe: Any, adapter: Any, weak_layers: list[int]) -> None:
    """Refuse in one line, before CLIP loads: no weak layers, a layer out of range, no image rows."""
    if not weak_layers:
        raise ConfigError("no weak layers: pass --ranking ranking.json or set weak_layers in the config")
    num_layers = adapter.num_layers()
    bad = [layer for layer in weak_layers if layer >= num_layers]
    if bad:
        raise ConfigError(f"weak layer {bad[0]} is out of range; this model has layers 0-{num_layers - 1}")
    if pipe is not None and getattr(pipe, "image_encoder", None) is None:
        raise ConfigError("this pipeline has no SigLIP image encoder, so Focal Guidance has no visual anchor")
    blocks = adapter.denoisers()[0].transformer_blocks
    fused = [layer for layer in weak_layers if getattr(blocks[layer].attn, "fused_projections", False)]
    if fused:
        raise ConfigError(
            f"transformer_blocks.{fused[0]}.attn has fused projections; call transformer.unfuse_qkv_projections()"
        )


def siglip_pixels(pipe: Any, image: Any) -> torch.Tensor:
    """The reference image as the pipeline's SigLIP sees it (``feature_extractor``, resized)."""
    return pipe.feature_extractor(images=image, return_tensors="pt", do_convert_rgb=True)["pixel_values"].float()


def clip_pixels(pixels: torch.Tensor, feature_extractor: Any, size: int) -> torch.Tensor:
    """SigLIP's pixels with its normalisation undone, resized to ``size``, CLIP-normalised (D4)."""
    mean = torch.tensor(feature_extractor.image_mean, dtype=torch.float32).view(1, -1, 1, 1)
    std = torch.tensor(feature_extractor.image_std, dtype=torch.float32).view(1, -1, 1, 1)
    raw = pixels.float() * std + mean
    if raw.shape[-2:] != (size, size):
        raw = F.interpolate(raw, size=(size, size), mode="bicubic", align_corners=False).clamp(0, 1)
    return (raw - torch.tensor(_CLIP_MEAN).view(1, 3, 1, 1)) / torch.tensor(_CLIP_STD).view(1, 3, 1, 1)


def frame_region_weights(
    keyword_sims: torch.Tensor, patch_grid: tuple[int, int], latent_grid: tuple[int, int], tau_region: float
) -> torch.Tensor:
    """Eq. 9's w_k(u, v) over the *whole* frame-0 grid, zero outside R_k (D4: no centre crop).

    Same rule as :func:`fg_intervene.fsg.region_weights` (bilinear resize, min-max to [0, 1],
    keep cells above ``tau_region``) on the full grid, because SigLIP's square sees the
    full frame.
    """
    k = keyword_sims.shape[0]
    maps = keyword_sims.float().reshape(k, 1, *patch_grid)
    resized = F.interpolate(maps, size=tuple(latent_grid), mode="bilinear", align_corners=False)[:, 0]
    low = resized.amin(dim=(-2, -1), keepdim=True)
    span = (resized.amax(dim=(-2, -1), keepdim=True) - low).clamp(min=1e-12)
    normalised = (resized - low) / span
    return torch.where(normalised > tau_region, normalised, torch.zeros_like(normalised))


def project_anchor(transformer: torch.nn.Module, image_embeds: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """D3 ``"projected"``: P_v(sum_n w_kn v_n) = image_embedder(anchor) + cond_type_embed[2], (K, dim)."""
    embedder = transformer.image_embedder
    parameter = next(embedder.parameters())
    anchors = weights.to(image_embeds) @ image_embeds.float()  # (K, D_siglip)
    with torch.no_grad():
        projected = embedder(anchors[None].to(device=parameter.device, dtype=parameter.dtype))[0]
        projected = projected + transformer.cond_type_embed.weight[2].to(projected)
    return projected


def prepare_guidance(
    pipe: Any,
    adapter: Any,
    config: FocalGuidanceConfig,
    inputs: Any,
    clip: Any,
    anchor_source: str = "block-rows",
) -> HunyuanVideo15Guidance:
    """Select keywords (Eq. 6, with the CLIP of D4), map them to context rows, weigh SigLIP rows and frame-0 cells."""
    from layerscope.clip import clip_image_size, image_patch_features, text_token_features
    from layerscope.keywords import KeywordError

    if anchor_source not in ANCHOR_SOURCES:
        raise ConfigError(f"anchor_source must be one of {', '.join(ANCHOR_SOURCES)} (got {anchor_source!r})")
    check_supported(pipe, adapter, config.weak_layers)
    pixels = siglip_pixels(pipe, inputs.image)
    _, patch_joint = image_patch_features(clip, clip_pixels(pixels, pipe.feature_extractor, clip_image_size(clip)))
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
    if side * side != patch_joint.shape[0]:
        raise ConfigError(f"the CLIP's {patch_joint.shape[0]} patch tokens are not a square grid")
    weights = image_row_weights(keyword_sims, side, adapter.image_rows(), 1)
    _, height, width = inputs.grid
    projected = None
    if anchor_source == "projected":
        device = pipe._execution_device
        embeds = pipe.encode_image(inputs.image, batch_size=1, device=device, dtype=pipe.transformer.dtype)[0]
        projected = project_anchor(pipe.transformer, embeds, weights)
    return HunyuanVideo15Guidance(
        keywords=list(keywords),
        token_indices=[list(m.token_indices) for m in mapped],
        keyword_sims=keyword_sims,
        image_row_weights=weights,
        region=frame_region_weights(keyword_sims, (side, side), (height, width), config.tau_region),
        grid=tuple(inputs.grid),
        anchor_source=anchor_source,
        projected=projected,
        scores=[{"word": s.word, "score": round(s.score, 6), "selected": s.selected} for s in scores],
    )


def block_visual_values(block: torch.nn.Module, encoder: torch.Tensor, temb: torch.Tensor, guidance) -> torch.Tensor:
    """V_k^vis (K, D) with this block's ``norm1_context`` modulation and ``add_v_proj`` (D3).

    ``block-rows``: the anchor-weighted ``add_v_proj`` rows of the SigLIP tokens, exactly as
    the block computes them (both maps are row-wise).  ``projected``: the block's value of
    P_v(v_anchor).  ``F.linear`` keeps every hook (probes, Eq. 8) off this.
    """
    add_v = block.attn.add_v_proj
    if guidance.anchor_source == "projected":
        rows = guidance.projected[None].to(device=encoder.device, dtype=encoder.dtype)
    else:
        rows = encoder[:1, : guidance.image_row_weights.shape[1]]
    normed = block.norm1_context(rows, emb=temb[:1])[0]
    values = F.linear(normed, add_v.weight, add_v.bias)[0].float()  # (n_rows, D)
    if guidance.anchor_source == "projected":
        return values
    return guidance.image_row_weights.to(device=values.device, dtype=torch.float32) @ values


def _norm_visual(block: torch.nn.Module, hidden: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
    """The attention's visual input for residual ``hidden``: ``norm1`` with this step's modulation."""
    return block.norm1(hidden, emb=temb)[0]


def _arg(args: tuple, kwargs: dict, index: int, name: str) -> Any:
    return args[index] if len(args) > index else kwargs[name]


class _Blocks:
    """The hooks on the blocks from the first weak one on: terms added, terms carried, intrinsic offers."""

    def __init__(self, blocks, first, guidance, config, cache, state, active, intrinsic):
        self.blocks, self.first = blocks, first
        self.guidance, self.config = guidance, config
        self.cache, self.state, self.active, self.intrinsic = cache, state, active, intrinsic
        self.weak = set(config.weak_layers)
        self.carried = CarriedTerms() if config.inject_at == "hidden" else None
        self.call: dict[int, dict[str, Any]] = {}

    def delta(self, hidden: torch.Tensor, values: torch.Tensor) -> torch.Tensor | None:
        """d on the visual rows: Eq. 9 (frame 0, inside R_k) plus Eq. 13 (every row)."""
        total = None
        config = self.config
        if config.fsg and config.lambda_lat > 0:
            total = fsg.inject_reference_frame(
                torch.zeros_like(hidden), self.guidance.region.to(hidden.device), values, config.lambda_lat
            )
        if self.cache is not None and config.lambda_cache > 0:
            aggregated = self.cache.current(config.tau_cache, self.state.branch)
            if aggregated is not None:
                total = inject(
                    torch.zeros_like(hidden) if total is None else total, aggregated, values, config.lambda_cache
                )
        return total

    def before_block(self, layer: int, block: torch.nn.Module, args: tuple, kwargs: dict):
        if layer == self.first and self.carried is not None:
            self.carried.reset()  # every call, guided branch or not
        self.call.pop(layer, None)
        hidden = _arg(args, kwargs, 0, "hidden_states")
        temb = _arg(args, kwargs, 2, "temb")
        carried = self.carried.total if self.carried is not None else None
        change = None
        if layer in self.weak and self.active():
            encoder = _arg(args, kwargs, 1, "encoder_hidden_states")
            # in the graph when autograd is on and anchors learn; a constant otherwise
            with torch.set_grad_enabled(torch.is_grad_enabled() and self.config.anchor_gradients):
                values = block_visual_values(block, encoder, temb, self.guidance)
            self.call[layer] = {"values": values}
            change = self.delta(hidden, values)
            if change is not None:
                change = change.to(hidden.dtype)
                self.call[layer]["delta"] = change
        if self.config.inject_at != "hidden":
            return None
        if self.intrinsic is not None and (carried is not None or change is not None):
            # the attention's input without any FG term: z minus what earlier weak blocks carried in
            unguided = hidden if carried is None else hidden - carried.to(hidden.dtype)
            self.intrinsic.offer(block.attn, lambda: _norm_visual(block, unguided, temb))
        if change is None:
            return None
        self.carried.add(change)
        shifted = hidden + change
        if len(args) > 0:
            return (shifted, *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": shifted}

    def shift_attention_input(self, layer: int, args: tuple, kwargs: dict):
        """``attn-input``: d added to ``norm1(z)`` after the probes (prepended) read it."""
        change = self.call.get(layer, {}).get("delta")
        if change is None:
            return None
        if "hidden_states" in kwargs:
            current = kwargs["hidden_states"]
            return args, {**kwargs, "hidden_states": current + change.to(current.dtype)}
        return (args[0] + change.to(args[0].dtype), *args[1:]), kwargs

    def fuse_values(self, layer: int, output: torch.Tensor):
        """Eq. 8 on the context values: keyword rows += lambda_txt * V_k^vis."""
        values = self.call.get(layer, {}).get("values")
        if values is None or not self.config.fsg or self.config.lambda_txt == 0:
            return None
        return fsg.fuse_text_values(output, self.guidance.token_indices, values, self.config.lambda_txt)

    def install(self) -> list[Any]:
        handles = []
        for layer, block in enumerate(self.blocks):
            if layer < self.first:
                continue

            def pre(module, args, kwargs, layer=layer, block=block):
                return self.before_block(layer, block, args, kwargs)

            def withdraw(module, args, output, layer=layer, block=block):
                if self.intrinsic is not None:
                    self.intrinsic.withdraw(block.attn)

            def done(module, args, output, layer=layer):
                self.call.pop(layer, None)

            handles.append(block.register_forward_pre_hook(pre, with_kwargs=True))
            handles.append(block.attn.register_forward_hook(withdraw))
            handles.append(block.register_forward_hook(done))
            if layer not in self.weak:
                continue
            handles.append(
                block.attn.add_v_proj.register_forward_hook(lambda m, a, o, layer=layer: self.fuse_values(layer, o))
            )
            if self.config.inject_at == "attn-input":
                handles.append(
                    block.attn.register_forward_pre_hook(
                        lambda m, a, k, layer=layer: self.shift_attention_input(layer, a, k), with_kwargs=True
                    )
                )
        return [h.remove for h in handles]


def apply_focal_guidance(
    adapter: Any, config: FocalGuidanceConfig, guidance: HunyuanVideo15Guidance, intrinsic: Any = None
) -> FocalGuidanceHandle:
    """Install FSG and/or the Attention Cache on the weak double-stream blocks.

    ``intrinsic``: the recorder's channel for the unguided attention inputs of the weak
    blocks and of every block after the first weak one.
    """
    check_supported(None, adapter, config.weak_layers)
    removers: list[Any] = []
    try:
        state, cache, active = install_step_source(
            adapter, config, guidance.token_indices, guidance.grid, removers, _TRACKER
        )
        blocks = list(adapter.denoisers()[0].transformer_blocks)
        hooks = _Blocks(blocks, min(config.weak_layers), guidance, config, cache, state, active, intrinsic)
        removers.extend(hooks.install())
    except BaseException:
        for remover in reversed(removers):
            remover()
        raise
    return FocalGuidanceHandle(removers, state, cache)
