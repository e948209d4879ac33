"""The model families LayerScope knows, and how a pipeline finds its adapter.

pyvene's pattern: family modules (``wan.py``, ...) are wiring and never import this
file; this file imports them all.  Adding a family is one new module plus one entry in
:data:`ADAPTERS`.
"""

from __future__ import annotations

from typing import Any

from layerscope.adapters.base import AdapterError, ModelAdapter
from layerscope.adapters.hunyuan_video import HunyuanVideoAdapter
from layerscope.adapters.wan import WanAdapter

#: Every adapter, in the order a pipeline is matched against them.
ADAPTERS: tuple[type[ModelAdapter], ...] = (WanAdapter, HunyuanVideoAdapter)


def supported_pipeline_classes() -> list[str]:
    """Pipeline class names some adapter accepts (for error messages and model-folder checks)."""
    return [name for adapter in ADAPTERS for name in adapter.pipeline_classes]


def resolve_adapter(pipe: Any) -> ModelAdapter:
    """Pick the adapter for ``pipe`` or fail with the list of supported classes."""
    for adapter_cls in ADAPTERS:
        if adapter_cls.supports(pipe):
            return adapter_cls(pipe)
    raise AdapterError(
        f"unsupported pipeline class {type(pipe).__name__}; supported: {', '.join(supported_pipeline_classes())}"
    )
