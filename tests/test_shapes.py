"""The shapes world: deterministic scenes, unseen held-out combinations, a renderer whose events are
visible, and a scorer that measures what it claims (ground truth passes, wrong videos fail,
shuffled pairs score near chance) from pixels alone."""

from __future__ import annotations

import itertools
import json
from dataclasses import replace

import numpy as np
import pytest

from layerscope_testbed.shapes import (
    COLOURS,
    DIMENSIONS,
    HELD_OUT,
    KINDS,
    VOCABULARY,
    Scene,
    chance_level,
    evaluate,
    questions,
    reference_image,
    render_video,
    sample_scenes,
    score_video,
)
from layerscope_testbed.shapes.render import background
from layerscope_testbed.shapes.scorer import ANSWER, colour_labels, connected_components
from layerscope_testbed.shapes.world import DIRECTIONS, subject_key

SIZE = 128  # the scorer works in frame fractions; half resolution keeps the tests fast
OPPOSITE = {"left": "right", "right": "left", "up": "down", "down": "up"}


@pytest.fixture(scope="module")
def scenes():
    return {split: sample_scenes(100, split, seed=7) for split in ("train", "heldout")}


@pytest.fixture(scope="module")
def videos(scenes):
    return {split: [render_video(s, 9, SIZE, SIZE) for s in chosen] for split, chosen in scenes.items()}


def _copy(scene: Scene) -> Scene:
    return Scene.from_dict(json.loads(json.dumps(scene.to_dict())))


# ---------------------------------------------------------------- world


def test_generator_is_deterministic():
    a, b = sample_scenes(12, "train", seed=3), sample_scenes(12, "train", seed=3)
    assert [s.to_dict() for s in a] == [s.to_dict() for s in b]
    for i in range(3):  # one scene of each dimension
        assert np.array_equal(render_video(a[i]), render_video(b[i]))
    assert [s.to_dict() for s in sample_scenes(12, "train", seed=4)] != [s.to_dict() for s in a]
    assert [s.to_dict() for s in sample_scenes(12, "heldout", seed=3)] != [s.to_dict() for s in a]


def test_the_shipped_models_training_scenes_never_change():
    """The 480 scenes every shipped model trained on (seed 0): a replay and the encoding
    cache depend on them, so any change to the default draws must be deliberate."""
    import hashlib

    dump = json.dumps([s.to_dict() for s in sample_scenes(480, "train", seed=0)], sort_keys=True)
    assert hashlib.sha256(dump.encode()).hexdigest() == (
        "234635e1db369fab0907441693420e3f5db0c0ef32746c6ef8d8657dbfb9a11c"
    )


def test_scenes_of_chosen_dimensions_only():
    pushes = sample_scenes(30, "train", seed=7, dimensions=("interaction",))
    assert {s.dimension for s in pushes} == {"interaction"}
    assert not {subject_key(s) for s in pushes} & HELD_OUT
    assert len({s.prompt for s in pushes}) > 20  # varied, not one scene repeated
    mixed = sample_scenes(4, "train", seed=7, dimensions=("motion", "interaction"))
    assert [s.dimension for s in mixed] == ["motion", "interaction", "motion", "interaction"]
    for bad in ((), ("push",)):
        with pytest.raises(ValueError, match="dimensions"):
            sample_scenes(3, "train", dimensions=bad)


def test_scenes_round_trip_through_json(scenes):
    for scene in scenes["train"] + scenes["heldout"]:
        assert _copy(scene) == scene


def test_heldout_combinations_never_appear_in_training():
    train = {subject_key(s) for s in sample_scenes(500, "train", seed=1)}
    heldout = {subject_key(s) for s in sample_scenes(500, "heldout", seed=1)}
    combinations = set(itertools.product(KINDS, COLOURS, DIMENSIONS))
    assert len(HELD_OUT) == 9 and HELD_OUT <= combinations  # 20% of 45
    assert not train & HELD_OUT
    assert heldout == set(HELD_OUT)
    assert train == combinations - HELD_OUT
    # only the combination is new: every pair of its parts is seen in training
    for kind, colour, dimension in HELD_OUT:
        assert any(k == kind and c == colour for k, c, _ in train)
        assert any(k == kind and d == dimension for k, _, d in train)
        assert any(c == colour and d == dimension for _, c, d in train)


