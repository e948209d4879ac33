"""CogVideoX-I2V (``CogVideoXImageToVideoPipeline``: one joint attention over ``[text; video]``) adapter.

Facts used (diffusers 0.42 ``cogvideox_transformer_3d.py``, ``attention_processor.py``
``CogVideoXAttnProcessor2_0``, ``embeddings.py`` ``CogVideoXPatchEmbed`` and
``pipeline_cogvideox_image2video.py``):

* Every ``CogVideoXBlock`` runs ``norm1`` (``CogVideoXLayerNormZero``, adaptive over both
  streams) and then ``attn1(hidden_states=norm(visual), encoder_hidden_states=norm(text),
  image_rotary_emb=...)``.  The processor concatenates ``[text; visual]`` (text FIRST) and
  runs one ``to_q``/``to_k``/``to_v`` over the joint sequence, ``norm_q``/``norm_k`` (layer
  norms over the head dimension, applied after the (B, H, S, d) transpose), the rotary
  embedding on the visual rows of queries and keys only, full attention with no mask
  (T5's padding rows are attended like any other), and ``to_out[0]`` over all rows,
  split back into text and visual afterwards.
* **The map** (the paper's Eq. 10): z is the visual ``hidden_states`` argument of
  ``attn1`` (the visual rows after ``norm1``, ordered (F', H', W')); V_k is the mean of the
  keyword's rows of ``attn1.to_v``'s output among its first ``S - N`` (text) rows; the map
  is cos(V_k, z) per visual token.  The ``output`` probe reads the last N rows of
  ``to_out[0]``'s input; the ``attention`` probe is the model's own joint softmax (each
  visual query, rotated, over all text and rotated visual keys) summed over the keyword's
  text keys and averaged over heads; ``contrastive`` subtracts the same map of the mean
  value of the prompt's other words.  ``influence`` is refused: re-running the joint
  attention with text rows replaced also changes every other text row's output, and no
  rebuild of that call is written here.
* **Keyword rows**: the pipeline tokenizes the prompt alone (no template, no cleaning)
  with its T5 tokenizer, ``padding="max_length"``, ``max_sequence_length`` (226, the
  transformer's ``max_text_seq_length``, which :meth:`CogVideoXAdapter.call_kwargs`
  passes), truncation keeping the final ``</s>``.  The text encoder's output rows are the
  first rows of the joint sequence, so a keyword's rows are its T5 token indices; a
  keyword at index 225 or beyond is truncated away and refused.
* **Token grid**: VAE strides 8 (spatial) and 4 (temporal: ``(F - 1) / 4 + 1`` latent
  frames), then ``patch_size`` 2 per spatial axis.  CogVideoX1.5 (``patch_size_t`` 2)
  patches 2 latent frames into one token; the pipeline pads the latent frames up to a
  multiple of ``patch_size_t`` by prepending frames, so F' = ceil(latent frames / 2), and
  drops the padding again before decoding.  ``--frames`` must be 4n+1; height and width
  multiples of 16.  CogVideoX-5b-I2V's learned positional embeddings fix its size at
  ``sample_height`` x ``sample_width`` latents (480x720 pixels): other sizes are refused.
  The conditioning image enters as latent channels concatenated onto the noisy latents
  (``in_channels = 2 x latent``), so no token of the sequence is the image.
* **Branches**: with ``guidance_scale > 1`` the pipeline runs ONE transformer call per step
  with the batch ``[uncond; cond]`` (``torch.cat([negative, prompt])``, inside
  ``cache_context("cond_uncond")``): ``branch_source = "batch"`` makes the recorder read
  row 1 for ``cond`` and row 0 for ``uncond``; without guidance the batch is cond alone.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from layerscope.adapters.base import AdapterError, ConfigGeometry, ModelAdapter, ProbeSite, RawT5PromptRows


def _hidden_states_kwarg(args: tuple, kwargs: dict) -> torch.Tensor:
    return kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]


def _visual_attention_rows(proj_input: torch.Tensor, n_visual: int, width: int) -> torch.Tensor:
    """``to_out[0]``'s input covers ``[text; visual]``: the visual attention output is the last rows."""
    return proj_input[proj_input.shape[0] - n_visual :]


