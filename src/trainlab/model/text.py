"""Text in, text out: prompts tokenized as the model's tokenizer does, generation stopped where the model stops.

What makes ``trainlab generate`` give the tokens ``transformers``' ``model.generate(do_sample=False)``
gives on the same model and prompt:

* **Prompt ids** are ``tokenizer(prompt)["input_ids"]``: the tokenizer's own special-token rules
  decide whether a BOS comes first (Llama's ``<s>`` is added by its post-processor; GPT-2 and Qwen
  add none). Nothing is prepended because a ``bos_token`` attribute happens to exist (a Qwen
  tokenizer given ``bos_token = "<|im_end|>"`` by some loader still gets no BOS). trainlab's own BPE
  (:mod:`trainlab.data.tokenizer`) adds ``<bos>`` through its post-processor; one saved before it had
  that post-processor (and loaded other than by ``load_tokenizer``, which adds it) gets ``<bos>`` here.
* **Stop ids** (:func:`stop_token_ids`): the model's generation eos ids (``generation_config.json``,
  else ``config.json``, as transformers' ``GenerationConfig.from_model_config``), plus the
  tokenizer's eos and the chat template's end-of-turn token (``<|im_end|>``, ``</s>``,
  ``<|eot_id|>``...), which a chat model emits to end its answer.
* **Positions**: a model with a learned position table (GPT-2's ``n_positions``) is refused a prompt
  plus ``max_new_tokens`` longer than the table (transformers fails there with an ``IndexError``);
  rotary models continue past their configured length, as in transformers.
* **Batches** are left-padded (:func:`encode_prompts`), positions from the mask, so every prompt
  continues exactly as it would alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from trainlab.errors import UserError
from trainlab.model.generate import SamplingParams

_MARKER = "\u2063trainlab-end-of-turn\u2063"


def _special_tokens(tokenizer: Any) -> dict[str, int]:
    """Special and added tokens of a tokenizer: text -> id."""
    out: dict[str, int] = {}
    for i, added in (getattr(tokenizer, "added_tokens_decoder", None) or {}).items():
        out[str(getattr(added, "content", added))] = int(i)
    for text in getattr(tokenizer, "all_special_tokens", []) or []:
        tid = tokenizer.convert_tokens_to_ids(text)
        if isinstance(tid, int):
            out.setdefault(text, tid)
    return out


def chat_end_of_turn_id(tokenizer: Any) -> int | None:
    """The special token the chat template puts right after an assistant message, if any.

    Found by rendering a user/assistant exchange and reading what follows the assistant's text
    (``<|im_end|>`` for ChatML, ``</s>`` for Zephyr-style templates, ``<|eot_id|>`` for Llama 3).
    """
    if not getattr(tokenizer, "chat_template", None):
        return None
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": _MARKER}]
    try:
        text = tokenizer.apply_chat_template(messages, tokenize=False)
    except Exception:  # a template with its own rules (roles, system prompt): no end-of-turn learned
        return None
    if not isinstance(text, str) or _MARKER not in text:
        return None
    tail = text[text.rindex(_MARKER) + len(_MARKER):]
    matches = [(t, i) for t, i in _special_tokens(tokenizer).items() if t and tail.startswith(t)]
    return max(matches, key=lambda m: len(m[0]))[1] if matches else None


def stop_token_ids(model: Any, tokenizer: Any) -> list[int]:
    """Where generation stops: the model's eos ids, the tokenizer's eos, the chat end-of-turn token."""
    ids: list[int] = []
    source = getattr(model, "source", None)
    if source is not None:
        ids += list(source.eos_token_ids)
    else:  # a model built in memory: its transformers generation config, if it has one
        gen = getattr(getattr(model, "model", None), "generation_config", None)
        eos = getattr(gen, "eos_token_id", None)
        ids += [eos] if isinstance(eos, int) else list(eos or [])
    for extra in (getattr(tokenizer, "eos_token_id", None), chat_end_of_turn_id(tokenizer)):
        if extra is not None and int(extra) not in ids:
            ids.append(int(extra))
    return ids


def _code_adds_bos(tokenizer: Any) -> bool:
    """True for trainlab's own BPE (``<pad>``, ``<bos>``, ``<eos>`` at ids 0, 1, 2): its sequences start with bos."""
    from trainlab.data.tokenizer import BOS, BOS_ID, EOS, EOS_ID, PAD, PAD_ID

    if getattr(tokenizer, "bos_token", None) != BOS:
        return False
    return list(tokenizer.convert_tokens_to_ids([PAD, BOS, EOS])) == [PAD_ID, BOS_ID, EOS_ID]


def prompt_ids(tokenizer: Any, prompt: str) -> list[int]:
    """``tokenizer(prompt)["input_ids"]``: the tokenizer's own special tokens (see the module docstring)."""
    ids = [int(i) for i in tokenizer(prompt)["input_ids"]]
    if _code_adds_bos(tokenizer) and ids[:1] != [tokenizer.bos_token_id]:
        ids = [int(tokenizer.bos_token_id), *ids]
    return ids


def pad_id(tokenizer: Any) -> int:
    """The id left padding uses (never attended to): the pad token, else eos, else 0."""
    for name in ("pad_token_id", "eos_token_id"):
        value = getattr(tokenizer, name, None)
        if value is not None:
            return int(value)
    return 0


