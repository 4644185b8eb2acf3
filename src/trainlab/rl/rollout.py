"""Rollouts: a group of sampled completions per prompt, with the log-probs the RL losses need.

For prompts ``x_1..x_P`` and a group size ``G``, the policy π_θ samples ``G`` completions of each
prompt in one batch (``N = P·G`` rows, prompt ``p``'s rows are ``p·G .. p·G+G-1``, the layout TRL's
GRPOTrainer and verl use, so a group is a contiguous block). Sampling is `model.generate` with
the KV cache (`trainlab.model.generate.SamplingParams`: temperature, top-p, top-k, max new tokens,
stop at any EOS id); prompts are left-padded, so every row's next token goes in the same column.

What comes back (`Rollout`), all ``[N, ...]``:

* ``prompt_ids`` / ``prompt_mask`` ``[N, P_len]`` (left-padded), ``completion_ids`` ``[N, C]``
  (right-padded with the pad id after EOS), ``completion_mask`` ``[N, C]``: 1 for every generated
  token up to *and including* the EOS that ended the row (the EOS is an action the policy took,
  as in TRL), 0 after it; ``eos`` ``[N]``: whether the row ended at an EOS (else it was truncated at
  ``max_new_tokens``);
* ``old_logps`` ``[N, C]`` (optional): ``log π_old(y_t | x, y_<t)`` per completion token, recomputed
  with a forward pass of the sampling policy in the training dtype (the sampler's own logits come
  from the incremental KV-cache path, whose floating-point rounding differs slightly from the
  training forward; PPO's ratio must compare like with like). With one update per rollout the
  policy that sampled is the one being updated, so ``π_old = π_θ.detach()`` and the pass can be
  skipped (TRL does the same): ``old_logps=None`` then;
* ``ref_logps`` ``[N, C]`` (optional): the same for a frozen reference model (KL terms).

Log-probs use `completion_logps`: only completion positions meet the LM head (prompt positions
would cost a ``V``-wide matmul each and contribute nothing), in fp32, position ids from the mask
(``cumsum - 1``) exactly as generation computed them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any

import torch
from torch import Tensor, nn

from trainlab.model.generate import SamplingParams
from trainlab.model.static_cache import supports_static
from trainlab.train.token_logprobs import token_logprobs


@dataclass
class Rollout:
    """One rollout batch (see the module docstring); groups are contiguous blocks of ``group_size`` rows."""

    prompt_ids: Tensor
    prompt_mask: Tensor
    completion_ids: Tensor
    completion_mask: Tensor
    eos: Tensor
    group_size: int
    old_logps: Tensor | None = None
    ref_logps: Tensor | None = None

    @property
    def sequences(self) -> Tensor:
        """``[N, P_len + C]`` prompt then completion."""
        return torch.cat([self.prompt_ids, self.completion_ids], dim=1)

    @property
    def attention_mask(self) -> Tensor:
        return torch.cat([self.prompt_mask, self.completion_mask.to(self.prompt_mask.dtype)], dim=1)

    @property
    def n(self) -> int:
        return int(self.completion_ids.shape[0])

    @property
    def lengths(self) -> Tensor:
        """Completion tokens per row (EOS included), ``[N]`` long."""
        return self.completion_mask.sum(dim=1).long()

    def select(self, rows: Tensor | slice) -> dict[str, Tensor]:
        """The tensors of ``rows`` as a batch dict (keys: the field names, ``None`` fields left out)."""
        out: dict[str, Tensor] = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, Tensor):
                out[f.name] = v[rows]
        return out


def left_pad(rows: Sequence[Sequence[int]], pad_id: int, device: torch.device | str = "cpu") -> tuple[Tensor, Tensor]:
    """``(ids, mask)`` ``[B, T]`` with each row right-aligned (left padding)."""
    length = max(len(r) for r in rows)
    ids = torch.full((len(rows), length), int(pad_id), dtype=torch.long)
    mask = torch.zeros((len(rows), length), dtype=torch.long)
    for i, row in enumerate(rows):
        if not row:
            raise ValueError(f"prompt {i} is empty")
        ids[i, length - len(row):] = torch.tensor(list(row), dtype=torch.long)
        mask[i, length - len(row):] = 1
    return ids.to(device), mask.to(device)


def completion_logps(model: Any, prompt_ids: Tensor, prompt_mask: Tensor, completion_ids: Tensor,
                     completion_mask: Tensor, *, chunk_size: int = 0, share_prefix: bool = False) -> Tensor:
    """Per-token ``log π(y_t | x, y_<t)`` ``[N, C]`` fp32 (0 where ``completion_mask`` is 0); differentiable.

    The hidden state at the last prompt column scores the first completion token, and so on.
    """
    input_ids = torch.cat([prompt_ids, completion_ids], dim=1)
    attention_mask = torch.cat([prompt_mask, completion_mask.to(prompt_mask.dtype)], dim=1)
    return sequence_token_logps(model, input_ids, attention_mask, completion_mask, chunk_size=chunk_size,
                                share_prefix=share_prefix)


def sequence_token_logps(model: Any, input_ids: Tensor, attention_mask: Tensor, score_mask: Tensor, *,
                         chunk_size: int = 0, share_prefix: bool = False) -> Tensor:
    """``[N, C]`` log-probs of the last ``C = score_mask.shape[1]`` tokens of ``input_ids`` where
    ``score_mask`` is 1 (0 elsewhere); the attention follows ``attention_mask`` (a scored-out token
    may still be attended to, e.g. a truncated completion masked out of the loss). ``share_prefix``:
    the first ``T - C`` columns are prompts, consecutive rows with the same prompt a group: each group
    runs as one packed row where the model allows it (`trainlab.align.prefix_sharing.group_token_logps`)."""
    if share_prefix:
        from trainlab.align.prefix_sharing import group_token_logps

        packed = group_token_logps(model, input_ids, attention_mask, score_mask, chunk_size=chunk_size)
        if packed is not None:
            return packed
    hidden = model.hidden_states(input_ids, attention_mask=attention_mask)  # [N, T, D]
    c = score_mask.shape[1]
    t = input_ids.shape[1]
    completion_ids = input_ids[:, t - c:]
    scored = score_mask.bool()
    h = hidden[:, t - c - 1:t - 1][scored]  # [M, D]: only scored positions meet the head
    tok = token_logprobs(h, model.output_embedding(), completion_ids[scored], chunk_size)
    out = torch.zeros(completion_ids.shape, dtype=tok.dtype, device=tok.device)
    return out.masked_scatter(scored, tok)


def completion_mask_from(completion_ids: Tensor, eos_ids: Sequence[int]) -> tuple[Tensor, Tensor]:
    """``(mask [N, C] long, eos [N] bool)``: 1 up to and including each row's first EOS."""
    if not eos_ids:
        ones = torch.ones_like(completion_ids)
        return ones, torch.zeros(completion_ids.shape[0], dtype=torch.bool, device=completion_ids.device)
    is_eos = torch.isin(completion_ids, torch.tensor(list(eos_ids), device=completion_ids.device))
    # tokens strictly after the first eos: the running count of eos *before* each column is > 0
    before = is_eos.long().cumsum(dim=1) - is_eos.long()
    mask = (before == 0).long()
    return mask, is_eos.any(dim=1)