class CogVideoXAdapter(RawT5PromptRows, ModelAdapter):
    name = "cogvideox"
    pipeline_classes = ("CogVideoXImageToVideoPipeline",)
    branch_source = "batch"
    #: the pipeline's batch under classifier-free guidance: ``torch.cat([negative, prompt])``
    batch_branches = ("uncond", "cond")
    #: the pipeline's ``height``/``width`` default to ``None`` (then the transformer's sample size):
    #: CogVideoX-5b-I2V's 60x90 latents, the only size its learned positional embeddings allow
    default_size = (480, 720)

    def denoisers(self) -> list[torch.nn.Module]:
        return [self.pipe.transformer]

    def probe_sites(self, denoiser: torch.nn.Module) -> list[ProbeSite]:
        sites = []
        for index, block in enumerate(denoiser.transformer_blocks):
            attn = block.attn1
            if getattr(attn, "fused_projections", False) or getattr(attn, "to_qkv", None) is not None:
                raise AdapterError(
                    f"transformer_blocks.{index}.attn1 has fused projections (to_qkv); "
                    "call pipe.unfuse_qkv_projections() before recording"
                )
            if attn.norm_q is None or attn.norm_k is None:
                raise AdapterError(f"transformer_blocks.{index}.attn1 has no qk norms; not a CogVideoX block")
            sites.append(
                ProbeSite(
                    name=f"transformer_blocks.{index}.attn1",
                    layer=index,
                    block=f"transformer_blocks.{index}",
                    attention=attn,
                    visual_input=_hidden_states_kwarg,
                    text_value=attn.to_v,
                    text_value_tokens=slice(None),
                    query_norm=attn.norm_q,
                    key_norm=attn.norm_k,
                    attention_output=attn.to_out[0],
                    heads=attn.heads,
                    attention_output_reader=_visual_attention_rows,
                    joint_attention=True,
                    text_precedes_visual=True,
                    heads_first=True,
                )
            )
        return sites

    def num_layers(self) -> int:
        return int(self.pipe.transformer.config.num_layers)

    def _config(self) -> Any:
        return self.pipe.transformer.config

    def token_grid(self, num_frames: int, height: int, width: int) -> tuple[int, int, int]:
        config = self._config()
        spatial = self.pipe.vae_scale_factor_spatial
        if config.use_learned_positional_embeddings and (
            height != config.sample_height * spatial or width != config.sample_width * spatial
        ):
            raise AdapterError(
                f"this CogVideoX checkpoint has learned positional embeddings for "
                f"{config.sample_height * spatial}x{config.sample_width * spatial} only (got {height}x{width}); "
                f"pass --height {config.sample_height * spatial} --width {config.sample_width * spatial}"
            )
        latent_frames = (num_frames - 1) // self.pipe.vae_scale_factor_temporal + 1
        frames = math.ceil(latent_frames / config.patch_size_t) if config.patch_size_t else latent_frames
        patch = spatial * config.patch_size
        return frames, height // patch, width // patch

    def spatial_multiple(self) -> int:
        return int(self.pipe.vae_scale_factor_spatial * self._config().patch_size)

    def frame_multiple(self) -> int:
        return int(self.pipe.vae_scale_factor_temporal)

    def text_sequence_length(self) -> int:
        return int(self._config().max_text_seq_length)

    def call_kwargs(self, config: Any) -> dict[str, Any]:
        """CFG by ``guidance_scale`` (batched); the text length the keyword rows were checked against."""
        return {
            "guidance_scale": config.guidance_scale,
            "negative_prompt": config.negative_prompt,
            "max_sequence_length": self.text_sequence_length(),
        }

    def video_frames(self, num_frames: int) -> int:
        """Frames the VAE decodes from the latent frames (CogVideoX1.5's padding is dropped first).

        ``AutoencoderKLCogVideoX._decode`` runs the latents in batches of
        ``num_latent_frames_batch_size`` (2; the first batch takes the remainder too); a
        batch of k frames decodes to ``4(k - 1) + 1`` frames when k is odd, ``4k`` when even.
        So 4n+1 frames come back as asked when n is even (49 -> 49, 81 -> 81), as 4n+4 when
        n is odd (13 -> 16).
        """
        temporal = int(self.pipe.vae_scale_factor_temporal)
        latent = (num_frames - 1) // temporal + 1
        size = int(getattr(self.pipe.vae, "num_latent_frames_batch_size", 2))
        batches = max(latent // size, 1)
        first = min(size + latent % size, latent)
        lengths = [first] + [size] * (batches - 1)
        return sum(temporal * (k - 1) + 1 if k % 2 else temporal * k for k in lengths)

    def describe(self) -> dict[str, Any]:
        config = self._config()
        patch = [int(config.patch_size_t or 1), int(config.patch_size), int(config.patch_size)]
        return {
            "adapter": self.name,
            "pipeline_class": type(self.pipe).__name__,
            "transformer_class": type(self.pipe.transformer).__name__,
            "num_layers": self.num_layers(),
            "inner_dim": int(config.num_attention_heads * config.attention_head_dim),
            "heads": int(config.num_attention_heads),
            "patch_size": patch,
            "text_tokens": self.text_sequence_length(),
            "text_position": "first: joint sequence [text; visual]",
            "cfg": "batched [uncond; cond] in one call per step",
            "image_conditioning": "latent channels concatenated onto the noisy latents",
            "attention_probe": "joint softmax over text and visual (RoPE) keys, as the model",
            "experts": 1,
        }

    # -- planning from configs (``layerscope plan``; written by the plan helper) ----------
    @classmethod
    def geometry_from_configs(cls, configs: dict[str, Any], num_frames: int, height: int, width: int) -> ConfigGeometry:
        """:meth:`token_grid`'s arithmetic from configs: the pipeline's strides are
        ``2 ** (len(vae.block_out_channels) - 1)`` and ``vae.temporal_compression_ratio``."""
        from types import SimpleNamespace

        transformer, vae = configs["transformer"], configs.get("vae") or {}
        spatial = 2 ** (len(vae.get("block_out_channels") or (128, 256, 256, 512)) - 1)
        temporal = int(vae.get("temporal_compression_ratio") or 4)
        notes = [] if vae else ["no VAE config: assumed AutoencoderKLCogVideoX strides 4 (time) and 8 (space)"]
        shim = SimpleNamespace(
            pipe=SimpleNamespace(
                transformer=SimpleNamespace(config=SimpleNamespace(**transformer)),
                vae_scale_factor_spatial=spatial,
                vae_scale_factor_temporal=temporal,
                vae=SimpleNamespace(num_latent_frames_batch_size=2),  # AutoencoderKLCogVideoX's constant
            ),
            _config=lambda: SimpleNamespace(**transformer),
        )
        grid = cls.token_grid(shim, num_frames, height, width)
        heads = int(transformer["num_attention_heads"])
        return ConfigGeometry(
            grid=grid,
            text_tokens=int(transformer["max_text_seq_length"]),
            num_layers=int(transformer["num_layers"]),
            heads=heads,
            width=heads * int(transformer["attention_head_dim"]),
            spatial_multiple=spatial * int(transformer["patch_size"]),
            frame_multiple=temporal,
            joint_attention=True,
            video_frames=cls.video_frames(shim, num_frames),
            notes=tuple(notes),
        )

    @classmethod
    def forward_inputs_from_configs(cls, configs: dict[str, Any], geometry: ConfigGeometry) -> dict[str, Any]:
        """One call on meta tensors: latents (B, F, C, H, W), 226 T5 rows, the RoPE pair the pipeline
        builds (N x head dim each) and, for CogVideoX1.5, the ``ofs`` scalar."""
        transformer = configs["transformer"]
        patch, patch_t = int(transformer["patch_size"]), int(transformer.get("patch_size_t") or 1)
        frames, rows, columns = geometry.grid
        meta = torch.device("meta")
        kwargs: dict[str, Any] = {
            "hidden_states": torch.empty(
                1, frames * patch_t, int(transformer["in_channels"]), rows * patch, columns * patch, device=meta
            ),
            "encoder_hidden_states": torch.empty(
                1, geometry.text_tokens, int(transformer["text_embed_dim"]), device=meta
            ),
            "timestep": torch.empty(1, device=meta),
            "return_dict": False,
        }
        if transformer.get("use_rotary_positional_embeddings"):
            n = frames * rows * columns
            head_dim = int(transformer["attention_head_dim"])
            kwargs["image_rotary_emb"] = (torch.empty(n, head_dim, device=meta), torch.empty(n, head_dim, device=meta))
        if transformer.get("ofs_embed_dim"):
            kwargs["ofs"] = torch.empty(1, device=meta)
        return kwargs
