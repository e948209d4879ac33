"""Each published text encoder, as its real class at published width and vocabulary, feeding the published transformer.

Why: ``test_published_configs.py`` builds every transformer at its published width but feeds it
random text rows, so nothing checks that the text encoder a checkpoint ships produces rows the
transformer takes: the width (Wan ``text_dim``, CogVideoX/Hunyuan ``text_embed_dim``, LTX
``caption_channels``, Hunyuan ``pooled_projection_dim`` / ``text_embed_2_dim``), the row count the
pipeline's own prompt code makes (its crops, the LLaVA image rows, the padding), and the dtype.
Here each encoder is built from the ``text_encoder`` block of ``tests/data/published_configs.json``
with its layers cut, run through the **pipeline's own** prompt-encoding method (``_get_t5_prompt_embeds``,
``_get_llama_prompt_embeds``, ...) and the rows are fed to every distinct transformer of the entries
that use that encoder, built at published width with one block (the helpers of
``test_published_configs.py``).

The real tokenizers are not available offline: a stub tokenizer gives random ids inside the
published vocabulary, laid out as the pipeline expects (prompt ids then padding; for the LLaVA and
Qwen templates, the template's marker positions).  So these tests check shapes, widths, row counts
and finiteness, not what any prompt means.

Layers are cut to one, or to ``num_hidden_layers_to_skip + 1`` = 3 where the pipeline reads
``hidden_states[-3]`` (LLaVA-Llama-3, Qwen2.5-VL), so that the row it reads is a real layer's output.
Encoders whose float32 build would pass ~8 GB here are built directly in bfloat16: UMT5-XXL (its
256,384 x 4096 embedding is 4.2 GB in float32 and the class makes it twice before tying, ~9.4 GB
peak) and LLaVA-Llama-3 (embedding and LM head, 128,320 x 4096 each, plus three layers: ~7 GB of
weights).  T5-v1.1-XXL, CLIP-L, Qwen2.5-VL (3 layers, ~5 GB) and ByT5 stay float32.  Each test frees
its models before the next (``del`` + ``gc``); all are slow (GBs of weights).  Cosmos's T5-11B is
covered by ``tests/test_cosmos.py::test_cosmos_published_text_encoder_width_feeds_the_published_cross_attention``.
"""

from __future__ import annotations

import contextlib
import gc
import resource
import time
from types import SimpleNamespace

import pytest
import torch
from test_published_configs import ENTRIES, _adapter_class, _cut_transformer, _real, _small_size

pytestmark = pytest.mark.slow
CPU = torch.device("cpu")
#: how many ids of each stub prompt are "words" (the rest is padding, as max_length padding makes)
PROMPT_IDS = 24


def _published(block: dict, *drop: str) -> dict:
    """The numeric/config fields of a published ``text_encoder`` block (no class name, source, nested blocks)."""
    return {k: v for k, v in block.items() if not k.startswith("_") and k not in {"source", *drop}}


def _entries_with(class_name: str, key: str = "text_encoder") -> list[str]:
    """Published entries whose ``key`` encoder is ``class_name`` (nested ``text_encoder_2`` too)."""
    names = []
    for name, entry in ENTRIES.items():
        block = entry.get("text_encoder") or {}
        block = block.get("text_encoder_2") or {} if key == "text_encoder_2" else block
        if str(block.get("_class_name", "")).split(" ")[0] == class_name:
            names.append(name)
    assert names, f"no published entry uses {class_name}"
    return names


def _distinct_transformers(names: list[str]) -> list[str]:
    """One entry per distinct published transformer config (Wan2.1 480P and 720P share one)."""
    seen, kept = set(), []
    for name in names:
        key = repr(sorted(ENTRIES[name]["transformer"].items()))
        if key not in seen:
            seen.add(key)
            kept.append(name)
    return kept


