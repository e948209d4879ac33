"""Directional text-encoder heads (``testbed train --text-role-heads``): the bias they write,
the attention it produces (against a hand computation), and what it does to word order."""

from __future__ import annotations

import math

import pytest
import torch

from layerscope.errors import UsageError
from layerscope_testbed.shapes.roles import ROLE_BIAS, direction_buckets, set_directional_heads


def _encoder(heads: int = 4, buckets: int = 8):
    from transformers import UMT5Config, UMT5EncoderModel

    torch.manual_seed(0)
    config = UMT5Config(
        vocab_size=20, d_model=8, d_kv=4, d_ff=16, num_layers=2, num_heads=heads, relative_attention_num_buckets=buckets
    )
    return UMT5EncoderModel(config).eval()


def test_buckets_split_before_and_after_as_t5_numbers_them():
    # T5's encoder buckets with 8 buckets: 0 = the word itself, 1-3 before it, 5-7 after it
    # (1 and 5 exact at distance 1, the rest logarithmic up to max_distance).
    attention = _encoder().encoder.block[0].layer[0].SelfAttention
    assert direction_buckets(attention) == ([1, 2, 3], [5, 6, 7])


def _t5_bucket(distance: int) -> int:
    """T5's encoder bucket for |distance| < 8 with 8 buckets and max_distance 128, by hand:
    0 itself, 1 one word before, 2 two to seven before; 5 one after, 6 two to seven after."""
    side = 4 if distance > 0 else 0
    return side + min(abs(distance), 2)


def test_directional_heads_attend_as_computed_by_hand():
    """With the content scores zeroed, head h's output at word i is sum_j softmax_j(bias) v_j:
    e^B / (n_in e^B + n_out e^-B) on the words on its side, e^-B / (...) on the others
    (the word itself included); heads left alone keep their old (random) bias."""
    encoder = _encoder()
    tables = [block.layer[0].SelfAttention.relative_attention_bias.weight for block in encoder.encoder.block]
    before = [table.detach().clone() for table in tables]
    set_directional_heads(encoder, 2)
    attention = encoder.encoder.block[0].layer[0].SelfAttention
    n, width = 5, attention.key_value_proj_dim
    with torch.no_grad():
        attention.q.weight.zero_()  # scores = position bias only
        hidden = torch.randn(1, n, 8)
        output, _ = attention(hidden)
        values = (hidden[0] @ attention.v.weight.T).view(n, -1, width)  # (word, head, d_kv)
    inside, outside = math.exp(ROLE_BIAS), math.exp(-ROLE_BIAS)
    mixed = torch.zeros(n, 4, width)
    for head in range(4):
        for i in range(n):
            if head < 2:  # directional: 0 looks before the word, 1 after it
                side = [j for j in range(n) if (j < i if head == 0 else j > i)]
                norm = len(side) * inside + (n - len(side)) * outside
                weights = torch.tensor([(inside if j in side else outside) / norm for j in range(n)])
            else:
                weights = torch.softmax(torch.stack([before[0][_t5_bucket(j - i), head] for j in range(n)]), dim=0)
            mixed[i, head] = weights @ values[:, head]
    torch.testing.assert_close(output[0], mixed.reshape(n, -1) @ attention.o.weight.T)
    # only the first two columns of each layer's table were written
    for table, old in zip(tables, before):
        torch.testing.assert_close(table[:, 2:], old[:, 2:])
        assert set(table[:, :2].flatten().tolist()) == {ROLE_BIAS, -ROLE_BIAS}


def test_setting_the_heads_twice_changes_nothing():
    encoder = _encoder()
    set_directional_heads(encoder, 4)
    once = {k: v.clone() for k, v in encoder.state_dict().items()}
    set_directional_heads(encoder, 4)
    assert all(torch.equal(once[k], v) for k, v in encoder.state_dict().items())


@pytest.mark.parametrize("heads", [-2, 1, 3, 6])
def test_impossible_head_counts_are_refused_with_the_fix(heads):
    with pytest.raises(UsageError, match="give an even number from 0 to 4"):
        set_directional_heads(_encoder(), heads)


def _role_cosines(pipe) -> list[float]:
    """Cosine of the subject's colour and shape words with the same words as the object."""
    pairs = [
        ("the red circle pushes the blue square.", "the blue square pushes the red circle."),
        ("the green triangle pushes the yellow circle.", "the yellow circle pushes the green triangle."),
    ]
    cosines = []
    with torch.no_grad():
        for first, second in pairs:
            a, _ = pipe.encode_prompt(first, do_classifier_free_guidance=False, device="cpu", max_sequence_length=512)
            b, _ = pipe.encode_prompt(second, do_classifier_free_guidance=False, device="cpu", max_sequence_length=512)
            # "the C K pushes the C' K'.": the subject's words are tokens 1-2, the object's 5-6
            for i, j in ((1, 5), (2, 6)):
                cosines.append(torch.nn.functional.cosine_similarity(a[0, i], b[0, j], dim=0).item())
    return cosines


def test_directional_heads_make_the_role_of_a_word_visible_in_the_testbed_encoder():
    """The reason for the option: in the seeded random encoder a word reads the same as
    subject and as object (cosine > 0.98); with all heads directional it no longer does."""
    import layerscope_testbed as testbed
    from layerscope_testbed.shapes.world import VOCABULARY

    pipe = testbed.build_default_pipeline(0, vocabulary=VOCABULARY)
    assert pipe.tokenizer.convert_ids_to_tokens(pipe.tokenizer("the red circle pushes the blue square.").input_ids)[
        1:7
    ] == ["▁red", "▁circle", "▁pushes", "▁the", "▁blue", "▁square"]
    assert min(_role_cosines(pipe)) > 0.98
    set_directional_heads(pipe.text_encoder, testbed.TEXT_HEADS)
    cosines = _role_cosines(pipe)
    assert sum(cosines) / len(cosines) < 0.85  # 0.80 here; 0.75 over 20 training prompts on v6's encoder


def test_a_built_pipeline_encodes_prompts_deterministically():
    """A built pipeline is ready for inference, like a loaded one: its UMT5 (dropout 0.1) is in
    eval mode, so a prompt has one embedding (training from scratch encodes its prompts so)."""
    import layerscope_testbed as testbed

    pipe = testbed.build_default_pipeline(0)
    assert not any(module.training for module in (pipe.text_encoder, pipe.vae, pipe.transformer, pipe.image_encoder))
    with torch.no_grad():
        first, second = (
            pipe.encode_prompt("a red circle", do_classifier_free_guidance=False, device="cpu")[0] for _ in range(2)
        )
    assert torch.equal(first, second)
