"""HTML reports and the figures in them (see :mod:`layerscope.report.render`)."""

from __future__ import annotations

from typing import Any


def render(run: Any, compare: Any = None, **kwargs: Any) -> str:
    """Self-contained HTML of one run, or of a before/after pair."""
    from layerscope.report.render import render as _render

    return _render(run, compare, **kwargs)


def write(run: Any, out: Any, compare: Any = None, **kwargs: Any) -> Any:
    """Render and write the report file atomically; returns its path."""
    from layerscope.report.render import write as _write

    return _write(run, out, compare, **kwargs)
