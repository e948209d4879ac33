"""The scorer against human labels of the shipped model's own videos (testbed/layerscope_testbed/shapes/labels.py).

The labels file holds, per video, the verdict a person gave each question by looking at
the video's frames and the scorer's answers at labelling time.  Checked here: the file
describes real eval videos (scenes and questions as the eval draws them); the stored
scorer answers are what the scorer says when the videos are generated again; the
agreement statistic against a hand count.
"""

from __future__ import annotations

import pytest

from layerscope_testbed.shapes.labels import ARCHIVED_LABEL_FILES, JOBS, LABEL_FILE, agreement, load_labels


def test_agreement_counts_by_hand():
    videos = [
        {"human": [True, True], "scorer": [True, True]},  # agree, both all-correct
        {"human": [True, False], "scorer": [True, True]},  # one question wrong: verdict disagrees
        {"human": [False, False], "scorer": [False, True]},  # one question wrong, verdict agrees (both fail)
        {"human": [True, True, False], "scorer": [True, True, False]},
    ]
    result = agreement(videos)
    assert result["questions"] == 9 and result["question_agreement"] == pytest.approx(7 / 9)
    assert result["all_correct_agreement"] == pytest.approx(3 / 4)
    assert result["confusion"]["human False / scorer True"] == 1
    assert result["confusion"]["human True / scorer True"] == 1
    assert result["confusion"]["human False / scorer False"] == 2
    low, high = result["question_agreement_ci"]
    assert low < 7 / 9 < high


@pytest.mark.parametrize("path", [LABEL_FILE, *ARCHIVED_LABEL_FILES], ids=lambda p: p.name)
def test_label_file_describes_the_eval_videos(path):
    from layerscope_testbed.shapes.evaluate import eval_scenes
    from layerscope_testbed.shapes.world import questions

    videos = load_labels(path)
    assert len(videos) >= 30
    scenes = eval_scenes(30)
    for video in videos:
        scene = scenes[video["prompt_index"]]
        assert (video["prompt_index"], video["seed"]) == JOBS[video["video"]]
        assert video["prompt"] == scene.prompt
        assert video["questions"] == [q.text for q in questions(scene)]
        assert len(video["human"]) == len(video["scorer"]) == len(video["questions"])
        assert all(isinstance(x, bool) for x in video["human"] + video["scorer"])


def test_current_labels_are_of_the_shipped_model():
    """A new shipped model needs new labels: the scorer is validated on the videos it scores."""
    from layerscope_testbed import model_info, shipped_model_dir
    from layerscope_testbed.shapes.labels import labelled_model

    assert labelled_model() == model_info(shipped_model_dir())["model_id"]
    assert len(ARCHIVED_LABEL_FILES) == 5  # v2-v6, in the checkout's testbed/archive/ (no wheel ships them)
    assert all(labelled_model(path) != labelled_model() for path in ARCHIVED_LABEL_FILES)


def test_agreement_of_the_shipped_models_labels():
    """The numbers the README and the model card quote for the shipped model (v7)."""
    result = agreement(load_labels())
    assert (result["videos"], result["questions"]) == (30, 70)
    assert result["question_agreement"] == pytest.approx(61 / 70)
    assert result["all_correct_agreement"] == pytest.approx(22 / 30)
    assert result["human_all_correct"] == pytest.approx(19 / 30) and result["scorer_all_correct"] == pytest.approx(
        19 / 30
    )
    assert result["confusion"]["human False / scorer True"] == 4
    assert result["confusion"]["human True / scorer False"] == 4


def _rescore(indices):
    from layerscope.loading import load_pipeline
    from layerscope_testbed import shipped_model_dir
    from layerscope_testbed.shapes.labels import generate_job
    from layerscope_testbed.shapes.scorer import score_video

    pipe, _ = load_pipeline(shipped_model_dir())
    pipe.set_progress_bar_config(disable=True)
    videos = load_labels()
    for n in indices:
        scene, video = generate_job(pipe, videos[n]["prompt_index"], videos[n]["seed"])
        assert [bool(a) for a in score_video(scene, video)["answers"]] == videos[n]["scorer"], n


@pytest.mark.slow
def test_stored_scorer_answers_are_reproduced():
    """Two videos regenerated as the eval makes them: the scorer answers as stored."""
    _rescore([0, 9])


@pytest.mark.slow
def test_all_stored_scorer_answers_are_reproduced():
    _rescore(range(len(load_labels())))
