"""Target-token log-probabilities from hidden states, never holding more than a chunk of logits.

For ``N`` scored positions with final hidden states ``h [N, D]``, output embedding ``W [V, D]``
and targets ``y [N]``::

    log p(y_i) = z_{i, y_i} − logsumexp_v z_{i, v},      z = h Wᵀ   ([N, V])

Every objective that scores tokens needs this: the causal-LM loss (pretraining, SFT: the loss is
``−Σ log p``), the preference objectives (per-sequence sums, `trainlab.align.logprobs`) and the
RL policy losses (per-token log-probs, `trainlab.rl`). With a real vocabulary the ``[N, V]`` fp32
logits are the largest tensor of a step (8 sequences of 1,024 tokens with Qwen's 151,936-token
vocabulary: 5 GB, and as much again for their gradient).

* **In chunks** (``chunk_size > 0``): `chunked_token_logprobs` is a custom autograd function
  that walks the ``N`` rows ``chunk_size`` at a time, keeps only the per-row log-sum-exp for the
  backward pass and recomputes each chunk's logits there. The head's peak is then
  ``chunk_size × V`` instead of ``N × V``, for one extra ``N×D×V`` matmul (the approach of
  Liger Kernel's fused linear cross-entropy and of Apple's Cut Cross-Entropy, Wijmans et al., 2024,
  without their fused kernels).
* **fp32 at least**, even under bf16/fp16 autocast: with tens of thousands of logits the
  normalizer needs more than bf16's 8 mantissa bits (fp64 stays fp64: the exactness references
  of the tests run in it).
* `resolve_chunk` picks the chunk: automatic (``-1``) chunks only when the logits would exceed
  `AUTO_CHUNK_BYTES`; where everything fits, one plain pass needs no recomputation.

The gradient of ``log p_y = z_y − logsumexp(z)`` with respect to the logits is ``onehot(y) − p``;
with upstream gradients ``g`` the chunked backward forms ``G = g ⊙ (onehot − p)`` per chunk and
accumulates ``∂h = G W`` and ``∂W = Gᵀ h``. ``hits=True`` also returns, per row, whether the
target is the arg-max logit (token accuracy, from the same logits). Where ``g`` is known before the
backward (a cross-entropy: SFT, the prompt part of ORPO's NLL), `weighted_logprob_sum` forms the
gradients in the forward pass instead, and needs no recomputation.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor


def _compute_dtype(t: Tensor) -> torch.dtype:
    return torch.promote_types(t.dtype, torch.float32)


class _ChunkedTokenLogProb(torch.autograd.Function):
    """``log softmax(h Wᵀ)[targets]`` row by row in chunks (and arg-max hits); see the module docstring."""

    @staticmethod
    def forward(ctx: Any, hidden: Tensor, weight: Tensor, targets: Tensor, chunk_size: int
                ) -> tuple[Tensor, Tensor]:
        n = hidden.shape[0]
        dtype = _compute_dtype(hidden)
        w = weight.to(dtype)
        out = torch.empty(n, dtype=dtype, device=hidden.device)
        lse = torch.empty(n, dtype=dtype, device=hidden.device)
        hit = torch.empty(n, dtype=torch.bool, device=hidden.device)
        for start in range(0, n, chunk_size):
            stop = min(n, start + chunk_size)
            logits = hidden[start:stop].to(dtype) @ w.T  # [c, V]
            lse_c = torch.logsumexp(logits, dim=-1)
            out[start:stop] = logits.gather(1, targets[start:stop, None]).squeeze(1) - lse_c
            lse[start:stop] = lse_c
            hit[start:stop] = logits.argmax(dim=-1) == targets[start:stop]
        ctx.save_for_backward(hidden, weight, targets, lse)
        ctx.chunk_size = chunk_size
        ctx.mark_non_differentiable(hit)
        return out, hit

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor, grad_hit: Tensor | None
                 ) -> tuple[Tensor | None, Tensor | None, None, None]:
        del grad_hit
        hidden, weight, targets, lse = ctx.saved_tensors
        chunk = ctx.chunk_size
        dtype = lse.dtype
        w = weight.to(dtype)
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_h = torch.empty(hidden.shape, dtype=dtype, device=hidden.device) if need_h else None
        grad_w = torch.zeros_like(w) if need_w else None
        grad_out = grad_out.to(dtype)
        for start in range(0, hidden.shape[0], chunk):
            stop = min(hidden.shape[0], start + chunk)
            h = hidden[start:stop].to(dtype)
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


def chunked_token_logprobs(hidden: Tensor, weight: Tensor, targets: Tensor, chunk_size: int, *,
                           hits: bool = False) -> Tensor | tuple[Tensor, Tensor]:
    """``log softmax(hidden @ weight.T)[targets]`` per row (fp32 at least), never holding more than
    ``chunk_size × V`` logits (forward or backward); with ``hits`` also ``argmax == target`` per row."""
    if chunk_size <= 0:
        raise ValueError(f"chunk_size must be > 0, got {chunk_size}")
    with torch.autocast(device_type=hidden.device.type, enabled=False):
        out, hit = _ChunkedTokenLogProb.apply(hidden, weight, targets, chunk_size)
    return (out, hit) if hits else out


class _WeightedLogProbSum(torch.autograd.Function):
    """``S = Σ_i w_i log softmax(h_i Wᵀ)[y_i]`` with weights ``w`` known in the forward pass.

    ``∂S/∂z_i = w_i (onehot(y_i) − p_i)`` needs nothing from later in the step, so each chunk's
    gradients ``∂h = G W`` and ``∂W = Gᵀ h`` are formed right after its logits, and the backward
    only scales them by the upstream gradient: three matmuls per chunk (no recomputation) and no
    logits kept (Liger Kernel's fused linear cross-entropy, in PyTorch). Also returns each row's
    log-prob and arg-max hit (detached) for metrics.
    """

    @staticmethod
    def forward(ctx: Any, hidden: Tensor, weight: Tensor, targets: Tensor, row_weights: Tensor, chunk_size: int,
                need_h: bool, need_w: bool) -> tuple[Tensor, Tensor, Tensor]:
        n = hidden.shape[0]
        dtype = _compute_dtype(hidden)
        w = weight.to(dtype)
        logps = torch.empty(n, dtype=dtype, device=hidden.device)
        hit = torch.empty(n, dtype=torch.bool, device=hidden.device)
        grad_h = torch.empty(hidden.shape, dtype=dtype, device=hidden.device) if need_h else None
        grad_w = torch.zeros_like(w) if need_w else None
        rw = row_weights.to(dtype)
        for start in range(0, n, chunk_size):
            stop = min(n, start + chunk_size)
            h = hidden[start:stop].to(dtype)
            logits = h @ w.T  # [c, V]
            lse = torch.logsumexp(logits, dim=-1)
            y = targets[start:stop, None]
            logps[start:stop] = logits.gather(1, y).squeeze(1) - lse
            hit[start:stop] = logits.argmax(dim=-1) == targets[start:stop]
            if grad_h is None and grad_w is None:
                continue
            g = rw[start:stop, None]
            grad_logits = logits.sub_(lse[:, None]).exp_().mul_(-g)  # w ⊙ (onehot − softmax), in place
            grad_logits.scatter_add_(1, y, g)
            if grad_h is not None:
                grad_h[start:stop] = grad_logits @ w
            if grad_w is not None:
                grad_w.addmm_(grad_logits.T, h)
        ctx.save_for_backward(grad_h.to(hidden.dtype) if grad_h is not None else None,
                              grad_w.to(weight.dtype) if grad_w is not None else None)
        ctx.mark_non_differentiable(logps, hit)
        return (rw * logps).sum(), logps, hit

    @staticmethod
    def backward(ctx: Any, grad_total: Tensor, grad_logps: Tensor | None, grad_hit: Tensor | None
                 ) -> tuple[Tensor | None, ...]:
        del grad_logps, grad_hit
        grad_h, grad_w = ctx.saved_tensors
        return (grad_h * grad_total.to(grad_h.dtype) if grad_h is not None else None,
                grad_w * grad_total.to(grad_w.dtype) if grad_w is not None else None, None, None, None, None, None)


def weighted_logprob_sum(hidden: Tensor, weight: Tensor, targets: Tensor, row_weights: Tensor,
                         chunk_size: int = -1) -> tuple[Tensor, Tensor, Tensor]:
    """``(Σ_i w_i log p(y_i), log p(y_i) [N], argmax == y [N])`` for weights ``w`` fixed before the
    backward (a cross-entropy: SFT's ``w = 1``, per-sequence means), in chunks of ``chunk_size`` rows
    (``-1``: `AUTO_CHUNK_BYTES`; 0: one chunk) with the gradient formed in the forward pass
    (`_WeightedLogProbSum`): the sum is differentiable, the per-row values are detached."""
    n = hidden.shape[0]
    chunk = resolve_chunk(chunk_size, n, weight.shape[0]) or max(n, 1)
    grad = torch.is_grad_enabled()
    with torch.autocast(device_type=hidden.device.type, enabled=False):
        return _WeightedLogProbSum.apply(hidden, weight, targets, row_weights, chunk,
                                         grad and hidden.requires_grad, grad and weight.requires_grad)


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


def token_logprobs(hidden: Tensor, weight: Tensor, targets: Tensor, chunk_size: int = 0, *,
                   hits: bool = False) -> Tensor | tuple[Tensor, Tensor]:
    """Per-row target log-probs ``[N]`` (fp32 at least); with ``hits`` also ``argmax == target`` ``[N]``.
    ``chunk_size``: see `resolve_chunk`; a plain pass runs autograd on the ``[N, V]`` logits, a
    chunked one `chunked_token_logprobs`."""
    chunk = resolve_chunk(chunk_size, hidden.shape[0], weight.shape[0])
    if chunk > 0:
        return chunked_token_logprobs(hidden, weight, targets, chunk, hits=hits)
    dtype = _compute_dtype(hidden)
    with torch.autocast(device_type=hidden.device.type, enabled=False):
        logits = hidden.to(dtype) @ weight.to(dtype).T
        out = logits.gather(1, targets[:, None]).squeeze(1) - torch.logsumexp(logits, dim=-1)
        if not hits:
            return out
        with torch.no_grad():
            return out, logits.argmax(dim=-1) == targets


__all__ = ["AUTO_CHUNK_BYTES", "chunked_token_logprobs", "resolve_chunk", "token_logprobs", "weighted_logprob_sum"]
