"""Focal Guidance wired into a Wan I2V transformer (CrossDiT).

Where each equation acts, in every weak block ``blocks.l`` of every expert:

* Eq. 8 (fusion): a forward hook on ``attn2.to_v`` (the text value projection) adds
  lambda_txt * V_k^vis to the keyword rows; queries and keys are untouched.
* Eq. 9 (latent injection) and Eq. 13 (Attention Cache), ``inject_at="hidden"`` (the
  default, the paper's "reference frame within the DiT layer's hidden state"): the term
  delta is added to the block's residual stream z right before the cross-attention
  sublayer.  diffusers' block computes ``z + attn2(norm2(z))``; hooks make it
  ``(z + delta) + attn2(norm2(z + delta))``: a pre-hook on ``norm2`` reads z, a pre-hook
  on ``attn2`` swaps its input for ``norm2(z + delta)``, a forward hook adds delta to
  ``attn2``'s output, so the residual carries delta into the feed-forward and every later
  block.  (Summation order differs from a literal ``z + delta`` by float rounding only.)
  The recorder's intrinsic maps of every later block are computed on its input minus the
  deltas carried in (``CarriedTerms`` offered through ``IntrinsicInputs``): norm2(z - carried).
  ``inject_at="attn-input"``: delta is added to ``norm2(z)``, the cross-attention's query
  input, only.
* V_k^vis = ``attn2.add_v_proj`` (the image value projection, W_v^vis) of the projected
  anchor P_v(v_anchor,k), with P_v = ``condition_embedder.image_embedder`` (Eq. 7),
  both taken from the expert that runs the block (Wan2.2 has two).  An expert without
  the image-context branch (Wan2.2 I2V-A14B: ``add_v_proj`` is None) has no W_v^vis:
  Focal Guidance refuses it in one line before anything is recorded.

Guidance applies to the configured branch (cond by default); hooks are removed after the
run and the model's weights are never touched.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from fg_intervene import fsg
from fg_intervene.attention_cache import inject
from fg_intervene.config import ConfigError, FocalGuidanceConfig
from fg_intervene.installation import CarriedTerms, FocalGuidanceHandle, install_step_source

_TRACKER = "fg_intervene_step_tracker"


@dataclass
class Guidance:
    """Everything precomputed once per run (the anchors depend only on image and prompt)."""

    keywords: list[str]
    token_indices: list[list[int]]  # DiT text-token rows of each keyword
    keyword_sims: torch.Tensor  # (K, N) S_k over CLIP patches
    region: torch.Tensor  # (K, H', W') Eq. 9 weights, zero outside R_k
    visual_values: dict[tuple[int, int], torch.Tensor]  # (expert, weak layer) -> (K, D) V_k^vis, constants
    grid: tuple[int, int, int]  # (F', H', W') of the run
    projected: dict[int, torch.Tensor] = field(default_factory=dict)  # expert -> (K, dim) P_v(anchor)
    scores: list[dict[str, Any]] = field(default_factory=list)


def pipeline_image_tokens(pipe: Any, image: Any) -> torch.Tensor:
    """The pipeline's own image context c_img: penultimate-layer patch tokens (N, D), no CLS."""
    tokens = pipe.encode_image(image, device=pipe._execution_device)
    return tokens[0, 1:].float()


