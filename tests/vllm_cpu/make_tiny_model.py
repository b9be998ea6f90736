"""Writes a tiny Qwen2.5-VL with random weights that `vllm serve` can load, fully offline.

    python make_tiny_model.py OUT_DIR      (run with the stack's venv: needs torch, transformers, tokenizers)

The model has Qwen2.5-VL's architecture at toy size (2 text layers of width 128, a 2-block vision
tower, under 1 M parameters), so vLLM runs its real multimodal path (image processor, vision
encoder, M-RoPE, chat template, structured output) in seconds per request on a CPU. Its answers
are meaningless by construction, but never empty: tokens that decode to nothing visible are
never generated (nor is end-of-sequence, so answers run to the token limit unless a
structured-output grammar ends them). The byte-level BPE tokenizer is trained here on the Python
standard library's sources and carries Qwen2.5-VL's special tokens; images are resized to
4..16 vision tokens each. Deterministic: the same files come out on every run.
"""

from __future__ import annotations

import json
import sys
import sysconfig
from pathlib import Path

SPECIAL_TOKENS = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>",
    "<|object_ref_start|>", "<|object_ref_end|>", "<|box_start|>", "<|box_end|>",
    "<|quad_start|>", "<|quad_end|>", "<|vision_start|>", "<|vision_end|>",
    "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>",
]  # fmt: skip
# Qwen2's pre-tokenizer split: contractions, letters, single digits, punctuation runs, spaces.
SPLIT_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# ChatML with images as <|vision_start|><|image_pad|><|vision_end|>; vLLM expands the pad token
# to the image's number of vision tokens.
CHAT_TEMPLATE = """\
{%- for message in messages -%}
{%- if loop.first and message['role'] != 'system' -%}
<|im_start|>system
You are a helpful assistant.<|im_end|>
{% endif -%}
<|im_start|>{{ message['role'] }}
{% if message['content'] is string -%}
{{ message['content'] }}
{%- else -%}
{%- for part in message['content'] -%}
{%- if part['type'] in ('image', 'image_url') or 'image' in part or 'image_url' in part -%}
<|vision_start|><|image_pad|><|vision_end|>
{%- elif 'text' in part -%}
{{ part['text'] }}
{%- endif -%}
{%- endfor -%}
{%- endif -%}
<|im_end|>
{% endfor -%}
{%- if add_generation_prompt -%}
<|im_start|>assistant
{% endif -%}
"""
TEXT_WIDTH, TEXT_HEADS, TEXT_KV_HEADS = 128, 4, 2
# M-RoPE splits head_dim / 2 = 16 rotary frequencies over (time, height, width).
MROPE_SECTION = [4, 6, 6]
PATCH, MERGE = 14, 2
MIN_PIXELS, MAX_PIXELS = 4 * (PATCH * MERGE) ** 2, 16 * (PATCH * MERGE) ** 2  # 4..16 tokens per image


def training_text():
    """Local text for the tokenizer: the standard library's modules, then the answer vocabulary."""
    for path in sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py"))[:200]:
        yield path.read_text(encoding="utf-8", errors="ignore")
    yield "Answer: 0\nAnswer: 1\nAnswer: -1\nImage 1 Image 2 robot arm goal " * 20


