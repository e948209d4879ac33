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


class ModelAdapter(ABC):
    """Describe one pipeline family to the recorder."""

    #: Human-readable family name, stored in run attrs.
    name: str = ""
    #: Pipeline class names this adapter accepts.
    pipeline_classes: tuple[str, ...] = ()

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

    def hook_points(self) -> list[str]:
        """Names of every place a probe or intervention can attach, e.g. ``blocks.3.attn2``."""
        return [site.name for site in self.probe_sites(self.denoisers()[0])]
