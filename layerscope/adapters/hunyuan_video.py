"""HunyuanVideo-I2V (MMDiT: double- then single-stream blocks) adapter.

Facts used (diffusers 0.42 ``transformer_hunyuan_video.py`` and
``pipeline_hunyuan_video_image2video.py``):

* The text sequence is ``[image rows; prompt rows]``: LLaVA's hidden states (layer -3) of the
  templated prompt, whose ``<image>`` token expands into the image's patch rows; the
  template head is cropped at ``crop_start``, image rows are subsampled by
  ``image_embed_interleave`` (2 for ``latent_concat``, 4 for ``token_replace``).  A prompt
  token ``i`` of the templated tokenisation therefore sits at row
  ``n_img + (i - crop_start)``.  Its length depends on the call; nothing here assumes it.
* Double-stream blocks (``transformer_blocks``) call ``attn(hidden_states=norm(visual),
  encoder_hidden_states=norm(text))``; text values come from ``attn.add_v_proj``, text keys
  from ``attn.norm_added_k``; the visual attention output goes through ``attn.to_out[0]``.
* Single-stream blocks (``single_transformer_blocks``) run one ``to_q/k/v`` over
  ``[visual; text]`` and have no ``to_out``: attention and MLP outputs are concatenated
  into ``proj_out``.  Visual rows are ordered (F', H', W'); the reference frame z_ref is the
  first H'W' rows.
* Classifier-free guidance does not use ``cache_context``: with ``true_cfg_scale > 1`` and a
  negative prompt the pipeline calls the transformer twice per timestep, cond first;
  checkpoints with a guidance embedding (``token_replace``) need one call per step.
* diffusers' default template hardcodes ``crop_start=103`` and ``image_emb_start=5``,
  right only for the released Llama-3 tokenizer; a wrong value corrupts input ids
  silently.  :meth:`HunyuanVideoAdapter.prompt_template` computes both from the
  checkpoint's own tokenizer and refuses a template they do not fit.

The ``attention`` probe is the model's own joint attention: each visual query (with the
rotary embedding of the call) takes its softmax over all keys, visual (rotated) and text
(padding masked), in chunks of queries; the map is the mass on the keyword's text rows,
heads averaged.  It costs as much as the block's attention; the ``hidden`` probe (the
paper's Eq. 10) is what the ranking uses.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from layerscope.adapters.base import AdapterError, ConfigGeometry, ModelAdapter, ProbeSite
from layerscope.keywords import KeywordError, KeywordTokens, map_keywords_in_template

#: diffusers' default ``max_sequence_length`` for the prompt part
PROMPT_TOKENS = 256
#: ``<|eot_id|><|start_header_id|>assistant<|end_header_id|>``: the I2V pipeline drops these 4
#: ids from the 256 prompt rows (so at most 252 prompt rows reach the transformer)
ASSISTANT_HEADER_TOKENS = 4
HEADER_END = "<|end_header_id|>"
IMAGE_TOKEN = "<image>"


def _hidden_states_kwarg(args: tuple, kwargs: dict) -> torch.Tensor:
    return kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]


def _single_stream_attention(proj_input: torch.Tensor, n_visual: int, width: int) -> torch.Tensor:
    """The visual rows of the attention half of ``proj_out``'s input ``[attention; MLP]``."""
    return proj_input[:n_visual, :width]


def default_template() -> dict[str, Any]:
    """A copy of diffusers' HunyuanVideo-I2V prompt template (its text, not its constants)."""
    from diffusers.pipelines.hunyuan_video.pipeline_hunyuan_video_image2video import DEFAULT_PROMPT_TEMPLATE

    return dict(DEFAULT_PROMPT_TEMPLATE)