def encode_prompts(tokenizer: Any, prompts: Sequence[str]) -> tuple[Tensor, Tensor]:
    """``(input_ids, attention_mask)`` ``[B, T]``, left-padded, each row :func:`prompt_ids`."""
    if not prompts:
        raise UserError("no prompts to generate from")
    rows = [prompt_ids(tokenizer, p) for p in prompts]
    for i, row in enumerate(rows):
        if not row:
            raise UserError(f"prompt {i + 1} is empty after tokenization (this tokenizer adds no BOS): give some text")
    length = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), length), pad_id(tokenizer), dtype=torch.long)
    attention_mask = torch.zeros((len(rows), length), dtype=torch.long)
    for i, row in enumerate(rows):
        input_ids[i, length - len(row):] = torch.tensor(row, dtype=torch.long)
        attention_mask[i, length - len(row):] = 1
    return input_ids, attention_mask


def learned_positions(model: Any) -> int | None:
    """How many positions a model with a learned absolute position table has (GPT-2's ``wpe``:
    ``n_positions``); None when positions are computed (RoPE), which run past the configured length.

    transformers' ``generate`` indexes past such a table (an ``IndexError``); :func:`generate_ids` refuses.
    """
    from trainlab.model.hf import HFCausalLM

    if not isinstance(model, HFCausalLM):
        return None  # our decoder: rotary positions
    tables = [m.num_embeddings for name, m in model.model.named_modules()
              if isinstance(m, torch.nn.Embedding) and any(k in name.rsplit(".", 1)[-1] for k in ("wpe", "pos"))]
    if not tables:
        return None
    config = model.model.config
    named = [v for k in ("n_positions", "max_position_embeddings") if isinstance(v := getattr(config, k, None), int)]
    return min(tables + named[:1])


def _check_positions(model: Any, tokenizer: Any, prompts: Sequence[str], max_new_tokens: int) -> None:
    limit = learned_positions(model)
    if limit is None:
        return
    name = type(model.model).__name__
    for i, prompt in enumerate(prompts):
        n = len(prompt_ids(tokenizer, prompt))
        if n > limit:
            raise UserError(f"prompt {i + 1} has {n} tokens: longer than the {limit} positions {name} has "
                            "(a learned position table); shorten it")
        if n + max_new_tokens > limit:
            raise UserError(f"prompt {i + 1} ({n} tokens) + max_new_tokens (--max-new-tokens) {max_new_tokens} "
                            f"run past the {limit} positions {name} has (a learned position table); "
                            f"ask for at most {limit - n} new tokens")


def _cut_at_stop(row: list[int], stop: set[int]) -> list[int]:
    for j, tok in enumerate(row):
        if tok in stop:
            return row[: j + 1]
    return row


@torch.no_grad()
def generate_ids(model: Any, tokenizer: Any, prompts: Sequence[str], params: SamplingParams | None = None, *,
                 batch_size: int = 64, seed: int = 0, cache: str = "dynamic", **options: Any) -> list[list[int]]:
    """The new token ids for each prompt, up to and including the stop token that ended it.

    ``params`` / ``options``: :class:`SamplingParams`; unless they name ``eos_token_id``, generation
    stops at :func:`stop_token_ids`, and padding is the tokenizer's. Sampling (``temperature > 0``)
    draws from a generator seeded with ``seed``. ``cache``: "dynamic", "static" (our decoder's preallocated
    cache, the same tokens) or "auto" (static where the model supports it).
    """
    if cache == "auto":
        from trainlab.model.static_cache import supports_static

        cache = "static" if supports_static(model) else "dynamic"
    sp = SamplingParams.of(params, options)
    if not sp.eos_ids:
        sp = SamplingParams.of(sp, {"eos_token_id": stop_token_ids(model, tokenizer)})
    if sp.pad_token_id is None:
        sp = SamplingParams.of(sp, {"pad_token_id": pad_id(tokenizer)})
    _check_positions(model, tokenizer, prompts, sp.max_new_tokens)
    device = next(model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(seed) if sp.temperature > 0 else None
    stop = set(sp.eos_ids)
    out: list[list[int]] = []
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(prompts), batch_size):
            ids, mask = encode_prompts(tokenizer, list(prompts[start:start + batch_size]))
            gen = model.generate(ids.to(device), mask.to(device), sp, generator=generator, cache=cache)
            out += [_cut_at_stop(row, stop) for row in gen[:, ids.shape[1]:].tolist()]
    finally:
        model.train(was_training)
    return out


def complete_prompts(model: Any, tokenizer: Any, prompts: Sequence[str], params: SamplingParams | None = None, *,
                     batch_size: int = 64, seed: int = 0, cache: str = "dynamic", **options: Any) -> list[str]:
    """The decoded continuation of each prompt (stop token and special tokens left out)."""
    rows = generate_ids(model, tokenizer, prompts, params, batch_size=batch_size, seed=seed, cache=cache, **options)
    stop = set(SamplingParams.of(params, options).eos_ids) or set(stop_token_ids(model, tokenizer))
    texts = []
    for row in rows:
        if row and row[-1] in stop:
            row = row[:-1]
        texts.append(tokenizer.decode(row, skip_special_tokens=True))
    return texts