def test_prompts_use_only_the_vocabulary():
    assert VOCABULARY == sorted(set(VOCABULARY)) and all(w.isalpha() and w.islower() for w in VOCABULARY)
    used = set()
    for scene in sample_scenes(300, "train", seed=2) + sample_scenes(300, "heldout", seed=2):
        assert scene.prompt.endswith(".") and scene.prompt.count(".") == 1, scene.prompt
        words = scene.prompt[:-1].split(" ")
        assert set(words) <= set(VOCABULARY), scene.prompt
        used |= set(words)
    assert used == set(VOCABULARY)  # and the grammar does emit every word


def test_scenes_have_one_to_three_shapes_with_unique_colours(scenes):
    for scene in scenes["train"] + scenes["heldout"]:
        colours = [s.colour for s in scene.shapes] + [scene.event.target_colour or ""]
        assert 1 <= len(scene.shapes) <= 3
        assert len(set(colours)) == len(colours)  # a colour names a shape, the target colour is new
        assert scene.background in ("plain", "textured")


def test_questions_are_data_without_trajectories(scenes):
    for scene in scenes["train"]:
        asked = questions(scene)
        assert asked and len({q.text for q in asked}) == len(asked)
        for q in asked:
            assert q.kind in ANSWER
            assert not {"x", "y", "size", "path"} & set(q.params)
            assert all(isinstance(v, (str, float, int)) for v in q.params.values())


# ---------------------------------------------------------------- renderer


def test_reference_is_the_first_frame(scenes):
    for scene in scenes["train"][:6]:
        assert np.array_equal(reference_image(scene, 96, 160), render_video(scene, 9, 96, 160)[0])


def test_events_are_visible_and_shapes_stay_inside(scenes, videos):
    names = list(COLOURS)
    for scene, video in zip(scenes["train"], videos["train"]):
        labels = colour_labels(video)
        edge = np.concatenate([labels[:, 0], labels[:, -1], labels[:, :, 0], labels[:, :, -1]], axis=1)
        assert (edge == -1).all(), scene.prompt  # nothing touches the frame edge
        own = labels == names.index(scene.subject.colour)
        if scene.dimension == "motion":
            ux, uy = DIRECTIONS[scene.event.direction]
            (y0, x0), (y1, x1) = (np.argwhere(own[t]).mean(0) for t in (0, -1))
            assert ((x1 - x0) * ux + (y1 - y0) * uy) / SIZE >= 0.25  # >= a quarter of the frame
            assert own.sum((1, 2)).min() >= 0.9 * own.sum((1, 2)).max()  # whole all along (+- a pixel row)
        elif scene.dimension == "dynamic_attribute":
            target = labels[-1] == names.index(scene.event.target_colour)
            assert own[0].sum() > 0 and own[-1].sum() == 0 and target.sum() == own[0].sum()


def test_textured_background_never_looks_like_a_shape():
    scene = next(s for s in sample_scenes(20, "train", seed=0) if s.background == "textured")
    image = background(scene, 256, 256)
    assert image.std() > 3  # it is textured
    assert (colour_labels(image) == -1).all()
    greys = np.arange(256, dtype=np.float32)[:, None]
    for rgb in COLOURS.values():  # any grey at all is far from every shape colour
        assert np.linalg.norm(greys - np.array(rgb, dtype=np.float32), axis=1).min() > 90


# ---------------------------------------------------------------- scorer


def test_connected_components():
    mask = np.zeros((20, 30), bool)
    mask[2:5, 2:5] = mask[10:15, 3:20] = mask[12, 25:29] = mask[0, 0] = True
    mask[5, 4] = True  # joins the first square's bottom edge
    assert sorted(int(c.sum()) for c in connected_components(mask)) == [1, 4, 10, 85]
    assert connected_components(np.zeros((4, 4), bool)) == []


def test_scorer_passes_ground_truth(scenes, videos):
    for split in scenes:
        result = evaluate(scenes[split], videos[split])
        assert result["overall"]["all_correct"] >= 0.98, split
        assert all(r["all_correct"] >= 0.98 for r in result["per_dimension"].values()), split
        assert result["overall"]["first_frame_consistency"] == 1.0


