"""Directional heads in the testbed's text encoder: a word's vector says which side of the verb it stands on.

Why: the testbed's UMT5 is a seeded random encoder, and the DiT's cross-attention has no
positions of its own, so the DiT sees a prompt as a set of word vectors.  In that encoder
a word's vector barely depends on where it stands: the subject's colour and shape words
of "the A pushes the B" and the same words as the object of "the B pushes the A" have
cosine 0.998 (v6, 20 training push prompts, 40 words), so who pushes whom cannot reach
the DiT.  Training the encoder with the DiT did not separate them (``--lr-text 1e-3``:
0.993; ``1e-2`` collapsed it, README).

UMT5 already has the mechanism: every self-attention layer adds a learnt bias per head
and per relative-position bucket to its scores.  :func:`set_directional_heads` writes
that bias by hand in some heads: half of them attend to the words *before* the query
word, half to the words *after* it (:data:`ROLE_BIAS` for those buckets, minus it for
the rest, the word itself included).  A subject's words then carry "nothing but 'the'
before me, the verb after me", an object's "the verb before me", a difference no word
identity can hide.  Measured on v6's encoder (README, 2026-12-03): with all four heads
of both layers directional the same-word cosine across roles falls from 0.998 to 0.752
(min 0.469), against 0.13 between two colour words in one slot; a token's vector keeps
cosine 0.80 with its v6 value, and v6's DiT, fed the new vectors unchanged, loses 38% of
what the prompt gives its loss (96 fixed training batches), which a continued run must
win back.

Deviation from a trained text encoder (Wan's UMT5-XXL has learnt this from text): a
hand-set bias is the smallest change that makes word order visible in a 2-layer, 32-wide
random encoder; it is a recorded, replayable training option (``--text-role-heads``).
"""

from __future__ import annotations

from typing import Any

from layerscope.errors import UsageError

#: The bias on the scores of the buckets a directional head attends to (minus it on the
#: others).  Why 3: the measured role cosine saturates there (0.889 at 3, 0.882 at 5 and
#: 0.881 at 10, two heads per layer), while softmax still mixes in the word itself a little.
ROLE_BIAS = 3.0


def direction_buckets(attention: Any, max_distance: int = 64) -> tuple[list[int], list[int]]:
    """The relative-position buckets of keys before and after the query word, as the layer computes them.

    Asked of the layer's own bucketing (T5's, via transformers), not rebuilt here, so the
    heads stay right whatever ``relative_attention_num_buckets`` the encoder has.
    """
    import torch

    distance = torch.arange(-max_distance, max_distance + 1)
    buckets = attention._relative_position_bucket(distance)
    before = sorted(set(buckets[distance < 0].tolist()))
    after = sorted(set(buckets[distance > 0].tolist()))
    if set(before) & set(after) or buckets[max_distance].item() in before + after:
        raise UsageError("this text encoder's position buckets do not separate before from after (is it a decoder?)")
    return before, after


def check_head_count(heads: int, total: int) -> None:
    """Refuse a head count :func:`set_directional_heads` cannot use, naming the fix."""
    if heads < 0 or heads % 2 or heads > total:
        raise UsageError(
            f"--text-role-heads {heads}: give an even number from 0 to {total} "
            "(half the heads look before the word, half after it)"
        )


def set_directional_heads(text_encoder: Any, heads: int, strength: float = ROLE_BIAS) -> None:
    """Make the first ``heads`` heads of every encoder layer directional (module docstring).

    Even heads attend to the words before the query, odd ones to the words after it.
    Idempotent: a model that already has them is left as it is.  ``heads`` must be even
    and at most the encoder's head count.
    """
    import torch

    check_head_count(heads, text_encoder.config.num_heads)
    for block in text_encoder.encoder.block:
        attention = block.layer[0].SelfAttention
        if getattr(attention, "relative_attention_bias", None) is None:
            raise UsageError("directional heads need a position bias in every layer (UMT5); this encoder lacks one")
        table = attention.relative_attention_bias.weight  # (buckets, heads)
        before, after = direction_buckets(attention)
        with torch.no_grad():
            for head in range(heads):
                column = torch.full((table.shape[0],), -strength, dtype=table.dtype, device=table.device)
                column[before if head % 2 == 0 else after] = strength
                table[:, head] = column
