"""Batched autoregressive generation for any :class:`~trainlab.model.protocol.CausalLM`.

Prompts are **left-padded** (``attention_mask`` 1 for real tokens, 0 for padding) so that every
row's next token goes in the same column. Generation is a prefill over the whole prompt followed by
one decode step per new token against a KV cache; position ids come from the mask
(``cumsum - 1``), so a padded row computes what it would alone.

A model takes the cached path when it offers the incremental-decoding hooks of
:class:`IncrementalDecoder` (``init_cache`` and ``decode_step``); otherwise (or with
``use_cache=False``) every step re-runs the full sequence through ``model(input_ids, mask)``,
which is slow but the reference the cached path is tested against.

Decoding rules (Holtzman et al., 2020, "The Curious Case of Neural Text Degeneration", for
nucleus sampling):

* ``temperature == 0``: greedy ``argmax`` (top-k/top-p are then irrelevant);
* else sample from ``softmax(logits / temperature)`` restricted to the ``top_k`` most likely
  tokens (0 = all) and to the smallest set whose probability mass reaches ``top_p``.
* A row that emits an ``eos_token_id`` is finished: later columns hold ``pad_token_id`` (default:
  the first eos id, else 0). Generation stops early once every row is finished.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor

from trainlab.errors import UserError

TokenIds = int | Sequence[int] | None


@runtime_checkable
class IncrementalDecoder(Protocol):
    """The hooks a model provides to be decoded with a KV cache."""

    def init_cache(self, batch_size: int, max_len: int) -> Any: ...

    def decode_step(
        self, input_ids: Tensor, attention_mask: Tensor, position_ids: Tensor, cache: Any
    ) -> tuple[Tensor, Any]: ...


def sample_next_token(
    logits: Tensor,
    *,
    temperature: float = 0.0,
    top_k: int = 0,
    top_p: float = 1.0,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Pick one token per row from ``logits [B, V]``; returns ``LongTensor[B]``."""
    if temperature == 0.0:
        return logits.argmax(dim=-1)
    logits = logits.float() / temperature
    if 0 < top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = torch.softmax(sorted_logits, dim=-1)
        # Drop a token when the mass strictly before it already reaches top_p; the first token
        # always survives, so the nucleus is never empty.
        drop = (torch.cumsum(probs, dim=-1) - probs) >= top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.empty_like(logits).scatter_(-1, order, sorted_logits)
    probs = torch.softmax(logits, dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def _as_ids(ids: TokenIds) -> list[int]:
    if ids is None:
        return []
    if isinstance(ids, int):
        return [ids]
    return [int(i) for i in ids]


def _check_args(max_new_tokens: int, temperature: float, top_k: int, top_p: float) -> None:
    if max_new_tokens < 0:
        raise UserError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    if temperature < 0:
        raise UserError(f"temperature must be >= 0, got {temperature}")
    if top_k < 0:
        raise UserError(f"top_k must be >= 0 (0 = off), got {top_k}")
    if not 0.0 < top_p <= 1.0:
        raise UserError(f"top_p must be in (0, 1], got {top_p}")


@torch.no_grad()
def generate(
    model: Any,
    input_ids: Tensor,
    attention_mask: Tensor | None = None,
    *,
    max_new_tokens: int,
    temperature: float = 0.0,
    top_k: int = 0,
    top_p: float = 1.0,
    eos_token_id: TokenIds = None,
    pad_token_id: int | None = None,
    generator: torch.Generator | None = None,
    use_cache: bool = True,
) -> Tensor:
    """Continue left-padded prompts ``input_ids [B, T]``; returns ``[B, T + n]``, ``n <= max_new_tokens``.

    ``n < max_new_tokens`` only when every row has finished at an eos. ``generator`` (on the
    logits' device) makes sampling reproducible. Right-padded prompts are rejected: a new token
    would follow padding instead of the prompt.
    """
    _check_args(max_new_tokens, temperature, top_k, top_p)
    if input_ids.dim() != 2:
        raise ValueError(f"input_ids must be [B, T], got {tuple(input_ids.shape)}")
    b, t = input_ids.shape
    device = input_ids.device
    mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask.to(input_ids.dtype)
    if tuple(mask.shape) != (b, t):
        raise ValueError(f"attention_mask must be {(b, t)}, got {tuple(mask.shape)}")
    if t == 0 or not bool(mask[:, -1].all()):
        raise UserError("generate needs non-empty, left-padded prompts (attention_mask[:, -1] must be 1)")
    if max_new_tokens == 0:
        return input_ids

    eos = _as_ids(eos_token_id)
    pad = pad_token_id if pad_token_id is not None else (eos[0] if eos else 0)
    eos_t = torch.tensor(eos, device=device, dtype=input_ids.dtype)
    finished = torch.zeros(b, dtype=torch.bool, device=device)
    cached = use_cache and isinstance(model, IncrementalDecoder)

    # position of the next token of each row = number of real tokens so far
    next_pos = mask.sum(dim=-1, keepdim=True)
    if cached:
        cache = model.init_cache(b, t + max_new_tokens)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        logits, cache = model.decode_step(input_ids, mask, positions, cache)
    else:
        logits = model(input_ids, mask)[:, -1]

    tokens = [input_ids]
    for step in range(max_new_tokens):
        nxt = sample_next_token(logits, temperature=temperature, top_k=top_k, top_p=top_p, generator=generator)
        nxt = torch.where(finished, torch.full_like(nxt, pad), nxt)
        if eos:
            finished |= torch.isin(nxt, eos_t)
        tokens.append(nxt[:, None])
        if step == max_new_tokens - 1 or (eos and bool(finished.all())):
            break
        mask = torch.cat([mask, mask.new_ones(b, 1)], dim=1)
        if cached:
            logits, cache = model.decode_step(nxt[:, None], mask, next_pos, cache)
            next_pos = next_pos + 1
        else:
            logits = model(torch.cat(tokens, dim=1), mask)[:, -1]
    return torch.cat(tokens, dim=1)
