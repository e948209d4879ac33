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


def pipeline_call_defaults(pipeline_class: str) -> tuple[int, int, int, int] | None:
    """(steps, frames, height, width) as ``pipeline_class`` defaults them, None if it cannot say.

    Why from the class: diffusers' ``__call__`` signature carries each family's published
    sizes (Wan2.1-I2V 50/81/480/832, HunyuanVideo-I2V 50/129/720/1280, LTX-Video
    50/161/512/704); where it leaves height/width to the model (CogVideoX: ``None``), the
    family's adapter names them (:attr:`ModelAdapter.default_size`, ``default_frames``).
    """
    import inspect

    import diffusers

    try:
        params = inspect.signature(getattr(diffusers, pipeline_class).__call__).parameters
    except (AttributeError, TypeError, ValueError):
        return None
    adapter = next((cls for cls in adapter_classes() if pipeline_class in cls.pipeline_classes), None)
    size = getattr(adapter, "default_size", None) or (None, None)
    fallback = {"height": size[0], "width": size[1], "num_frames": getattr(adapter, "default_frames", None)}
    values = []
    for key in ("num_inference_steps", "num_frames", "height", "width"):
        value = params[key].default if key in params else None
        value = value if isinstance(value, int) and value > 0 else fallback.get(key)
        if value is None:
            return None
        values.append(value)
    return tuple(values)