def test_scorer_handles_any_length_size_and_mild_noise(scenes):
    chosen = scenes["heldout"][:30]
    for frames, height, width in [(2, 96, 160), (16, 64, 64), (9, 256, 256)]:
        clips = [render_video(s, frames, height, width) for s in chosen]
        assert evaluate(chosen, clips)["overall"]["all_correct"] == 1.0, (frames, height, width)
    rng = np.random.default_rng(0)
    noisy = [np.clip(render_video(s, 9, SIZE, SIZE) + rng.normal(0, 10, (9, SIZE, SIZE, 3)), 0, 255) for s in chosen]
    assert evaluate(chosen, [v.astype(np.uint8) for v in noisy])["overall"]["all_correct"] >= 0.95
    with pytest.raises(ValueError, match="uint8"):  # a float video in [0, 1] is refused, not scored black
        score_video(chosen[0], render_video(chosen[0], 9, SIZE, SIZE) / 255.0)


def test_scorer_reads_pixels_not_the_scene_layout(scenes, videos):
    """Moving the scene's shapes around (same prompt) must not change any answer: no trajectories used."""
    for scene, video in list(zip(scenes["train"], videos["train"]))[:30]:
        moved = _copy(scene)
        moved.shapes = [replace(s, x=1 - s.x, y=1 - s.y, size=0.05) for s in moved.shapes]
        assert score_video(moved, video, video[0])["answers"] == score_video(scene, video)["answers"]


def test_static_video_fails_every_event(scenes, videos):
    chosen, clips = scenes["heldout"], videos["heldout"]
    static = evaluate(chosen, [np.repeat(v[:1], len(v), 0) for v in clips])
    assert static["overall"]["all_correct"] == 0.0
    assert static["overall"]["first_frame_consistency"] == 1.0  # consistency alone cannot tell
    for scene, score in zip(chosen, static["scores"]):
        failed = {q.kind for q, a in zip(questions(scene), score["answers"]) if not a}
        assert failed & {"colour_at_end", "moved", "approached", "contact", "pushed"}, scene.prompt


def test_reversed_and_wrong_direction_videos_fail_motion(scenes, videos):
    reversed_ = evaluate(scenes["heldout"], [v[::-1] for v in videos["heldout"]])
    assert reversed_["overall"]["all_correct"] == 0.0
    for scene, score in zip(scenes["heldout"], reversed_["scores"]):
        if scene.dimension == "motion":
            assert score["answers"][0] is False or score["answers"][1] is False
    for scene in [s for s in scenes["train"] if s.dimension == "motion"][:10]:
        wrong = _copy(scene)
        wrong.event.direction = OPPOSITE[scene.event.direction]
        assert not score_video(scene, render_video(wrong, 9, SIZE, SIZE))["all_correct"], scene.prompt


def test_wrong_target_colour_fails(scenes):
    colour_scenes = [s for s in scenes["train"] + scenes["heldout"] if s.dimension == "dynamic_attribute"]
    for scene in colour_scenes[:20]:
        wrong = _copy(scene)
        used = {s.colour for s in scene.shapes} | {scene.event.target_colour}
        wrong.event.target_colour = next(c for c in COLOURS if c not in used)
        answers = score_video(scene, render_video(wrong, 9, SIZE, SIZE))["answers"]
        assert answers == [True, False], scene.prompt  # present at the start, wrong colour at the end


def test_push_without_contact_fails():
    scene = next(s for s in sample_scenes(9, "train", seed=5) if s.dimension == "interaction")
    ux, uy = DIRECTIONS[scene.event.direction]
    frames = []
    for f in np.linspace(0, 1, 9):  # subject and object glide the same way together and never touch
        glide = _copy(scene)
        for shape in glide.shapes[:2]:
            shape.x, shape.y = shape.x + ux * 0.12 * f, shape.y + uy * 0.12 * f
        frames.append(reference_image(glide, SIZE, SIZE))
    assert score_video(scene, np.stack(frames))["answers"] == [True, False, False]


def test_shuffled_pairs_and_chance_level(scenes, videos):
    chance = chance_level(scenes["train"], videos["train"], seed=0)
    assert chance["static"]["overall"]["all_correct"] == 0.0
    assert chance["reversed"]["overall"]["all_correct"] == 0.0
    assert chance["shuffled"]["overall"]["all_correct"] <= 0.08  # only coincidences pass
    assert "shuffled" not in chance_level(scenes["train"][:1], videos["train"][:1])  # nobody to swap with
    assert set(chance["shuffled"]["per_dimension"]) == set(DIMENSIONS)


