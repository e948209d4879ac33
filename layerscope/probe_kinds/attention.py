"""``attention``: softmax cross-attention mass of each visual token on the keyword's tokens, heads averaged.

A keyword of several tokens sums their mass.  Cross-attention DiTs (Wan): the softmax
runs over the text keys (padding masked as the model masks it); MMDiT (HunyuanVideo):
over all keys of the joint attention, visual ones included, after the rotary embedding
(HunyuanVideo: text after the visual rows or in its own stream; CogVideoX: text first).
"""

from __future__ import annotations

import torch

from layerscope.probe_kinds.base import ProbeKind


class AttentionProbe(ProbeKind):
    name = "attention"
    summary = "softmax attention mass of each visual token on the keyword's tokens, heads averaged"
    needs_query_key = True

    def maps(self, probe, scratch, grid):
        from layerscope.probes import ATTENTION_QUERY_CHUNK, attention_mass_maps

        site = probe.site
        if site.joint_attention:
            return _joint_attention_maps(probe, scratch, grid)
        n_visual = scratch["visual"].shape[0]
        query, key = scratch["query"], scratch["key"]
        if site.heads_first:  # the norms ran on (H, S, d) (Cosmos)
            query, key = query.transpose(0, 1), key.transpose(0, 1)
        query = query.reshape(query.shape[0], -1)  # (S, H, d) -> (S, D)
        key = key.reshape(key.shape[0], -1)
        if site.text_follows_visual:
            query, key = query[:n_visual], key[n_visual:]
        key_tokens = key[site.text_value_tokens]
        mask = scratch.get("mask")
        key_mask = None
        if mask is not None and mask.shape[0] == n_visual + key.shape[0]:
            key_mask = mask[n_visual:][site.text_value_tokens]
        elif mask is not None and mask.shape[0] == key.shape[0]:  # a mask over the text keys alone (LTX-Video)
            key_mask = mask[site.text_value_tokens]
        return attention_mass_maps(
            query, key_tokens, probe.config.keyword_tokens, site.heads, grid, key_mask=key_mask,
            chunk=ATTENTION_QUERY_CHUNK,
        )  # fmt: skip


def _joint_attention_maps(probe, scratch: dict[str, torch.Tensor], grid: tuple[int, int, int]) -> torch.Tensor:
    """MMDiT: the mass each visual query puts on the keyword rows, softmax over all keys."""
    from layerscope.probes import ATTENTION_QUERY_CHUNK, attention_mass_maps

    site = probe.site
    n = scratch["visual"].shape[0]
    query, key = scratch["query"], scratch["key"]  # (S, H, d) from the norms
    if site.heads_first:  # the norms ran on (H, S, d) (CogVideoX)
        query, key = query.transpose(0, 1), key.transpose(0, 1)
    if site.text_follows_visual:  # single stream: one norm over [visual; text]
        query, visual_key, text_key = query[:n], key[:n], key[n:]
    elif site.text_precedes_visual:  # one norm over [text; visual] (CogVideoX)
        text = key.shape[0] - n
        query, visual_key, text_key = query[text:], key[text:], key[:text]
    else:  # double stream: visual keys from norm_k, text keys from norm_added_k
        visual_key, text_key = scratch["visual_key"], key
    rotary = scratch.get("rotary")
    if rotary is not None:
        from diffusers.models.embeddings import apply_rotary_emb

        query = apply_rotary_emb(query[None], rotary, sequence_dim=1)[0]
        visual_key = apply_rotary_emb(visual_key[None], rotary, sequence_dim=1)[0]
    keys = torch.cat([visual_key, text_key[site.text_value_tokens]], dim=0)
    mask = scratch.get("mask")
    if mask is not None and mask.dtype == torch.bool and mask.shape[0] == keys.shape[0] - n:
        mask = torch.cat([mask.new_ones(n), mask])  # a mask over the text keys alone (HunyuanVideo-1.5)
    if mask is not None and mask.shape[0] != keys.shape[0]:
        mask = None
    shifted = [[n + index for index in tokens] for tokens in probe.config.keyword_tokens]
    heads = query.shape[1]
    queries, keys = query.reshape(n, -1), keys.reshape(keys.shape[0], -1)
    return attention_mass_maps(queries, keys, shifted, heads, grid, key_mask=mask, chunk=ATTENTION_QUERY_CHUNK)


ATTENTION = AttentionProbe()