@torch.no_grad()
def rollout(policy: nn.Module, prompts_ids: Sequence[Sequence[int]], params: SamplingParams, group_size: int, *,
            generator: torch.Generator | None = None, old_logps: bool = True, reference: nn.Module | None = None,
            autocast: Any = None, chunk_size: int = 0, batch_size: int = 0, share_prefix: bool = False) -> Rollout:
    """Sample ``group_size`` completions of every prompt with ``policy`` (see the module docstring).

    ``params`` must name the EOS ids (``eos_token_id``) and the pad id; ``generator`` seeds sampling;
    ``old_logps``: recompute the sampling policy's per-token log-probs (False: leave ``None``);
    ``reference``: also the reference's; ``autocast``: a context manager factory for the training
    dtype's forward (None: fp32); ``batch_size``: rows per generate / forward call (0: all at once);
    ``share_prefix``: score each group's completions as one packed row (`sequence_token_logps`).
    """
    if group_size < 1:
        raise ValueError(f"group_size must be >= 1, got {group_size}")
    if not params.eos_ids:
        raise ValueError("rollout needs params.eos_token_id (the completions end at EOS)")
    device = next(policy.parameters()).device
    rows = [list(p) for p in prompts_ids for _ in range(group_size)]
    prompt_ids, prompt_mask = left_pad(rows, params.pad_id, device)
    n = prompt_ids.shape[0]
    step = batch_size if batch_size > 0 else n
    was_training = policy.training
    policy.eval()
    # trainlab's own decoder samples on the preallocated cache (`trainlab.model.static_cache`), others on theirs
    cache = "static" if supports_static(policy) else "dynamic"
    try:
        pieces = []
        for s in range(0, n, step):
            out = policy.generate(prompt_ids[s:s + step], prompt_mask[s:s + step], params, generator=generator,
                                  cache=cache)
            pieces.append(out[:, prompt_ids.shape[1]:])
        width = max(int(p.shape[1]) for p in pieces)
        completion_ids = torch.full((n, max(width, 1)), params.pad_id, dtype=torch.long, device=device)
        r = 0
        for p in pieces:
            completion_ids[r:r + p.shape[0], :p.shape[1]] = p
            r += p.shape[0]
        completion_mask, eos = completion_mask_from(completion_ids, params.eos_ids)
        if width == 0:
            completion_mask.zero_()
        result = Rollout(prompt_ids, prompt_mask, completion_ids, completion_mask, eos, group_size)

        def logps(model: nn.Module) -> Tensor:
            ctx = autocast() if autocast is not None else contextlib.nullcontext()
            parts = []
            with ctx:
                for s in range(0, n, step):
                    parts.append(completion_logps(model, prompt_ids[s:s + step], prompt_mask[s:s + step],
                                                  completion_ids[s:s + step], completion_mask[s:s + step],
                                                  chunk_size=chunk_size, share_prefix=share_prefix).float())
            return torch.cat(parts)

        if old_logps:
            result.old_logps = logps(policy)
        if reference is not None:
            result.ref_logps = logps(reference)
    finally:
        policy.train(was_training)
    return result

