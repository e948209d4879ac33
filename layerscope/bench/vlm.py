"""A vision-language model as judge: each yes/no question answered with a logit margin.

Any video-capable ``AutoModelForImageTextToText`` with a chat template works
(Qwen2.5-VL, Qwen3-VL, SmolVLM2), loaded from a local directory with safetensors only.
For each question the model sees ``frames`` frames sampled uniformly from the video and
:data:`JUDGE_PROMPT`; the verdict is the sign of ``logit("Yes") - logit("No")`` at the
first answer position (no sampling, so the same video always gets the same verdict),
and the margin is kept as a confidence.  The argmax token is kept as the raw answer, so
an audit can see when the model wanted to say something else entirely.

The questions of one video form a batch (``batch_size`` at a time, left-padded), each
with its own copy of the frames: simple and exact, at the price of encoding the frames
once per question.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from layerscope.bench.judges import Answer
from layerscope.bench.prompts import BenchInputError, BenchPrompt

#: What the judge is asked, per question: the paper's Eq. 14 is VQA(Q_i, V | S), the answer
#: conditioned on the generation prompt S, so S is shown by default.
JUDGE_PROMPT = (
    'These are frames of a short video, in order, generated from the instruction "{instruction}". '
    "Answer the question about the video with Yes or No only.\nQuestion: {question}"
)
#: The ablation (``--judge-without-prompt``): a judge told "the circle turns green" may say
#: yes to "is it green?" from the instruction alone; without it only the frames speak.
JUDGE_PROMPT_WITHOUT_INSTRUCTION = (
    "These are frames of a short video, in order. Answer the question about the video "
    "with Yes or No only.\nQuestion: {question}"
)
YES_WORDS = ("Yes", "yes", "YES")
NO_WORDS = ("No", "no", "NO")


def check_vlm_dir(path: str | os.PathLike) -> Path:
    """Refuse, in one line and before anything loads, a directory that cannot hold a local VLM."""
    directory = Path(path).expanduser()
    if not directory.is_dir():
        raise BenchInputError(
            f"--judge vlm:{path}: no such directory; pass a local model folder (config.json, *.safetensors)"
        )
    if not (directory / "config.json").is_file():
        raise BenchInputError(f"--judge vlm:{path}: no config.json there; pass the folder save_pretrained wrote")
    if not any(directory.glob("*.safetensors")):
        raise BenchInputError(f"--judge vlm:{path}: no *.safetensors weights there (other formats are not loaded)")
    if not _has_chat_template(directory):  # the judge's questions are chat messages
        raise BenchInputError(
            f"--judge vlm:{path}: its processor has no chat template (no chat_template.jinja/.json, none in "
            "tokenizer_config.json or processor_config.json); save an instruction-tuned model's processor there"
        )
    return directory


def _has_chat_template(directory: Path) -> bool:
    """Where transformers' ``save_pretrained`` puts a chat template, read without loading anything."""
    import json

    if (directory / "chat_template.jinja").is_file() or (directory / "chat_template.json").is_file():
        return True
    for name in ("tokenizer_config.json", "processor_config.json"):
        try:
            if json.loads((directory / name).read_text(encoding="utf-8")).get("chat_template"):
                return True
        except (OSError, ValueError, AttributeError):
            continue
    return False


def vlm_factory(argument: str | None, prompts: Sequence[BenchPrompt] = (), **options: Any) -> VLMJudge:
    """``--judge vlm:PATH``: checks the directory now; the model loads on first use."""
    if not argument:
        raise BenchInputError("--judge vlm needs a model directory: --judge vlm:/path/to/Qwen2.5-VL-7B-Instruct")
    return VLMJudge(argument, **options)


def _token_id(tokenizer: Any, words: tuple[str, ...]) -> int:
    """The first single-token spelling of the answer word in this vocabulary."""
    for word in words:
        ids = tokenizer.encode(word, add_special_tokens=False)
        if len(ids) == 1 and ids[0] != tokenizer.unk_token_id:
            return int(ids[0])
    raise BenchInputError(f"the judge's tokenizer has no single token for any of {', '.join(words)}")


