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
* **Optionally in chunks** (``chunk_size > 0``, or ``-1``: automatic) and **in fp32 at least**,
  even under autocast: `trainlab.train.token_logprobs` (the one implementation the causal-LM loss
  and the RL losses use too).
* **One forward for both sides**: the preference collate stacks chosen and rejected rows in one
  batch (`trainlab.align.datasets.collate_preference`), so weights are read once per step, and
  with `trainlab.align.prefix_sharing` each pair's prompt is computed once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from trainlab.train.objectives import supervised_targets
from trainlab.train.token_logprobs import (  # noqa: F401  (re-exported: trainlab.align's API)
    AUTO_CHUNK_BYTES,
    chunked_token_logprobs,
    resolve_chunk,
    token_logprobs,
    weighted_logprob_sum,
)


@dataclass
class SequenceLogps:
    """Per-sequence completion statistics for a batch of ``R`` rows (fp32).

    ``sum``: Σ log-probs of the completion tokens (with grad); ``mean`` = ``sum / n_tokens``;
    ``n_tokens``: completion tokens per row; ``token_logps`` ``[N]`` and ``rows`` ``[N]`` (row of
    each completion token) for token-level terms; ``mask`` ``[R, T-1]``: the scored positions
    (row-major order of ``token_logps``); ``token_logit_mean`` ``[N]``: each scored position's mean
    logit over the vocabulary and ``logit_sum`` its per-row sum (detached; TRL's ``logits/*``);
    ``fused_sum``: with ``fused_weights``, ``Σ w_t log p_t`` over those tokens, the only path of their
    gradient (their ``token_logps`` are then detached values; `score_hidden`).
    """

    sum: Tensor
    mean: Tensor
    n_tokens: Tensor
    token_logps: Tensor
    rows: Tensor
    logit_sum: Tensor
    mask: Tensor
    token_logit_mean: Tensor
    fused_sum: Tensor | None = None


def model_inputs(batch: dict[str, Tensor], prefix: str = "") -> dict[str, Tensor]:
    """The model's keyword arguments present in ``batch`` (``attention_mask``, ``position_ids``)."""
    return {k: batch[prefix + k] for k in ("attention_mask", "position_ids") if prefix + k in batch}


def sequence_logps(model: Any, input_ids: Tensor, labels: Tensor, attention_mask: Tensor | None = None, *,
                   chunk_size: int = 0, fused_weights: Tensor | None = None) -> SequenceLogps:
    """Completion log-probs of every row of ``input_ids`` (labels -100 outside the completion).

    ``labels`` are aligned with ``input_ids`` (the shift by one happens here): the hidden state at
    position ``t`` scores the label at ``t + 1``. ``fused_weights [R, T-1]``: see `score_hidden`.
    """
    kwargs = {} if attention_mask is None else {"attention_mask": attention_mask}
    hidden = model.hidden_states(input_ids, **kwargs)  # [R, T, D]
    mask, targets = supervised_targets(labels)  # [R, T-1], [N]
    h = hidden[:, :-1][mask]  # [N, D]: only completion positions meet the head
    return score_hidden(h, targets, mask.nonzero()[:, 0], mask, model.output_embedding(), chunk_size,
                        fused_weights=fused_weights)


def score_hidden(h: Tensor, targets: Tensor, rows: Tensor, mask: Tensor, weight: Tensor,
                 chunk_size: int = 0, *, fused_weights: Tensor | None = None) -> SequenceLogps:
    """`SequenceLogps` from the hidden states ``h [N, D]`` that predict ``targets [N]`` (token ``i``
    of row ``rows[i]``; ``mask [R, T-1]`` the scored positions, row-major as ``h``).

    ``fused_weights [R, T-1]``: tokens with a weight ``w > 0`` enter the loss only through a
    cross-entropy of known weights (the prompt of ORPO's NLL): they are scored by
    `trainlab.train.token_logprobs.weighted_logprob_sum` (gradient formed in the forward, no
    recomputation), their sum ``Σ w log p`` is ``fused_sum`` and their ``token_logps`` are detached.
    """
    fw = fused_weights[mask] if fused_weights is not None else None
    fused = fw > 0 if fw is not None else None
    if fused is None or not bool(fused.any()):
        tok, fused_sum = token_logprobs(h, weight, targets, chunk_size), None
    else:
        rest = ~fused
        fused_sum, fused_lp, _ = weighted_logprob_sum(h[fused], weight, targets[fused], fw[fused], chunk_size)
        own = token_logprobs(h[rest], weight, targets[rest], chunk_size)
        tok = own.new_zeros(h.shape[0]).index_put((rest.nonzero()[:, 0],), own).index_put(
            (fused.nonzero()[:, 0],), fused_lp.to(own.dtype))
    r = mask.shape[0]
    total = torch.zeros(r, dtype=tok.dtype, device=tok.device).index_add(0, rows, tok)
    n_tokens = mask.sum(dim=1).to(tok.dtype)
    with torch.no_grad(), torch.autocast(device_type=h.device.type, enabled=False):
        # mean_v (h Wᵀ)_v = h · mean_v(W): TRL's mean-logit metric without forming the logits
        per_token_mean_logit = h.detach().float() @ weight.detach().float().mean(dim=0)
        logit_sum = torch.zeros(r, dtype=torch.float32, device=tok.device).index_add(0, rows, per_token_mean_logit)
    return SequenceLogps(sum=total, mean=total / n_tokens.clamp(min=1.0), n_tokens=n_tokens, token_logps=tok,
                         rows=rows, logit_sum=logit_sum, mask=mask, token_logit_mean=per_token_mean_logit,
                         fused_sum=fused_sum)
