"""HunyuanVideo-1.5 image-to-video adapter (MMDiT, double-stream blocks only).

Facts used (diffusers 0.42 ``transformer_hunyuan_video15.py`` and
``pipeline_hunyuan_video1_5_image2video.py``):

* **Blocks.** Every ``HunyuanVideo15TransformerBlock`` (``transformer_blocks``; 54 in the
  released 8.3B model) is double-stream: ``attn(hidden_states=norm1(visual),
  encoder_hidden_states=norm1_context(context))`` runs ``to_q/k/v`` on the visual rows and
  ``add_q/k/v_proj`` on the context rows, per-head ``norm_q``/``norm_k``/``norm_added_k``,
  RoPE on the visual rows, one joint softmax over ``[visual; context]``.  There are no
  single-stream blocks.
* **The context sequence** the blocks see is, per sample, ``[valid SigLIP image rows;
  valid byT5 glyph rows; valid Qwen2.5-VL prompt rows; padding]`` (the transformer reorders
  its three inputs by their masks).  So a prompt token's row is ``n_image + n_glyph +
  (i - crop_start)``: ``n_image`` is the SigLIP token count ((size / patch)^2, no CLS; 729),
  ``n_glyph`` the byT5 tokens of the prompt's quoted text (``Text "..."``; 0 without quotes),
  ``i`` the token's index in the Qwen chat template and ``crop_start`` the template head
  diffusers cuts off (``prompt_template_encode_start_idx``, hardcoded to 108: right only for
  the released tokenizer, so :meth:`HunyuanVideo15Adapter.chat_template` recomputes it from
  the checkpoint's tokenizer and refuses a mismatch).  The Qwen hidden state is layer -3.
* **The map** (Eq. 10): z is the ``hidden_states`` keyword argument of ``attn`` (the
  modulated, normalised visual rows), V_k the keyword rows of ``attn.add_v_proj``'s output;
  tokens are ordered (F', H', W'), F' = (frames - 1) / 4 + 1, H' = height / 16.
* **Guidance** lives in the ``guider`` component (``ClassifierFreeGuidance``), not in a call
  argument: :meth:`HunyuanVideo15Adapter.generate` runs the call with a copy of the guider at
  the requested scale.  The two calls per step run under ``cache_context("pred_cond")`` then
  ``("pred_uncond")``: branches are told apart by call order (cond first).
* **Size.** The pipeline takes no ``height``/``width``: it picks the ``target_size`` bucket
  nearest the reference image's aspect ratio and crops the image to it.  A requested size
  must be that bucket (the recorder resizes the image to it first); another is refused in
  one line naming the bucket.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from layerscope.adapters.base import AdapterError, ConfigGeometry, ModelAdapter, ProbeSite
from layerscope.adapters.hunyuan_video import _hidden_states_kwarg
from layerscope.keywords import KeywordError, KeywordTokens, map_keywords_in_template

_MARKER = "\x00"


class HunyuanVideo15Adapter(ModelAdapter):
    name = "hunyuan-video-1.5"
    pipeline_classes = ("HunyuanVideo15ImageToVideoPipeline",)
    branch_source = "call_order"
    #: the 480p checkpoints' 16:9 bucket (target_size 640), for a folder without declared defaults
    default_size = (480, 848)

    def __init__(self, pipe: Any):
        super().__init__(pipe)
        self._template: tuple[str, int] | None = None

    def denoisers(self) -> list[torch.nn.Module]:
        return [self.pipe.transformer]

    def probe_sites(self, denoiser: torch.nn.Module) -> list[ProbeSite]:
        sites = []
        for index, block in enumerate(denoiser.transformer_blocks):
            attn = block.attn
            if getattr(attn, "fused_projections", False):
                raise AdapterError(
                    f"transformer_blocks.{index}.attn has fused projections; "
                    "call transformer.unfuse_qkv_projections() before recording"
                )
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
        return sites

    def num_layers(self) -> int:
        return int(self.pipe.transformer.config.num_layers)

    def token_grid(self, num_frames: int, height: int, width: int) -> tuple[int, int, int]:
        config = self.pipe.transformer.config
        latent_frames = (num_frames - 1) // self.pipe.vae_scale_factor_temporal + 1
        spatial = self.pipe.vae_scale_factor_spatial * config.patch_size
        return latent_frames // config.patch_size_t, height // spatial, width // spatial

    def spatial_multiple(self) -> int:
        return int(self.pipe.vae_scale_factor_spatial * self.pipe.transformer.config.patch_size)

    def frame_multiple(self) -> int:
        return int(self.pipe.vae_scale_factor_temporal)

    # -- the context sequence -------------------------------------------------------
    def image_rows(self) -> int:
        """SigLIP rows at the head of the context ((image_size / patch_size)^2, no CLS)."""
        vision = self.pipe.image_encoder.config
        return int((vision.image_size // vision.patch_size) ** 2)

    def glyph_rows(self, prompt: str) -> int:
        """Valid byT5 rows of ``prompt``: its quoted text as diffusers formats it, else 0."""
        from diffusers.pipelines.hunyuan_video1_5.pipeline_hunyuan_video1_5_image2video import extract_glyph_texts

        glyph = extract_glyph_texts(prompt)
        if glyph is None:
            return 0
        limit = int(self.pipe.tokenizer_2_max_length)
        ids = self.pipe.tokenizer_2(glyph, max_length=limit, truncation=True, add_special_tokens=True)["input_ids"]
        return min(len(ids), limit)

    def text_sequence_length(self) -> int:
        return self.image_rows() + int(self.pipe.tokenizer_2_max_length) + int(self.pipe.tokenizer_max_length)

    def chat_template(self) -> tuple[str, int]:
        """The Qwen chat template with ``{}`` for the prompt, and its head's token count (``crop_start``).

        Raises:
            KeywordError: the tokenizer's head differs from the pipeline's hardcoded crop (a
                tokenizer that does not belong to the checkpoint would shift every row).
        """
        if self._template is not None:
            return self._template
        from diffusers.pipelines.hunyuan_video1_5.pipeline_hunyuan_video1_5_image2video import format_text_input

        tokenizer = self.pipe.tokenizer
        conversation = format_text_input([_MARKER], self.pipe.system_message)
        text = tokenizer.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)
        text = text[0] if isinstance(text, list) else text
        if text.count(_MARKER) != 1:
            raise KeywordError("the tokenizer's chat template does not place the prompt once; use the checkpoint's own")
        start = text.index(_MARKER)
        encoding = tokenizer(text.replace(_MARKER, "x"), return_offsets_mapping=True, add_special_tokens=True)
        starts = [i for i, (a, b) in enumerate(encoding["offset_mapping"]) if b > a and b > start]
        crop = int(self.pipe.prompt_template_encode_start_idx)
        if not starts or encoding["offset_mapping"][starts[0]][0] < start or starts[0] != crop:
            head = starts[0] if starts else len(encoding["input_ids"])
            raise KeywordError(
                f"the chat template's head is {head} tokens with this tokenizer but the pipeline crops {crop} "
                "(prompt_template_encode_start_idx); use the checkpoint's own Qwen2.5-VL tokenizer"
            )
        template = text.replace("{", "{{").replace("}", "}}").replace(_MARKER, "{}")
        self._template = (template, crop)
        return self._template

    def map_keywords(self, prompt: str, keywords: list[str]) -> list[KeywordTokens]:
        """Keyword rows ``n_image + n_glyph + (i - crop_start)`` of the context (module docstring)."""
        template, crop = self.chat_template()
        mapped = map_keywords_in_template(prompt, keywords, self.pipe.tokenizer, template)
        offset = self.image_rows() + self.glyph_rows(prompt)
        limit = int(self.pipe.tokenizer_max_length)
        result = []
        for item in mapped:
            if min(item.token_indices) < crop or max(item.token_indices) - crop >= limit:
                raise KeywordError(f"keyword {item.keyword!r} lies beyond the text encoder's {limit} prompt tokens")
            rows = tuple(offset + (i - crop) for i in item.token_indices)
            result.append(KeywordTokens(item.keyword, rows, item.char_spans))
        return result

    def reference_tokens(self, prompt: str, keyword_tokens: list[KeywordTokens]) -> list[int]:
        """The prompt's non-keyword rows, shifted like the keywords'."""
        from layerscope.keywords import content_token_indices

        template, crop = self.chat_template()
        start = template.index("{}")
        text = template.format(prompt)
        offset, limit = self.image_rows() + self.glyph_rows(prompt), int(self.pipe.tokenizer_max_length)
        indices = content_token_indices(text, self.pipe.tokenizer, start, start + len(prompt))
        taken = {index for item in keyword_tokens for index in item.token_indices}
        rows = [offset + (i - crop) for i in indices if crop <= i < crop + limit]
        return [row for row in rows if row not in taken]

    # -- the pipeline call ------------------------------------------------------------
    def bucket(self, height: int, width: int) -> tuple[int, int]:
        """The (height, width) the pipeline gives a reference image of this size (``target_size`` bucket)."""
        pipe = self.pipe
        size = pipe.video_processor.calculate_default_height_width(
            height=height, width=width, target_size=pipe.target_size
        )
        return int(size[0]), int(size[1])

    def _check_size(self, height: Any, width: Any) -> None:
        if height is None or width is None:
            return
        expected = self.bucket(int(height), int(width))
        if expected != (int(height), int(width)):
            raise AdapterError(
                f"HunyuanVideo-1.5 sizes the video itself (target_size {self.pipe.target_size}): a {height}x{width} "
                f"reference gives {expected[0]}x{expected[1]}; pass --height {expected[0]} --width {expected[1]}"
            )

    def _check_guider(self) -> None:
        from diffusers import ClassifierFreeGuidance

        if not isinstance(getattr(self.pipe, "guider", None), ClassifierFreeGuidance):
            raise AdapterError(
                f"the pipeline's guider is {type(getattr(self.pipe, 'guider', None)).__name__}; LayerScope tells the "
                "branches apart for ClassifierFreeGuidance (cond, then uncond) only"
            )

    def call_kwargs(self, config: Any) -> dict[str, Any]:
        """``--guidance`` becomes the guider's scale (see :meth:`generate`); the size is checked here,
        before any store exists."""
        self._check_guider()
        self._check_size(getattr(config, "height", None), getattr(config, "width", None))
        return {"guidance_scale": float(config.guidance_scale), "negative_prompt": config.negative_prompt}

    def generate(self, **arguments: Any) -> Any:
        """Call the pipeline: ``height``/``width`` checked and dropped, ``guidance_scale`` set on a guider copy."""
        pipe = self.pipe
        self._check_size(arguments.pop("height", None), arguments.pop("width", None))
        scale = arguments.pop("guidance_scale", None)
        guider = pipe.guider
        if scale is not None:
            from diffusers.utils import logging as diffusers_logging

            self._check_guider()
            # guider.new() warns that guiders are experimental, once per call: said once at load
            logger = diffusers_logging.get_logger("diffusers.guiders.guider_utils")
            level = logger.level
            logger.setLevel(diffusers_logging.ERROR)
            try:
                pipe.guider = guider.new(guidance_scale=float(scale))
            finally:
                logger.setLevel(level)
        try:
            return pipe(**arguments)
        finally:
            pipe.guider = guider

    def runs_uncond(self, config: Any) -> bool:
        return not math.isclose(float(config.guidance_scale), 1.0) and float(config.guidance_scale) > 1.0

    def describe(self) -> dict[str, Any]:
        config = self.pipe.transformer.config
        return {
            "adapter": self.name,
            "pipeline_class": type(self.pipe).__name__,
            "transformer_class": type(self.pipe.transformer).__name__,
            "num_layers": self.num_layers(),
            "num_double_layers": int(config.num_layers),
            "num_single_layers": 0,
            "inner_dim": int(config.num_attention_heads * config.attention_head_dim),
            "heads": int(config.num_attention_heads),
            "patch_size": [int(config.patch_size_t), int(config.patch_size), int(config.patch_size)],
            "target_size": int(config.target_size),
            "image_rows": self.image_rows(),
            "crop_start": int(self.pipe.prompt_template_encode_start_idx),
            "attention_probe": "joint softmax over visual (RoPE) and context keys, padding masked, as the model",
            "experts": 1,
        }

    # -- planning from configs (``layerscope plan``; written by the plan helper) ----------
    #: ``HunyuanVideo15ImageToVideoPipeline.__init__``'s ``tokenizer_max_length`` / ``tokenizer_2_max_length``
    _PLAN_PROMPT_ROWS, _PLAN_GLYPH_ROWS = 1000, 256

    @classmethod
    def geometry_from_configs(cls, configs: dict[str, Any], num_frames: int, height: int, width: int) -> ConfigGeometry:
        """:meth:`token_grid` and :meth:`text_sequence_length` from configs: SigLIP rows
        ((image_size / patch_size)^2 from ``image_encoder``) + 256 byT5 + 1000 Qwen rows."""
        transformer, vae = configs["transformer"], configs.get("vae") or {}
        vision = configs.get("image_encoder") or {}
        if not vision.get("image_size") or not vision.get("patch_size"):
            raise AdapterError(
                "HunyuanVideo-1.5's context length needs image_encoder/config.json (SigLIP image and patch size)"
            )
        temporal = int(vae.get("temporal_compression_ratio") or 4)
        spatial = int(vae.get("spatial_compression_ratio") or 16)
        notes = [] if vae else ["no VAE config: assumed AutoencoderKLHunyuanVideo15 strides 4 (time), 16 (space)"]
        notes.append("the pipeline picks the target_size bucket nearest the image's aspect; record refuses others")
        patch, patch_t = int(transformer["patch_size"]), int(transformer["patch_size_t"])
        image_rows = (int(vision["image_size"]) // int(vision["patch_size"])) ** 2
        latent_frames = (num_frames - 1) // temporal + 1
        heads = int(transformer["num_attention_heads"])
        return ConfigGeometry(
            grid=(latent_frames // patch_t, height // (spatial * patch), width // (spatial * patch)),
            text_tokens=image_rows + cls._PLAN_GLYPH_ROWS + cls._PLAN_PROMPT_ROWS,
            num_layers=int(transformer["num_layers"]),
            heads=heads,
            width=heads * int(transformer["attention_head_dim"]),
            spatial_multiple=spatial * patch,
            frame_multiple=temporal,
            joint_attention=True,
            video_frames=num_frames,
            notes=tuple(notes),
        )

    @classmethod
    def forward_inputs_from_configs(cls, configs: dict[str, Any], geometry: ConfigGeometry) -> dict[str, Any]:
        """One call on meta tensors: latents, 1000 Qwen rows, 256 byT5 rows, the SigLIP rows (all unmasked)."""
        transformer = configs["transformer"]
        patch, patch_t = int(transformer["patch_size"]), int(transformer["patch_size_t"])
        frames, rows, columns = geometry.grid
        image_rows = geometry.text_tokens - cls._PLAN_GLYPH_ROWS - cls._PLAN_PROMPT_ROWS
        meta = torch.device("meta")
        latent = (frames * patch_t, rows * patch, columns * patch)
        return {
            "hidden_states": torch.empty(1, int(transformer["in_channels"]), *latent, device=meta),
            "timestep": torch.empty(1, device=meta),
            "encoder_hidden_states": torch.empty(
                1, cls._PLAN_PROMPT_ROWS, int(transformer["text_embed_dim"]), device=meta
            ),
            "encoder_attention_mask": torch.empty(1, cls._PLAN_PROMPT_ROWS, device=meta),
            "encoder_hidden_states_2": torch.empty(
                1, cls._PLAN_GLYPH_ROWS, int(transformer["text_embed_2_dim"]), device=meta
            ),
            "encoder_attention_mask_2": torch.empty(1, cls._PLAN_GLYPH_ROWS, device=meta),
            "image_embeds": torch.empty(1, image_rows, int(transformer["image_embed_dim"]), device=meta),
            "return_dict": False,
        }
