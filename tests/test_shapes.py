"""The shapes world: deterministic scenes, unseen held-out combinations, and a scorer that
measures what it claims (ground truth passes, wrong videos fail, shuffled is near chance)."""

from __future__ import annotations

import numpy as np
import pytest

from layerscope.shapes.render import reference_image, render_video
from layerscope.shapes.scorer import evaluate, score_video
from layerscope.shapes.world import HELD_OUT, VOCABULARY, Scene, sample_scenes, subject_key

SIZE = 128  # the scorer works in frame fractions; half resolution keeps the tests fast


@pytest.fixture(scope="module")
def scenes():
    return {split: sample_scenes(60, split, seed=7) for split in ("train", "heldout")}


@pytest.fixture(scope="module")
def videos(scenes):
    return {split: [render_video(s, 9, SIZE, SIZE) for s in chosen] for split, chosen in scenes.items()}


def test_generator_is_deterministic():
    a, b = sample_scenes(12, "train", seed=3), sample_scenes(12, "train", seed=3)
    assert [s.to_dict() for s in a] == [s.to_dict() for s in b]
    assert np.array_equal(render_video(a[5], 9, SIZE, SIZE), render_video(b[5], 9, SIZE, SIZE))
    assert [s.prompt for s in sample_scenes(12, "train", seed=4)] != [s.prompt for s in a]
    assert Scene.from_dict(a[0].to_dict()) == a[0]


def test_heldout_combinations_never_appear_in_training():
    train = {subject_key(s) for s in sample_scenes(600, "train", seed=1)}
    heldout = {subject_key(s) for s in sample_scenes(300, "heldout", seed=1)}
    assert not train & HELD_OUT
    assert heldout <= HELD_OUT and len(heldout) > 10


def test_prompts_use_only_the_vocabulary(scenes):
    for chosen in scenes.values():
        for scene in chosen:
            assert set(scene.prompt.rstrip(".").split()) <= set(VOCABULARY), scene.prompt


def test_reference_is_the_first_frame(scenes):
    scene = scenes["train"][0]
    assert np.array_equal(reference_image(scene, SIZE, SIZE), render_video(scene, 9, SIZE, SIZE)[0])


def test_scorer_passes_ground_truth(scenes, videos):
    for split in scenes:
        result = evaluate(scenes[split], videos[split])
        assert result["overall"]["all_correct"] >= 0.98, split
        assert result["overall"]["first_frame_consistency"] == 1.0


def test_scorer_fails_static_reversed_and_wrong_colour_videos(scenes, videos):
    chosen, clips = scenes["heldout"], videos["heldout"]
    static = evaluate(chosen, [np.repeat(v[:1], len(v), 0) for v in clips])
    assert static["overall"]["all_correct"] == 0.0
    reversed_ = evaluate(chosen, [v[::-1] for v in clips])
    assert reversed_["overall"]["all_correct"] <= 0.05
    colour_scene = next(s for s in chosen if s.dimension == "dynamic_attribute")
    wrong = Scene.from_dict(colour_scene.to_dict())
    wrong.event.target_colour = next(
        c
        for c in ("red", "green", "blue", "yellow", "purple")
        if c not in {sh.colour for sh in wrong.shapes} and c != colour_scene.event.target_colour
    )
    video = render_video(wrong, 9, SIZE, SIZE)
    assert not score_video(colour_scene, video)["all_correct"]
    assert score_video(colour_scene, render_video(colour_scene, 9, SIZE, SIZE))["all_correct"]


def test_shuffled_pairs_score_near_chance(scenes, videos):
    chosen, clips = scenes["train"], videos["train"]
    order = np.random.default_rng(0).permutation(len(chosen))
    shuffled = evaluate(chosen, [clips[i] for i in order], references=[clips[i][0] for i in order])
    assert shuffled["overall"]["all_correct"] <= 0.1
