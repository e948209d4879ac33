"""How a pipeline finds its model family's adapter.

pyvene's pattern: family modules (``wan.py``, ...) are wiring and never import this file.
The families themselves are a :class:`layerscope.registry.Registry`
(:data:`~layerscope.registry.MODEL_FAMILIES`): adding one is one new module plus one
line there, or an entry point in group ``layerscope.model_families`` from another package.
"""

from __future__ import annotations

from typing import Any

from layerscope.adapters.base import AdapterError, ModelAdapter
from layerscope.registry import MODEL_FAMILIES

#: Pipeline classes of families whose architecture gives no keyword map, with the reason
#: (one line each): ``record`` refuses them by name instead of "unsupported".
REFUSED_PIPELINES: dict[str, str] = {}


def adapter_classes() -> list[type[ModelAdapter]]:
    """Every adapter class, in the order a pipeline is matched against them."""
    return list(MODEL_FAMILIES.load_all().values())


def supported_pipeline_classes() -> list[str]:
    """Pipeline class names some adapter accepts (for error messages and model-folder checks)."""
    return [name for adapter in adapter_classes() for name in adapter.pipeline_classes]


def resolve_adapter(pipe: Any) -> ModelAdapter:
    """Pick the adapter for ``pipe`` or fail with the list of supported classes."""
    for adapter_cls in adapter_classes():
        if adapter_cls.supports(pipe):
            return adapter_cls(pipe)
    name = type(pipe).__name__
    if name in REFUSED_PIPELINES:
        raise AdapterError(f"LayerScope cannot map {name}: {REFUSED_PIPELINES[name]}")
    raise AdapterError(
        f"unsupported pipeline class {type(pipe).__name__}; supported: {', '.join(supported_pipeline_classes())}"
    )
