"""``FocalGuidanceConfig``: every knob of Focal Guidance, as data.

It validates itself, round-trips through dicts (so it is stored verbatim in a run's
attrs) and TOML, and takes its weak layers from a ``layerscope rank`` JSON.  The paper
(arXiv 2601.07287) gives no values for the lambdas and taus; the defaults here are
ours, chosen so the default model's outputs change visibly without diverging, and are
recorded with every run.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from layerscope.interventions import InterventionError

CACHE_POLICIES = ("latest",)
#: Where Eq. 9 and Eq. 13 add their terms (see ``FocalGuidanceConfig.inject_at``).
INJECTION_SITES = ("hidden", "attn-input")
BRANCHES = ("cond", "uncond", "both")


class ConfigError(InterventionError):
    """An invalid Focal Guidance configuration (a usage error)."""


@dataclass
class FocalGuidanceConfig:
    """Focal Guidance = FSG (Eq. 6-9) + Attention Cache (Eq. 10-13) on the weak layers.

    Attributes:
        weak_layers: block indices that get guidance (from the ranking).
        keywords: words of the prompt to guide; ``None`` selects them automatically
            with CLIP (Eq. 6).
        lambda_txt: strength of the anchor fused into the keywords' text values (Eq. 8).
        lambda_lat: strength of the anchor injected into the reference frame (Eq. 9).
        lambda_cache: strength of the Attention Cache injection (Eq. 13).
        tau_sel: keyword-selection threshold on max_n S_mn (Eq. 6).
        selection_sign: the sign of Eq. 6's S_mn = sign * cos(t_m, v_n).  ``None`` (default):
            the model folder's declared default (``layerscope_model.json`` ->
            ``focal_guidance.selection_sign``), else -1, Eq. 6 as printed.  The paper cites
            CLIP Surgery [29]: raw CLIP patch-text similarity peaks on the *background*, so
            -cos puts R_k and the anchor weights on the object for such a CLIP.  +1 is the
            named alternative (a CLIP whose raw similarity peaks on the object).
            ``benchmarks/fsg_localisation.py`` measures which sign localises the object.
        tau_region: R_k = cells whose min-max-normalised S_k exceeds this (Eq. 9).
        tau_cache: threshold on the aggregated cache maps (Eq. 12).
        inject_at: where Eq. 9's and Eq. 13's terms are added.  ``hidden`` (default, the
            paper: "z_ref denote[s] the reference frame within the DiT layer's hidden
            state ... directly injected into the latent feature map"): the weak block's
            residual stream just before its cross-attention sublayer, so the term reaches
            the cross-attention *and* every later block.  ``attn-input``: only the
            cross-attention's query input norm2(z) (our earlier variant; the residual
            never carries the anchor).
        fsg / attention_cache: switch each mechanism (ablations).
        branch: which classifier-free-guidance branch is guided.
        cache_policy: which strong-layer maps feed a weak layer at step t.  ``latest``:
            each strong layer's most recent map, i.e. the current step's for layers
            that already ran and the previous step's for later layers (first step:
            earlier layers only, averaged over those available).
        anchor_gradients: in a forward with autograd on (``layerscope finetune``), V_k^vis =
            W_v^vis P_v(anchor) is computed inside the graph, so the trained layers' image
            value projection (Wan ``attn2.add_v_proj``; HunyuanVideo the single block's
            ``to_v``) learns through Eq. 8, 9 and 13 as well: the paper post-trains "with FG
            on" so the layers learn the injection.  ``False`` (``--freeze-anchors``): the
            anchors are constants of each step (the ablation).  Inference is unaffected.
        stopwords: words never selected automatically.
    """

    weak_layers: list[int] = field(default_factory=list)
    keywords: list[str] | None = None
    lambda_txt: float = 0.5
    lambda_lat: float = 0.5
    lambda_cache: float = 0.5
    tau_sel: float = 0.2
    selection_sign: int | None = None
    tau_region: float = 0.5
    tau_cache: float = 0.0
    inject_at: str = "hidden"
    fsg: bool = True
    attention_cache: bool = True
    branch: str = "cond"
    cache_policy: str = "latest"
    anchor_gradients: bool = True
    stopwords: list[str] = field(
        default_factory=lambda: ["a", "an", "the", "to", "of", "and", "while", "then", "on", "in", "at", "is"]
    )
    ranking_source: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.weak_layers, (list, tuple)) or not all(
            isinstance(i, int) and not isinstance(i, bool) for i in self.weak_layers
        ):
            raise ConfigError(f"weak_layers must be a list of layer indices (got {self.weak_layers!r})")
        self.weak_layers = sorted({int(i) for i in self.weak_layers})
        if any(i < 0 for i in self.weak_layers):
            raise ConfigError(f"weak layer {min(self.weak_layers)} is negative")
        if self.selection_sign not in (1, -1, None):
            raise ConfigError("selection_sign must be -1 (Eq. 6 as printed), 1 (+cos) or unset (the model's default)")
        if self.branch not in BRANCHES:
            raise ConfigError(f"branch must be one of {', '.join(BRANCHES)}")
        if self.inject_at not in INJECTION_SITES:
            raise ConfigError(f"inject_at must be one of {', '.join(INJECTION_SITES)} (got {self.inject_at!r})")
        for name in ("weak_layers", "stopwords"):
            if not isinstance(getattr(self, name), (list, tuple)):
                raise ConfigError(f"{name} must be a list")
        for name in ("lambda_txt", "lambda_lat", "lambda_cache", "tau_sel", "tau_region", "tau_cache"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ConfigError(f"{name} must be a number (got {value!r})")
        for name in ("fsg", "attention_cache", "anchor_gradients"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{name} must be true or false (got {getattr(self, name)!r})")
        if self.cache_policy not in CACHE_POLICIES:
            raise ConfigError(f"cache_policy must be one of {', '.join(CACHE_POLICIES)}")
        for name in ("lambda_txt", "lambda_lat", "lambda_cache"):
            if float(getattr(self, name)) < 0:
                raise ConfigError(f"{name} must be >= 0")
        if self.keywords is not None:
            self.keywords = [str(k) for k in self.keywords]

    def resolved_for(self, model_dir: Any) -> tuple[FocalGuidanceConfig, str]:
        """This config with ``selection_sign`` filled in, and where the value came from.

        Order: the user's own value; the model folder's declared default (its
        ``layerscope_model.json`` has ``focal_guidance: {selection_sign: ...}``, measured
        for that model's CLIP); -1, Eq. 6 as printed.
        """
        if self.selection_sign is not None:
            return self, "config"
        declared = None
        if model_dir is not None:
            info_path = Path(model_dir) / "layerscope_model.json"
            try:
                info = json.loads(info_path.read_text(encoding="utf-8")) if info_path.is_file() else {}
            except (OSError, ValueError):
                info = {}
            declared = ((info.get("focal_guidance") or {}) if isinstance(info, dict) else {}).get("selection_sign")
        if declared in (1, -1):
            return replace(self, selection_sign=int(declared)), f"model default ({Path(model_dir).name})"
        return replace(self, selection_sign=-1), "Eq. 6 as printed"

    @property
    def mode(self) -> str:
        """The ablation this config is: baseline, fsg, cache or fsg+cache."""
        if self.fsg and self.attention_cache:
            return "fsg+cache"
        return "fsg" if self.fsg else ("cache" if self.attention_cache else "baseline")

    def to_dict(self) -> dict[str, Any]:
        return {"name": "focal-guidance", "mode": self.mode, **asdict(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FocalGuidanceConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known - {"name", "mode"})
        if unknown:
            raise ConfigError(f"unknown Focal Guidance option(s): {', '.join(unknown)}")
        return cls(**{k: v for k, v in data.items() if k in known})

    @classmethod
    def from_toml(cls, path: str | os.PathLike, **overrides: Any) -> FocalGuidanceConfig:
        import tomllib

        from layerscope.outputs import read_text_input

        text = read_text_input(
            path, "--intervene-config", "pass a TOML file with a [focal_guidance] table", ConfigError
        )
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as error:
            raise ConfigError(f"--intervene-config {path}: not valid TOML ({error})") from None
        data = data.get("focal_guidance", data)
        if not isinstance(data, dict):
            raise ConfigError(f"--intervene-config {path}: [focal_guidance] must be a table")
        return cls.from_dict({**data, **overrides})

    def to_toml(self) -> str:
        lines = ["[focal_guidance]"]
        for key, value in asdict(self).items():
            if value is None or key == "ranking_source":
                continue
            lines.append(f"{key} = {json.dumps(value)}")
        return "\n".join(lines) + "\n"

    def with_ranking(self, path: str | os.PathLike, *, keep_layers: bool = False) -> FocalGuidanceConfig:
        """Take ``weak_layers`` from a ``layerscope rank`` JSON, remembering where they came from.

        ``keep_layers``: the user named ``weak_layers`` explicitly (``--fg-set``); they
        win, and the ranking is kept only as provenance and for the model checks.
        """
        from layerscope.ranking import Ranking, RankingError

        ranking = Ranking.load(path)
        data = asdict(self)
        if not keep_layers:
            try:
                data["weak_layers"] = ranking.layers_to_guide(
                    source=f"--ranking {path}",
                    hint="Rank more runs (`layerscope sweep`), or force layers with --fg-set weak_layers={layers}",
                )
            except RankingError as error:
                raise ConfigError(str(error)) from None
        data["ranking_source"] = {
            "path": str(path),
            "model": ranking.model,
            "method": ranking.method,
            "metric": ranking.metric,
        }
        return FocalGuidanceConfig(**data)
