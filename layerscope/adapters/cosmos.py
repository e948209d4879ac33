"""Cosmos-Predict2 Video2World (``Cosmos2VideoToWorldPipeline``, a cross-attention DiT) adapter.

Facts used (diffusers 0.42 ``transformer_cosmos.py`` and ``pipeline_cosmos2_video2world.py``):

* Each ``CosmosTransformerBlock`` runs ``norm1`` -> ``attn1`` (self-attention with RoPE),
  adds it gated, then ``norm2`` (``CosmosAdaLayerNormZero``: LayerNorm without affine,
  ``* (1 + scale) + shift`` from the timestep, plus a gate) and calls
  ``attn2(norm2(x), encoder_hidden_states=text, attention_mask=None)``, adding its output
  times the gate.  ``attn2`` is a plain ``Attention`` (``CosmosAttnProcessor2_0``) whose
  keys and values are the T5 rows themselves (``cross_attention_dim = text_embed_dim``,
  1024 = T5-11B's width; no caption projection in Predict2), no RoPE on the cross
  attention, ``norm_q``/``norm_k`` RMS norms over the head dimension applied on the
  (B, H, S, d) layout.  There is no image branch (``img_context`` is a Cosmos 2.5 option).
* Text: ``T5EncoderModel`` (T5-11B in the published pipelines) on the prompt as given (no
  cleaning, no template), special tokens on (a trailing ``</s>``), right-padded and
  truncated to ``max_sequence_length`` (512, which :meth:`CosmosPredict2Adapter.call_kwargs`
  passes explicitly).  The encoder runs *with* the mask, then the pipeline sets every
  padding row to zero; the transformer gets no mask, so ``attn2`` attends over all 512
  rows, the zero rows having key and value 0 (``to_k``/``to_v`` have no bias).
* Image conditioning: the image (repeated to ``num_frames``) is VAE-encoded; latent frame 0
  of the noisy latents is replaced by the image's latent and gets its own small timestep
  (``sigma_conditioning``), and a ``condition_mask`` channel marks it.  No CLIP image
  encoder exists.
* Classifier-free guidance (``guidance_scale > 1``): two transformer calls per step, cond
  (``prompt_embeds``) first, then uncond (``negative_prompt_embeds``), at the same timestep
  and without ``cache_context``: :attr:`CosmosPredict2Adapter.branch_source` is
  ``call_order``.  Cosmos combines them as ``cond + w * (cond - uncond)`` (so ``w`` = 7,
  the default, is 8 in the usual convention).
* Token grid: the Wan2.1 VAE (``AutoencoderKLWan``; the pipeline derives 8x spatial from
  ``2 ** len(temperal_downsample)`` and 4x temporal from ``2 ** sum(temperal_downsample)``),
  then the transformer's ``patch_size`` (1, 2, 2): 16 px per token, latent frames
  ``(F - 1) // 4 + 1``, tokens ordered (frame, y, x).  ``num_frames`` must be ``4n + 1``
  (the VAE decodes T latent frames to ``4(T - 1) + 1``); the pipeline checks height and
  width % 16.  704x1280x93 (the defaults) gives 24x88x160 latents, a 24x44x80 token grid.

The map (``hidden`` probe, the paper's Eq. 10): for keyword k and visual token u,
``cos(V_k, z_u)`` where z is ``norm2``'s modulated output, the hidden state entering
``attn2``, and V_k is the mean of ``attn2.to_v``'s output over the keyword's T5 rows (token
indices of the prompt's own tokenization).  The uncond branch reads the negative prompt's
rows at the same indices, as every family does.  ``attention``: softmax of ``attn2``'s
normalised query/key over all 512 rows (unmasked, as the model does), mass on the keyword
rows, heads averaged.  ``output``, ``contrastive`` and ``influence`` (``attn2`` re-run
with the keyword rows' inputs replaced by the last padding row's, a zero row) are
supported too.  Focal Guidance is refused (``fg_intervene.plugin.UNSUPPORTED_FAMILIES``):
no image rows or image value projection give Eq. 8 its anchor.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from layerscope.adapters.base import AdapterError, ConfigGeometry, ModelAdapter, ProbeSite, RawT5PromptRows
from layerscope.adapters.cross_attention import cross_attention_sites

#: diffusers' default ``max_sequence_length`` of ``Cosmos2VideoToWorldPipeline`` (T5 rows per prompt)
COSMOS_TEXT_TOKENS = 512
#: ``check_inputs``: height and width divisible by 16
_PIPELINE_MULTIPLE = 16
#: ``__call__``'s default ``fps`` (it scales the temporal RoPE)
_DEFAULT_FPS = 16


def _vae_strides(downsample: list[bool]) -> tuple[int, int]:
    """(temporal, spatial) as the pipeline computes them from ``AutoencoderKLWan.temperal_downsample``."""
    return 2 ** sum(bool(v) for v in downsample), 2 ** len(downsample)


class CosmosPredict2Adapter(RawT5PromptRows, ModelAdapter):
    name = "cosmos-predict2"
    pipeline_classes = ("Cosmos2VideoToWorldPipeline",)
    branch_source = "call_order"

    def denoisers(self) -> list[torch.nn.Module]:
        return [self.pipe.transformer]

    def probe_sites(self, denoiser: torch.nn.Module) -> list[ProbeSite]:
        def text_only(index: int, block: torch.nn.Module) -> None:
            if getattr(block, "img_context", False):
                raise AdapterError(
                    f"transformer_blocks.{index}.attn2 has an image context branch (Cosmos 2.5); "
                    "only Cosmos-Predict2's text-only cross-attention is mapped"
                )

        blocks = denoiser.transformer_blocks  # norm_q/norm_k run on (B, H, S, d)
        return cross_attention_sites(blocks, "transformer_blocks", heads_first=True, check=text_only)

    def num_layers(self) -> int:
        return int(self.pipe.transformer.config.num_layers)

    def _patch(self) -> tuple[int, int, int]:
        p_t, p_h, p_w = (int(p) for p in self.pipe.transformer.config.patch_size)
        return p_t, p_h, p_w

    def token_grid(self, num_frames: int, height: int, width: int) -> tuple[int, int, int]:
        p_t, p_h, p_w = self._patch()
        latent_frames = (num_frames - 1) // self.pipe.vae_scale_factor_temporal + 1
        spatial = self.pipe.vae_scale_factor_spatial
        return latent_frames // p_t, height // (spatial * p_h), width // (spatial * p_w)

    def spatial_multiple(self) -> int:
        _, p_h, p_w = self._patch()
        spatial = int(self.pipe.vae_scale_factor_spatial)
        return math.lcm(spatial * p_h, spatial * p_w, _PIPELINE_MULTIPLE)

    def frame_multiple(self) -> int:
        return int(self.pipe.vae_scale_factor_temporal)

    def text_sequence_length(self) -> int:
        return COSMOS_TEXT_TOKENS

    def call_kwargs(self, config: Any) -> dict[str, Any]:
        """Guidance (CFG > 1), the T5 length the rows assume, and the negative prompt the store records.

        Without ``--negative-prompt`` the pipeline would substitute its own long
        ``DEFAULT_NEGATIVE_PROMPT``; the store records ``""`` then, so ``""`` is what is passed.
        """
        return {
            "guidance_scale": config.guidance_scale,
            "negative_prompt": config.negative_prompt or "",
            "max_sequence_length": COSMOS_TEXT_TOKENS,
        }

    def describe(self) -> dict[str, Any]:
        config = self.pipe.transformer.config
        p_t, p_h, p_w = self._patch()
        spatial = int(self.pipe.vae_scale_factor_spatial)
        return {
            "adapter": self.name,
            "pipeline_class": type(self.pipe).__name__,
            "transformer_class": type(self.pipe.transformer).__name__,
            "num_layers": self.num_layers(),
            "inner_dim": int(config.num_attention_heads * config.attention_head_dim),
            "heads": int(config.num_attention_heads),
            "patch_size": [p_t, p_h, p_w],
            "vae_compression": [int(self.pipe.vae_scale_factor_temporal), spatial, spatial],
            "text_tokens": COSMOS_TEXT_TOKENS,
            "visual_state": "norm2 output entering attn2 (AdaLN-modulated LayerNorm)",
            "cfg_layout": "two calls per step: cond, then uncond (call order)",
            "experts": 1,
        }

    # -- planning from configs (``layerscope plan``) -------------------------------------
    @classmethod
    def geometry_from_configs(cls, configs: dict[str, Any], num_frames: int, height: int, width: int) -> ConfigGeometry:
        """:meth:`token_grid`'s arithmetic from configs; the strides as the pipeline derives them
        from ``AutoencoderKLWan.temperal_downsample`` (not its ``scale_factor_*`` fields)."""
        transformer, vae = configs["transformer"], configs.get("vae") or {}
        if not vae:
            raise AdapterError("Cosmos-Predict2's strides need vae/config.json (AutoencoderKLWan); none was given")
        temporal, spatial = _vae_strides(vae["temperal_downsample"])
        p_t, p_h, p_w = (int(p) for p in transformer["patch_size"])
        latent_frames = (num_frames - 1) // temporal + 1
        heads = int(transformer["num_attention_heads"])
        return ConfigGeometry(
            grid=(latent_frames // p_t, height // (spatial * p_h), width // (spatial * p_w)),
            text_tokens=COSMOS_TEXT_TOKENS,
            num_layers=int(transformer["num_layers"]),
            heads=heads,
            width=heads * int(transformer["attention_head_dim"]),
            spatial_multiple=math.lcm(spatial * p_h, spatial * p_w, _PIPELINE_MULTIPLE),
            frame_multiple=temporal,
            video_frames=num_frames,
            notes=("CFG (--guidance > 1) runs two transformer calls per step (cond, then uncond)",),
        )

    @classmethod
    def forward_inputs_from_configs(cls, configs: dict[str, Any], geometry: ConfigGeometry) -> dict[str, Any]:
        """One call on meta tensors, shaped as the pipeline passes them: (B, C, T, H, W) latents, a
        per-frame (B, 1, T, 1, 1) timestep, 512 T5 rows, the condition and padding masks."""
        transformer = configs["transformer"]
        frames, rows, columns = geometry.grid
        p_t, p_h, p_w = (int(p) for p in transformer["patch_size"])
        t, h, w = frames * p_t, rows * p_h, columns * p_w
        text_width = int(
            transformer.get("crossattn_proj_in_channels", 1024)
            if transformer.get("use_crossattn_projection")
            else transformer["text_embed_dim"]
        )
        meta = torch.device("meta")
        return {
            # the pipeline passes in_channels - 1 latent channels; condition_mask is the last one
            "hidden_states": torch.empty(1, int(transformer["in_channels"]) - 1, t, h, w, device=meta),
            "timestep": torch.empty(1, 1, t, 1, 1, device=meta),
            "encoder_hidden_states": torch.empty(1, COSMOS_TEXT_TOKENS, text_width, device=meta),
            "fps": _DEFAULT_FPS,
            "condition_mask": torch.empty(1, 1, t, h, w, device=meta),
            # the pipeline's is at pixel size; the transformer resizes it to the latent grid
            "padding_mask": torch.empty(1, 1, h, w, device=meta),
            "return_dict": False,
        }
