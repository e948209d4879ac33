"""One extension mechanism for every open set: model families, probes, map statistics, judges, interventions.

Why one shape for all of them: a third-party package adds a member of any set the same
way, by an entry point in the set's group (``layerscope.<kind>``, e.g.
``[project.entry-points."layerscope.probes"] mine = "my_pkg.probe:MyProbe"``), and
LayerScope's own members are listed the same way here, as ``module:attribute`` strings.
Nothing is imported until a member is used, so the CLI takes its ``choices`` from
:meth:`Registry.names` without importing torch.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

from layerscope.errors import LayerScopeError


class RegistryError(LayerScopeError):
    """An unknown or broken member of a registry (a usage error)."""


@dataclass(frozen=True)
class Registry:
    """Named members of one kind: the built-ins below plus entry points of group ``layerscope.<kind>``."""

    kind: str
    builtins: dict[str, str] = field(default_factory=dict)
    #: what one member is, for error messages ("probe kind", "judge", ...)
    noun: str = "member"

    @property
    def group(self) -> str:
        return f"layerscope.{self.kind}"

    def _entry_points(self) -> dict[str, metadata.EntryPoint]:
        return {ep.name: ep for ep in metadata.entry_points(group=self.group)}

    def names(self) -> list[str]:
        """Every member's name, built-ins first (in their order), then installed plug-ins sorted."""
        extra = sorted(set(self._entry_points()) - set(self.builtins))
        return [*self.builtins, *extra]

    def target(self, name: str) -> str:
        """``module:attribute`` of member ``name``, without importing it."""
        if name in self.builtins:
            return self.builtins[name]
        return self._entry_points()[name].value

    def __contains__(self, name: object) -> bool:
        return name in self.names()

    def load(self, name: str) -> Any:
        """The member called ``name`` (imported now); an unknown name is one line listing the known ones."""
        if name in self.builtins:
            module, _, attribute = self.builtins[name].partition(":")
            return getattr(importlib.import_module(module), attribute)
        entry_points = self._entry_points()
        if name not in entry_points:
            raise RegistryError(f"unknown {self.noun} {name!r}; choose one of {', '.join(self.names()) or 'none'}")
        try:
            return entry_points[name].load()
        except Exception as error:  # a plug-in that fails to import is its author's bug, named as such
            raise RegistryError(f"{self.noun} {name!r} ({entry_points[name].value}) failed to load: {error}") from None

    def load_all(self) -> dict[str, Any]:
        return {name: self.load(name) for name in self.names()}


#: Model families: adapter classes, matched against a pipeline in this order.
MODEL_FAMILIES = Registry(
    "model_families",
    {
        "wan": "layerscope.adapters.wan:WanAdapter",
        "hunyuan-video": "layerscope.adapters.hunyuan_video:HunyuanVideoAdapter",
        "ltx-video": "layerscope.adapters.ltx:LTXVideoAdapter",
        "cogvideox": "layerscope.adapters.cogvideox:CogVideoXAdapter",
        "skyreels-v2": "layerscope.adapters.skyreels_v2:SkyReelsV2Adapter",
        "hunyuan-video-1.5": "layerscope.adapters.hunyuan_video15:HunyuanVideo15Adapter",
        "cosmos-predict2": "layerscope.adapters.cosmos:CosmosPredict2Adapter",
        "ltx-2": "layerscope.adapters.ltx2:LTX2Adapter",
    },
    noun="model family",
)

#: Probe kinds: what a map of one block and step is (``layerscope.probe_kinds``).
PROBES = Registry(
    "probes",
    {
        "hidden": "layerscope.probe_kinds.hidden:HIDDEN",
        "output": "layerscope.probe_kinds.output:OUTPUT",
        "attention": "layerscope.probe_kinds.attention:ATTENTION",
        "contrastive": "layerscope.probe_kinds.contrastive:CONTRASTIVE",
        "influence": "layerscope.probe_kinds.influence:INFLUENCE",
    },
    noun="probe kind",
)

#: Map statistics: each (H, W) map -> numbers stored per (step, layer, keyword, frame) and ranked.
STATISTICS = Registry(
    "statistics",
    {
        "moran_i": "layerscope.map_statistics.moran:MORAN_I",
        "std": "layerscope.map_statistics.std:STD",
        "rms": "layerscope.map_statistics.rms:RMS",
    },
    noun="map statistic",
)

#: Judges of ``layerscope bench``: factories ``(spec, prompts, **options) -> Judge``.  The
#: shapes world's scorer registers itself from the testbed (pyproject entry point).
JUDGES = Registry("judges", {"vlm": "layerscope.bench.vlm:vlm_factory"}, noun="judge")

#: Interventions of ``record --intervene`` (``fg_intervene`` registers ``focal-guidance``).
INTERVENTIONS = Registry("interventions", {}, noun="intervention")

#: Commands of ``layerscope``: ``add_parser(subparsers)`` functions; the testbed adds ``testbed`` and ``eval``.
COMMANDS = Registry(
    "commands",
    {
        "record": "layerscope.cli.record:add_parser",
        "sweep": "layerscope.cli.sweep:add_parser",
        "finetune": "layerscope.cli.finetune:add_parser",
        "rank": "layerscope.cli.rank:add_parser",
        "report": "layerscope.cli.report:add_parser",
        "bench": "layerscope.cli.bench:add_parser",
        "plan": "layerscope.cli.plan:add_parser",
    },
    noun="command",
)

#: Model names ``--model`` accepts besides a directory: ``() -> Path`` (the testbed: default, random).
MODELS = Registry("models", {}, noun="model name")

#: ``record``'s inputs when none are given: ``() -> (image, prompt, keywords)`` (the testbed's ``default``).
EXAMPLES = Registry("examples", {}, noun="example")

#: Generated training sets for ``finetune --data NAME:N``: ``(out_dir, count, seed, frames, size) -> jsonl``.
DATASETS = Registry("datasets", {}, noun="dataset")

#: HTML pages ``layerscope report FILE.json`` renders: ``(json_path, html_path) -> Path`` (the testbed's eval).
REPORT_PAGES = Registry("report_pages", {}, noun="report page")

#: Judge-validity harnesses of ``bench --judge-validity``: ``(judge, out, count, log) -> dict``.
JUDGE_CHECKS = Registry("judge_checks", {}, noun="judge check")

#: Pipeline components from outside diffusers/transformers that a model folder's
#: ``model_index.json`` may name (``[module, class]``), e.g. the testbed's stand-in safety
#: checker of its tiny Cosmos pipeline: ``load_pipeline`` imports a registered one's module
#: first, because diffusers resolves such a class only from a module already imported.
PIPELINE_COMPONENTS = Registry("pipeline_components", {}, noun="pipeline component")
