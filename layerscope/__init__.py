"""LayerScope: look inside image-to-video diffusion transformers, layer by layer.

Importing this package is cheap: torch, diffusers and friends load only when a
function that needs them is called (``layerscope --help`` must stay fast).
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

__all__ = ["__version__", "open_run", "open_runs", "record", "trace"]


def open_run(path: Any) -> Any:
    """Open one recorded store as a lazy ``xarray.Dataset`` (see :mod:`layerscope.store`)."""
    from layerscope import accessor  # noqa: F401  (registers ds.layerscope)
    from layerscope.store import open_run as _open_run

    return _open_run(path)


def open_runs(paths: Any) -> Any:
    """Open several stores stacked along a ``run`` dimension."""
    from layerscope import accessor  # noqa: F401
    from layerscope.store import open_runs as _open_runs

    return _open_runs(paths)


def trace(*args: Any, **kwargs: Any) -> Any:
    """Context manager recording a pipeline call; see :func:`layerscope.recording.trace`."""
    from layerscope.recording import trace as _trace

    return _trace(*args, **kwargs)


def record(*args: Any, **kwargs: Any) -> Any:
    """Run a pipeline once and record it; see :func:`layerscope.recording.record`."""
    from layerscope.recording import record as _record

    return _record(*args, **kwargs)