class _StubTokenizer:
    """Random ids in the published vocabulary where the real tokenizer is not available offline.

    ``PROMPT_IDS`` ids in ``[low, high)`` then ``pad_id`` up to ``max_length`` (attention mask 1 then
    0), which is what ``padding="max_length"`` gives; ``padding="longest"`` gives the ids unpadded (so
    the pipelines' truncation warning stays silent).  ``layout`` may overwrite fixed positions
    (template markers) of the padded ids.
    """

    def __init__(self, low: int, high: int, pad_id: int, layout=None, seed: int = 0):
        self.low, self.high, self.pad_id, self.layout = low, high, pad_id, layout
        self.generator = torch.Generator().manual_seed(seed)

    def ids(self, max_length: int, start: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        ids = torch.full((1, max_length), self.pad_id, dtype=torch.long)
        mask = torch.zeros(1, max_length, dtype=torch.long)
        end = min(max_length, start + PROMPT_IDS)  # ``start`` template ids, then the prompt's
        ids[0, :end] = torch.randint(self.low, self.high, (end,), generator=self.generator)
        mask[0, :end] = 1
        return ids, mask

    def __call__(self, text, padding=None, max_length=None, **_):
        from transformers import BatchEncoding

        length = max_length if padding == "max_length" else PROMPT_IDS
        ids, mask = self.ids(length)
        if self.layout is not None:
            ids, mask = self.layout(ids, mask)
        return BatchEncoding({"input_ids": ids, "attention_mask": mask})


class _ChatStubTokenizer(_StubTokenizer):
    """The stub for Qwen's ``apply_chat_template``: ``template`` random ids (the system message the
    pipeline crops), the prompt's, then padding to ``max_length``."""

    def __init__(self, low: int, high: int, pad_id: int, template: int):
        super().__init__(low, high, pad_id)
        self.template = template

    def apply_chat_template(self, conversation, max_length=None, **_):
        from transformers import BatchEncoding

        ids, mask = self.ids(max_length, start=self.template)
        return BatchEncoding({"input_ids": ids, "attention_mask": mask})


@contextlib.contextmanager
def _built_in(dtype: torch.dtype):
    """Construct parameters directly in ``dtype`` (a float32 build then ``.to`` would hold both copies)."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


def _peak_gib() -> float:
    """This process's peak resident set so far (Linux ru_maxrss is in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def _report(label: str, started: float) -> None:
    print(f"{label}: {time.perf_counter() - started:.1f} s, peak RSS {_peak_gib():.2f} GiB")


def _feed(name: str, text: dict[str, torch.Tensor], text_rows: int | None = None) -> list[torch.Tensor]:
    """Run ``name``'s transformer (published width, one block) on ``text`` in place of the random text inputs.

    Checked: the call accepts the encoder's rows; every probe site's text values (the tensor the
    adapter records from) have ``text_rows`` rows (default: the plan's text length) and are
    finite; the output is finite.  Returns each site's text values (text rows only), in block order.
    """
    entry = ENTRIES[name]
    adapter_cls = _adapter_class(entry)
    configs = {key: entry.get(key) or {} for key in ("pipeline", "transformer", "vae", "text_encoder", "image_encoder")}
    frames, height, width = _small_size(name, lambda *s: adapter_cls.geometry_from_configs(configs, *s))
    geometry = adapter_cls.geometry_from_configs(configs, frames, height, width)
    inputs = _real(adapter_cls.forward_inputs_from_configs(configs, geometry))
    for key, value in text.items():
        assert key in inputs, f"{name}: the transformer call has no {key!r}"
        if value.dim() == 3:  # rows (masks and pooled rows are not checked against the plan's length)
            assert value.shape[-1] == inputs[key].shape[-1], f"{name}: {key} width {value.shape[-1]} != published"
        inputs[key] = value.float()
    model = _cut_transformer(entry)
    sites = _adapter_class(entry)(SimpleNamespace(transformer=model, transformer_2=None)).probe_sites(model)
    n = geometry.grid[0] * geometry.grid[1] * geometry.grid[2]
    seen: dict[str, torch.Tensor] = {}

    def keep(module, args, output, name: str) -> None:
        seen[name] = output[0].detach()

    hooks = [
        site.text_value.register_forward_hook(lambda m, a, o, name=site.name: keep(m, a, o, name)) for site in sites
    ]
    try:
        with torch.no_grad():
            out = model(**inputs)[0]
    finally:
        for hook in hooks:
            hook.remove()
    expected_rows = geometry.text_tokens if text_rows is None else text_rows
    kept = []
    for site in sites:
        values = seen[site.name]
        if site.text_follows_visual:
            values = values[n:]
        elif getattr(site, "text_precedes_visual", False):
            values = values[: values.shape[0] - n]
        assert values.shape[0] == expected_rows, f"{name} {site.name}: {values.shape[0]} text rows, {expected_rows} fed"
        assert torch.isfinite(values).all(), f"{name} {site.name}: non-finite text values"
        kept.append(values)
    assert out.shape[0] == 1 and out.numel() > 0 and torch.isfinite(out).all(), f"{name}: non-finite output"
    del model, out
    seen.clear()
    gc.collect()
    return kept


def test_umt5_xxl_feeds_wan_and_skyreels():
    """UMT5-XXL (Wan2.1/2.2, SkyReels-V2) at 4096 wide, 256,384 ids, 1 of 24 layers, bfloat16.

    Rows from ``WanImageToVideoPipeline._get_t5_prompt_embeds`` (the pipeline zero-pads past the
    prompt to 512); each distinct Wan/SkyReels transformer takes them, and its cross-attention text
    values are equal on every zero-padded row (the rows reached attn2 as the pipeline made them).
    """
    from diffusers import WanImageToVideoPipeline
    from transformers import UMT5Config, UMT5EncoderModel

    started = time.perf_counter()
    names = _entries_with("UMT5EncoderModel")
    block = ENTRIES[names[0]]["text_encoder"]
    assert all(ENTRIES[n]["text_encoder"] == block for n in names), "one UMT5 config for all its entries"
    # feed_forward_proj is UMT5Config's default "gated-gelu", as the published Wan text_encoder/config.json has it
    # (https://huggingface.co/wavespeed/Wan2.1-T2V-14B-Diffusers-fp16/blob/main/text_encoder/config.json)
    torch.manual_seed(0)
    with _built_in(torch.bfloat16):  # float32 peaks at ~9.4 GB: UMT5Stack makes its own embedding before tying it
        encoder = UMT5EncoderModel(UMT5Config(**{**_published(block), "num_layers": 1})).eval()
    assert encoder.shared.weight.shape == (256384, 4096) and encoder.dtype == torch.bfloat16
    length = ENTRIES[names[0]]["text_tokens"]
    stub = SimpleNamespace(tokenizer=_StubTokenizer(2, block["vocab_size"], pad_id=0), text_encoder=encoder)
    with torch.no_grad():
        rows = WanImageToVideoPipeline._get_t5_prompt_embeds(stub, "a prompt", max_sequence_length=length, device=CPU)
    del encoder, stub
    gc.collect()
    _report("UMT5-XXL built and run", started)
    assert rows.shape == (1, length, 4096) and torch.isfinite(rows).all()
    assert rows[0, PROMPT_IDS:].abs().max() == 0 and rows[0, :PROMPT_IDS].abs().sum(-1).min() > 0
    for name in names:
        assert rows.shape[-1] == ENTRIES[name]["transformer"]["text_dim"], name
        assert ENTRIES[name]["text_tokens"] == length, name
    for name in _distinct_transformers(names):
        values = _feed(name, {"encoder_hidden_states": rows})[0]
        # attn2 (to_v of the projected rows): one value row for all the zero-padded rows, a
        # different one for each prompt row, so the rows reached the cross-attention as the pipeline made them
        pad = values[PROMPT_IDS:]
        torch.testing.assert_close(pad, pad[:1].expand_as(pad))
        assert (values[:PROMPT_IDS] - pad[:1]).abs().amax(-1).min() > 0
        _report(f"  {name} transformer fed", started)


def test_t5_v1_1_xxl_feeds_cogvideox_and_ltx():
    """T5-v1.1-XXL (CogVideoX, LTX-Video) at 4096 wide, 32,128 ids, 1 of 24 layers, float32.

    Rows from each pipeline's own ``_get_t5_prompt_embeds`` (226 for CogVideoX, 128 for LTX, with
    LTX's mask), fed to each distinct CogVideoX/LTX transformer.
    """
    from diffusers import CogVideoXImageToVideoPipeline, LTXImageToVideoPipeline
    from transformers import T5Config, T5EncoderModel

    started = time.perf_counter()
    names = _entries_with("T5EncoderModel")
    names = [n for n in names if ENTRIES[n]["family"] in {"cogvideox", "ltx-video"}]
    block = ENTRIES[names[0]]["text_encoder"]
    assert all(ENTRIES[n]["text_encoder"] == block for n in names)
    torch.manual_seed(0)
    # feed_forward_proj "gated-gelu" (T5 v1.1; T5Config's default is v1.0's "relu"):
    # https://huggingface.co/google/t5-v1_1-xxl/blame/main/config.json and
    # https://huggingface.co/THUDM/CogVideoX-2b/blame/main/text_encoder/config.json (the data file's sources)
    encoder = T5EncoderModel(T5Config(**{**_published(block), "num_layers": 1}, feed_forward_proj="gated-gelu")).eval()
    assert encoder.shared.weight.shape == (32128, 4096)
    stub = SimpleNamespace(tokenizer=_StubTokenizer(2, block["vocab_size"], pad_id=0), text_encoder=encoder)
    with torch.no_grad():
        cog = CogVideoXImageToVideoPipeline._get_t5_prompt_embeds(stub, "a prompt", max_sequence_length=226, device=CPU)
        ltx, ltx_mask = LTXImageToVideoPipeline._get_t5_prompt_embeds(
            stub, "a prompt", max_sequence_length=128, device=CPU
        )
    rows = {"cogvideox": (cog, None), "ltx-video": (ltx, ltx_mask)}
    del encoder, stub, cog, ltx
    gc.collect()
    _report("T5-v1.1-XXL built and run", started)
    for name in names:
        entry = ENTRIES[name]
        embeds, mask = rows[entry["family"]]
        width = entry["transformer"].get("text_embed_dim") or entry["transformer"].get("caption_channels")
        assert embeds.shape == (1, entry["text_tokens"], width) and torch.isfinite(embeds).all(), name
    assert int(rows["ltx-video"][1].sum()) == PROMPT_IDS
    for name in _distinct_transformers(names):
        embeds, mask = rows[ENTRIES[name]["family"]]
        text = {"encoder_hidden_states": embeds}
        if mask is not None:
            text["encoder_attention_mask"] = mask.float()
        _feed(name, text)
        _report(f"  {name} transformer fed", started)


HUNYUAN_I2V = "HunyuanVideo-I2V-33ch"


def _llama_template_layout(crop_start: int, image_token: int, marker: int, pad_id: int):
    """Ids laid out as ``DEFAULT_PROMPT_TEMPLATE`` tokenized, where ``_get_llama_prompt_embeds`` looks for them.

    ``<image>`` at 5 (the template's ``image_emb_start``), the system and user headers' end markers
    at 3 and ``crop_start - 2``, the prompt from ``crop_start``, then ``<|eot_id|><|start_header_id|>
    assistant<|end_header_id|>\\n\\n`` (end marker second to last), then ``pad_id``.  Every other id is
    random below ``marker``, which stands for ``<|end_header_id|>`` (the stub's convert_tokens_to_ids
    answers it).
    """
    generator = torch.Generator().manual_seed(1)

    def layout(ids: torch.Tensor, mask: torch.Tensor):
        end = crop_start + PROMPT_IDS + 5
        ids[0, :] = pad_id
        ids[0, :end] = torch.randint(0, marker, (end,), generator=generator)
        ids[0, 5] = image_token
        ids[0, [3, crop_start - 2, end - 2]] = marker
        mask[:] = 0
        mask[0, :end] = 1
        return ids, mask

    return layout


def _hunyuan_i2v_llava():
    """LLaVA-Llama-3-8B as the published config says, text layers cut to 3, vision tower to 2, bf16."""
    from transformers import LlavaConfig, LlavaForConditionalGeneration

    block = ENTRIES[HUNYUAN_I2V]["text_encoder"]
    text = {
        **block["text_config"],
        "num_hidden_layers": 3,  # the pipeline reads hidden_states[-(2 + 1)]: layer 1's output
        # from the data file's source config (asadfgglie/banban-vision-8b-v1-pretrain-zh@6718488, _name_or_path
        # xtuner/llava-llama-3-8b-v1_1-transformers): rope_theta, rms_norm_eps, max_position_embeddings
        "rope_theta": 500000.0,
        "rms_norm_eps": 1e-05,
        "max_position_embeddings": 8192,
        "model_type": "llama",
    }
    vision = {**block["vision_config"], "num_hidden_layers": 2, "model_type": "clip_vision_model"}
    config = LlavaConfig(
        text_config=text,
        vision_config=vision,
        image_token_index=block["image_token_index"],
        vision_feature_layer=block["vision_feature_layer"],
        vision_feature_select_strategy=block["vision_feature_select_strategy"],
        # same source config: "projector_hidden_act": "gelu", "image_seq_length": 576, "pad_token_id": 128258
        projector_hidden_act="gelu",
        image_seq_length=576,
    )
    config.pad_token_id = 128258
    torch.manual_seed(0)
    with _built_in(torch.bfloat16):
        return LlavaForConditionalGeneration(config).eval()


def test_llava_llama3_feeds_hunyuan_video_i2v():
    """HunyuanVideo-I2V's LLaVA-Llama-3-8B (bf16: fp32 would be ~7 GB) through the pipeline's own template code.

    ``HunyuanVideoImageToVideoPipeline._get_llama_prompt_embeds`` expands ``<image>`` to 576 ids,
    runs the LLaVA, keeps hidden_states[-3], crops the template and interleaves the image rows
    (every 2nd for latent_concat): 288 image rows + 252 prompt rows (256 minus the 4 assistant-header
    ids the pipeline drops), 4096 wide = ``text_embed_dim``; ``layerscope plan`` plans the same rows.
    Both published I2V transformers (33ch, 16ch) take those rows with that mask.
    """
    from diffusers import HunyuanVideoImageToVideoPipeline
    from diffusers.pipelines.hunyuan_video.pipeline_hunyuan_video_image2video import DEFAULT_PROMPT_TEMPLATE

    started = time.perf_counter()
    names = _entries_with("LlavaForConditionalGeneration")
    block = ENTRIES[HUNYUAN_I2V]["text_encoder"]
    encoder = _hunyuan_i2v_llava()
    assert encoder.model.language_model.embed_tokens.weight.shape == (128320, 4096)
    marker = block["image_token_index"] - 2  # any id apart from <image> and the pad id
    layout = _llama_template_layout(DEFAULT_PROMPT_TEMPLATE["crop_start"], block["image_token_index"], marker, 128258)
    tokenizer = _StubTokenizer(0, marker, pad_id=128258, layout=layout)
    tokenizer.convert_tokens_to_ids = lambda token: marker
    vision = block["vision_config"]
    pixels = torch.randn(1, 3, vision["image_size"], vision["image_size"])
    stub = SimpleNamespace(
        tokenizer=tokenizer,
        text_encoder=encoder,
        image_processor=lambda image, return_tensors=None: SimpleNamespace(pixel_values=pixels.to(torch.bfloat16)),
    )
    with torch.no_grad():
        embeds, mask = HunyuanVideoImageToVideoPipeline._get_llama_prompt_embeds(
            stub, None, "a prompt", DEFAULT_PROMPT_TEMPLATE, device=CPU, max_sequence_length=256
        )
    del encoder, stub
    gc.collect()
    _report("LLaVA-Llama-3-8B (bf16) built and run", started)
    assert embeds.dtype == torch.bfloat16 and torch.isfinite(embeds.float()).all()
    image_rows = len(range(0, (vision["image_size"] // vision["patch_size"]) ** 2, 2))
    assert embeds.shape == (1, image_rows + 256 - 4, 4096) and mask.shape == embeds.shape[:2]
    assert int(mask.sum()) == image_rows + PROMPT_IDS + 1  # image rows, the prompt and the kept "\n\n"
    from layerscope.adapters.hunyuan_video import HunyuanVideoAdapter

    planned = HunyuanVideoAdapter.geometry_from_configs(ENTRIES[HUNYUAN_I2V], 129, 720, 1280)
    assert planned.text_tokens == embeds.shape[1]
    for name in names:
        assert embeds.shape[-1] == ENTRIES[name]["transformer"]["text_embed_dim"], name
    for name in _distinct_transformers(names):
        _feed(name, {"encoder_hidden_states": embeds, "encoder_attention_mask": mask.float()}, embeds.shape[1])
        _report(f"  {name} transformer fed", started)


def test_clip_l_pooled_feeds_hunyuan_video_i2v():
    """HunyuanVideo-I2V's CLIP-L text encoder at full published depth (12 layers, float32; 123M weights).

    ``_get_clip_prompt_embeds`` (77 ids) returns the pooled row, 768 wide = ``pooled_projection_dim``.
    """
    from diffusers import HunyuanVideoImageToVideoPipeline
    from transformers import CLIPTextConfig, CLIPTextModel

    started = time.perf_counter()
    names = _entries_with("CLIPTextModel", "text_encoder_2")
    width = ENTRIES[names[0]]["text_encoder"]["text_encoder_2"]["hidden_size"]
    # The data file gives the width only.  The rest from a HunyuanVideo diffusers export's own
    # text_encoder_2/config.json (CLIPTextModel, openai/clip-vit-large-patch14's numbers):
    # https://huggingface.co/magespace/hyvideo-diffusers/blob/899dfe773e9c6f6320d4bf9e1dbed06bd41ddfac/text_encoder_2/config.json
    config = CLIPTextConfig(
        hidden_size=width,
        vocab_size=49408,
        num_hidden_layers=12,
        num_attention_heads=12,
        intermediate_size=3072,
        max_position_embeddings=77,
        hidden_act="quick_gelu",
        projection_dim=768,
        layer_norm_eps=1e-05,
        pad_token_id=1,
        bos_token_id=0,
        eos_token_id=2,
    )
    torch.manual_seed(0)
    encoder = CLIPTextModel(config).eval()
    stub = SimpleNamespace(tokenizer_2=_StubTokenizer(0, 49408, pad_id=49407), text_encoder_2=encoder)
    with torch.no_grad():
        pooled = HunyuanVideoImageToVideoPipeline._get_clip_prompt_embeds(stub, "a prompt", device=CPU)
    del encoder, stub
    gc.collect()
    _report("CLIP-L text built and run", started)
    assert pooled.shape == (1, width) and torch.isfinite(pooled).all()
    for name in names:
        assert pooled.shape[-1] == ENTRIES[name]["transformer"]["pooled_projection_dim"], name
    _feed(_distinct_transformers(names)[0], {"pooled_projections": pooled})
    _report("  transformer fed", started)


HUNYUAN_15 = "HunyuanVideo-1.5-I2V-480p"


def test_qwen25_vl_text_feeds_hunyuan_video15():
    """HunyuanVideo-1.5's Qwen2.5-VL-7B language model (``Qwen2_5_VLTextModel``), 3 of 28 layers, float32.

    ``_get_mllm_prompt_embeds`` (1000 + 108 template ids, hidden_states[-3], template cropped) gives
    1000 rows, 3584 wide = ``text_embed_dim``.
    """
    from diffusers import HunyuanVideo15ImageToVideoPipeline
    from transformers import Qwen2_5_VLTextConfig, Qwen2_5_VLTextModel

    started = time.perf_counter()
    block = ENTRIES[HUNYUAN_15]["text_encoder"]
    # rms_norm_eps, rope_theta, mrope_section, max_position_embeddings: the Qwen2_5_VLTextModel config of a
    # HunyuanVideo-1.5-derived diffusers export,
    # https://huggingface.co/FastVideo/HY-WorldPlay-AR-Diffusers/blob/main/text_encoder/config.json
    config = Qwen2_5_VLTextConfig(
        **{**_published(block, "text_encoder_2"), "num_hidden_layers": 3},
        rms_norm_eps=1e-06,
        max_position_embeddings=128000,
        rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [16, 24, 24]},
    )
    torch.manual_seed(0)
    encoder = Qwen2_5_VLTextModel(config).eval()
    assert encoder.embed_tokens.weight.shape == (152064, 3584)
    stub = _ChatStubTokenizer(0, block["vocab_size"], pad_id=0, template=108)
    with torch.no_grad():
        embeds, mask = HunyuanVideo15ImageToVideoPipeline._get_mllm_prompt_embeds(
            encoder, stub, "a prompt", CPU, tokenizer_max_length=1000, crop_start=108
        )
    del encoder, stub
    gc.collect()
    _report("Qwen2.5-VL-7B text built and run", started)
    assert embeds.shape == (1, 1000, 3584) and torch.isfinite(embeds).all() and int(mask.sum()) == PROMPT_IDS
    assert embeds.shape[-1] == ENTRIES[HUNYUAN_15]["transformer"]["text_embed_dim"]
    _feed(HUNYUAN_15, {"encoder_hidden_states": embeds, "encoder_attention_mask": mask.float()})
    _report("  transformer fed", started)


def test_byt5_feeds_hunyuan_video15():
    """HunyuanVideo-1.5's ByT5 (``T5EncoderModel``, byt5-small numbers) at full published depth, float32.

    ``_get_byt5_prompt_embeds`` on a prompt with quoted text (without one the pipeline skips the
    encoder and returns zeros) gives 256 rows, 1472 wide = ``text_embed_2_dim``.
    """
    from diffusers import HunyuanVideo15ImageToVideoPipeline
    from transformers import T5Config, T5EncoderModel

    started = time.perf_counter()
    block = ENTRIES[HUNYUAN_15]["text_encoder"]["text_encoder_2"]
    # The Glyph-SDXL-v2 color/font tokens the conversion adds are not known here (the data file's
    # 'missing'): the table is built at byt5-small's 384 and the ids stay inside it.  d_kv 64 and
    # feed_forward_proj "gated-gelu" are byt5-small's, from the data file's source config
    # https://huggingface.co/bookbot/byt5-small-wikipron-eng-latn-nz-broad/blame/0521a4a334460f37204cdfbc6a7b8ec846d17680/config.json
    published = _published(block, "vocab_size_base")
    config = T5Config(**published, vocab_size=block["vocab_size_base"], d_kv=64, feed_forward_proj="gated-gelu")
    torch.manual_seed(0)
    encoder = T5EncoderModel(config).eval()
    stub = _StubTokenizer(3, block["vocab_size_base"], pad_id=0)
    with torch.no_grad():
        embeds, mask = HunyuanVideo15ImageToVideoPipeline._get_byt5_prompt_embeds(
            stub, encoder, 'a shop sign that reads "OPEN"', CPU, tokenizer_max_length=256
        )
    del encoder, stub
    gc.collect()
    _report("ByT5 built and run", started)
    assert embeds.shape == (1, 256, 1472) and torch.isfinite(embeds).all() and int(mask.sum()) == PROMPT_IDS
    assert embeds.shape[-1] == ENTRIES[HUNYUAN_15]["transformer"]["text_embed_2_dim"]
    _feed(HUNYUAN_15, {"encoder_hidden_states_2": embeds, "encoder_attention_mask_2": mask.float()})
    _report("  transformer fed", started)
