"""What the model-family tests share: their own hooks on ``attn2`` and Eq. 10 computed by hand.

Imported by ``test_ltx.py``, ``test_ltx2.py`` and ``test_cosmos.py``; nothing here comes
from LayerScope's probes, so a map the tests compare against is independent of them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F


def capture_attn2(attn: torch.nn.Module) -> tuple[list[dict], list[Any]]:
    """(z, attention mask, to_v output) of every call of ``attn`` (whole batch), and the hook handles."""
    seen: list[dict] = []

    def pre(module, args, kwargs):
        seen.append({"z": args[0].detach().clone(), "mask": kwargs["attention_mask"].detach().clone()})

    def values(module, args, output):
        seen[-1]["v"] = output.detach().clone()  # returns None: the module's output is untouched

    return seen, [attn.register_forward_pre_hook(pre, with_kwargs=True), attn.to_v.register_forward_hook(values)]


def cosine_maps(z: torch.Tensor, values: torch.Tensor, rows: list, grid: tuple[int, int, int]) -> torch.Tensor:
    """Eq. 10 by hand: cos(mean of each keyword's value rows, every visual token), (K, F', H', W')."""
    keys = torch.stack([values[list(r)].float().mean(0) for r in rows])
    return (F.normalize(keys, dim=-1) @ F.normalize(z.float(), dim=-1).T).reshape(len(rows), *grid)


def record_with_hooks(pipe: Any, out: Path, handles: list[Any], **options: Any) -> None:
    """``layerscope.recording.record`` in float32, no progress bar; the test's hooks removed after."""
    from layerscope.recording import record

    try:
        record(pipe, out, dtype="float32", progress=False, **options)
    finally:
        for handle in handles:
            handle.remove()
