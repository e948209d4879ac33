"""Map keywords (one or more words) to the prompt's token indices.

Why offsets: SentencePiece tokenizers (T5/UMT5 in Wan) split words into "▁"-prefixed
pieces whose boundaries do not match words; matching on characters through the fast
tokenizer's ``offset_mapping`` is the only mapping that survives arbitrary splits.
"""

from __future__ import annotations

import html
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from layerscope.errors import LayerScopeError

_METASPACE = "▁"


class KeywordError(LayerScopeError):
    """A keyword cannot be found in the prompt (a usage error)."""


@dataclass(frozen=True)
class KeywordTokens:
    """Where one keyword sits in the tokenized prompt."""

    keyword: str
    token_indices: tuple[int, ...]
    char_spans: tuple[tuple[int, int], ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "keyword": self.keyword,
            "token_indices": list(self.token_indices),
            "char_spans": [list(span) for span in self.char_spans],
        }


def clean_prompt(prompt: str) -> str:
    """Normalise the prompt the way diffusers' Wan pipelines do before tokenizing.

    ``pipeline_wan_i2v.prompt_clean`` unescapes HTML entities and collapses whitespace
    (plus ftfy fixes, which do not change plain ASCII prompts); offsets must be computed
    on the same string the text encoder saw.
    """
    text = html.unescape(html.unescape(prompt))
    return re.sub(r"\s+", " ", text).strip()


def parse_keywords(text: str | Sequence[str]) -> list[str]:
    """Split ``"a,b c"``-style CLI input into keywords, dropping blanks and duplicates."""
    items = text.split(",") if isinstance(text, str) else list(text)
    keywords: list[str] = []
    for item in items:
        word = " ".join(item.split())
        if word and word.lower() not in (k.lower() for k in keywords):
            keywords.append(word)
    if not keywords:
        raise KeywordError("no keywords given; pass --keywords 'word1,word2' with words from the prompt")
    return keywords


def prompt_words(prompt: str) -> list[str]:
    """The prompt's words, for error messages that tell the user what they can pick."""
    return re.findall(r"[\w'-]+", clean_prompt(prompt).lower())


def _keyword_char_spans(prompt: str, keyword: str) -> list[tuple[int, int]]:
    words = [re.escape(w) for w in keyword.split()]
    pattern = r"(?<![\w])" + r"\s+".join(words) + r"(?![\w])"
    return [(m.start(), m.end()) for m in re.finditer(pattern, prompt, flags=re.IGNORECASE)]


def check_keywords_in_prompt(prompt: str, keywords: Sequence[str]) -> None:
    """Fail early (before any model loads) if a keyword is not a word of the prompt."""
    text = clean_prompt(prompt)
    for keyword in keywords:
        if not _keyword_char_spans(text, keyword):
            raise KeywordError(
                f"keyword {keyword!r} is not in the prompt; choose from the prompt's words: "
                + ", ".join(dict.fromkeys(prompt_words(prompt)))
            )


def map_keywords(prompt: str, keywords: Sequence[str], tokenizer: Any) -> list[KeywordTokens]:
    """Return, for each keyword, the token indices of every occurrence in ``prompt``.

    Matching is case-insensitive and on whole words.  Pieces that are only the
    SentencePiece word marker ("▁" on its own, emitted before a word the vocabulary
    splits) carry no content and are left out.  A keyword of several sub-tokens (or
    several occurrences) later averages its tokens' vectors.

    Raises:
        KeywordError: a keyword does not occur in the prompt; the message lists the
            prompt's words.
    """
    text = clean_prompt(prompt)
    check_keywords_in_prompt(prompt, keywords)
    return _match_tokens(text, 0, text, keywords, tokenizer)


def map_keywords_in_template(
    prompt: str, keywords: Sequence[str], tokenizer: Any, template: str
) -> list[KeywordTokens]:
    """Token indices of each keyword in ``template.format(prompt)`` (HunyuanVideo's LLaVA prompt).

    The prompt is not cleaned (diffusers' HunyuanVideo pipelines format it as given); the
    character spans returned are those inside the prompt, the indices those of the whole
    templated token sequence, so the caller can shift them by the template's crop.
    """
    if template.count("{}") != 1:
        raise KeywordError("the prompt template must contain exactly one '{}' where the prompt goes")
    start = template.index("{}")
    check_keywords_in_prompt(prompt, keywords)
    return _match_tokens(template.format(prompt), start, prompt, keywords, tokenizer)


def _match_tokens(text: str, offset: int, prompt: str, keywords: Sequence[str], tokenizer: Any) -> list[KeywordTokens]:
    """Tokens of ``text`` overlapping each keyword's occurrences in ``prompt`` (at ``offset`` in ``text``)."""
    encoding = tokenizer(text, return_offsets_mapping=True, add_special_tokens=True)
    offsets = encoding["offset_mapping"]
    pieces = tokenizer.convert_ids_to_tokens(encoding["input_ids"])
    result = []
    for keyword in keywords:
        spans = _keyword_char_spans(prompt, keyword)
        shifted = [(a + offset, b + offset) for a, b in spans]
        indices = []
        for index, ((start, end), piece) in enumerate(zip(offsets, pieces)):
            if end <= start or piece.replace(_METASPACE, "") == "":
                continue
            if any(start < span_end and end > span_start for span_start, span_end in shifted):
                indices.append(index)
        if not indices:
            raise KeywordError(f"keyword {keyword!r} matched no tokens of the prompt (is it truncated away?)")
        result.append(KeywordTokens(keyword, tuple(indices), tuple(spans)))
    return result


def content_token_indices(text: str, tokenizer: Any, start: int = 0, end: int | None = None) -> list[int]:
    """Indices of the tokens of ``text`` that cover characters in ``[start, end)``.

    Special tokens (no character span) and bare SentencePiece word markers are left
    out, as for keywords: what remains are the prompt's words, the contrastive probe's
    reference rows once the keywords' own rows are removed.
    """
    end = len(text) if end is None else end
    encoding = tokenizer(text, return_offsets_mapping=True, add_special_tokens=True)
    pieces = tokenizer.convert_ids_to_tokens(encoding["input_ids"])
    indices = []
    for index, ((a, b), piece) in enumerate(zip(encoding["offset_mapping"], pieces)):
        if b <= a or piece.replace(_METASPACE, "") == "":
            continue
        if a < end and b > start:
            indices.append(index)
    return indices