class HunyuanVideoAdapter(ModelAdapter):
    name = "hunyuan-video"
    pipeline_classes = ("HunyuanVideoImageToVideoPipeline",)
    branch_source = "call_order"

    def __init__(self, pipe: Any):
        super().__init__(pipe)
        self._template: dict[str, Any] | None = None

    def denoisers(self) -> list[torch.nn.Module]:
        return [self.pipe.transformer]

    def probe_sites(self, denoiser: torch.nn.Module) -> list[ProbeSite]:
        sites = []
        for index, block in enumerate(denoiser.transformer_blocks):
            attn = self._unfused(block.attn, f"transformer_blocks.{index}")
            sites.append(
                ProbeSite(
                    name=f"transformer_blocks.{index}.attn",
                    layer=index,
                    attention=attn,
                    visual_input=_hidden_states_kwarg,
                    text_value=attn.add_v_proj,
                    text_value_tokens=slice(None),
                    query_norm=attn.norm_q,
                    key_norm=attn.norm_added_k,
                    attention_output=attn.to_out[0],
                    heads=attn.heads,
                    block=f"transformer_blocks.{index}",
                    stream="double",
                    joint_attention=True,
                    visual_key_norm=attn.norm_k,
                )
            )
        offset = len(denoiser.transformer_blocks)
        for index, block in enumerate(denoiser.single_transformer_blocks):
            attn = self._unfused(block.attn, f"single_transformer_blocks.{index}")
            sites.append(
                ProbeSite(
                    name=f"single_transformer_blocks.{index}.attn",
                    layer=offset + index,
                    attention=attn,
                    visual_input=_hidden_states_kwarg,
                    text_value=attn.to_v,
                    text_value_tokens=slice(None),
                    query_norm=attn.norm_q,
                    key_norm=attn.norm_k,
                    attention_output=block.proj_out,
                    heads=attn.heads,
                    block=f"single_transformer_blocks.{index}",
                    stream="single",
                    text_follows_visual=True,
                    attention_output_reader=_single_stream_attention,
                    joint_attention=True,
                )
            )
        return sites

    @staticmethod
    def _unfused(attn: torch.nn.Module, where: str) -> torch.nn.Module:
        if getattr(attn, "fused_projections", False):
            raise AdapterError(
                f"{where}.attn has fused projections (to_qkv); "
                "call transformer.unfuse_qkv_projections() before recording"
            )
        return attn

    def num_layers(self) -> int:
        config = self.pipe.transformer.config
        return int(config.num_layers + config.num_single_layers)

    def single_stream_layers(self) -> list[int]:
        """Global layer indices of the single-stream blocks (where the paper applies FG)."""
        config = self.pipe.transformer.config
        return list(range(config.num_layers, config.num_layers + config.num_single_layers))

    def token_grid(self, num_frames: int, height: int, width: int) -> tuple[int, int, int]:
        config = self.pipe.transformer.config
        latent_frames = (num_frames - 1) // self.pipe.vae_scale_factor_temporal + 1
        spatial = self.pipe.vae_scale_factor_spatial * config.patch_size
        return latent_frames // config.patch_size_t, height // spatial, width // spatial

    def spatial_multiple(self) -> int:
        # the pipeline itself insists on multiples of 16 (check_inputs)
        return math.lcm(int(self.pipe.vae_scale_factor_spatial * self.pipe.transformer.config.patch_size), 16)

    def frame_multiple(self) -> int:
        return int(self.pipe.vae_scale_factor_temporal)

    def text_sequence_length(self) -> int:
        return self.image_rows() + PROMPT_TOKENS

    def condition_type(self) -> str:
        return str(self.pipe.transformer.config.image_condition_type)

    def image_embed_interleave(self) -> int:
        """diffusers' default for this checkpoint's condition type."""
        return {"latent_concat": 2, "token_replace": 4}.get(self.condition_type(), 1)

    def image_tokens(self) -> int:
        """Image features LLaVA puts where ``<image>`` was (patches, CLS dropped by the default strategy)."""
        vision = self.pipe.text_encoder.config.vision_config
        patches = (vision.image_size // vision.patch_size) ** 2
        strategy = getattr(self.pipe.text_encoder.config, "vision_feature_select_strategy", "default")
        return patches if strategy == "default" else patches + 1

    def image_rows(self) -> int:
        """Image rows kept at the head of the text sequence after interleaving."""
        interleave = self.image_embed_interleave()
        length = self.image_tokens()
        return len(range(0, length, interleave)) if 0 < interleave < 6 else length

    def prompt_template(self) -> dict[str, Any]:
        """diffusers' template with ``crop_start``/``image_emb_*`` computed from this tokenizer.

        Raises:
            KeywordError: the tokenizer does not fit the template (no single ``<image>``
                token, not three header ends, a token id that differs from the text
                encoder's ``image_token_index``).
        """
        if self._template is not None:
            return self._template
        template = default_template()
        tokenizer = self.pipe.tokenizer
        text = template["template"]
        prefix = text[: text.index("{}")]
        probe = text.format("x")
        encoding = tokenizer(probe, return_offsets_mapping=True, add_special_tokens=True)
        ids = list(encoding["input_ids"])
        image_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
        expected = getattr(self.pipe.text_encoder.config, "image_token_index", None)
        if image_id is None or image_id == tokenizer.unk_token_id or ids.count(image_id) != 1:
            raise KeywordError(
                f"the tokenizer does not turn the template's {IMAGE_TOKEN} into one token; "
                "use the checkpoint's own tokenizer (LLaVA-Llama-3)"
            )
        if expected is not None and int(expected) != int(image_id):
            raise KeywordError(
                f"the tokenizer's {IMAGE_TOKEN} id {image_id} differs from the text encoder's image_token_index "
                f"{expected}; the checkpoint's tokenizer and text_encoder do not belong together"
            )
        header = tokenizer.convert_tokens_to_ids(HEADER_END)
        if ids.count(header) != 3:
            raise KeywordError(
                f"the template tokenizes into {ids.count(header)} {HEADER_END} tokens, diffusers' crop needs 3; "
                "use the checkpoint's own Llama-3 tokenizer"
            )
        starts = [i for i, (a, b) in enumerate(encoding["offset_mapping"]) if b > a and a >= len(prefix)]
        if not starts:
            raise KeywordError("cannot find where the prompt starts in the tokenized template")
        crop_start = starts[0]
        image_start = ids.index(image_id)
        if image_start >= crop_start:
            raise KeywordError(f"the template puts {IMAGE_TOKEN} after the prompt; diffusers' crop assumes before")
        length = self.image_tokens()
        template.update(
            crop_start=crop_start,
            image_emb_start=image_start,
            image_emb_end=image_start + length,
            image_emb_len=length,
        )
        self._template = template
        return template

    def map_keywords(self, prompt: str, keywords: list[str]) -> list[KeywordTokens]:
        """Keyword rows ``n_img + (i - crop_start)`` of the text sequence (module docstring)."""
        template = self.prompt_template()
        tokenizer = self.pipe.tokenizer
        mapped = map_keywords_in_template(prompt, keywords, tokenizer, template["template"])
        ids = tokenizer(template["template"].format(prompt), add_special_tokens=True)["input_ids"]
        header = tokenizer.convert_tokens_to_ids(HEADER_END)
        headers = [i for i, token in enumerate(ids) if token == header]
        crop = template["crop_start"]
        # diffusers drops the 4 tokens before the assistant header's end and truncates the prompt
        end = min(headers[-1] + 1 - ASSISTANT_HEADER_TOKENS if len(headers) == 3 else len(ids), crop + PROMPT_TOKENS)
        rows = self.image_rows()
        result = []
        for item in mapped:
            if min(item.token_indices) < crop or max(item.token_indices) >= end:
                raise KeywordError(
                    f"keyword {item.keyword!r} lies beyond the text encoder's {PROMPT_TOKENS} prompt tokens"
                )
            shifted = tuple(rows + (i - crop) for i in item.token_indices)
            result.append(KeywordTokens(item.keyword, shifted, item.char_spans))
        return result

    def reference_tokens(self, prompt: str, keyword_tokens: list[KeywordTokens]) -> list[int]:
        """The prompt's non-keyword rows, shifted like the keywords' (template crop, image rows)."""
        from layerscope.keywords import content_token_indices

        template = self.prompt_template()
        start = template["template"].index("{}")
        text = template["template"].format(prompt)
        crop, rows = template["crop_start"], self.image_rows()
        indices = content_token_indices(text, self.pipe.tokenizer, start, start + len(prompt))
        taken = {index for item in keyword_tokens for index in item.token_indices}
        shifted = [rows + (i - crop) for i in indices if i >= crop and i - crop < PROMPT_TOKENS]
        return [row for row in shifted if row not in taken]

    def call_kwargs(self, config: Any) -> dict[str, Any]:
        """``--guidance`` is the embedded guidance; ``--true-cfg`` runs true CFG (negative prompt "" if none)."""
        true_cfg = float(getattr(config, "true_cfg_scale", 1.0))
        negative = config.negative_prompt
        if true_cfg > 1.0 and negative is None:
            negative = ""  # diffusers skips true CFG without a negative prompt; the user asked for it
        embedded = bool(self.pipe.transformer.config.guidance_embeds)
        return {
            # without a guidance embedding the scale does nothing; 1.0 keeps diffusers from warning
            "guidance_scale": config.guidance_scale if embedded else 1.0,
            "true_cfg_scale": true_cfg,
            "negative_prompt": negative,
            "prompt_template": self.prompt_template(),
            "max_sequence_length": PROMPT_TOKENS,
        }

    uncond_option = "--true-cfg > 1"

    def runs_uncond(self, config: Any) -> bool:
        return float(getattr(config, "true_cfg_scale", 1.0)) > 1.0

    # -- post-training ------------------------------------------------------------
    finetune_lr = 1e-4  # paper §4.3: HunyuanVideo-I2V single-stream layers 17-32, lr 1e-4
    #: the embedded guidance a training forward sees (diffusers' I2V default scale)
    training_guidance = 1.0

    def finetune_prefixes(self, layers: list[int]) -> tuple[str, ...]:
        """Each layer's attention: ``attn.`` of its double (``transformer_blocks``) or single block.

        A single block's ``proj_out`` is shared by attention and MLP, so it is not trained.
        """
        doubles = int(self.pipe.transformer.config.num_layers)
        return tuple(
            f"transformer_blocks.{layer}.attn."
            if layer < doubles
            else f"single_transformer_blocks.{layer - doubles}.attn."
            for layer in layers
        )

    def encode_training_clip(self, video: torch.Tensor, image: Any, caption: str, device: Any) -> dict[str, Any]:
        """HunyuanVideo-I2V: scaled VAE latents, the image latent, LLaVA rows with the image, pooled CLIP text.

        The image latent and (latent_concat) the first-frame mask are built as diffusers'
        pipeline builds them (``prepare_latents``: the image's VAE mode times the scaling
        factor; ``__call__``: later frames zeroed, a mask channel 1 on frame 0).
        """
        pipe = self.pipe
        vae = pipe.vae
        frames, height, width = video.shape[2:]
        scale = float(pipe.vae_scaling_factor)
        with torch.no_grad():
            x0 = vae.encode(video.to(device, vae.dtype)).latent_dist.mode().float() * scale
            pixels = pipe.video_processor.preprocess(image, height, width).to(device, vae.dtype)
            image_latent = vae.encode(pixels.unsqueeze(2)).latent_dist.mode().float() * scale  # (1, C, 1, h, w)
            prompt, pooled, mask = pipe.encode_prompt(
                image=image,
                prompt=caption,
                prompt_template=self.prompt_template(),
                device=device,
                max_sequence_length=PROMPT_TOKENS,
                image_embed_interleave=self.image_embed_interleave(),
            )
        if self.condition_type() == "latent_concat":
            condition = torch.zeros_like(x0)
            condition[:, :, :1] = image_latent
            first = torch.zeros_like(x0[:, :1])
            first[:, :, :1] = 1.0
            condition = torch.cat([condition, first], dim=1)
        else:
            condition = image_latent
        return {
            "x0": x0[0],
            "condition": condition[0],
            "prompt": prompt[0].float(),
            "prompt_mask": mask[0].float(),
            "pooled": pooled[0].float(),
        }

    def training_prediction(self, model: Any, dtype: Any, sample: dict[str, Any], noisy: torch.Tensor,
                            timestep: torch.Tensor) -> tuple[torch.Tensor, slice]:  # fmt: skip
        """latent_concat: [noisy; image latent; mask] on channels, every frame scored.  token_replace:
        frame 0 is the image latent (the pipeline never denoises it), so frames 1: are scored."""
        if self.condition_type() == "latent_concat":
            hidden, scored = torch.cat([noisy, sample["condition"]], dim=1), slice(None)
        else:
            hidden, scored = torch.cat([sample["condition"], noisy[:, :, 1:]], dim=2), slice(1, None)
        guidance = None
        if self.pipe.transformer.config.guidance_embeds:
            guidance = torch.full((1,), self.training_guidance * 1000.0, device=noisy.device, dtype=dtype)
        prediction = model(
            hidden_states=hidden.to(dtype),
            timestep=timestep,
            encoder_hidden_states=sample["prompt"].to(dtype),
            encoder_attention_mask=sample["prompt_mask"].to(dtype),
            pooled_projections=sample["pooled"].to(dtype),
            guidance=guidance,
            return_dict=False,
        )[0]
        return prediction, scored

    def video_frames(self, num_frames: int) -> int:
        # latent_concat decodes the image-latent frame too and diffusers drops 4 frames
        return num_frames - 4 if self.condition_type() == "latent_concat" else num_frames

    def describe(self) -> dict[str, Any]:
        config = self.pipe.transformer.config
        return {
            "adapter": self.name,
            "pipeline_class": type(self.pipe).__name__,
            "transformer_class": type(self.pipe.transformer).__name__,
            "num_layers": self.num_layers(),
            "num_double_layers": int(config.num_layers),
            "num_single_layers": int(config.num_single_layers),
            "inner_dim": int(config.num_attention_heads * config.attention_head_dim),
            "heads": int(config.num_attention_heads),
            "patch_size": [int(config.patch_size_t), int(config.patch_size), int(config.patch_size)],
            "image_condition_type": self.condition_type(),
            "guidance_embeds": bool(config.guidance_embeds),
            "image_rows": self.image_rows(),
            "image_embed_interleave": self.image_embed_interleave(),
            "attention_probe": "joint softmax over visual (RoPE) and text keys, as the model",
            "experts": 1,
        }

    # -- planning from configs (``layerscope plan``) ----------------------------------
    @classmethod
    def geometry_from_configs(cls, configs: dict[str, Any], num_frames: int, height: int, width: int) -> ConfigGeometry:
        """The arithmetic of :meth:`token_grid`, :meth:`image_rows` & co. from config dicts.

        The text sequence is the LLaVA image rows (``text_encoder.vision_config``: (size /
        patch)^2 patches, subsampled by the condition type's interleave) plus 256 prompt rows
        less the 4 assistant-header ids the pipeline drops (measured through the pipeline's own
        ``_get_llama_prompt_embeds``: 288 + 252 = 540 rows for the 33-channel checkpoint).
        """
        transformer, vae = configs["transformer"], configs.get("vae") or {}
        vision = (configs.get("text_encoder") or {}).get("vision_config") or {}
        if not vision.get("image_size") or not vision.get("patch_size"):
            raise AdapterError(
                "HunyuanVideo-I2V's text length needs text_encoder/config.json (LLaVA vision_config image_size "
                "and patch_size); give a model folder or a published-configs entry that has it"
            )
        temporal = int(vae.get("temporal_compression_ratio") or 4)
        spatial = int(vae.get("spatial_compression_ratio") or 8)
        notes = [] if vae else ["no VAE config: assumed AutoencoderKLHunyuanVideo strides 4 (time) and 8 (space)"]
        patch, patch_t = int(transformer["patch_size"]), int(transformer["patch_size_t"])
        condition = str(transformer.get("image_condition_type"))
        interleave = {"latent_concat": 2, "token_replace": 4}.get(condition, 1)
        patches = (int(vision["image_size"]) // int(vision["patch_size"])) ** 2
        strategy = (configs.get("text_encoder") or {}).get("vision_feature_select_strategy", "default")
        tokens = patches if strategy == "default" else patches + 1
        rows = len(range(0, tokens, interleave)) if 0 < interleave < 6 else tokens
        latent_frames = (num_frames - 1) // temporal + 1
        heads = int(transformer["num_attention_heads"])
        return ConfigGeometry(
            grid=(latent_frames // patch_t, height // (spatial * patch), width // (spatial * patch)),
            text_tokens=rows + PROMPT_TOKENS - ASSISTANT_HEADER_TOKENS,
            num_layers=int(transformer["num_layers"]) + int(transformer["num_single_layers"]),
            heads=heads,
            width=heads * int(transformer["attention_head_dim"]),
            spatial_multiple=math.lcm(spatial * patch, 16),
            frame_multiple=temporal,
            joint_attention=True,
            video_frames=num_frames - 4 if condition == "latent_concat" else num_frames,
            notes=tuple(notes),
        )

    @classmethod
    def forward_inputs_from_configs(cls, configs: dict[str, Any], geometry: ConfigGeometry) -> dict[str, Any]:
        """One ``HunyuanVideoTransformer3DModel`` call on meta tensors (text rows unmasked, worst case)."""
        transformer = configs["transformer"]
        patch, patch_t = int(transformer["patch_size"]), int(transformer["patch_size_t"])
        frames, rows, columns = geometry.grid
        meta = torch.device("meta")
        latent = (frames * patch_t, rows * patch, columns * patch)
        kwargs: dict[str, Any] = {
            "hidden_states": torch.empty(1, int(transformer["in_channels"]), *latent, device=meta),
            "timestep": torch.empty(1, device=meta),
            "encoder_hidden_states": torch.empty(
                1, geometry.text_tokens, int(transformer["text_embed_dim"]), device=meta
            ),
            "encoder_attention_mask": torch.empty(1, geometry.text_tokens, device=meta),
            "pooled_projections": torch.empty(1, int(transformer["pooled_projection_dim"]), device=meta),
            "return_dict": False,
        }
        if transformer.get("guidance_embeds"):
            kwargs["guidance"] = torch.empty(1, device=meta)
        return kwargs
