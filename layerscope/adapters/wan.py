"""Wan2.1 / Wan2.2 image-to-video (cross-attention DiT) adapter.

Facts used (diffusers ``transformer_wan.py``): each ``WanTransformerBlock`` runs
``attn2(norm2(hidden_states), encoder_hidden_states)``; ``encoder_hidden_states`` is the
image context (first ``len - 512`` tokens) followed by 512 text tokens; text goes through
``to_k``/``norm_k``/``to_v``, the image through ``add_k_proj``/``add_v_proj``; both
attention results are summed before ``to_out[0]``.  Tokens are ordered (frame, y, x).
"""

from __future__ import annotations

from typing import Any

import torch

from layerscope.adapters.base import ConfigGeometry, ModelAdapter, ProbeSite
from layerscope.adapters.cross_attention import cross_attention_sites

# diffusers' WanAttnProcessor hardcodes the text context length.
WAN_TEXT_TOKENS = 512


class WanAdapter(ModelAdapter):
    name = "wan"
    pipeline_classes = ("WanImageToVideoPipeline",)

    def denoisers(self) -> list[torch.nn.Module]:
        models = [self.pipe.transformer, getattr(self.pipe, "transformer_2", None)]
        return [m for m in models if m is not None]

    def probe_sites(self, denoiser: torch.nn.Module) -> list[ProbeSite]:
        return cross_attention_sites(denoiser.blocks, "blocks", text_rows_at_end=WAN_TEXT_TOKENS)

    def num_layers(self) -> int:
        return int(self.denoisers()[0].config.num_layers)

    def _patch(self) -> tuple[int, int, int]:
        return tuple(self.denoisers()[0].config.patch_size)

    def token_grid(self, num_frames: int, height: int, width: int) -> tuple[int, int, int]:
        p_t, p_h, p_w = self._patch()
        temporal = self.pipe.vae_scale_factor_temporal
        spatial = self.pipe.vae_scale_factor_spatial
        latent_frames = (num_frames - 1) // temporal + 1
        return latent_frames // p_t, height // spatial // p_h, width // spatial // p_w

    def spatial_multiple(self) -> int:
        return int(self.pipe.vae_scale_factor_spatial * self._patch()[1])

    def frame_multiple(self) -> int:
        return int(self.pipe.vae_scale_factor_temporal)

    def text_sequence_length(self) -> int:
        return WAN_TEXT_TOKENS

    # -- post-training ------------------------------------------------------------
    finetune_lr = 1e-5  # paper §4.3: Wan2.1-I2V layers 11-26, lr 1e-5

    def finetune_prefixes(self, layers: list[int]) -> tuple[str, ...]:
        """The cross-attention of each layer: ``to_q/k/v``, ``to_out``, ``add_k/v_proj``, their norms."""
        return tuple(f"blocks.{layer}.attn2." for layer in layers)

    def encode_training_clip(self, video: torch.Tensor, image: Any, caption: str, device: Any) -> dict[str, Any]:
        """Wan: normalised VAE latents, the pipeline's I2V condition, T5 rows and CLIP image tokens."""
        pipe = self.pipe
        vae = pipe.vae
        frames, height, width = video.shape[2:]
        mean = torch.tensor(vae.config.latents_mean).view(1, -1, 1, 1, 1).to(device)
        std = torch.tensor(vae.config.latents_std).view(1, -1, 1, 1, 1).to(device)
        with torch.no_grad():
            x0 = (vae.encode(video.to(device, vae.dtype)).latent_dist.mode().float() - mean) / std
            processed = pipe.video_processor.preprocess(image, height=height, width=width).to(device, torch.float32)
            _, condition = pipe.prepare_latents(
                processed, 1, vae.config.z_dim, height, width, frames, torch.float32, device
            )
            prompt, _ = pipe.encode_prompt(caption, negative_prompt="", device=device, max_sequence_length=512)
            image_tokens = pipe.encode_image(image, device=device)
        return {"x0": x0[0], "condition": condition[0], "prompt": prompt[0], "image": image_tokens[0]}

    def training_prediction(self, model: Any, dtype: Any, sample: dict[str, Any], noisy: torch.Tensor,
                            timestep: torch.Tensor) -> tuple[torch.Tensor, slice]:  # fmt: skip
        """Wan's I2V input is [noisy latents; condition] along channels; every frame is scored."""
        prediction = model(
            hidden_states=torch.cat([noisy, sample["condition"]], dim=1).to(dtype),
            timestep=timestep,
            encoder_hidden_states=sample["prompt"].to(dtype),
            encoder_hidden_states_image=sample["image"].to(dtype),
            return_dict=False,
        )[0]
        return prediction, slice(None)

    def describe(self) -> dict[str, Any]:
        config = self.denoisers()[0].config
        return {
            "adapter": self.name,
            "pipeline_class": type(self.pipe).__name__,
            "transformer_class": type(self.denoisers()[0]).__name__,
            "num_layers": int(config.num_layers),
            "inner_dim": int(config.num_attention_heads * config.attention_head_dim),
            "heads": int(config.num_attention_heads),
            "patch_size": list(config.patch_size),
            "experts": len(self.denoisers()),
        }

    # -- planning from configs (``layerscope plan``) ----------------------------------
    @classmethod
    def geometry_from_configs(cls, configs: dict[str, Any], num_frames: int, height: int, width: int) -> ConfigGeometry:
        """The same arithmetic as :meth:`token_grid` & co., from ``transformer``/``vae``/``pipeline`` configs.

        The VAE strides are ``AutoencoderKLWan``'s ``scale_factor_temporal``/``_spatial``
        (4 and 8 when a config predates them, the class defaults and the pipeline's fallback).
        """
        transformer, vae, pipeline = configs["transformer"], configs.get("vae") or {}, configs.get("pipeline") or {}
        p_t, p_h, p_w = (int(v) for v in transformer["patch_size"])
        temporal = int(vae.get("scale_factor_temporal") or 4)
        spatial = int(vae.get("scale_factor_spatial") or 8)
        notes = [] if vae else ["no VAE config: assumed AutoencoderKLWan strides 4 (time) and 8 (space)"]
        latent_frames = (num_frames - 1) // temporal + 1
        second = pipeline.get("transformer_2")
        heads = int(transformer["num_attention_heads"])
        return ConfigGeometry(
            grid=(latent_frames // p_t, height // spatial // p_h, width // spatial // p_w),
            text_tokens=WAN_TEXT_TOKENS,
            num_layers=int(transformer["num_layers"]),
            heads=heads,
            width=heads * int(transformer["attention_head_dim"]),
            spatial_multiple=spatial * p_h,
            frame_multiple=temporal,
            experts=2 if isinstance(second, (list, tuple)) and second and second[0] else 1,
            video_frames=num_frames,
            notes=tuple(notes),
        )

    @classmethod
    def forward_inputs_from_configs(cls, configs: dict[str, Any], geometry: ConfigGeometry) -> dict[str, Any]:
        """One ``WanTransformer3DModel`` call on meta tensors: latents, 512 T5 rows and, with an
        image branch (``image_dim``), the CLIP image tokens ((size/patch)^2 + CLS from ``image_encoder``)."""
        transformer = configs["transformer"]
        p_t, p_h, p_w = (int(v) for v in transformer["patch_size"])
        frames, rows, columns = geometry.grid
        latent = (frames * p_t, rows * p_h, columns * p_w)
        meta = torch.device("meta")
        kwargs: dict[str, Any] = {
            "hidden_states": torch.empty(1, int(transformer["in_channels"]), *latent, device=meta),
            "timestep": torch.empty(1, device=meta),
            "encoder_hidden_states": torch.empty(1, WAN_TEXT_TOKENS, int(transformer["text_dim"]), device=meta),
            "return_dict": False,
        }
        image = configs.get("image_encoder") or {}
        if transformer.get("image_dim") and image.get("image_size") and image.get("patch_size"):
            tokens = (int(image["image_size"]) // int(image["patch_size"])) ** 2 + 1
            kwargs["encoder_hidden_states_image"] = torch.empty(1, tokens, int(transformer["image_dim"]), device=meta)
        return kwargs
