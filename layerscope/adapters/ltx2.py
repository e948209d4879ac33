"""LTX-2 image-to-video (``LTX2ImageToVideoPipeline``, an audio-video cross-attention DiT) adapter.

Facts used (diffusers 0.42 ``transformer_ltx2.py``, ``pipelines/ltx2/connectors.py`` and
``pipeline_ltx2_image2video.py``):

* Each ``LTX2VideoTransformerBlock`` carries two streams.  The video stream runs ``attn1``
  (self-attention on ``norm1(x) * (1 + scale) + shift``, RoPE), adds it gated, then calls
  ``attn2(norm2(x), encoder_hidden_states=text, query_rotary_emb=None, attention_mask=bias)``
  (``norm2`` is an RMSNorm without affine; LTX-2.3's ``cross_attn_mod`` also modulates it
  and the text rows with timestep scale/shift) and adds the result (times a gate in 2.3).
  The audio stream runs its own self-attention and audio-text cross-attention, then the
  block runs audio-to-video and video-to-audio cross-attention and both feed-forwards.
  ``attn2`` has no image or audio branch: the text rows are its only keys.
* Text: Gemma 3 on the prompt ``.strip()``-ped, with special tokens (``<bos>`` first, no
  ``<eos>``), *left*-padded and truncated to ``max_sequence_length`` (1024, which
  :meth:`LTX2Adapter.call_kwargs` passes explicitly).  The hidden states of every Gemma
  layer are stacked and normalised, projected, and run through ``LTX2TextConnectors``.
* Connector rows (``LTX2ConnectorTransformer1d.forward``): with learned registers (128 in
  every published checkpoint) the valid rows are gathered to the *front in their order*
  (a stable argsort of the inverted mask) and rows ``n..1023`` are filled with the
  registers; the attention mask becomes all zeros and the mask handed to the transformer
  all ones, so ``attn2`` attends over all 1024 rows (the transformer turns the mask into an
  additive bias of 0).  Without registers the rows keep their left-padded positions.
* Keyword rows, worked out: the pipeline's tokenization of a prompt of ``n`` tokens
  (``<bos>`` + pieces, ``n <= 1024`` after right truncation) puts token ``j`` at Gemma row
  ``1024 - n + j`` (left padding); the connector moves that row to **row ``j``**.  So a
  keyword's rows are simply its token indices in the prompt's own tokenization, ``<bos>``
  being index 0 (``"the red circle"`` -> ``<bos> the ▁red ▁circle``: "red" is row 2).
  Without registers it stays at ``1024 - n + j``.  Each connector row mixes all rows
  through the connector's self-attention; "the keyword's row" is the row its token enters.
* Image conditioning: the image's VAE latent is latent frame 0, its tokens get timestep 0
  (``timestep`` is (B, N): ``t * (1 - conditioning_mask)``) and the scheduler never steps
  frame 0.  No image encoder reaches the transformer.  The pipeline re-compresses the image
  with H.264 at CRF 33 (Gemma-3 checkpoints) through PyAV before encoding it; where PyAV is
  not installed the adapter passes ``image_crf=0`` (no re-compression), logs it once, and
  stores the value used in the run's attrs (``image_crf``).
* Classifier-free guidance is one call per step with the batch ``[uncond; cond]`` inside
  ``cache_context("cond_uncond")``: :attr:`LTX2Adapter.branch_source` is ``batch``.  The
  pipeline runs CFG whenever the video *or the audio* scale exceeds 1 (audio defaults to
  7), so with ``--guidance`` <= 1 the adapter sets the audio scale to 1 too.  Spatio-
  temporal guidance and modality-isolation guidance (pipeline defaults ``stg_scale=1``,
  ``modality_scale=3``) each add a transformer call per step that LayerScope's step count
  would take for a new step; the adapter turns them off (``stg_scale=0``,
  ``modality_scale=1``), a deviation from diffusers' defaults that ``docs/ltx-2.md`` names.
* Tokens are ordered (frame, y, x); the published VAE compresses 32x spatially and 8x in
  time (its config sets both ratios), the transformer patches 1 x 1 x 1.  ``num_frames``
  must be ``8n + 1``, height and width multiples of 32.

The map (``hidden`` probe, the paper's Eq. 10), video stream only: for keyword k and visual
token u, ``cos(V_k, z_u)`` where z is the hidden state entering ``attn2`` as the block passes
it (``norm2`` of the residual stream, modulated in 2.3) and V_k is the mean of ``attn2.to_v``'s
output over the keyword's connector rows (after ``caption_projection`` in 2.0, after the 2.3
key/value modulation).  The uncond branch reads the negative prompt's rows at the same
indices, as every family does.  ``attention``: softmax of ``attn2``'s normalised query/key
(``norm_q``/``norm_k`` across heads, no RoPE) with the model's additive bias, mass on the
keyword rows, heads averaged.  ``output`` (the input of ``to_out[0]``, after 2.3's per-head
gate), ``contrastive`` and ``influence`` (``attn2`` re-run with the keyword rows replaced by
row 1023, a learned register) are supported too.  The audio stream (audio self-attention,
audio-text cross-attention, audio-video cross-attention) is not recorded: its queries are
audio latents, which have no spatial grid to map.  Focal Guidance is refused
(``fg_intervene.plugin.UNSUPPORTED_FAMILIES``): no image rows or image value projection
give Eq. 8 its anchor.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import torch

from layerscope.adapters.base import AdapterError, ConfigGeometry, ProbeSite
from layerscope.adapters.ltx import LTXVideoAdapter
from layerscope.keywords import KeywordError, KeywordTokens

#: diffusers' default ``max_sequence_length`` of the LTX-2 pipelines (Gemma rows per prompt)
LTX2_TEXT_TOKENS = 1024
#: ``check_inputs`` of the LTX-2 pipelines: height and width divisible by 32
_PIPELINE_MULTIPLE = 32
#: ``__call__``'s default ``frame_rate`` (it sets the audio length and the video RoPE)
_DEFAULT_FPS = 24.0

_log = logging.getLogger(__name__)


def _vae_strides(vae: dict[str, Any]) -> tuple[int, int]:
    """(temporal, spatial) as ``AutoencoderKLLTX2Video`` sets them: the config's ratios, else
    ``patch_size[_t] * 2 ** sum(spatio_temporal_scaling)``."""
    scaling = 2 ** sum(bool(v) for v in vae.get("spatio_temporal_scaling", (True,) * 4))
    temporal = vae.get("temporal_compression_ratio") or int(vae.get("patch_size_t", 1)) * scaling
    spatial = vae.get("spatial_compression_ratio") or int(vae.get("patch_size", 4)) * scaling
    return int(temporal), int(spatial)


def connector_rows(
    token_indices: list[int], n_tokens: int, registers: bool, length: int = LTX2_TEXT_TOKENS
) -> list[int]:
    """Connector output rows of the prompt tokens ``token_indices`` (of ``n_tokens`` kept tokens).

    With learned registers the connector moves the ``n_tokens`` valid (left-padded) rows to
    the front in order, so token ``j`` is row ``j``; without them it stays at its padded
    position ``length - n_tokens + j``.
    """
    offset = 0 if registers else length - n_tokens
    return [offset + j for j in token_indices]


class LTX2Adapter(LTXVideoAdapter):
    """LTX-Video's video geometry and ``attn2`` sites; its own text rows (Gemma-3 through the
    connectors), guidance arguments and configs."""

    name = "ltx-2"
    pipeline_classes = ("LTX2ImageToVideoPipeline",)
    branch_source = "batch"
    #: the rows of one CFG call, in batch order (``torch.cat([negative, prompt])``)
    batch_branches = ("uncond", "cond")
    #: ``__call__``'s height/width defaults (512 x 768); its ``num_frames`` defaults to None (121)
    default_size = (512, 768)
    default_frames = 121  # LTX2ImageToVideoPipeline.__call__: num_frames=None means 121 (no duration head)

    def probe_sites(self, denoiser: torch.nn.Module) -> list[ProbeSite]:
        """The video stream's ``attn2`` of every block (the audio streams are not mapped)."""
        return super().probe_sites(denoiser)

    def text_sequence_length(self) -> int:
        return LTX2_TEXT_TOKENS

    # -- keyword rows ------------------------------------------------------------------
    def _has_registers(self) -> bool:
        connectors = getattr(self.pipe, "connectors", None)
        return getattr(getattr(connectors, "config", None), "video_connector_num_learnable_registers", None) is not None

    def _prompt_tokens(self, text: str) -> tuple[int, int]:
        """(tokens the pipeline keeps, index of the first kept token) for the stripped prompt."""
        tokenizer = self.pipe.tokenizer
        n = len(tokenizer(text, add_special_tokens=True)["input_ids"])
        kept = min(n, LTX2_TEXT_TOKENS)
        first = n - kept if getattr(tokenizer, "truncation_side", "right") == "left" else 0
        return kept, first

    def _rows(self, text: str, token_indices: list[int]) -> list[int]:
        kept, first = self._prompt_tokens(text)
        inside = [j - first for j in token_indices if first <= j < first + kept]
        return connector_rows(inside, kept, self._has_registers())

    def map_keywords(self, prompt: str, keywords: list[str]) -> list[KeywordTokens]:
        """Connector rows of each keyword: its token indices in the stripped prompt's tokenization
        (``<bos>`` = 0), which is where the connector puts them (module docstring).

        A keyword truncated away (beyond 1024 tokens) is refused in one line.
        """
        from dataclasses import replace

        from layerscope.keywords import map_keywords_in_template

        text = prompt.strip()
        mapped = map_keywords_in_template(text, keywords, self.pipe.tokenizer, "{}")
        result = []
        for item in mapped:
            rows = self._rows(text, list(item.token_indices))
            if len(rows) != len(item.token_indices):
                raise KeywordError(
                    f"keyword {item.keyword!r} lies beyond the text encoder's {LTX2_TEXT_TOKENS} tokens "
                    f"(max_sequence_length {LTX2_TEXT_TOKENS}); shorten the prompt"
                )
            result.append(replace(item, token_indices=tuple(rows)))
        return result

    def reference_tokens(self, prompt: str, keyword_tokens: list[Any]) -> list[int]:
        """The prompt's non-keyword word rows (connector rows, as :meth:`map_keywords`)."""
        from layerscope.keywords import content_token_indices

        text = prompt.strip()
        taken = {index for item in keyword_tokens for index in item.token_indices}
        rows = self._rows(text, content_token_indices(text, self.pipe.tokenizer))
        return [row for row in rows if row not in taken]

    # -- generation --------------------------------------------------------------------
    def image_crf(self) -> int:
        """The H.264 CRF the pipeline re-compresses the image with (33 for Gemma-3 checkpoints),
        or 0 where PyAV, which the re-compression needs, is not installed."""
        from diffusers.pipelines.ltx2.utils import resolve_default_image_crf
        from diffusers.utils import is_av_available

        crf = int(resolve_default_image_crf(getattr(self.pipe, "text_encoder", None)))
        if crf and not is_av_available():
            if not getattr(LTX2Adapter, "_crf_warned", False):
                _log.warning(
                    "LTX-2 re-compresses the conditioning image with H.264 (CRF %d) through PyAV, which is not "
                    "installed: using image_crf=0 (no re-compression); `pip install av` to match diffusers",
                    crf,
                )
                LTX2Adapter._crf_warned = True
            return 0
        return crf

    def call_kwargs(self, config: Any) -> dict[str, Any]:
        """CFG as ``--guidance`` (audio CFG off with it), STG and modality guidance off, 1024 rows."""
        guided = float(config.guidance_scale) > 1.0
        kwargs = {
            "guidance_scale": config.guidance_scale,
            "negative_prompt": config.negative_prompt,
            "max_sequence_length": LTX2_TEXT_TOKENS,
            "stg_scale": 0.0,
            "audio_stg_scale": 0.0,
            "modality_scale": 1.0,
            "audio_modality_scale": 1.0,
            "image_crf": self.image_crf(),
        }
        if not guided:  # the pipeline runs CFG if the audio scale (default 7) alone exceeds 1
            kwargs["audio_guidance_scale"] = 1.0
        return kwargs

    def generate(self, **arguments: Any) -> Any:
        """Call the pipeline; an image that will be re-compressed must be a PIL image (diffusers checks)."""
        image = arguments.get("image")
        if arguments.get("image_crf") and image is not None:
            from PIL import Image

            if not isinstance(image, Image.Image):
                import numpy as np

                from layerscope.recording import to_uint8

                arguments["image"] = Image.fromarray(to_uint8(np.asarray(image))).convert("RGB")
        return self.pipe(**arguments)

    def describe(self) -> dict[str, Any]:
        """LTX-Video's facts, with LTX-2's text rows, visual state, audio and guidance."""
        rows = (
            "connector rows: prompt tokens first (<bos> = 0), learned registers after"
            if self._has_registers()
            else "connector rows at their left-padded positions (no registers)"
        )
        return {
            **super().describe(),
            "text_tokens": LTX2_TEXT_TOKENS,
            "text_rows": rows,
            "visual_state": "video hidden state entering attn2 (norm2 output, as the block passes it)",
            "audio_stream": "not recorded (audio self/text/audio-video attention have no spatial grid)",
            "cfg_layout": "one call per step, batch rows [uncond; cond]; STG and modality guidance off",
            "image_crf": self.image_crf(),
        }

    # -- planning from configs (``layerscope plan``) -------------------------------------
    @classmethod
    def geometry_from_configs(cls, configs: dict[str, Any], num_frames: int, height: int, width: int) -> ConfigGeometry:
        """:meth:`token_grid`'s arithmetic from configs; the VAE strides as ``AutoencoderKLLTX2Video`` sets them."""
        transformer, vae = configs["transformer"], configs.get("vae") or {}
        if not vae:
            raise AdapterError("LTX-2's strides need vae/config.json (AutoencoderKLLTX2Video); none was given")
        temporal, spatial = _vae_strides(vae)
        p_t, p = int(transformer["patch_size_t"]), int(transformer["patch_size"])
        latent_frames = (num_frames - 1) // temporal + 1
        heads = int(transformer["num_attention_heads"])
        return ConfigGeometry(
            grid=(latent_frames // p_t, height // (spatial * p), width // (spatial * p)),
            text_tokens=LTX2_TEXT_TOKENS,
            num_layers=int(transformer["num_layers"]),
            heads=heads,
            width=heads * int(transformer["attention_head_dim"]),
            spatial_multiple=math.lcm(spatial * p, _PIPELINE_MULTIPLE),
            frame_multiple=temporal,
            video_frames=num_frames,
            notes=(
                "CFG (--guidance > 1) runs one batched call per step ([uncond; cond]); STG and modality guidance off",
                "the forward pass counted includes the audio stream, which is not mapped",
            ),
        )

    @classmethod
    def forward_inputs_from_configs(cls, configs: dict[str, Any], geometry: ConfigGeometry) -> dict[str, Any]:
        """One call on meta tensors, shaped as the pipeline passes them: packed video latents, audio
        latents for the clip's length at 24 fps, 1024 connector rows per stream and their masks."""
        transformer = configs["transformer"]
        frames, rows, columns = geometry.grid
        n = frames * rows * columns
        per_second = int(transformer["audio_sampling_rate"]) / int(transformer["audio_hop_length"])
        per_second /= int(transformer["audio_scale_factor"])
        audio_frames = max(1, round(geometry.video_frames / _DEFAULT_FPS * per_second))
        if transformer.get("use_prompt_embeddings", True):  # 2.0: caption_projection maps Gemma-width rows
            video_text = audio_text = int(transformer["caption_channels"])
        else:  # 2.3: the connectors already emit each stream's width
            video_text, audio_text = (
                int(transformer["cross_attention_dim"]),
                int(transformer["audio_cross_attention_dim"]),
            )
        meta = torch.device("meta")
        return {
            "hidden_states": torch.empty(1, n, int(transformer["in_channels"]), device=meta),
            "audio_hidden_states": torch.empty(1, audio_frames, int(transformer["audio_in_channels"]), device=meta),
            "encoder_hidden_states": torch.empty(1, LTX2_TEXT_TOKENS, video_text, device=meta),
            "audio_encoder_hidden_states": torch.empty(1, LTX2_TEXT_TOKENS, audio_text, device=meta),
            "timestep": torch.empty(1, n, device=meta),
            "audio_timestep": torch.empty(1, device=meta),
            "sigma": torch.empty(1, device=meta),
            "encoder_attention_mask": torch.empty(1, LTX2_TEXT_TOKENS, device=meta),
            "audio_encoder_attention_mask": torch.empty(1, LTX2_TEXT_TOKENS, device=meta),
            "num_frames": frames,
            "height": rows,
            "width": columns,
            "fps": _DEFAULT_FPS,
            "audio_num_frames": audio_frames,
            "use_cross_timestep": True,
            "return_dict": False,
        }
