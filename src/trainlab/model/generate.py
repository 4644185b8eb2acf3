"""Batched autoregressive generation for any :class:`~trainlab.model.protocol.CausalLM`.

Prompts are **left-padded** (``attention_mask`` 1 for real tokens, 0 for padding) so that every
row's next token goes in the same column. Generation is a prefill over the whole prompt followed by
one decode step per new token against a KV cache; position ids come from the mask
(``cumsum - 1``), so a padded row computes what it would alone.

A model takes the cached path when it offers the incremental-decoding hooks of
:class:`IncrementalDecoder` (``init_cache`` and ``decode_step``); otherwise (or with
``use_cache=False``) every step re-runs the full sequence through ``model(input_ids, mask)``,
which is slow but the reference the cached path is tested against. ``cache="static"`` decodes
trainlab's own decoder on a cache preallocated for ``prompt + max_new_tokens`` tokens with a
specialised step (:mod:`trainlab.model.static_cache`); ``"dynamic"`` (the default) is the model's
own cache (:class:`~trainlab.model.cache.KVCache`, or transformers' for a transformers model).

Decoding rules (Holtzman et al., 2020, "The Curious Case of Neural Text Degeneration", for
nucleus sampling):

* ``temperature == 0``: greedy ``argmax`` (top-k/top-p are then irrelevant);
* else sample from ``softmax(logits / temperature)`` restricted to the ``top_k`` most likely
  tokens (0 = all) and to the smallest set whose probability mass reaches ``top_p``.
* A row that emits an ``eos_token_id`` is finished: later columns hold ``pad_token_id`` (default:
  the first eos id, else 0). Generation stops early once every row is finished.

The decoding settings are defined once, as :class:`SamplingParams`; :func:`generate` and every
model's ``generate`` method (:class:`GenerateMixin`) take either a ``SamplingParams`` or its fields
as keywords. Text in, text out (tokenizing prompts as the model's tokenizer does, stopping at the
model's eos ids) is :mod:`trainlab.model.text`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields, replace
from typing import Any, Literal, Protocol, runtime_checkable

import torch
from torch import Tensor

from trainlab.errors import UserError

TokenIds = int | Sequence[int] | None
CacheKind = Literal["dynamic", "static"]
CACHE_KINDS: tuple[str, ...] = ("dynamic", "static")
#: ``on_step(tokens [B])``, called with each step's new tokens (finished rows hold padding); it may
#: return a bool ``[B]`` mask (or one bool for every row) of rows to finish now, as an eos would.
StepHook = Callable[[Tensor], "Tensor | bool | None"]


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


def _as_ids(ids: TokenIds) -> tuple[int, ...]:
    if ids is None:
        return ()
    if isinstance(ids, int):
        return (int(ids),)
    return tuple(int(i) for i in ids)


@dataclass(frozen=True)
class SamplingParams:
    """How to continue a prompt: the one definition of generation's arguments.

    ``max_new_tokens``: at most this many new tokens per row. ``temperature`` 0 is greedy; else
    sampling restricted to ``top_k`` (0 = off) and ``top_p`` (1 = off). A row is finished at any of
    ``eos_token_id`` (an id, ids, or None = never); later columns hold ``pad_token_id`` (default: the
    first eos id, else 0). Invalid values raise :class:`~trainlab.errors.UserError`.
    """

    max_new_tokens: int
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    eos_token_id: TokenIds = None
    pad_token_id: int | None = None

    def __post_init__(self) -> None:
        if self.max_new_tokens < 0:
            raise UserError(f"max_new_tokens must be >= 0, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise UserError(f"temperature must be >= 0, got {self.temperature}")
        if self.top_k < 0:
            raise UserError(f"top_k must be >= 0 (0 = off), got {self.top_k}")
        if not 0.0 < self.top_p <= 1.0:
            raise UserError(f"top_p must be in (0, 1], got {self.top_p}")
        object.__setattr__(self, "eos_token_id", _as_ids(self.eos_token_id))

    @property
    def eos_ids(self) -> tuple[int, ...]:
        return self.eos_token_id  # type: ignore[return-value]  # normalised in __post_init__

    @property
    def pad_id(self) -> int:
        if self.pad_token_id is not None:
            return int(self.pad_token_id)
        return self.eos_ids[0] if self.eos_ids else 0

    @classmethod
    def of(cls, params: SamplingParams | None, options: dict[str, Any]) -> SamplingParams:
        """``params``, or ``SamplingParams(**options)``, or ``params`` with ``options`` replacing fields."""
        unknown = sorted(set(options) - {f.name for f in fields(cls)})
        if unknown:
            raise TypeError(f"generate() got unexpected keyword argument(s) {', '.join(unknown)}")
        if params is None:
            if "max_new_tokens" not in options:
                raise TypeError("generate() needs max_new_tokens (or params=SamplingParams(...))")
            return cls(**options)
        return replace(params, **options) if options else params


@torch.no_grad()
def generate(
    model: Any,
    input_ids: Tensor,
    attention_mask: Tensor | None = None,
    params: SamplingParams | None = None,
    *,
    generator: torch.Generator | None = None,
    use_cache: bool = True,
    on_step: StepHook | None = None,
    cache: CacheKind = "dynamic",
    **options: Any,
) -> Tensor:
    """Continue left-padded prompts ``input_ids [B, T]``; returns ``[B, T + n]``, ``n <= max_new_tokens``.

    The decoding settings are ``params`` (:class:`SamplingParams`) or its fields as keywords
    (``max_new_tokens=8, temperature=0.7``; keywords given with ``params`` replace its fields).
    ``n < max_new_tokens`` only when every row has finished at an eos. ``generator`` (on the
    logits' device) makes sampling reproducible. Right-padded prompts are rejected: a new token
    would follow padding instead of the prompt. ``on_step`` (:data:`StepHook`) sees every step's
    tokens as they are chosen (streaming) and may finish rows (stop strings); ``n < max_new_tokens``
    then also when every row was finished by it. ``cache`` is ``"dynamic"`` or ``"static"`` (see the
    module docstring; ignored with ``use_cache=False``).
    """
    sp = SamplingParams.of(params, options)
    if cache not in CACHE_KINDS:
        raise UserError(f"cache must be one of {', '.join(CACHE_KINDS)}, got {cache!r}")
    if input_ids.dim() != 2:
        raise ValueError(f"input_ids must be [B, T], got {tuple(input_ids.shape)}")
    b, t = input_ids.shape
    device = input_ids.device
    mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask.to(input_ids.dtype)
    if tuple(mask.shape) != (b, t):
        raise ValueError(f"attention_mask must be {(b, t)}, got {tuple(mask.shape)}")
    if t == 0 or not bool(mask[:, -1].all()):
        raise UserError("generate needs non-empty, left-padded prompts (attention_mask[:, -1] must be 1)")
    if sp.max_new_tokens == 0:
        return input_ids

    eos, pad = list(sp.eos_ids), sp.pad_id
    eos_t = torch.tensor(eos, device=device, dtype=input_ids.dtype)
    finished = torch.zeros(b, dtype=torch.bool, device=device)
    static = use_cache and cache == "static"
    cached = use_cache and not static and isinstance(model, IncrementalDecoder)

    # position of the next token of each row = number of real tokens so far
    next_pos = mask.sum(dim=-1, keepdim=True)
    if static:
        from trainlab.model.static_cache import StaticDecoder

        state = StaticDecoder(model, b, t + sp.max_new_tokens)
        logits = state.prefill(input_ids, mask)
        next_pos = next_pos[:, 0]
    elif cached:
        kv = model.init_cache(b, t + sp.max_new_tokens)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        logits, kv = model.decode_step(input_ids, mask, positions, kv)
    else:
        logits = model(input_ids, mask)[:, -1]

    tokens = [input_ids]
    for step in range(sp.max_new_tokens):
        nxt = sample_next_token(logits, temperature=sp.temperature, top_k=sp.top_k, top_p=sp.top_p,
                                generator=generator)
        nxt = torch.where(finished, torch.full_like(nxt, pad), nxt)
        if eos:
            finished |= torch.isin(nxt, eos_t)
        tokens.append(nxt[:, None])
        if on_step is not None:
            stop = on_step(nxt)
            if stop is not None:
                finished |= stop.to(device=device, dtype=torch.bool) if isinstance(stop, Tensor) else bool(stop)
        if step == sp.max_new_tokens - 1 or bool(finished.all()):
            break
        if static:
            logits = state.step(nxt, next_pos)
            next_pos = next_pos + 1
            continue
        mask = torch.cat([mask, mask.new_ones(b, 1)], dim=1)
        if cached:
            logits, kv = model.decode_step(nxt[:, None], mask, next_pos, kv)
            next_pos = next_pos + 1
        else:
            logits = model(torch.cat(tokens, dim=1), mask)[:, -1]
    return torch.cat(tokens, dim=1)


class GenerateMixin:
    """``model.generate(...)`` for a :class:`~trainlab.model.protocol.CausalLM`: :func:`generate` on ``self``.

    The one place the method is defined; :class:`~trainlab.model.decoder.Decoder` and
    :class:`~trainlab.model.hf.HFCausalLM` inherit it.
    """

    def generate(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        params: SamplingParams | None = None,
        *,
        generator: torch.Generator | None = None,
        use_cache: bool = True,
        on_step: StepHook | None = None,
        cache: CacheKind = "dynamic",
        **options: Any,
    ) -> Tensor:
        """Continue left-padded prompts; see :func:`trainlab.model.generate.generate`."""
        return generate(self, input_ids, attention_mask, params, generator=generator, use_cache=use_cache,
                        on_step=on_step, cache=cache, **options)
