import pytest

from layerscope.keywords import KeywordError, clean_prompt, map_keywords, parse_keywords


@pytest.fixture(scope="module")
def tokenizer(tiny_pipe):
    return tiny_pipe.tokenizer


def _pieces(tokenizer, prompt, indices):
    ids = tokenizer(clean_prompt(prompt))["input_ids"]
    return [tokenizer.convert_ids_to_tokens(ids[i]) for i in indices]


def test_single_word_maps_to_its_piece(tokenizer):
    (circle,) = map_keywords("A red circle moves.", ["circle"], tokenizer)
    assert _pieces(tokenizer, "A red circle moves.", circle.token_indices) == ["▁circle"]


def test_case_insensitive_and_multiword(tokenizer):
    prompt = "The Red Circle moves to the left"
    (item,) = map_keywords(prompt, ["red circle"], tokenizer)
    # every piece of both words, and nothing of "moves"
    text = clean_prompt(prompt)
    offsets = tokenizer(text, return_offsets_mapping=True)["offset_mapping"]
    covered = "".join(text[offsets[i][0] : offsets[i][1]] for i in item.token_indices)
    assert covered.lower() == "redcircle"


def test_out_of_vocabulary_word_maps_to_all_its_subpieces_but_not_the_bare_marker(tokenizer):
    prompt = "a zebra jumps"
    (item,) = map_keywords(prompt, ["zebra"], tokenizer)
    pieces = _pieces(tokenizer, prompt, item.token_indices)
    assert "▁" not in pieces
    assert "".join(p.replace("▁", "") for p in pieces) == "zebra"


def test_every_occurrence_is_mapped(tokenizer):
    (item,) = map_keywords("the circle and the circle", ["circle"], tokenizer)
    assert len(item.token_indices) == 2
    assert len(item.char_spans) == 2


def test_whole_words_only(tokenizer):
    with pytest.raises(KeywordError):
        map_keywords("the circles turn", ["circle"], tokenizer)


def test_missing_keyword_lists_the_prompts_words(tokenizer):
    with pytest.raises(KeywordError) as info:
        map_keywords("a cat runs", ["dog"], tokenizer)
    message = str(info.value)
    assert "'dog'" in message and "a, cat, runs" in message


def test_parse_keywords():
    assert parse_keywords(" red ,circle,, Red ") == ["red", "circle"]
    with pytest.raises(KeywordError):
        parse_keywords(" , ")
