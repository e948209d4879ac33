"""LTX-Video image-to-video (``LTXImageToVideoPipeline``, a cross-attention DiT) adapter.

Facts used (diffusers 0.42 ``transformer_ltx.py`` and ``pipeline_ltx_image2video.py``):

* Each ``LTXVideoTransformerBlock`` runs ``attn1`` (self-attention, on
  ``norm1(x) * (1 + scale) + shift`` with RoPE), adds it gated to the residual stream, then
  calls ``attn2(x, encoder_hidden_states=text, image_rotary_emb=None,
  attention_mask=bias)`` on the residual stream *itself*: no norm and no AdaLN modulation
  before the text cross-attention (``norm2`` only feeds the feed-forward).  Its output is
  added ungated.  ``attn2`` has no image branch: the text rows are its only keys.
* Text: ``T5EncoderModel`` on the prompt as given (no cleaning, no template), tokenized with
  special tokens (a trailing ``</s>``), right-padded and truncated to
  ``max_sequence_length`` (diffusers' default 128, which :meth:`LTXVideoAdapter.call_kwargs`
  passes explicitly).  The encoder runs without a mask, so padding rows have values; the
  transformer turns the tokenizer's mask into an additive bias (0 kept, -10000 padding,
  shape (B, 1, M)) that every ``attn2`` receives as ``attention_mask``.
  ``caption_projection`` maps T5 rows to the inner width, which is also ``attn2``'s
  ``cross_attention_dim``.
* Image conditioning: the image's VAE latent is latent frame 0 of the sequence, and its
  tokens get timestep 0 (``timestep`` is (B, N): ``t * (1 - conditioning_mask)``); the
  scheduler never updates frame 0.  There is no CLIP image encoder.
* Classifier-free guidance is one call per step with the batch ``[uncond; cond]``
  (``torch.cat([negative, prompt])``) inside ``cache_context("cond_uncond")``:
  :attr:`LTXVideoAdapter.branch_source` is ``batch``, so each branch's map is read from
  its own batch row (row 1 = cond under CFG; row 0 when guidance is off).
* Tokens are ordered (frame, y, x); the VAE compresses 32x spatially (patch 4 x three 2x
  stages) and 8x in time (three 2x stages), the transformer patches 1 x 1 x 1 in the
  published checkpoints (both read from the pipeline here, not assumed).  ``num_frames``
  must be ``8n + 1``: latent frames are ``(F - 1) // 8 + 1`` and decode back to exactly F.

The map (``hidden`` probe, the paper's Eq. 10): for keyword k and visual token u,
``cos(V_k, z_u)`` where z is the residual stream entering ``attn2`` (after ``attn1``'s
gated update; no norm) and V_k is the mean of ``attn2.to_v``'s output over the keyword's
T5 rows (the rows of the prompt's own tokenization, i.e. token indices).  The uncond
branch reads the negative prompt's rows at the same indices, as every family does.
``attention``: softmax of ``attn2``'s query/key (after ``norm_q``/``norm_k``, no RoPE) with
the model's additive padding bias, mass on the keyword rows, heads averaged.  ``output``,
``contrastive`` and ``influence`` (``attn2`` re-run with the keyword rows' inputs replaced
by the last padding row's) are supported too.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from layerscope.adapters.base import AdapterError, ConfigGeometry, ModelAdapter, ProbeSite, RawT5PromptRows
from layerscope.adapters.cross_attention import cross_attention_sites

#: diffusers' default ``max_sequence_length`` of the LTX-Video pipelines (T5 rows per prompt)
LTX_TEXT_TOKENS = 128
#: ``check_inputs`` of the LTX pipelines: height and width divisible by 32
_PIPELINE_MULTIPLE = 32


class LTXVideoAdapter(RawT5PromptRows, ModelAdapter):
    name = "ltx-video"
    pipeline_classes = ("LTXImageToVideoPipeline",)
    branch_source = "batch"
    #: the rows of one CFG call, in batch order (``torch.cat([negative, prompt])``)
    batch_branches = ("uncond", "cond")

    def denoisers(self) -> list[torch.nn.Module]:
        return [self.pipe.transformer]

    def probe_sites(self, denoiser: torch.nn.Module) -> list[ProbeSite]:
        return cross_attention_sites(denoiser.transformer_blocks, "transformer_blocks")

    def num_layers(self) -> int:
        return int(self.pipe.transformer.config.num_layers)

    def _patch(self) -> tuple[int, int]:
        config = self.pipe.transformer.config
        return int(config.patch_size_t), int(config.patch_size)

    def token_grid(self, num_frames: int, height: int, width: int) -> tuple[int, int, int]:
        p_t, p = self._patch()
        latent_frames = (num_frames - 1) // self.pipe.vae_temporal_compression_ratio + 1
        spatial = self.pipe.vae_spatial_compression_ratio * p
        return latent_frames // p_t, height // spatial, width // spatial

    def spatial_multiple(self) -> int:
        stride = int(self.pipe.vae_spatial_compression_ratio * self._patch()[1])
        return math.lcm(stride, _PIPELINE_MULTIPLE)

    def frame_multiple(self) -> int:
        return int(self.pipe.vae_temporal_compression_ratio)

    def text_sequence_length(self) -> int:
        return LTX_TEXT_TOKENS

    def call_kwargs(self, config: Any) -> dict[str, Any]:
        """Guidance as diffusers' ``guidance_scale`` (CFG > 1), and the T5 length the rows assume."""
        return {
            "guidance_scale": config.guidance_scale,
            "negative_prompt": config.negative_prompt,
            "max_sequence_length": LTX_TEXT_TOKENS,
        }

    def describe(self) -> dict[str, Any]:
        config = self.pipe.transformer.config
        p_t, p = self._patch()
        return {
            "adapter": self.name,
            "pipeline_class": type(self.pipe).__name__,
            "transformer_class": type(self.pipe.transformer).__name__,
            "num_layers": self.num_layers(),
            "inner_dim": int(config.num_attention_heads * config.attention_head_dim),
            "heads": int(config.num_attention_heads),
            "patch_size": [p_t, p, p],
            "vae_compression": [
                int(self.pipe.vae_temporal_compression_ratio),
                int(self.pipe.vae_spatial_compression_ratio),
                int(self.pipe.vae_spatial_compression_ratio),
            ],
            "text_tokens": LTX_TEXT_TOKENS,
            "visual_state": "residual stream entering attn2 (no norm, no modulation)",
            "cfg_layout": "one call per step, batch rows [uncond; cond]",
            "experts": 1,
        }

    # -- planning from configs (``layerscope plan``; written by the plan helper) ----------
    @classmethod
    def geometry_from_configs(cls, configs: dict[str, Any], num_frames: int, height: int, width: int) -> ConfigGeometry:
        """:meth:`token_grid`'s arithmetic from configs; the VAE strides as ``AutoencoderKLLTXVideo``
        computes them (``patch_size[_t] * 2 ** sum(spatio_temporal_scaling)`` unless set)."""
        transformer, vae = configs["transformer"], configs.get("vae") or {}
        if not vae:
            raise AdapterError("LTX-Video's strides need vae/config.json (AutoencoderKLLTXVideo); none was given")
        scaling = 2 ** sum(bool(v) for v in vae["spatio_temporal_scaling"])
        spatial = int(vae.get("spatial_compression_ratio") or int(vae["patch_size"]) * scaling)
        temporal = int(vae.get("temporal_compression_ratio") or int(vae["patch_size_t"]) * scaling)
        p_t, p = int(transformer["patch_size_t"]), int(transformer["patch_size"])
        latent_frames = (num_frames - 1) // temporal + 1
        heads = int(transformer["num_attention_heads"])
        return ConfigGeometry(
            grid=(latent_frames // p_t, height // (spatial * p), width // (spatial * p)),
            text_tokens=LTX_TEXT_TOKENS,
            num_layers=int(transformer["num_layers"]),
            heads=heads,
            width=heads * int(transformer["attention_head_dim"]),
            spatial_multiple=math.lcm(spatial * p, _PIPELINE_MULTIPLE),
            frame_multiple=temporal,
            video_frames=num_frames,
        )

    @classmethod
    def forward_inputs_from_configs(cls, configs: dict[str, Any], geometry: ConfigGeometry) -> dict[str, Any]:
        """One call on meta tensors: packed latents (B, N, C), 128 T5 rows and their mask, the latent grid."""
        transformer = configs["transformer"]
        frames, rows, columns = geometry.grid
        meta = torch.device("meta")
        return {
            "hidden_states": torch.empty(1, frames * rows * columns, int(transformer["in_channels"]), device=meta),
            "encoder_hidden_states": torch.empty(1, LTX_TEXT_TOKENS, int(transformer["caption_channels"]), device=meta),
            "timestep": torch.empty(1, device=meta),
            "encoder_attention_mask": torch.empty(1, LTX_TEXT_TOKENS, device=meta),
            "num_frames": frames,
            "height": rows,
            "width": columns,
            "rope_interpolation_scale": (1.0, 1.0, 1.0),
            "return_dict": False,
        }
