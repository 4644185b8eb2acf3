r"""Continuous batching: decoding as a stepper that requests join and leave between steps.

Static or dynamic batching decodes a fixed set of prompts to the end: a request that arrives while a
batch decodes waits for its longest row. Continuous batching (Yu et al., 2022, "Orca: A Distributed
Serving System for Transformer-Based Generative Models", iteration-level scheduling; vLLM's and TGI's
schedulers) re-forms the batch at every decode step: a new request is prefilled and its rows join the
running batch at the next step; a request whose rows are done leaves at once and frees its slots.

How the rows share one KV cache here (trainlab's dynamic cache, or transformers' ``DynamicCache``, both
``[B, Hkv, T, D]`` per layer): the running batch is a **left-padded** batch of width ``W`` (cache
columns), ``mask [B, W]`` marking each row's real tokens, ``next_pos [B]`` each row's own next position
(the number of real tokens it has: positions never depend on the padding, so a row computes what it
computes alone). A job that joins is prefilled on its own (its ``n`` rows, width ``L``); then

* ``L ≤ W``: its cache columns are right-aligned into ``W`` columns (``W - L`` masked columns on the left);
* ``L > W``: the running rows get ``L - W`` masked columns on the left instead;

and the rows are concatenated along the batch. Every row stays of the form ``0…0 1…1``, the mask the
model already handles for left-padded batches. A job leaves when all of its rows have finished (a row
of a job with ``n > 1`` that is done earlier keeps decoding padding, as :func:`~trainlab.model.generate.generate`
does, so a seeded job draws the same random numbers as alone); leading columns that no remaining row
uses are cut off. Masked columns contribute exactly zero attention weight, so a job's greedy tokens are
those it gets alone, up to float rounding of sums over more columns.

Sampling is per job: greedy rows take the ``argmax``; a sampled job draws from its own
``torch.Generator`` (seeded from ``seed``, else from a fresh random seed), so a seeded request gives
the same tokens whatever it shares the batch with. Stop handling per row (eos/end-of-turn ids, ``stop``
strings, ``max_tokens``, a cancelled client) and streaming are :meth:`Stepper._accept`.

A cache whose layers are not plain ``[B, H, T, D]`` tensors (transformers' sliding-window or quantized
layers) cannot be re-aligned: :attr:`Stepper.joinable` is then False and the batcher admits new jobs only
when the running ones are done (dynamic batching).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from trainlab.model.cache import KVCache
from trainlab.model.generate import IncrementalDecoder, sample_next_token

if TYPE_CHECKING:
    from trainlab.serve.engine import Engine, Job


class CacheNotJoinable(Exception):
    """The model's cache layout cannot be re-aligned (sliding-window or quantized layers)."""


# ---- the cache as per-layer [B, H, T, D] tensors ------------------------------------------------------


def cache_layers(cache: Any) -> list[tuple[Tensor, Tensor]]:
    """The written keys and values of every layer, ``[B, Hkv, T, D]`` each (views, no copy)."""
    if isinstance(cache, KVCache):
        out = []
        for k, v, n in zip(cache.keys, cache.values, cache.lengths, strict=True):
            if k is None or v is None:
                raise CacheNotJoinable("an empty layer in the cache")
            out.append((k[:, :, :n], v[:, :, :n]))
        return out
    layers = getattr(cache, "layers", None)
    if layers is None or any(type(layer).__name__ != "DynamicLayer" for layer in layers):
        raise CacheNotJoinable(f"cache {type(cache).__name__} has layers that cannot be re-aligned")
    return [(layer.keys, layer.values) for layer in layers]


def with_layers(cache: Any, layers: list[tuple[Tensor, Tensor]], headroom: int) -> Any:
    """A cache of ``cache``'s kind holding ``layers`` (a new :class:`KVCache` with room for ``headroom``
    more tokens, or transformers' cache with its layers' tensors replaced)."""
    if isinstance(cache, KVCache):
        new = KVCache(len(layers), max_len=layers[0][0].shape[2] + headroom)
        for i, (k, v) in enumerate(layers):
            new.update(i, k, v)
        return new
    for layer, (k, v) in zip(cache.layers, layers, strict=True):
        layer.keys, layer.values = k, v
    return cache


def _pad_left(t: Tensor, n: int) -> Tensor:
    """``n`` zero columns before dimension 2 (keys/values) or dimension 1 (masks)."""
    if n == 0:
        return t
    dim = 2 if t.dim() == 4 else 1
    shape = list(t.shape)
    shape[dim] = n
    return torch.cat([t.new_zeros(shape), t], dim=dim)


