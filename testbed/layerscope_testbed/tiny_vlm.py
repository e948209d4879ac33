"""A tiny random Qwen2.5-VL for the ``vlm`` judge: ``python -m layerscope_testbed.tiny_vlm OUT_DIR``.

Only tests, benchmarks and the README's offline example use it; a real judge is a
downloaded checkpoint folder (e.g. Qwen2.5-VL-7B-Instruct) passed as ``--judge vlm:PATH``.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

from layerscope.bench.vlm import JUDGE_PROMPT, JUDGE_PROMPT_WITHOUT_INSTRUCTION

SPECIAL = ["[UNK]", "[PAD]", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
           "<|video_pad|>", "<|image_pad|>"]  # fmt: skip
TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{% for c in m['content'] %}"
    "{% if c['type'] == 'video' %}<|vision_start|><|video_pad|><|vision_end|>{% else %}{{ c['text'] }}{% endif %}"
    "{% endfor %}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def build_tiny_qwen2_5_vl(directory: str | Path, seed: int = 0) -> Path:
    """Write a tiny random Qwen2.5-VL (model + processor) to ``directory`` with ``save_pretrained``.

    Why: the ``vlm`` judge's code path (``AutoProcessor`` + ``AutoModelForImageTextToText``
    from a local folder) must run offline in tests, benchmarks and a fresh clone.  Real
    architecture, toy size: a 2-layer text model of width 32 (``mrope_section`` [1, 1, 2]),
    a 2-block vision tower, frames resized to 56x56 (4x4 patches), a WordLevel tokenizer
    over the judge prompt, the shapes world's words and the chat-template tokens.  Random
    weights: its answers mean nothing.
    """
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast, Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration
    from transformers import Qwen2_5_VLProcessor as Processor
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import Qwen2VLImageProcessor
    from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor

    from layerscope_testbed.shapes.world import VOCABULARY

    prompts = JUDGE_PROMPT + " " + JUDGE_PROMPT_WITHOUT_INSTRUCTION
    words = re.findall(r"\w+|[^\w\s]+", prompts + " Is there at start of video Has turned by end Does move")
    words += ["user", "assistant", "Yes", "No", "towards", "touch", "After", "they", "on", "away", "from", "across"]
    vocab = {token: i for i, token in enumerate(dict.fromkeys(SPECIAL + words + list(VOCABULARY)))}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="[UNK]", pad_token="[PAD]", eos_token="<|im_end|>",
        additional_special_tokens=SPECIAL[2:],
    )  # fmt: skip
    pixels = {"shortest_edge": 56 * 56, "longest_edge": 56 * 56}  # 4x4 patches of 14 px per frame pair
    processor = Processor(
        image_processor=Qwen2VLImageProcessor(size=pixels),
        tokenizer=tokenizer,
        video_processor=Qwen2VLVideoProcessor(size=pixels),
        chat_template=TEMPLATE,
    )
    config = Qwen2_5_VLConfig(
        text_config={
            "vocab_size": len(vocab), "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
            "num_attention_heads": 4, "num_key_value_heads": 2, "pad_token_id": vocab["[PAD]"],
            "rope_parameters": {"rope_type": "default", "mrope_section": [1, 1, 2], "rope_theta": 10000.0},
            "bos_token_id": None, "eos_token_id": vocab["<|im_end|>"],
        },
        vision_config={"depth": 2, "hidden_size": 32, "intermediate_size": 64, "num_heads": 2, "out_hidden_size": 32,
                       "fullatt_block_indexes": [1], "window_size": 56},
        image_token_id=vocab["<|image_pad|>"], video_token_id=vocab["<|video_pad|>"],
        vision_start_token_id=vocab["<|vision_start|>"], vision_end_token_id=vocab["<|vision_end|>"],
    )  # fmt: skip
    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(config).eval()
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory)
    processor.save_pretrained(directory)
    return directory


if __name__ == "__main__":  # pragma: no cover
    if len(sys.argv) != 2:
        sys.exit("usage: python -m layerscope_testbed.tiny_vlm OUT_DIR")
    print(build_tiny_qwen2_5_vl(sys.argv[1]))