class VLMJudge:
    """``--judge vlm:PATH``: see the module docstring."""

    name = "vlm"

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        frames: int = 8,
        batch_size: int = 8,
        device: str = "cpu",
        dtype: str = "float32",
        prompt: str | None = None,
        fps: float = 16.0,
        with_instruction: bool = True,
    ):
        self.path = check_vlm_dir(path)
        self.frames, self.batch_size, self.device, self.dtype = frames, batch_size, device, dtype
        self.with_instruction = with_instruction
        default = JUDGE_PROMPT if with_instruction else JUDGE_PROMPT_WITHOUT_INSTRUCTION
        self.prompt, self.fps = prompt or default, fps
        self.model: Any = None  # loaded on first use: the generator may still hold the GPU

    def load(self) -> None:
        """Load processor and model (local files, safetensors only); idempotent."""
        if self.model is not None:
            return
        import torch
        from transformers import AutoModelForImageTextToText, AutoProcessor
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()
        try:
            self.processor = AutoProcessor.from_pretrained(self.path, local_files_only=True)
            model = AutoModelForImageTextToText.from_pretrained(
                self.path, local_files_only=True, use_safetensors=True, dtype=getattr(torch, self.dtype)
            )
        except (OSError, ValueError, KeyError) as error:
            first = (str(error).strip().splitlines() or [type(error).__name__])[0]
            raise BenchInputError(f"--judge vlm:{self.path}: transformers could not load it ({first[:200]})") from None
        self.tokenizer = self.processor.tokenizer
        self.tokenizer.padding_side = "left"  # the answer position is then the last one of every row
        self.yes_id, self.no_id = _token_id(self.tokenizer, YES_WORDS), _token_id(self.tokenizer, NO_WORDS)
        self.model = model.to(self.device).eval()

    def describe(self) -> dict[str, Any]:
        return {
            "judge": "vlm",
            "model": str(self.path),
            "frames": self.frames,
            "prompt": self.prompt,
            "with_instruction": self.with_instruction,
            "answer_words": [YES_WORDS[0], NO_WORDS[0]],
            "dtype": self.dtype,
        }

    def _texts(self, questions: list[str], instruction: str = "") -> list[str]:
        texts = []
        for question in questions:
            text = self.prompt.format(question=question, instruction=instruction)
            messages = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": text}]}]
            texts.append(self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False))
        return texts

    def margins(
        self, frames: np.ndarray, questions: list[str], seconds: float | None = None, instruction: str = ""
    ) -> list[tuple[float, str]]:
        """(logit(yes) - logit(no), argmax token) per question, for (k, H, W, 3) uint8 frames
        sampled from a video of ``seconds`` (timing feeds the model's temporal positions)."""
        import torch

        self.load()
        results: list[tuple[float, str]] = []
        for first in range(0, len(questions), self.batch_size):
            chunk = questions[first : first + self.batch_size]
            metadata = [{"total_num_frames": len(frames), "fps": len(frames) / seconds if seconds else None,
                         "frames_indices": list(range(len(frames)))} for _ in chunk]  # fmt: skip
            inputs = self.processor(
                text=self._texts(chunk, instruction),
                videos=[frames] * len(chunk),
                video_metadata=metadata,
                return_tensors="pt",
                padding=True,
            ).to(self.device)
            with torch.no_grad():
                logits = self.model(**inputs).logits[:, -1].float()
            for row in logits:
                margin = float(row[self.yes_id] - row[self.no_id])
                results.append((margin, self.tokenizer.decode([int(row.argmax())]).strip()))
        return results

    def judge(self, video: Path, prompt: BenchPrompt) -> list[Answer]:
        from layerscope.bench.video_io import sample_video

        frames, seconds = sample_video(video, self.frames)
        margins = self.margins(frames, list(prompt.questions), seconds, instruction=prompt.prompt)
        return [
            Answer(question=q, passed=margin > 0, margin=margin, raw=raw)
            for q, (margin, raw) in zip(prompt.questions, margins)
        ]
