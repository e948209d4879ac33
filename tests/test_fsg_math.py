"""Focal Guidance equations on hand-computed tensors (paper Eq. 6-9 and 11-13)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fg_intervene import fsg
from fg_intervene.attention_cache import AttentionCache, aggregate, aggregation_weights, inject, threshold
from fg_intervene.config import ConfigError, FocalGuidanceConfig


def test_similarity_sign_and_selection_on_a_constructed_case():
    # 4 patches; "red" points at patch 2, "circle" at patch 0, "the" is orthogonal to all
    patches = torch.eye(4)
    text = torch.tensor([[0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0], [0.9, 0.1, 0.0, 0.0], [0, 0, 0, 0.0]])
    text[0] = torch.tensor([0.5, 0.5, -0.5, -0.5])  # "the": cos 0.5 with patches 0 and 1
    words = fsg.group_words(["the</w>", "red</w>", "cir", "cle</w>"])
    assert words == [("the", [0]), ("red", [1]), ("circle", [2, 3])]
    s = fsg.similarity_matrix(text[:3], patches, +1)  # +cos, the named alternative
    assert s[1, 2] == pytest.approx(1.0) and s[2, 0] == pytest.approx(0.9 / np.hypot(0.9, 0.1))
    scores = fsg.score_words(s, [("the", [0]), ("red", [1]), ("circle", [2])], tau_sel=0.6, stopwords=["the"])
    assert fsg.select_keywords(scores, 0.6) == ["red", "circle"]
    # the printed Eq. 6 (minus sign, the default) scores words by their most *dissimilar* patch:
    # with a CLIP whose raw similarity peaks on the background (CLIP Surgery), that is the object
    printed = fsg.similarity_matrix(text[:3], patches)
    assert torch.equal(printed, -s)
    flipped = fsg.score_words(printed, [("the", [0]), ("red", [1])], 0.4, [])
    assert [w.word for w in flipped if w.selected] == ["the"]


def test_selection_failure_names_threshold_and_best_score():
    scores = [fsg.KeywordScore("cat", 0.12, False), fsg.KeywordScore("dog", 0.31, False)]
    with pytest.raises(fsg.SelectionError, match=r"tau_sel=0.5; the best was 'dog' at 0.310"):
        fsg.select_keywords(scores, 0.5)
    # a stopword scoring higher is not named as "the best": it could never have been chosen
    with_stopword = [*scores, fsg.KeywordScore("the", 0.9, False, stopword=True)]
    with pytest.raises(fsg.SelectionError, match=r"the best was 'dog' at 0.310"):
        fsg.select_keywords(with_stopword, 0.5)


def test_anchor_is_normalised_positive_weighted_sum():
    sims = torch.tensor([[0.5, -0.2, 0.25, 0.25]])
    tokens = torch.tensor([[2.0, 0.0], [100.0, 100.0], [0.0, 4.0], [0.0, 0.0]])
    # weights 0.5/1, 0, .25/1, .25/1 -> anchor = .5*[2,0] + .25*[0,4] = [1, 1]
    assert fsg.visual_anchors(sims, tokens).tolist() == [[1.0, 1.0]]
    assert fsg.anchor_weights(torch.tensor([[-1.0, -2.0]])).tolist() == [[0.5, 0.5]]


def test_region_weights_threshold_and_resize():
    sims = torch.tensor([[0.0, 1.0, 2.0, 4.0]])  # 2x2 patch grid
    w = fsg.region_weights(sims, (2, 2), (2, 2), tau_region=0.3)
    assert w.tolist() == [[[0.0, 0.0], [0.5, 1.0]]]
    big = fsg.region_weights(sims, (2, 2), (4, 4), tau_region=0.0)
    assert big.shape == (1, 4, 4) and float(big.max()) == 1.0 and float(big.min()) == 0.0
    # a wide frame: CLIP saw only the centre square, so nothing lands outside it
    wide = fsg.region_weights(sims, (2, 2), (2, 6), tau_region=0.3)
    assert wide[0, :, 2:4].tolist() == [[0.0, 0.0], [0.5, 1.0]]
    assert wide[0, :, :2].abs().sum() == 0 and wide[0, :, 4:].abs().sum() == 0


def test_text_fusion_changes_only_keyword_rows():
    values = torch.arange(2 * 5 * 3, dtype=torch.float32).reshape(2, 5, 3)
    vis = torch.tensor([[1.0, 2.0, 3.0], [10.0, 0.0, 0.0]])
    fused = fsg.fuse_text_values(values, [[1], [3, 4]], vis, lambda_txt=0.5)
    diff = fused - values
    assert diff[:, 1].tolist() == [[0.5, 1.0, 1.5]] * 2
    assert diff[:, 3].tolist() == [[5.0, 0.0, 0.0]] * 2 and diff[:, 4].tolist() == [[5.0, 0.0, 0.0]] * 2
    assert diff[:, [0, 2]].abs().sum() == 0


def test_reference_frame_injection_only_touches_frame_zero_region():
    hidden = torch.zeros(1, 3 * 4, 2)  # F'=3 frames of a 2x2 grid
    weights = torch.tensor([[[0.0, 1.0], [0.5, 0.0]]])  # K=1
    vis = torch.tensor([[2.0, -4.0]])
    out = fsg.inject_reference_frame(hidden, weights, vis, lambda_lat=0.25)
    expected = torch.zeros(1, 12, 2)
    expected[0, 1] = torch.tensor([0.5, -1.0])  # 0.25 * 1.0 * [2, -4]
    expected[0, 2] = torch.tensor([0.25, -0.5])  # 0.25 * 0.5 * [2, -4]
    assert torch.equal(out, expected)


def test_alpha_sums_to_one_over_strong_layers_and_is_zero_on_weak():
    alpha = aggregation_weights(8, weak_layers=[3, 4, 5], available=range(8))
    assert float(alpha.sum()) == pytest.approx(1.0)
    assert alpha[[3, 4, 5]].tolist() == [0.0, 0.0, 0.0]
    assert alpha[0] == pytest.approx(1 / (8 - 3))
    first_step = aggregation_weights(8, [3, 4, 5], available=[0, 1, 2])
    assert first_step.tolist() == pytest.approx([1 / 3] * 3 + [0.0] * 5)


def test_aggregate_threshold_inject_by_hand():
    maps = {0: torch.tensor([[[[0.2, 0.8]]]]), 1: torch.tensor([[[[0.4, 0.0]]]]), 2: torch.tensor([[[[9.0, 9.0]]]])}
    alpha = aggregation_weights(3, weak_layers=[2], available=[0, 1, 2])
    cache = aggregate(maps, alpha)
    assert cache.flatten().tolist() == pytest.approx([0.3, 0.4])
    kept = threshold(cache, 0.35)
    assert kept.flatten().tolist() == pytest.approx([0.0, 0.4])
    hidden = torch.ones(1, 2, 2)
    out = inject(hidden, kept, torch.tensor([[10.0, 20.0]]), lambda_cache=0.5)
    assert out[0].flatten().tolist() == pytest.approx([1.0, 1.0, 3.0, 5.0])


def test_cache_keeps_only_the_latest_map_per_strong_layer():
    cache = AttentionCache(4, weak_layers=[1, 2])
    for step in range(5):
        for layer in range(4):
            cache.update(step, layer, "cond", torch.full((1, 1, 1, 1), float(step)))
    assert cache.sources() == {0: 4, 3: 4}
    assert cache.stored_maps() == 2
    cache.update(5, 0, "uncond", torch.full((1, 1, 1, 1), -1.0))
    assert cache.sources("cond") == {0: 4, 3: 4} and cache.sources("uncond") == {0: 5}
    assert float(cache.current(-1.0).flatten()[0]) == 4.0


def test_config_roundtrips_through_toml_and_dict(tmp_path):
    config = FocalGuidanceConfig(weak_layers=[5, 3], keywords=["cat"], lambda_txt=0.25, fsg=False)
    path = tmp_path / "fg.toml"
    path.write_text(config.to_toml())
    again = FocalGuidanceConfig.from_toml(path)
    assert again == config and again.weak_layers == [3, 5] and again.mode == "cache"
    assert FocalGuidanceConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ConfigError, match="unknown Focal Guidance option"):
        FocalGuidanceConfig.from_dict({"lambda_text": 1.0})
    with pytest.raises(ConfigError, match="selection_sign"):
        FocalGuidanceConfig(selection_sign=0)
