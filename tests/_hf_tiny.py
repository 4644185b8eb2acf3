"""Tiny Hugging Face models and tokenizers, built locally (no hub), as a TRL user would have them.

Three tokenizer styles, the ones whose special-token conventions differ:

* ``gpt2``: byte-level BPE, ``<|endoftext|>`` is bos = eos = unk, no chat template, adds no special token;
* ``llama``: ``<s>`` bos added by the tokenizer (post-processor), ``</s>`` eos, a TinyLlama/Zephyr-style
  chat template whose turns end with ``</s>``;
* ``qwen``: no bos, ``<|im_end|>`` eos, ``<|endoftext|>`` pad, the ChatML template of Qwen2/Qwen3 (with
  ``{% generation %}`` markers around assistant content, so TRL's ``assistant_only_loss`` works).

Architectures (`ARCHS`): gpt2 (tied, dropout 0.1 as GPT-2's config has), llama (untied), qwen2, qwen3,
mistral, each a few thousand parameters at a ~300-token vocabulary. `hf_model_dir(path, arch)` saves
model + tokenizer into ``path`` and returns it.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Literal

import torch

TokenizerStyle = Literal["gpt2", "llama", "qwen"]

CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "What is 2+3? The answer is 5.",
    "Sort the list: 3 1 2 -> 1 2 3",
    "Reverse the word: abc -> cba",
    "Hello, how are you today? I am fine, thank you.",
    "A preference pair has a prompt, a chosen answer and a rejected answer.",
    "Once upon a time there was a small model that learned to count: one two three four five.",
    "user assistant system content role message",
] * 4

LLAMA_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}"
    "{{ '<|assistant|>\n' }}{% generation %}{{ message['content'] + eos_token }}{% endgeneration %}{{ '\n' }}"
    "{% else %}{{ '<|' + message['role'] + '|>\n' + message['content'] + eos_token + '\n' }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)

QWEN_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}"
    "{{ '<|im_start|>assistant\n' }}{% generation %}{{ message['content'] + '<|im_end|>' }}{% endgeneration %}"
    "{{ '\n' }}"
    "{% else %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

_SPECIALS: dict[str, list[str]] = {
    "gpt2": ["<|endoftext|>"],
    "llama": ["<unk>", "<s>", "</s>", "<|user|>", "<|assistant|>", "<|system|>"],
    "qwen": ["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
}


@cache
def _tokenizer_json(style: TokenizerStyle, vocab_size: int) -> str:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=_SPECIALS[style],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(CORPUS, trainer=trainer)
    if style == "llama":
        bos = tok.token_to_id("<s>")
        tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                           special_tokens=[("<s>", bos)])
    else:
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
    return tok.to_str()


def make_tokenizer(style: TokenizerStyle, vocab_size: int = 320):
    """A fresh `PreTrainedTokenizerFast` of ``style`` (see the module docstring)."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    obj = Tokenizer.from_str(_tokenizer_json(style, vocab_size))
    if style == "gpt2":
        tok = PreTrainedTokenizerFast(tokenizer_object=obj, bos_token="<|endoftext|>", eos_token="<|endoftext|>",
                                      unk_token="<|endoftext|>")
    elif style == "llama":
        tok = PreTrainedTokenizerFast(tokenizer_object=obj, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                      pad_token="</s>")
        tok.chat_template = LLAMA_TEMPLATE
    else:
        tok = PreTrainedTokenizerFast(tokenizer_object=obj, eos_token="<|im_end|>", pad_token="<|endoftext|>")
        tok.chat_template = QWEN_TEMPLATE
    return tok


ArchName = Literal["gpt2", "llama", "qwen2", "qwen3", "mistral"]
ARCHS: tuple[str, ...] = ("gpt2", "llama", "qwen2", "qwen3", "mistral")
ARCH_TOKENIZER: dict[str, TokenizerStyle] = {"gpt2": "gpt2", "llama": "llama", "qwen2": "qwen", "qwen3": "qwen",
                                             "mistral": "llama"}


def make_model(arch: str, tokenizer, *, seed: int = 0, dim: int = 32, layers: int = 2, positions: int = 256):
    """A randomly initialised transformers causal LM of ``arch`` sized to ``tokenizer``."""
    import transformers as tf

    torch.manual_seed(seed)
    vocab = len(tokenizer)
    special = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
               "pad_token_id": tokenizer.pad_token_id}
    if arch == "gpt2":
        cfg = tf.GPT2Config(vocab_size=vocab, n_embd=dim, n_layer=layers, n_head=4, n_positions=positions,
                            **special)
        return tf.GPT2LMHeadModel(cfg)
    common = dict(vocab_size=vocab, hidden_size=dim, intermediate_size=2 * dim, num_hidden_layers=layers,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=positions, **special)
    if arch == "llama":
        return tf.LlamaForCausalLM(tf.LlamaConfig(**common, tie_word_embeddings=False))
    if arch == "qwen2":
        return tf.Qwen2ForCausalLM(tf.Qwen2Config(**common, tie_word_embeddings=True))
    if arch == "qwen3":
        return tf.Qwen3ForCausalLM(tf.Qwen3Config(**common, head_dim=dim // 4, tie_word_embeddings=True))
    if arch == "mistral":
        return tf.MistralForCausalLM(tf.MistralConfig(**common, tie_word_embeddings=False))
    raise ValueError(f"unknown architecture {arch!r}")


def hf_model_dir(path: str | Path, arch: str, *, seed: int = 0, dtype: torch.dtype | None = None,
                 tokenizer_style: TokenizerStyle | None = None, positions: int = 256) -> Path:
    """Save a tiny ``arch`` model and its tokenizer into ``path`` (a transformers folder) and return it."""
    path = Path(path)
    tok = make_tokenizer(tokenizer_style or ARCH_TOKENIZER[arch])
    model = make_model(arch, tok, seed=seed, positions=positions)
    if dtype is not None:
        model = model.to(dtype)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path