# ---- the stepper -------------------------------------------------------------------------------------


@dataclass
class _Live:
    """A job in the running batch: its rows are ``start .. start + job.n - 1``."""

    job: Job
    generator: torch.Generator | None
    start: int = 0

    @property
    def done(self) -> bool:
        return all(c.finish_reason is not None for c in self.job.choices)


class Stepper:
    """The running batch of an :class:`~trainlab.serve.engine.Engine`: :meth:`admit` jobs, :meth:`step` them.

    Not thread-safe: one thread (the batcher's) drives it, under the engine's lock.
    """

    def __init__(self, engine: Engine) -> None:
        model = engine.model
        if not isinstance(model, IncrementalDecoder):
            raise TypeError(f"{type(model).__name__} has no KV-cache decoding hooks (init_cache, decode_step)")
        self.engine, self.model = engine, model
        self.device = engine.device
        self.live: list[_Live] = []
        self.cache: Any = None
        self.mask: Tensor | None = None  # [B, W] the cached columns
        self.next_pos: Tensor | None = None  # [B, 1]
        self.pending: Tensor | None = None  # [B] the last tokens chosen, not yet in the cache
        self.joinable = True
        self.steps = 0  # decode steps run

    @property
    def rows(self) -> int:
        return sum(entry.job.n for entry in self.live)

    # ---- joining -------------------------------------------------------------------------------

    def admit(self, jobs: Sequence[Job]) -> list[Job]:
        """Prefill ``jobs`` (one left-padded batch), choose their first tokens and add the unfinished ones to
        the running batch; returns the jobs already done (a first token that stops them, ``max_tokens <= 1``)."""
        from trainlab.serve.engine import Choice

        if self.live and not self.joinable:
            raise CacheNotJoinable("the running batch's cache cannot take new rows: wait until it is done")
        done: list[Job] = []
        entries: list[_Live] = []
        for job in jobs:
            job.choices = [Choice(index=i) for i in range(job.n)]
            if job.max_tokens <= 0:
                for c in job.choices:
                    c.finish_reason = "length"
                done.append(job)
                continue
            gen = None
            if job.temperature > 0:
                gen = torch.Generator(device=self.device)
                gen.manual_seed(job.seed if job.seed is not None else random.getrandbits(63))
            entries.append(_Live(job, gen))
        if not entries:
            return done
        rows = [e.job.ids for e in entries for _ in range(e.job.n)]
        width = max(len(ids) for ids in rows)
        pad = self.engine.pad_id
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for r, prompt in enumerate(rows):
            ids[r, width - len(prompt):] = torch.tensor(prompt, dtype=torch.long)
            mask[r, width - len(prompt):] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        headroom = max(e.job.max_tokens for e in entries)
        cache = self.model.init_cache(len(rows), width + headroom)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        logits, cache = self.model.decode_step(ids, mask, positions, cache)
        if not self.live:
            try:
                cache_layers(cache)
                self.joinable = True
            except CacheNotJoinable:
                self.joinable = False
        start = 0
        for e in entries:
            e.start = start
            start += e.job.n
        tokens = self._sample(logits, entries)
        self._accept(tokens, entries)
        # a cache that cannot be re-aligned keeps every row to the end (as generate() does)
        keep = [e for e in entries if not e.done] if self.joinable else entries
        done += [e.job for e in entries if e not in keep]
        if not keep:
            return done
        next_pos = mask.sum(dim=-1, keepdim=True)
        if len(keep) < len(entries):
            index = torch.tensor([e.start + i for e in keep for i in range(e.job.n)], device=self.device)
            cache, mask, next_pos, tokens = self._select(cache, mask, next_pos, tokens, index, headroom)
            start = 0
            for e in keep:
                e.start = start
                start += e.job.n
        self._merge(keep, cache, mask, next_pos, tokens, headroom)
        return done

    def _merge(self, entries: list[_Live], cache: Any, mask: Tensor, next_pos: Tensor, tokens: Tensor,
               headroom: int) -> None:
        if not self.live:
            self.live, self.cache, self.mask, self.next_pos, self.pending = entries, cache, mask, next_pos, tokens
            return
        assert self.mask is not None and self.next_pos is not None and self.pending is not None
        try:
            old, new = cache_layers(self.cache), cache_layers(cache)
        except CacheNotJoinable:
            self.joinable = False
            raise
        w_old, w_new = self.mask.shape[1], mask.shape[1]
        width = max(w_old, w_new)
        layers = [(torch.cat([_pad_left(ko, width - w_old), _pad_left(kn, width - w_new)]),
                   torch.cat([_pad_left(vo, width - w_old), _pad_left(vn, width - w_new)]))
                  for (ko, vo), (kn, vn) in zip(old, new, strict=True)]
        offset = self.rows
        for e in entries:
            e.start += offset
        self.cache = with_layers(self.cache, layers, headroom)
        self.mask = torch.cat([_pad_left(self.mask, width - w_old), _pad_left(mask, width - w_new)])
        self.next_pos = torch.cat([self.next_pos, next_pos])
        self.pending = torch.cat([self.pending, tokens])
        self.live += entries

    def _select(self, cache: Any, mask: Tensor, next_pos: Tensor, tokens: Tensor, index: Tensor,
                headroom: int) -> tuple[Any, Tensor, Tensor, Tensor]:
        """Keep the rows ``index``; drop the leading columns none of them uses."""
        mask = mask[index]
        lead = int(mask.shape[1] - mask.sum(dim=-1).max())
        layers = [(k[index][:, :, lead:], v[index][:, :, lead:]) for k, v in cache_layers(cache)]
        return with_layers(cache, layers, headroom), mask[:, lead:], next_pos[index], tokens[index]

    # ---- one decode step ---------------------------------------------------------------------------

    def step(self) -> list[Job]:
        """One decode step of every running row; returns the jobs that finished (they have left the batch)."""
        if not self.live:
            return []
        assert self.mask is not None and self.next_pos is not None and self.pending is not None
        mask = torch.cat([self.mask, self.mask.new_ones(self.mask.shape[0], 1)], dim=1)
        logits, self.cache = self.model.decode_step(self.pending[:, None], mask, self.next_pos, self.cache)
        self.mask, self.next_pos = mask, self.next_pos + 1
        self.steps += 1
        tokens = self._sample(logits, self.live)
        self._accept(tokens, self.live)
        self.pending = tokens
        finished = [e for e in self.live if e.done]
        if not finished or (not self.joinable and len(finished) < len(self.live)):
            return []
        keep = [e for e in self.live if not e.done]
        if not keep:
            self.clear()
            return [e.job for e in finished]
        index = torch.tensor([e.start + i for e in keep for i in range(e.job.n)], device=self.device)
        headroom = max(e.job.max_tokens - min(len(c.token_ids) for c in e.job.choices) for e in keep)
        self.cache, self.mask, self.next_pos, self.pending = self._select(
            self.cache, self.mask, self.next_pos, self.pending, index, max(headroom, 1))
        start = 0
        for e in keep:
            e.start = start
            start += e.job.n
        self.live = keep
        return [e.job for e in finished]

    def clear(self) -> None:
        """Forget the running batch (after an error, or when every row is done)."""
        self.live, self.cache, self.mask, self.next_pos, self.pending = [], None, None, None, None

    # ---- choosing and accepting tokens --------------------------------------------------------------

    def _sample(self, logits: Tensor, entries: Sequence[_Live]) -> Tensor:
        """Each job's next tokens: greedy rows by argmax, a sampled job from its own generator; a finished
        row gets padding (it still decodes, as in :func:`~trainlab.model.generate.generate`)."""
        tokens = logits.argmax(dim=-1)
        for e in entries:
            rows = slice(e.start, e.start + e.job.n)
            if e.job.temperature > 0:
                tokens[rows] = sample_next_token(logits[rows], temperature=e.job.temperature, top_p=e.job.top_p,
                                                 generator=e.generator)
            for i, c in enumerate(e.job.choices):
                if c.finish_reason is not None:
                    tokens[e.start + i] = self.engine.pad_id
        return tokens

    def _accept(self, tokens: Tensor, entries: Sequence[_Live]) -> None:
        """Append each unfinished row's token; finish rows at a stop id, a ``stop`` string, ``max_tokens`` or
        a cancelled client; stream the new text."""
        values = tokens.tolist()
        for e in entries:
            job = e.job
            for i, c in enumerate(job.choices):
                if c.finish_reason is not None:
                    continue
                tok = int(values[e.start + i])
                self.engine.accept_token(job, c, tok)