def prepare_guidance(pipe: Any, adapter: Any, config: FocalGuidanceConfig, inputs: Any, clip: Any) -> Guidance:
    """Select keywords (Eq. 6), build anchors and V_k^vis (Eq. 7), regions (Eq. 9)."""
    from layerscope.clip import image_patch_features, text_token_features
    from layerscope.keywords import KeywordError, map_keywords

    num_layers = adapter.num_layers()
    bad = [layer for layer in config.weak_layers if layer >= num_layers]
    if bad:
        raise ConfigError(f"weak layer {bad[0]} is out of range; this model has layers 0-{num_layers - 1}")
    if not config.weak_layers:
        raise ConfigError("no weak layers: pass --ranking ranking.json or set weak_layers in the config")
    experts = adapter.denoisers()
    check_supported(pipe, adapter, config.weak_layers)

    pixels = _clip_pixels(pipe, inputs.image)
    _, patch_joint = image_patch_features(clip, pixels)
    image_tokens = pipeline_image_tokens(pipe, inputs.image)
    if image_tokens.shape[0] != patch_joint.shape[0]:
        raise ConfigError(
            f"the CLIP checkpoint sees {patch_joint.shape[0]} patches but the pipeline's image encoder "
            f"{image_tokens.shape[0]}; use the open_clip model that matches the pipeline's image encoder"
        )
    text_features, pieces = text_token_features(clip, inputs.prompt.lower())
    sign = config.resolved_for(getattr(inputs, "model_dir", None))[0].selection_sign
    similarity = fsg.similarity_matrix(text_features, patch_joint, sign)
    words = fsg.group_words(pieces)
    scores = fsg.score_words(similarity, words, config.tau_sel, config.stopwords)
    keywords = config.keywords or fsg.select_keywords(scores, config.tau_sel)
    try:
        mapped = map_keywords(inputs.prompt, keywords, pipe.tokenizer)
    except KeywordError as error:
        raise ConfigError(f"Focal Guidance keywords: {error}") from None
    for item in mapped:
        if max(item.token_indices) >= adapter.text_sequence_length():
            raise ConfigError(
                f"keyword {item.keyword!r} lies beyond the text encoder's {adapter.text_sequence_length()} tokens"
            )
    # CLIP runs on the CPU; move its similarities to where the pipeline's tokens are
    keyword_sims = torch.stack([fsg.keyword_similarity(similarity, words, k) for k in keywords]).to(image_tokens.device)

    side = int(round(patch_joint.shape[0] ** 0.5))
    _, height, width = inputs.grid
    region = fsg.region_weights(keyword_sims, (side, side), (height, width), config.tau_region)
    anchors = fsg.visual_anchors(keyword_sims, image_tokens)  # (K, D_img)
    visual_values, projections = {}, {}
    with torch.no_grad():
        for expert, denoiser in enumerate(experts):  # each expert with its own P_v and W_v^vis
            embedder = denoiser.condition_embedder.image_embedder
            device, dtype = _param_device_dtype(embedder)
            projections[expert] = embedder(anchors[None].to(device=device, dtype=dtype))[0]  # P_v: (K, dim)
            for layer in config.weak_layers:
                visual_values[(expert, layer)] = anchor_values(denoiser.blocks[layer], projections[expert])
    return Guidance(
        keywords=list(keywords),
        token_indices=[list(m.token_indices) for m in mapped],
        keyword_sims=keyword_sims,
        region=region,
        visual_values=visual_values,
        projected=projections,
        grid=tuple(inputs.grid),
        scores=[{"word": s.word, "score": round(s.score, 6), "selected": s.selected} for s in scores],
    )


def anchor_values(block: torch.nn.Module, projected: torch.Tensor) -> torch.Tensor:
    """V_k^vis = W_v^vis P_v(anchor) with this block's ``attn2.add_v_proj`` (Eq. 7).

    ``F.linear`` with the module's weights keeps every hook off it; under autograd the
    result depends on ``add_v_proj``'s parameters, so post-training can learn through it.
    """
    add_v = block.attn2.add_v_proj
    return torch.nn.functional.linear(projected.to(add_v.weight.dtype), add_v.weight, add_v.bias)


def check_supported(pipe: Any, adapter: Any, weak_layers: list[int]) -> None:
    """FSG's anchors need the pipeline's image encoder and every expert's image-context projections."""
    if getattr(pipe, "image_encoder", None) is None:
        raise ConfigError(
            f"this pipeline has no image encoder ({type(pipe).__name__} without image context, e.g. Wan2.2 "
            "I2V-A14B), so Focal Guidance has no visual anchor; use a Wan2.1-I2V checkpoint"
        )
    for name, denoiser in zip(adapter.expert_names(), adapter.denoisers()):
        embedder = getattr(getattr(denoiser, "condition_embedder", None), "image_embedder", None)
        in_range = [layer for layer in weak_layers if layer < len(denoiser.blocks)]
        missing = [layer for layer in in_range if getattr(denoiser.blocks[layer].attn2, "add_v_proj", None) is None]
        if embedder is None or missing:
            where = f"blocks.{missing[0]}.attn2.add_v_proj" if missing else "condition_embedder.image_embedder"
            raise ConfigError(
                f"{name} has no image-context branch ({where} is None), so Focal Guidance has no W_v^vis for it; "
                "use a checkpoint whose experts take image context"
            )


def _param_device_dtype(module: torch.nn.Module) -> tuple[torch.device, torch.dtype]:
    parameter = next(module.parameters())
    return parameter.device, parameter.dtype


def _clip_pixels(pipe: Any, image: Any) -> torch.Tensor:
    """The reference image preprocessed exactly as the pipeline's image encoder sees it."""
    return pipe.image_processor(images=image, return_tensors="pt")["pixel_values"].float()


def apply_focal_guidance(
    adapter: Any, config: FocalGuidanceConfig, guidance: Guidance, intrinsic: Any = None
) -> FocalGuidanceHandle:
    """Install FSG and/or the Attention Cache on the weak layers of every denoiser.

    ``intrinsic`` (:class:`layerscope.interventions.IntrinsicInputs`, from the recorder):
    where every block after the first weak one offers its cross-attention input without
    the deltas the residual carried in.
    """
    removers: list[Any] = []
    carried = CarriedTerms() if config.inject_at == "hidden" else None
    try:
        state, cache, active = install_step_source(
            adapter, config, guidance.token_indices, guidance.grid, removers, _TRACKER
        )
        for expert, denoiser in enumerate(adapter.denoisers()):
            if carried is not None:
                removers.extend(_hook_carried_terms(denoiser.blocks, min(config.weak_layers), carried, intrinsic))
            for layer in config.weak_layers:
                block = denoiser.blocks[layer]
                values = _live_values(
                    block, guidance.projected[expert], guidance.visual_values[(expert, layer)], config
                )
                if config.fsg:
                    removers.append(_hook_text_values(block.attn2, guidance, values, config, active).remove)
                delta = _delta_function(guidance, values, config, cache, state)
                if config.inject_at == "hidden":
                    removers.extend(_hook_hidden_state(block, delta, active, carried))
                else:
                    removers.append(_hook_attention_input(block.attn2, delta, active).remove)
    except BaseException:
        for remover in reversed(removers):
            remover()
        raise
    return FocalGuidanceHandle(removers, state, cache)


