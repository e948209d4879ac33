"""The judge protocol: one small interface every question-answering judge follows.

A judge gets one video (a path: judges stream frames from disk) and its prompt, and
answers every question of the prompt.  Judges are made from a spec string
(``shapes``, ``vlm:PATH``) by factories the caller hands in, so the core knows the
``vlm`` judge while the CLI adds the shapes world's programmatic judge from the testbed
(the core never imports the testbed).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

from layerscope.bench.prompts import BenchInputError, BenchPrompt


@dataclass(frozen=True)
class Answer:
    """A judge's answer to one yes/no question.

    ``passed``: the video shows what the question asks (expected answer *yes*);
    ``margin``: the judge's confidence, e.g. logit(yes) - logit(no) (None for a
    programmatic judge); ``raw``: what the judge said, kept for audit.
    """

    question: str
    passed: bool
    margin: float | None = None
    raw: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Judge(Protocol):
    """Answers a prompt's questions about one video."""

    name: str

    def describe(self) -> dict[str, Any]:
        """Everything that changes its answers (kind, model, prompt, frame count); cached
        answers are reused only while this stays the same."""

    def judge(self, video: Path, prompt: BenchPrompt) -> list[Answer]:
        """One :class:`Answer` per question of ``prompt``, in order."""


#: A factory takes the text after ``name:`` (None when there is none), the prompts (to
#: refuse ones it cannot judge) and options; it must not load a model yet (the generator
#: may still need the GPU), only check its inputs.
JudgeFactory = Callable[..., Judge]


def parse_judge_spec(spec: str, names: Sequence[str]) -> tuple[str, str | None]:
    """``"vlm:/models/qwen"`` -> ``("vlm", "/models/qwen")``; unknown names are one error line."""
    name, sep, argument = str(spec).partition(":")
    name = name.strip()
    if name not in names:
        raise BenchInputError(
            f"--judge {spec!r} is not a judge; use one of {', '.join(f'{n}' for n in names)} "
            "(e.g. --judge shapes or --judge vlm:/path/to/model)"
        )
    return name, (argument.strip() or None) if sep else None


def make_judge(spec: str, factories: Mapping[str, JudgeFactory], **options: Any) -> Judge:
    """The judge a spec names, from ``factories`` (name -> factory)."""
    name, argument = parse_judge_spec(spec, list(factories))
    return factories[name](argument, **options)


def check_answers(judge: Judge, prompt: BenchPrompt, answers: list[Answer]) -> list[Answer]:
    """A judge must answer each question once, in order: anything else is a bug, said plainly."""
    if [a.question for a in answers] != list(prompt.questions):
        raise RuntimeError(
            f"judge {judge.name} answered {len(answers)} questions for {prompt.id}, asked {len(prompt.questions)}"
        )
    return answers