def write_tokenizer(out: Path, vocab_size: int) -> tuple[dict[str, int], int]:
    """Trains the BPE tokenizer and writes it with its config; returns special-token ids and vocab size."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(SPLIT_PATTERN), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(training_text(), trainer)
    tokenizer.save(str(out / "tokenizer.json"))
    ids = {token: tokenizer.token_to_id(token) for token in SPECIAL_TOKENS}
    tokenizer_config = {
        "tokenizer_class": "Qwen2Tokenizer",
        "added_tokens_decoder": {
            str(i): {"content": t, "special": True, "lstrip": False, "rstrip": False, "normalized": False, "single_word": False}
            for t, i in ids.items()
        },
        "additional_special_tokens": SPECIAL_TOKENS[1:],
        "bos_token": None,
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
        "unk_token": None,
        "model_max_length": 8192,
        "clean_up_tokenization_spaces": False,
        "split_special_tokens": False,
        "chat_template": CHAT_TEMPLATE,
    }
    write_json(out / "tokenizer_config.json", tokenizer_config)
    write_json(out / "chat_template.json", {"chat_template": CHAT_TEMPLATE})
    return ids, tokenizer.get_vocab_size()


def model_config(ids: dict[str, int], vocab_size: int) -> dict:
    vision = {
        "model_type": "qwen2_5_vl",
        "depth": 2,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_heads": 2,
        "in_chans": 3,
        "in_channels": 3,
        "out_hidden_size": TEXT_WIDTH,
        "patch_size": PATCH,
        "spatial_merge_size": MERGE,
        "temporal_patch_size": 2,
        "window_size": 4 * PATCH * MERGE,
        "fullatt_block_indexes": [1],
        "tokens_per_second": 2,
        "hidden_act": "silu",
        "initializer_range": 0.02,
    }
    return {
        "architectures": ["Qwen2_5_VLForConditionalGeneration"],
        "model_type": "qwen2_5_vl",
        "torch_dtype": "float32",
        "vocab_size": vocab_size,
        "hidden_size": TEXT_WIDTH,
        "intermediate_size": 2 * TEXT_WIDTH,
        "num_hidden_layers": 2,
        "max_window_layers": 2,
        "num_attention_heads": TEXT_HEADS,
        "num_key_value_heads": TEXT_KV_HEADS,
        "hidden_act": "silu",
        "max_position_embeddings": 8192,
        "use_sliding_window": False,
        "sliding_window": 8192,
        "rms_norm_eps": 1e-6,
        "initializer_range": 0.02,
        "rope_theta": 1_000_000.0,
        "rope_scaling": {"type": "mrope", "mrope_section": MROPE_SECTION},
        "attention_dropout": 0.0,
        "use_cache": True,
        "tie_word_embeddings": True,
        "bos_token_id": ids["<|endoftext|>"],
        "eos_token_id": ids["<|im_end|>"],
        "pad_token_id": ids["<|endoftext|>"],
        "image_token_id": ids["<|image_pad|>"],
        "video_token_id": ids["<|video_pad|>"],
        "vision_start_token_id": ids["<|vision_start|>"],
        "vision_end_token_id": ids["<|vision_end|>"],
        "vision_token_id": ids["<|vision_pad|>"],
        "vision_config": vision,
    }


def processor_config() -> dict:
    return {
        "image_processor_type": "Qwen2VLImageProcessor",
        "processor_class": "Qwen2_5_VLProcessor",
        "min_pixels": MIN_PIXELS,
        "max_pixels": MAX_PIXELS,
        "size": {"shortest_edge": MIN_PIXELS, "longest_edge": MAX_PIXELS},
        "patch_size": PATCH,
        "temporal_patch_size": 2,
        "merge_size": MERGE,
        "image_mean": [0.48145466, 0.4578275, 0.40821073],  # CLIP's, as in Qwen2.5-VL
        "image_std": [0.26862954, 0.26130258, 0.27577711],
        "do_resize": True,
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "do_convert_rgb": True,
    }


def invisible_tokens(out: Path, special_ids) -> list[int]:
    """Ids of the tokens whose text is empty once decoded: the special ones and whitespace."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(out / "tokenizer.json"))
    return [
        i for i in range(tokenizer.get_vocab_size())
        if i in special_ids or not tokenizer.decode([i], skip_special_tokens=False).strip()
    ]  # fmt: skip


def write_json(path: Path, obj: dict) -> None:
    path.write_text(json.dumps(obj, indent=2) + "\n")


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    ids, n_tokens = write_tokenizer(out, vocab_size=2048)
    vocab_size = -(-n_tokens // 64) * 64  # the embedding table rounded up, as real checkpoints do
    write_json(out / "config.json", model_config(ids, vocab_size))
    write_json(
        out / "generation_config.json",
        {"bos_token_id": ids["<|endoftext|>"], "eos_token_id": [ids["<|im_end|>"], ids["<|endoftext|>"]], "do_sample": False},
    )
    processor = processor_config()
    write_json(out / "preprocessor_config.json", processor)
    video = {k: v for k, v in processor.items() if k != "image_processor_type"}
    write_json(out / "video_preprocessor_config.json", dict(video, video_processor_type="Qwen2VLVideoProcessor"))

    # Real (random) weights in safetensors, so that a plain `vllm serve OUT_DIR` loads them.
    import torch
    from transformers import AutoConfig, Qwen2_5_VLForConditionalGeneration

    torch.manual_seed(0)
    model = Qwen2_5_VLForConditionalGeneration(AutoConfig.from_pretrained(out)).to(torch.float32)
    # Random weights may settle on a token that decodes to nothing visible (a special token, which
    # the server strips, or whitespace), and a client rightly rejects an empty answer. With tied
    # embeddings a zero row gives that token logit 0, below the best of ~2,000 random logits, so
    # greedy decoding never picks one and every answer has text.
    invisible = invisible_tokens(out, set(ids.values()))
    with torch.no_grad():
        model.get_input_embeddings().weight[invisible] = 0.0
    model.save_pretrained(out, safe_serialization=True)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"wrote {out}: {n_params / 1e6:.2f} M parameters, vocabulary {vocab_size} ({n_tokens} trained tokens, "
          f"{len(invisible)} never generated)")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    main(Path(sys.argv[1]))