def _live_values(block: torch.nn.Module, projected: torch.Tensor, constant: torch.Tensor, config: FocalGuidanceConfig):
    """V_k^vis for the current call: in the graph when autograd is on and anchors learn, else the constant."""

    def values() -> torch.Tensor:
        if config.anchor_gradients and torch.is_grad_enabled():
            return anchor_values(block, projected)
        return constant

    return values


def _hook_text_values(attn, guidance: Guidance, values, config: FocalGuidanceConfig, active):
    def hook(module, args, output):
        if not active():
            return None
        return fsg.fuse_text_values(output, guidance.token_indices, values(), config.lambda_txt)

    return attn.to_v.register_forward_hook(hook)


def _delta_function(guidance: Guidance, values_of, config: FocalGuidanceConfig, cache, state):
    """delta(z) for one weak block: Eq. 9's reference-frame term plus Eq. 13's cache term, or None."""

    def delta(hidden: torch.Tensor) -> torch.Tensor | None:
        total = None
        values = values_of()
        if config.fsg:
            zero = torch.zeros_like(hidden)
            total = fsg.inject_reference_frame(zero, guidance.region.to(hidden.device), values, config.lambda_lat)
        if cache is not None:
            aggregated = cache.current(config.tau_cache, state.branch)
            if aggregated is not None:
                total = inject(
                    torch.zeros_like(hidden) if total is None else total, aggregated, values, config.lambda_cache
                )
        return total

    return delta


def _hook_carried_terms(blocks: Any, first: int, carried: CarriedTerms, intrinsic: Any) -> list[Any]:
    """Reset the carried sum at the first weak block; offer later blocks' unguided attention inputs.

    The offer is lazy (computed only if a probe records this call) and calls
    ``norm2.forward`` directly, so no hook (FG's own ``read_residual`` included) sees it.
    """
    removers = [blocks[first].norm2.register_forward_pre_hook(lambda module, args: carried.reset()).remove]
    if intrinsic is None:
        return removers
    for block in list(blocks)[first + 1 :]:

        def offer(module, args, block=block):
            total = carried.total
            if total is not None:
                z = args[0]
                intrinsic.offer(block.attn2, lambda: block.norm2.forward(z - total.to(z.dtype)))

        def withdraw(module, args, output, block=block):
            intrinsic.withdraw(block.attn2)

        removers.append(block.norm2.register_forward_pre_hook(offer).remove)
        removers.append(block.attn2.register_forward_hook(withdraw).remove)
    return removers


def _hook_hidden_state(block: torch.nn.Module, delta, active, carried: CarriedTerms | None = None) -> list[Any]:
    """Make the block compute ``(z + delta) + attn2(norm2(z + delta))`` (module docstring)."""
    seen: dict[str, torch.Tensor] = {}

    def read_residual(module, args):
        if active():
            seen["z"] = args[0]  # diffusers passes z.float() to norm2
        return None

    def swap_query_input(module, args, kwargs):
        z = seen.get("z")
        if z is None:
            return None
        query = args[0] if args else kwargs["hidden_states"]
        change = delta(query)
        if change is None:
            seen.clear()
            return None
        seen["delta"] = change
        # norm2.forward: calling the module would fire its pre-hooks (read_residual, probes) again
        shifted = block.norm2.forward((z.type_as(query) + change).float()).type_as(query)
        if args:
            return (shifted, *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": shifted}

    def carry_in_residual(module, args, output):
        change = seen.pop("delta", None)
        seen.clear()
        if change is None:
            return None
        if carried is not None:
            carried.add(change.to(output.dtype))
        return output + change.to(output.dtype)

    return [
        block.norm2.register_forward_pre_hook(read_residual).remove,
        block.attn2.register_forward_pre_hook(swap_query_input, with_kwargs=True).remove,
        block.attn2.register_forward_hook(carry_in_residual).remove,
    ]


def _hook_attention_input(attn, delta, active):
    """``inject_at="attn-input"``: add delta to norm2(z), the cross-attention's query input, only."""

    def hook(module, args, kwargs):
        if not active():
            return None
        hidden = args[0] if args else kwargs["hidden_states"]
        change = delta(hidden)
        if change is None:
            return None
        changed = hidden + change.to(hidden.dtype)
        if args:
            return (changed, *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": changed}

    return attn.register_forward_pre_hook(hook, with_kwargs=True)
