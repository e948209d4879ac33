"""The ``focal-guidance`` entry point that ``layerscope record --intervene`` loads."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from fg_intervene.config import ConfigError, FocalGuidanceConfig

#: Adapter name -> the module that writes Focal Guidance for that family.  Each defines
#: ``check_supported(pipe, adapter, weak_layers)`` (refuses in one line, before CLIP loads),
#: ``prepare_guidance(pipe, adapter, config, inputs, clip)`` and
#: ``apply_focal_guidance(adapter, config, guidance, intrinsic)``.
FAMILY_MODULES: dict[str, str] = {
    "wan": "fg_intervene.wan",
    "hunyuan-video": "fg_intervene.hunyuan_video",
    "hunyuan-video-1.5": "fg_intervene.hunyuan_video15",
    "skyreels-v2": "fg_intervene.wan",
}
#: Adapter name -> why Eq. 8/9/13 have no place in that family's blocks (one line).
UNSUPPORTED_FAMILIES: dict[str, str] = {
    "ltx-video": "the image is only latent frame 0: no image rows or image value projection for Eq. 8-13's V_vis",
    "cogvideox": "the image enters as latent channels, so no image token or value projection holds Eq. 8's anchor",
    "cosmos-predict2": "the image is only latent frame 0 and attn2 sees only T5 rows: no image value for Eq. 8's V_vis",
    "ltx-2": "the image is only latent frame 0 and attn2 sees only Gemma connector rows: no image value for V_vis",
}


class FocalGuidance:
    """Focal Guidance as a LayerScope intervention (see :mod:`layerscope.interventions`)."""

    name = "focal-guidance"

    def __init__(self, config: FocalGuidanceConfig, clip_dir: str | Path | None = None):
        self.config = config
        self.clip_dir = Path(clip_dir) if clip_dir else None
        self.guidance = None
        self.sign_source = "config" if config.selection_sign is not None else "unresolved"

    def _clip(self, model_dir: Path | None) -> Any:
        from layerscope.clip import CLIP_SUBFOLDER, ClipError, load_clip

        directory = self.clip_dir or (model_dir / CLIP_SUBFOLDER if model_dir else None)
        if directory is None:
            raise ClipError("Focal Guidance needs the CLIP that matches the pipeline's image encoder; pass --clip DIR")
        return load_clip(directory)

    def _resolve_sign(self, inputs: Any) -> None:
        """Eq. 6's sign: the user's, else the model folder's declared default, else -1 (as printed)."""
        self.config, self.sign_source = self.config.resolved_for(getattr(inputs, "model_dir", None))

    def _check_ranking(self, inputs: Any) -> None:
        source = self.config.ranking_source.get("model", {})
        model_id = inputs.extra.get("model_id")
        # a fine-tuned model may use the ranking of its base (finetune trains the ranked layers)
        accepted = {model_id, inputs.extra.get("base_model_id")}
        if source.get("model_id") and model_id and source["model_id"] not in accepted:
            raise ConfigError(
                f"the ranking was computed on model {source['model_id']}, this run uses {model_id}; "
                "rank a recording of this model first"
            )
        layers = source.get("num_layers")
        if layers and layers != inputs.adapter.num_layers():
            raise ConfigError(f"the ranking is for a {layers}-layer model; this one has {inputs.adapter.num_layers()}")
        grid = source.get("grid")
        if grid and [int(g) for g in grid][1:] != [int(g) for g in inputs.grid][1:]:
            raise ConfigError(
                f"the ranking was computed on a {grid[1]}x{grid[2]} token grid, this run has "
                f"{inputs.grid[1]}x{inputs.grid[2]}; record and rank at this resolution"
            )

    def apply(self, inputs: Any) -> Any:
        family = inputs.adapter.name
        if family in UNSUPPORTED_FAMILIES:
            raise ConfigError(f"Focal Guidance has no place in {family} pipelines: {UNSUPPORTED_FAMILIES[family]}")
        if family not in FAMILY_MODULES:
            supported = ", ".join(sorted(FAMILY_MODULES))
            raise ConfigError(f"Focal Guidance supports {supported} pipelines; got {family}")
        module = importlib.import_module(FAMILY_MODULES[family])
        self._check_ranking(inputs)
        self._resolve_sign(inputs)
        module.check_supported(inputs.pipe, inputs.adapter, self.config.weak_layers)  # before loading CLIP
        self.guidance = module.prepare_guidance(
            inputs.pipe, inputs.adapter, self.config, inputs, self._clip(inputs.model_dir)
        )
        return module.apply_focal_guidance(
            inputs.adapter, self.config, self.guidance, getattr(inputs, "intrinsic", None)
        )

    def touched_layers(self) -> list[int]:
        """The blocks whose hidden state or values Focal Guidance changes (the weak layers)."""
        return list(self.config.weak_layers)

    def carried_layers(self, num_layers: int) -> list[int]:
        """The blocks after the first weak one, whose input carries the terms added before them."""
        from fg_intervene.installation import carried_layers

        return carried_layers(self.config, num_layers)

    def to_dict(self) -> dict[str, Any]:
        data = self.config.to_dict()
        if self.guidance is not None:
            data["selected_keywords"] = self.guidance.keywords
            data["keyword_token_indices"] = self.guidance.token_indices
            data["selection_scores"] = self.guidance.scores
        data["clip"] = str(self.clip_dir) if self.clip_dir else "the model's clip/ folder"
        data["selection_sign_source"] = self.sign_source
        return data


def create(
    ranking: str | Path | None = None,
    config: str | Path | None = None,
    clip: str | Path | None = None,
    settings: dict[str, Any] | None = None,
    **overrides: Any,
) -> FocalGuidance:
    """Entry-point factory: ``layerscope record --intervene focal-guidance --ranking R [--intervene-config C]``.

    ``settings`` (``--fg-set name=value``) and ``overrides`` (e.g. ``fsg=False`` from
    ``--fg-set fsg=false``) win over the TOML file; unknown names are refused in one line.
    """
    overrides = {k: v for k, v in {**(settings or {}), **overrides}.items() if v is not None}
    if config:
        base = FocalGuidanceConfig.from_toml(config, **overrides)
    else:
        base = FocalGuidanceConfig.from_dict(overrides)
    if ranking:
        base = base.with_ranking(ranking, keep_layers="weak_layers" in overrides)
    return FocalGuidance(base, clip)
