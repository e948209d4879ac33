"""The benchmark's prompt file: JSONL, one prompt a line.

Each line is an object with ``image`` (relative to the file), ``prompt``, ``dimension``
(e.g. ``dynamic_attribute``, ``human_motion``, ``human_interaction``) and ``questions``
(yes/no questions whose expected answer is *yes*); optionally ``keywords`` (needed only
with ``--record``), ``id`` (names the videos; default ``p<line>``) and ``scene`` (an
object a judge may use: the shapes world puts its scene there, so its programmatic
judge needs no guessing from text).  ``#`` lines and blank lines are skipped.

Every problem is one :class:`BenchInputError` naming ``file:line`` and the fix, raised
before any model loads or any file is written.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from layerscope.errors import LayerScopeError

_KNOWN_KEYS = {"image", "prompt", "dimension", "questions", "keywords", "id", "scene"}
FIX = "write one JSON object per line with image, prompt, dimension and questions"


class BenchInputError(LayerScopeError):
    """The prompt file, the judge spec or the output directory cannot make a benchmark."""


@dataclass(frozen=True)
class BenchPrompt:
    """One checked line of the prompt file."""

    id: str
    line: int
    image: Path
    prompt: str
    dimension: str
    questions: tuple[str, ...]
    keywords: tuple[str, ...] = ()
    scene: dict[str, Any] | None = field(default=None, hash=False, compare=False)
    image_sha1: str = ""

    def to_dict(self) -> dict[str, Any]:
        """What results files keep about the prompt (the image as given, not resolved)."""
        return {
            "id": self.id,
            "line": self.line,
            "image": str(self.image),
            "prompt": self.prompt,
            "dimension": self.dimension,
            "questions": list(self.questions),
            "keywords": list(self.keywords),
            "image_sha1": self.image_sha1,
        }


def _strings(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, str) and v.strip() for v in value)


def read_bench_prompts(path: str | os.PathLike) -> list[BenchPrompt]:
    """Read and check a benchmark prompt file (see the module docstring for the format)."""
    from layerscope.outputs import read_jsonl_objects
    from layerscope.prompt_files import check_prompt_id, prompt_image

    base = Path(path).parent
    entries: list[BenchPrompt] = []
    seen: dict[str, int] = {}
    lines = read_jsonl_objects(
        path, "PROMPTS", FIX, BenchInputError, allowed=_KNOWN_KEYS, required=("image", "prompt", "dimension")
    )
    for number, where, data in lines:
        if not _strings(data.get("questions")):
            raise BenchInputError(f"{where}: 'questions' must be a non-empty list of yes/no questions (strings)")
        keywords = data.get("keywords", [])
        if isinstance(keywords, str):
            keywords = [k.strip() for k in keywords.split(",") if k.strip()]
        if keywords and not _strings(keywords):
            raise BenchInputError(f"{where}: 'keywords' must be a list of words of the prompt")
        scene = data.get("scene")
        if scene is not None and not isinstance(scene, dict):
            raise BenchInputError(f"{where}: 'scene' must be a JSON object (judge-specific data)")
        image, digest = prompt_image(base, data["image"], where, BenchInputError)
        entry_id = check_prompt_id(data.get("id", f"p{number:04d}"), where, number, seen, BenchInputError)
        entries.append(
            BenchPrompt(
                id=entry_id,
                line=number,
                image=image,
                prompt=data["prompt"].strip(),
                dimension=data["dimension"].strip(),
                questions=tuple(q.strip() for q in data["questions"]),
                keywords=tuple(k.strip() for k in keywords),
                scene=scene,
                image_sha1=digest,
            )
        )
    if not entries:
        raise BenchInputError(f"PROMPTS {path} has no prompts; {FIX}")
    return entries
