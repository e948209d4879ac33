"""What every benchmark script shares: timing, summaries, the markdown table and the JSON file.

Benchmarks import the *installed* layerscope (``make install`` or ``pip install -e .``);
this module sits next to them, so ``python benchmarks/NAME.py`` finds it without any
``sys.path`` edits.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any


def timed(fn: Callable[[], Any], repeats: int) -> list[float]:
    """Wall-clock seconds of ``repeats`` calls of ``fn``."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return times


def summary(times: Sequence[float]) -> dict[str, Any]:
    """Median and spread: timings on shared machines are noisy, so never one number alone."""
    return {"median": statistics.median(times), "min": min(times), "max": max(times), "repeats": len(times)}


def verdict(met: bool | None) -> str:
    return "" if met is None else ("yes" if met else "NO")


def print_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """A markdown table on stdout (pasteable into the README and issue notes)."""
    print("| " + " | ".join(header) + " |")
    print("| " + " | ".join("---" for _ in header) + " |")
    for row in rows:
        print("| " + " | ".join(str(cell) for cell in row) + " |")


def write_json(results: dict[str, Any], path: str | Path) -> Path:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2, default=float))
    print(f"wrote {out}")
    return out


def interleaved_runs(variants: dict[str, Callable[[], float]], repeats: int) -> tuple[dict, dict]:
    """Time ``plain`` around every other variant: P V1 P V2 ... P, ``repeats`` times.

    Why interleaved: the machines are shared and drift; a variant's ratio is its run over
    the mean of the two plain runs around it, so drift cancels.  Each callable returns its
    own measured seconds (set-up it does is excluded).  Returns (times per variant,
    paired ratios per non-plain variant), raw lists.
    """
    plain = variants["plain"]
    others = [name for name in variants if name != "plain"]
    times: dict[str, list[float]] = {name: [] for name in variants}
    ratios: dict[str, list[float]] = {name: [] for name in others}
    before = plain()
    times["plain"].append(before)
    for _ in range(repeats):
        for name in others:
            seconds = variants[name]()
            after = plain()
            times[name].append(seconds)
            times["plain"].append(after)
            ratios[name].append(seconds / ((before + after) / 2.0))
            before = after
    return times, ratios


def transformer_only_adapter(transformer: Any) -> Any:
    """A :class:`WanAdapter` over a bare transformer: probes need only ``denoisers`` and ``probe_sites``."""
    from layerscope.adapters.wan import WanAdapter

    class TransformerOnlyAdapter(WanAdapter):
        def __init__(self, model: Any):
            super().__init__(pipe=None)
            self.model = model

        def denoisers(self) -> list[Any]:
            return [self.model]

    return TransformerOnlyAdapter(transformer)