def test_question_rates_locate_the_failing_step_of_a_push():
    """The glide of the test above passes 'approached' only, ground truth all three steps: over the
    two videos, approached 1.0, contact 0.5, pushed 0.5."""
    from layerscope_testbed.shapes.scorer import summarise

    scene = next(s for s in sample_scenes(9, "train", seed=5) if s.dimension == "interaction")
    ux, uy = DIRECTIONS[scene.event.direction]
    frames = []
    for f in np.linspace(0, 1, 9):
        glide = _copy(scene)
        for shape in glide.shapes[:2]:
            shape.x, shape.y = shape.x + ux * 0.12 * f, shape.y + uy * 0.12 * f
        frames.append(reference_image(glide, SIZE, SIZE))
    scores = [score_video(scene, np.stack(frames)), score_video(scene, render_video(scene, 9, SIZE, SIZE))]
    assert scores[0]["kinds"] == ["approached", "contact", "pushed"]
    rates = summarise(scores)["by_question"]
    # neither video moves the object towards the subject
    assert rates == {"interaction": {"approached": 1.0, "contact": 0.5, "pushed": 0.5, "roles_reversed": 0.0}}
    # evals written before kinds were recorded contribute nothing rather than guessing
    old = [{k: v for k, v in s.items() if k not in ("kinds", "roles_reversed")} for s in scores]
    assert summarise(old)["by_question"] == {}


# ---------------------------------------------------------------- role swaps


def test_swap_roles_keeps_the_first_frame_and_reverses_who_moves():
    """The twin starts from the same pixels, the object becomes the subject and pushes the
    other way; its own ground truth passes, and the prompt names the others iff the original's did."""
    from layerscope_testbed.shapes.world import make_prompt, swap_roles

    pushes = sample_scenes(60, "train", seed=3, dimensions=("interaction",))
    pairs = [(scene, swap_roles(scene)) for scene in pushes]
    pairs = [(a, b) for a, b in pairs if b is not None]
    assert 10 <= len(pairs) < len(pushes)  # some reversed paths leave the frame or cross a shape
    for original, twin in pairs:
        assert np.array_equal(reference_image(original, SIZE, SIZE), reference_image(twin, SIZE, SIZE))
        assert (twin.event.subject, twin.event.obj) == (original.event.obj, original.event.subject)
        assert twin.event.direction == OPPOSITE[original.event.direction]
        mover, pushed = original.shapes[original.event.obj], original.subject
        assert twin.prompt.startswith(f"the {mover.colour} {mover.kind} pushes the {pushed.colour} {pushed.kind}")
        assert ("beside" in twin.prompt) == ("beside" in original.prompt)
        assert (original.prompt == make_prompt(original)) == (twin.prompt == make_prompt(twin))
    assert all(score_video(b, render_video(b, 9, SIZE, SIZE))["all_correct"] for _, b in pairs)


def test_swap_roles_never_makes_a_held_out_subject_and_ignores_other_events():
    from layerscope_testbed.shapes.world import swap_roles

    pushes = sample_scenes(300, "train", seed=11, dimensions=("interaction",))
    twins = [swap_roles(scene) for scene in pushes]
    refused = [s for s, t in zip(pushes, twins) if t is None]
    objects = {(s.shapes[s.event.obj].kind, s.shapes[s.event.obj].colour, "interaction") for s in refused}
    assert objects & HELD_OUT  # scenes whose object is a held-out subject exist, and are refused
    assert not any(subject_key(t) in HELD_OUT for t in twins if t is not None)
    others = sample_scenes(6, "train", seed=11, dimensions=("dynamic_attribute", "motion"))
    assert [swap_roles(scene) for scene in others] == [None] * 6


def test_a_swapped_video_is_scored_as_roles_reversed():
    """Scored against the original prompt, the twin's ground truth (the object pushing the
    subject) fails and is flagged roles_reversed; the original's ground truth is not."""
    from layerscope_testbed.shapes.world import swap_roles

    original, twin = next(
        (s, t)
        for s in sample_scenes(40, "train", seed=3, dimensions=("interaction",))
        if (t := swap_roles(s)) is not None
    )
    right = score_video(original, render_video(original, 9, SIZE, SIZE))
    backwards = score_video(original, render_video(twin, 9, SIZE, SIZE))
    assert right["all_correct"] and right["roles_reversed"] is False
    assert not backwards["all_correct"] and backwards["roles_reversed"] is True
    assert backwards["answers"][0] is False  # the subject never approached
    motion = next(s for s in sample_scenes(3, "train", seed=3) if s.dimension == "motion")
    assert "roles_reversed" not in score_video(motion, render_video(motion, 9, SIZE, SIZE))
