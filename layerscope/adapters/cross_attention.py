"""Probe sites of cross-attention DiTs: a block's ``attn2`` takes the visual tokens as
queries and the text rows (after any image rows) as keys and values.

Why one module: Wan, SkyReels-V2, LTX-Video, LTX-2 and Cosmos-Predict2 wire ``attn2`` the
same way (diffusers ``Attention`` with ``to_v``, ``norm_q``/``norm_k``, ``to_out``); their
adapters differ in block paths, head layout and where the text rows start.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from functools import partial

import torch

from layerscope.adapters.base import AdapterError, ProbeSite


def attn2_hidden_states(args: tuple, kwargs: dict) -> torch.Tensor:
    """z: blocks call ``attn2(hidden_states, encoder_hidden_states=..., ...)`` with z first."""
    return args[0] if args else kwargs["hidden_states"]


def replace_context_rows(
    args: tuple, kwargs: dict, rows: list[int], neutral: int, text_rows_at_end: int | None = None
) -> tuple[tuple, dict]:
    """``attn2``'s call with text rows ``rows`` given the neutral row's input instead.

    Text row i is context row i, or ``len - text_rows_at_end + i`` when image rows come
    first (Wan2.1-I2V's context is ``[257 image rows; 512 text rows]``).
    """
    positional = len(args) > 1
    context = args[1] if positional else kwargs["encoder_hidden_states"]
    start = 0 if text_rows_at_end is None else context.shape[1] - text_rows_at_end
    changed = context.clone()
    changed[:, [start + row for row in rows]] = context[:, start + neutral : start + neutral + 1]
    if positional:
        return (args[0], changed, *args[2:]), kwargs
    return args, {**kwargs, "encoder_hidden_states": changed}


def cross_attention_sites(
    blocks: Iterable[torch.nn.Module],
    prefix: str,
    *,
    heads_first: bool = False,
    text_rows_at_end: int | None = None,
    check: Callable[[int, torch.nn.Module], None] | None = None,
) -> list[ProbeSite]:
    """One :class:`ProbeSite` per block's ``attn2`` (``{prefix}.{i}.attn2``).

    ``heads_first``: the query/key norms run on (B, H, S, d) (Cosmos).  ``check(index, block)``
    raises :class:`AdapterError` for a block the family cannot map.
    """
    sites = []
    for index, block in enumerate(blocks):
        if check is not None:
            check(index, block)
        attn = block.attn2
        if getattr(attn, "fused_projections", False):
            raise AdapterError(
                f"{prefix}.{index}.attn2 has fused projections (to_kv); call "
                "transformer.unfuse_qkv_projections() before recording"
            )
        sites.append(
            ProbeSite(
                name=f"{prefix}.{index}.attn2",
                layer=index,
                block=f"{prefix}.{index}",
                attention=attn,
                visual_input=attn2_hidden_states,
                text_value=attn.to_v,
                text_value_tokens=slice(None),
                query_norm=attn.norm_q,
                key_norm=attn.norm_k,
                attention_output=attn.to_out[0],
                heads=attn.heads,
                heads_first=heads_first,
                replace_text_rows=partial(replace_context_rows, text_rows_at_end=text_rows_at_end),
            )
        )
    return sites
