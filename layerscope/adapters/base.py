"""The adapter protocol: everything the recorder needs to know about one model family.

The recorder, probes and interventions never look at a model's classes directly; they
ask an adapter.  A cross-attention DiT (Wan) and an MMDiT (HunyuanVideo-I2V, text tokens
inside the joint sequence, double- and single-stream blocks) differ only in where the
visual hidden state, the text values and the attention output live, which is what
:class:`ProbeSite` describes.  Adding a family means one module in this package and one
line in :mod:`layerscope.adapters.registry`; this module imports no family module, so the
registry is the only place that knows them all.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from layerscope.errors import LayerScopeError


class AdapterError(LayerScopeError):
    """The model cannot be probed as asked (unsupported class, fused projections, ...)."""


@dataclass(frozen=True)
class ProbeSite:
    """The modules of one block a probe attaches to, and how to read them.

    Attributes:
        name: stable hook-point name, e.g. ``"blocks.11.attn2"``.
        layer: the block's index in the model (what ``--layers`` selects).
        attention: the attention module that mixes visual and text tokens.
        visual_input: (args, kwargs) of ``attention``'s forward -> visual hidden states
            (B, N, D) entering it (z in the paper's Eq. 10).
        text_value: module whose output holds the text tokens' values (B, M, D).
        text_value_tokens: slice of ``text_value``'s output that is text tokens.
        query_norm / key_norm: modules whose outputs are the normalised queries of the
            visual tokens and keys of the text tokens (for the ``attention`` probe).
        attention_output: module whose *input* is the attention output before the
            output projection (for the ``output`` probe).
        heads: number of attention heads.
        block: the block's module path (``blocks.11``, ``single_transformer_blocks.17``),
            stored as the ``block`` coordinate.
        stream: ``double``/``single`` for MMDiT blocks (stored as a ``stream`` coordinate),
            empty for cross-attention DiTs.
        text_follows_visual: the outputs of ``text_value``, ``query_norm`` and ``key_norm``
            cover ``[visual; text]`` rows (MMDiT single-stream blocks): text rows start after
            the visual ones, queries are the first rows.  The visual count is read from the
            call, so dynamic text lengths need no configuration.
        attention_output_reader: ``(input of attention_output, n_visual, width) -> (N, D)``
            when that input holds more than the visual attention output (HunyuanVideo's
            single blocks feed ``[attention; MLP]`` through ``proj_out``).
        joint_attention: MMDiT: the ``attention`` probe takes each visual query's softmax
            over *all* keys ``[visual; text]`` (masked), with the rotary embedding the
            model applies to visual queries and keys (``image_rotary_emb`` of the call).
        visual_key_norm: the module whose output holds the visual keys, when it is not
            ``key_norm`` (double-stream blocks: ``norm_k`` beside ``norm_added_k``).
        text_precedes_visual: the outputs of ``text_value``, ``query_norm`` and ``key_norm``
            cover ``[text; visual]`` rows (CogVideoX's joint sequence): text rows are the first
            ``S - N``, visual queries the last ``N`` (``N`` read from the call).
        heads_first: ``query_norm``/``key_norm`` outputs are laid out (B, H, S, d), the norm
            running after the head transpose (CogVideoX), instead of (B, S, H, d).
        replace_text_rows: rebuilds the attention call with some text rows replaced
            (the ``influence`` probe), or None where unsupported.
    """

    name: str
    layer: int
    attention: torch.nn.Module
    visual_input: Callable[[tuple, dict], torch.Tensor]
    text_value: torch.nn.Module
    text_value_tokens: slice
    query_norm: torch.nn.Module
    key_norm: torch.nn.Module
    attention_output: torch.nn.Module
    heads: int
    block: str = ""
    stream: str = ""
    text_follows_visual: bool = False
    attention_output_reader: Callable[[torch.Tensor, int, int], torch.Tensor] | None = None
    joint_attention: bool = False
    visual_key_norm: torch.nn.Module | None = None
    #: ``(args, kwargs, text rows, neutral row) -> (args, kwargs)`` of ``attention``'s call with
    #: those text rows' inputs replaced by the neutral row's (the ``influence`` probe); None
    #: where the family's attention cannot be re-run that way (MMDiT joint attention).
    replace_text_rows: Callable[[tuple, dict, list[int], int], tuple[tuple, dict]] | None = None
    text_precedes_visual: bool = False
    heads_first: bool = False


@dataclass(frozen=True)
class ConfigGeometry:
    """What ``layerscope plan`` needs from a family, read from configs alone (no weights).

    Built by :meth:`ModelAdapter.geometry_from_configs` from ``{"pipeline": model_index,
    "transformer": config, "vae": config, "text_encoder": config, "image_encoder": config}``
    (the dicts a model folder's ``*/config.json`` hold), so the numbers a plan prints come
    from the same family file that records, not from a second table.

    Attributes:
        grid: (F', H', W') visual-token grid of the video size asked.
        text_tokens: rows of the text sequence a block's attention sees (keys/values).
        num_layers: probe sites per denoiser (what ``--layers`` selects from).
        heads: attention heads of a probed attention.
        width: inner width D of a probed attention (heads x head dim).
        spatial_multiple / frame_multiple: what height/width and ``frames - 1`` must divide by.
        experts: denoisers that take turns over the steps (Wan2.2 A14B: 2).
        joint_attention: the ``attention`` probe's softmax runs over visual and text keys.
        video_frames: frames the pipeline returns (the store's ``video``).
        notes: family facts the plan should print (assumed defaults, missing configs).
    """

    grid: tuple[int, int, int]
    text_tokens: int
    num_layers: int
    heads: int
    width: int
    spatial_multiple: int
    frame_multiple: int
    experts: int = 1
    joint_attention: bool = False
    video_frames: int = 0
    notes: tuple[str, ...] = ()


class ModelAdapter(ABC):
    """Describe one pipeline family to the recorder."""

    #: Human-readable family name, stored in run attrs.
    name: str = ""
    #: Pipeline class names this adapter accepts.
    pipeline_classes: tuple[str, ...] = ()
    #: How the step tracker tells the branches apart: ``cache_context`` (diffusers names the
    #: branch, Wan), ``call_order`` (true CFG calls cond first, then uncond at the same
    #: timestep, HunyuanVideo) or ``batch`` (one call per step carries both branches as batch
    #: rows ``[uncond; cond]``, diffusers' ``torch.cat([negative, prompt])``: CogVideoX).
    branch_source: str = "cache_context"
    #: (height, width) a generation defaults to when the pipeline's ``__call__`` leaves it to the
    #: model (``None`` there); read by ``layerscope.cli.options.pipeline_defaults``.
    default_size: tuple[int, int] | None = None
    #: frames a generation defaults to when the pipeline's ``__call__`` leaves it ``None``
    #: (LTX-2 picks 121 inside the call)
    default_frames: int | None = None

    def __init__(self, pipe: Any):
        self.pipe = pipe

    @classmethod
    def supports(cls, pipe: Any) -> bool:
        return type(pipe).__name__ in cls.pipeline_classes

    @abstractmethod
    def denoisers(self) -> list[torch.nn.Module]:
        """The transformers that run denoising steps (Wan2.2 A14B has two experts)."""

    @abstractmethod
    def probe_sites(self, denoiser: torch.nn.Module) -> list[ProbeSite]:
        """One :class:`ProbeSite` per block of ``denoiser``, in execution order."""

    @abstractmethod
    def num_layers(self) -> int:
        """How many blocks a step runs through."""

    @abstractmethod
    def token_grid(self, num_frames: int, height: int, width: int) -> tuple[int, int, int]:
        """(F', H', W') visual-token grid for a video of this size."""

    @abstractmethod
    def spatial_multiple(self) -> int:
        """Height and width must be divisible by this (VAE stride x patch size)."""

    @abstractmethod
    def text_sequence_length(self) -> int:
        """Tokens the text encoder's output is padded/truncated to."""

    @abstractmethod
    def frame_multiple(self) -> int:
        """``num_frames - 1`` must be divisible by this (the VAE's temporal stride)."""

    @abstractmethod
    def describe(self) -> dict[str, Any]:
        """Architecture facts stored in every run's attrs (adapter, classes, layers, widths)."""

    def expert_names(self) -> list[str]:
        """Names of :meth:`denoisers`, in order (``transformer``, ``transformer_2``)."""
        return ["transformer"] + [f"transformer_{i + 1}" for i in range(1, len(self.denoisers()))]

    def layer_labels(self) -> list[tuple[str, str]]:
        """(block path, stream) per layer, in layer order; stream is empty for one-stream models."""
        labels = []
        for site in self.probe_sites(self.denoisers()[0]):
            labels.append((site.block or site.name.rsplit(".", 1)[0], site.stream))
        return labels

    def map_keywords(self, prompt: str, keywords: list[str]) -> list[Any]:
        """Each keyword's rows in the text sequence the denoiser sees (:class:`KeywordTokens`).

        The default tokenizes the prompt alone (Wan: T5 rows are token indices) and refuses a
        keyword beyond :meth:`text_sequence_length`.
        """
        from layerscope.keywords import KeywordError, map_keywords

        mapped = map_keywords(prompt, keywords, self.pipe.tokenizer)
        limit = self.text_sequence_length()
        for item in mapped:
            if max(item.token_indices) >= limit:
                raise KeywordError(f"keyword {item.keyword!r} lies beyond the text encoder's {limit} tokens")
        return mapped

    def reference_tokens(self, prompt: str, keyword_tokens: list[Any]) -> list[int]:
        """Rows of the prompt's words that are not keywords (the ``contrastive`` probe's V_ref).

        The default tokenizes the cleaned prompt alone, as :meth:`map_keywords` does.
        """
        from layerscope.keywords import clean_prompt, content_token_indices

        rows = content_token_indices(clean_prompt(prompt), self.pipe.tokenizer)
        taken = {index for item in keyword_tokens for index in item.token_indices}
        limit = self.text_sequence_length()
        return [index for index in rows if index < limit and index not in taken]

    def call_kwargs(self, config: Any) -> dict[str, Any]:
        """Pipeline keyword arguments that carry a :class:`RecordConfig`'s guidance settings."""
        return {"guidance_scale": config.guidance_scale, "negative_prompt": config.negative_prompt}

    def generate(self, **arguments: Any) -> Any:
        """Run the pipeline with LayerScope's arguments (``image``, ``prompt``, ``height``, ``width``, ...).

        Most pipelines take them as they are; one that sizes the video itself or keeps its
        guidance in a component (HunyuanVideo-1.5) translates them here.
        """
        return self.pipe(**arguments)

    #: the option that turns the unconditional branch on (named in ``--branch uncond`` errors)
    uncond_option: str = "--guidance > 1"

    def runs_uncond(self, config: Any) -> bool:
        """Does the pipeline run an unconditional branch with these settings (diffusers: CFG > 1)?"""
        return config.guidance_scale > 1.0

    def video_frames(self, num_frames: int) -> int:
        """Frames the pipeline returns for ``num_frames`` requested."""
        return num_frames

    # -- post-training (``layerscope finetune``) -------------------------------
    #: the paper's learning rate for this family (§4.3), ``--lr``'s default
    finetune_lr: float = 1e-5

    @classmethod
    def supports_finetune(cls) -> bool:
        """Does this family implement post-training (its own :meth:`finetune_prefixes`)?"""
        return cls.finetune_prefixes is not ModelAdapter.finetune_prefixes

    def finetune_prefixes(self, layers: list[int]) -> tuple[str, ...]:
        """Parameter-name prefixes of the attention tensors ``finetune`` trains in ``layers``."""
        raise AdapterError(f"layerscope finetune does not support {self.name} pipelines yet")

    def encode_training_clip(self, video: torch.Tensor, image: Any, caption: str, device: Any) -> dict[str, Any]:
        """Everything a training forward needs from one clip, computed once (no grad) and cached.

        ``video`` (1, 3, F, H, W) in [-1, 1]; ``image`` the conditioning frame (PIL, H x W).
        Returns tensors without a batch dimension; ``x0`` is the clean latent the loss targets.
        """
        raise AdapterError(f"layerscope finetune does not support {self.name} pipelines yet")

    def training_prediction(self, model: Any, dtype: Any, sample: dict[str, Any], noisy: torch.Tensor,
                            timestep: torch.Tensor) -> tuple[torch.Tensor, slice]:  # fmt: skip
        """The transformer's velocity for ``noisy`` latents (batch of 1), and the latent frames it is scored on."""
        raise AdapterError(f"layerscope finetune does not support {self.name} pipelines yet")

    def hook_points(self) -> list[str]:
        """Names of every place a probe or intervention can attach, e.g. ``blocks.3.attn2``."""
        return [site.name for site in self.probe_sites(self.denoisers()[0])]

    # -- planning from configs (``layerscope plan``) -------------------------------
    @classmethod
    def geometry_from_configs(cls, configs: dict[str, Any], num_frames: int, height: int, width: int) -> ConfigGeometry:
        """This family's :class:`ConfigGeometry` for a video size, from config dicts alone.

        Raises:
            AdapterError: the family has no such method yet (each family writes its own).
        """
        name = cls.name or cls.__name__
        raise AdapterError(f"layerscope plan cannot read {name} configs yet (no geometry_from_configs)")

    @classmethod
    def forward_inputs_from_configs(cls, configs: dict[str, Any], geometry: ConfigGeometry) -> dict[str, Any]:
        """Keyword arguments of one denoiser call at ``geometry``'s size, as meta tensors (FLOP counting).

        Raises:
            AdapterError: the family has no such method yet.
        """
        name = cls.name or cls.__name__
        raise AdapterError(f"layerscope plan cannot build {name} forward inputs yet (no forward_inputs_from_configs)")


class RawT5PromptRows:
    """Keyword rows of pipelines that T5-tokenize the prompt as given (no cleaning) and
    truncate keeping ``</s>`` in the last slot: LTX-Video, CogVideoX-I2V, Cosmos-Predict2.

    Mixed in before :class:`ModelAdapter` (``class A(RawT5PromptRows, ModelAdapter)``); why
    not the default: Wan's pipeline cleans the prompt first, these do not, so the rows
    differ on any prompt with HTML entities or extra whitespace.
    """

    def map_keywords(self, prompt: str, keywords: list[str]) -> list[Any]:
        from layerscope.keywords import KeywordError, map_keywords_in_template

        mapped = map_keywords_in_template(prompt, keywords, self.pipe.tokenizer, "{}")
        last = self.text_sequence_length() - 1
        for item in mapped:
            if max(item.token_indices) >= last:
                raise KeywordError(
                    f"keyword {item.keyword!r} lies beyond the text encoder's {last} prompt tokens "
                    f"(max_sequence_length {last + 1}); shorten the prompt"
                )
        return mapped

    def reference_tokens(self, prompt: str, keyword_tokens: list[Any]) -> list[int]:
        """The prompt's non-keyword rows (uncleaned, as :meth:`map_keywords`): the ``contrastive`` V_ref."""
        from layerscope.keywords import content_token_indices

        taken = {index for item in keyword_tokens for index in item.token_indices}
        last = self.text_sequence_length() - 1
        return [i for i in content_token_indices(prompt, self.pipe.tokenizer) if i < last and i not in taken]
