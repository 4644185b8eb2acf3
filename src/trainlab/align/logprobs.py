"""Per-sequence log-probabilities of completions, from hidden states and the output embedding.

Every preference method needs, for each sequence ``b`` of a batch, the log-probability of its
completion tokens under the model::

    log π(y_b | x_b) = Σ_{t ∈ completion(b)} log softmax(h_{b,t-1} Wᵀ)[y_{b,t}]

(``h``: final hidden states, ``W``: the output embedding ``[V, D]``), its mean over the
completion's tokens (ORPO, SimPO and IPO are length-normalized) and the token count.

How it is computed, and why:

* **Only completion positions are projected.** ``h`` is gathered at the supervised positions
  first (``h[mask]``, ``[N, D]``) and only those rows meet the ``[D, V]`` head. The prompt and the
  padding never cost a ``V``-wide matmul and softmax; a ``[B, T, V]`` logits tensor never exists.
* **Optionally in chunks** (``chunk_size > 0``): `chunked_token_logprobs` is a custom autograd
  function that walks the ``N`` rows ``chunk_size`` at a time, keeps only the per-row
  log-sum-exp for the backward pass and recomputes each chunk's logits there. Peak memory of
  the head is then ``chunk_size × V`` instead of ``N × V``, for one extra ``N×D×V`` matmul.
* **fp32 log-softmax**, even under bf16/fp16 autocast: with tens of thousands of logits the
  normalizer needs more than bf16's 8 mantissa bits (see `trainlab.train.objectives`).
* **One forward for both sides**: the preference collate stacks chosen and rejected rows in one
  batch (`trainlab.align.datasets.collate_preference`), so weights are read once per step.

The gradient of ``log p_y = z_y − logsumexp(z)`` with respect to the logits is ``onehot(y) − p``;
with upstream gradients ``g`` the chunked backward forms ``G = g ⊙ (onehot − p)`` per chunk and
accumulates ``∂h = G W`` and ``∂W = Gᵀ h``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from trainlab.train.objectives import supervised_targets


class _ChunkedTokenLogProb(torch.autograd.Function):
    """``log softmax(h Wᵀ)[targets]`` row by row in chunks; see the module docstring."""

    @staticmethod
    def forward(ctx: Any, hidden: Tensor, weight: Tensor, targets: Tensor, chunk_size: int) -> Tensor:
        n = hidden.shape[0]
        w = weight.float()
        out = torch.empty(n, dtype=torch.float32, device=hidden.device)
        lse = torch.empty(n, dtype=torch.float32, device=hidden.device)
        for start in range(0, n, chunk_size):
            stop = min(n, start + chunk_size)
            logits = hidden[start:stop].float() @ w.T  # [c, V], fp32
            lse_c = torch.logsumexp(logits, dim=-1)
            out[start:stop] = logits.gather(1, targets[start:stop, None]).squeeze(1) - lse_c
            lse[start:stop] = lse_c
        ctx.save_for_backward(hidden, weight, targets, lse)
        ctx.chunk_size = chunk_size
        return out

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, Tensor | None, None, None]:
        hidden, weight, targets, lse = ctx.saved_tensors
        chunk = ctx.chunk_size
        w = weight.float()
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_h = torch.empty(hidden.shape, dtype=torch.float32, device=hidden.device) if need_h else None
        grad_w = torch.zeros_like(w) if need_w else None
        grad_out = grad_out.float()
        for start in range(0, hidden.shape[0], chunk):
            stop = min(hidden.shape[0], start + chunk)
            h = hidden[start:stop].float()
            logits = h @ w.T
            # G = g ⊙ (onehot(y) − softmax(z)), built in place in the logits buffer
            g = grad_out[start:stop, None]
            grad_logits = logits.sub_(lse[start:stop, None]).exp_().mul_(-g)
            grad_logits.scatter_add_(1, targets[start:stop, None], g)
            if grad_h is not None:
                grad_h[start:stop] = grad_logits @ w
            if grad_w is not None:
                grad_w.addmm_(grad_logits.T, h)
        return (grad_h.to(hidden.dtype) if grad_h is not None else None,
                grad_w.to(weight.dtype) if grad_w is not None else None, None, None)


def chunked_token_logprobs(hidden: Tensor, weight: Tensor, targets: Tensor, chunk_size: int) -> Tensor:
    """``log softmax(hidden @ weight.T)[targets]`` per row (fp32), never holding more than
    ``chunk_size × V`` logits (forward or backward)."""
    if chunk_size <= 0:
        raise ValueError(f"chunk_size must be > 0, got {chunk_size}")
    with torch.autocast(device_type=hidden.device.type, enabled=False):
        return _ChunkedTokenLogProb.apply(hidden, weight, targets, chunk_size)


#: With ``chunk_size=-1`` (auto), the most fp32 logits held at once: 32 MiB, e.g. 166 rows of a
#: 50K vocabulary, or all rows at once for small vocabularies and batches.
AUTO_CHUNK_BYTES = 32 << 20


def resolve_chunk(chunk_size: int, n_rows: int, vocab: int) -> int:
    """Rows per chunk for ``n_rows`` logits rows of width ``vocab``; 0 means one plain pass.

    ``chunk_size`` > 0: that many rows; 0: never chunk; -1: automatic (`AUTO_CHUNK_BYTES`), and
    no chunking when everything fits, since one pass needs no recomputation in backward.
    """
    if chunk_size >= 0:
        return 0 if chunk_size >= n_rows else chunk_size
    rows = max(1, AUTO_CHUNK_BYTES // (4 * max(vocab, 1)))
    return 0 if n_rows <= rows else rows


def token_logprobs(hidden: Tensor, weight: Tensor, targets: Tensor, chunk_size: int = 0) -> Tensor:
    """Per-row target log-probs ``[N]`` (fp32). ``chunk_size``: see `resolve_chunk`; a plain pass
    runs autograd on the ``[N, V]`` logits, a chunked one `chunked_token_logprobs`."""
    chunk = resolve_chunk(chunk_size, hidden.shape[0], weight.shape[0])
    if chunk > 0:
        return chunked_token_logprobs(hidden, weight, targets, chunk)
    with torch.autocast(device_type=hidden.device.type, enabled=False):
        logits = hidden.float() @ weight.float().T
        return logits.gather(1, targets[:, None]).squeeze(1) - torch.logsumexp(logits, dim=-1)


@dataclass
class SequenceLogps:
    """Per-sequence completion statistics for a batch of ``R`` rows (fp32).

    ``sum``: Σ log-probs of the completion tokens (with grad); ``mean`` = ``sum / n_tokens``;
    ``n_tokens``: completion tokens per row; ``token_logps`` ``[N]`` and ``rows`` ``[N]`` (row of
    each completion token) for token-level terms; ``mask`` ``[R, T-1]``: the scored positions
    (row-major order of ``token_logps``); ``token_logit_mean`` ``[N]``: each scored position's mean
    logit over the vocabulary and ``logit_sum`` its per-row sum (detached; TRL's ``logits/*``).
    """

    sum: Tensor
    mean: Tensor
    n_tokens: Tensor
    token_logps: Tensor
    rows: Tensor
    logit_sum: Tensor
    mask: Tensor
    token_logit_mean: Tensor


def model_inputs(batch: dict[str, Tensor], prefix: str = "") -> dict[str, Tensor]:
    """The model's keyword arguments present in ``batch`` (``attention_mask``, ``position_ids``)."""
    return {k: batch[prefix + k] for k in ("attention_mask", "position_ids") if prefix + k in batch}


def sequence_logps(model: Any, input_ids: Tensor, labels: Tensor, attention_mask: Tensor | None = None, *,
                   chunk_size: int = 0) -> SequenceLogps:
    """Completion log-probs of every row of ``input_ids`` (labels -100 outside the completion).

    ``labels`` are aligned with ``input_ids`` (the shift by one happens here): the hidden state at
    position ``t`` scores the label at ``t + 1``.
    """
    kwargs = {} if attention_mask is None else {"attention_mask": attention_mask}
    hidden = model.hidden_states(input_ids, **kwargs)  # [R, T, D]
    mask, targets = supervised_targets(labels)  # [R, T-1], [N]
    h = hidden[:, :-1][mask]  # [N, D]: only completion positions meet the head
    return score_hidden(h, targets, mask.nonzero()[:, 0], mask, model.output_embedding(), chunk_size)


def score_hidden(h: Tensor, targets: Tensor, rows: Tensor, mask: Tensor, weight: Tensor,
                 chunk_size: int = 0) -> SequenceLogps:
    """`SequenceLogps` from the hidden states ``h [N, D]`` that predict ``targets [N]`` (token ``i``
    of row ``rows[i]``; ``mask [R, T-1]`` the scored positions, row-major as ``h``)."""
    tok = token_logprobs(h, weight, targets, chunk_size)
    r = mask.shape[0]
    total = torch.zeros(r, dtype=torch.float32, device=tok.device).index_add(0, rows, tok)
    n_tokens = mask.sum(dim=1).to(torch.float32)
    with torch.no_grad(), torch.autocast(device_type=h.device.type, enabled=False):
        # mean_v (h Wᵀ)_v = h · mean_v(W): TRL's mean-logit metric without forming the logits
        per_token_mean_logit = h.detach().float() @ weight.detach().float().mean(dim=0)
        logit_sum = torch.zeros(r, dtype=torch.float32, device=tok.device).index_add(0, rows, per_token_mean_logit)
    return SequenceLogps(sum=total, mean=total / n_tokens.clamp(min=1.0), n_tokens=n_tokens, token_logps=tok,
                         rows=rows, logit_sum=logit_sum, mask=mask, token_logit_mean=per_token_mean_logit)
