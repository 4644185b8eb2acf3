"""The clipped policy-gradient loss of PPO / GRPO / DAPO / Dr. GRPO, and how it is aggregated.

Per completion token ``t`` of row ``i``, with ratio ``ρ = π_θ(y_t) / π_old(y_t)`` and advantage ``A``
(one per row for GRPO/RLOO, one per token for PPO/REINFORCE++), Schulman et al. 2017 (PPO) with
DAPO's decoupled clip (Yu et al. 2025, "clip-higher": ``ε_high > ε_low``)::

    ℓ_it = -min(ρ·A, clip(ρ, 1 - ε_low, 1 + ε_high)·A)  [+ β·KL_it]

and the optional KL term (`trainlab.rl.kl`: k1/k2/k3 to a frozen reference), as TRL's
GRPOTrainer ``_compute_loss`` adds it (``per_token_loss + beta * per_token_kl``).

Aggregation, and how it fits the `Objective` contract. The loop sums ``loss_sum`` and ``count``
over all micro-batches of an optimizer step, then backpropagates ``loss_sum / Σ count``; so each
mode's *normaliser* must be a count that adds up over micro-batches:

=========================  ================================  =========================  ===========
mode                       loss over one step                ``loss_sum`` (micro)       ``count``
=========================  ================================  =========================  ===========
``token_mean`` (DAPO)      Σ_it ℓ_it / Σ_i |o_i|             Σ_it ℓ_it                  Σ_i |o_i|
``seq_mean_token_mean``    1/N Σ_i (Σ_t ℓ_it / |o_i|)        Σ_i Σ_t ℓ_it / |o_i|       rows N
(GRPO)
``seq_mean_token_sum_norm``  1/N Σ_i Σ_t ℓ_it / L_max        Σ_it ℓ_it / L_max          rows N
(Dr. GRPO)
=========================  ================================  =========================  ===========

(|o_i| = the row's completion tokens, L_max = ``max_new_tokens``, a constant.) Each is exactly the
loss over the whole step, however it is split into micro-batches: token-mean divides by the tokens
of the *whole* step as DAPO and TRL's ``dapo`` (``num_items_in_batch``) do. TRL's ``bnpo`` divides
by the tokens of each micro-batch and averages micro-batches, which equals ``token_mean`` when a
step is one micro-batch (the parity test's setting) and differs otherwise; TRL's ``grpo`` and
``dr_grpo`` average per-micro-batch means over accumulation steps, equal to ours when the
micro-batches hold the same number of rows (they do: the batcher splits a rollout evenly).

Rows with no completion token (``|o_i| = 0``, e.g. masked truncated completions) contribute 0 and
still count as rows in the sequence modes, as in TRL (``.clamp(min=1)`` then ``.mean()`` over rows).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from trainlab.rl.kl import kl_estimate

LossAgg = Literal["token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm"]


def per_token_loss(logps: Tensor, old_logps: Tensor | None, advantages: Tensor, eps_low: float,
                   eps_high: float, *, ref_logps: Tensor | None = None, beta: float = 0.0,
                   kl_estimator: str = "k3") -> tuple[Tensor, dict[str, Tensor]]:
    """``ℓ [N, C]`` (unmasked) and the per-token pieces (``ratio``, ``clipped_low``/``high``, ``kl``)."""
    if old_logps is None:
        old_logps = logps.detach()
    adv = advantages.unsqueeze(1) if advantages.dim() == 1 else advantages
    ratio = torch.exp(logps - old_logps)
    clipped = torch.clamp(ratio, 1.0 - eps_low, 1.0 + eps_high)
    loss = -torch.min(ratio * adv, clipped * adv)
    parts: dict[str, Tensor] = {"ratio": ratio.detach(),
                                # TRL's clip metrics: the token was clipped and the clip bound the loss
                                "clipped_low": ((ratio < 1.0 - eps_low) & (adv < 0)).detach(),
                                "clipped_high": ((ratio > 1.0 + eps_high) & (adv > 0)).detach()}
    if beta != 0.0:
        if ref_logps is None:
            raise ValueError("beta > 0 needs ref_logps (the reference model's per-token log-probs)")
        kl = kl_estimate(logps, ref_logps, kl_estimator)
        loss = loss + beta * kl
        parts["kl"] = kl.detach()
    elif ref_logps is not None:
        parts["kl"] = kl_estimate(logps.detach(), ref_logps, kl_estimator)
    return loss, parts


def aggregate(loss: Tensor, mask: Tensor, agg: str, *, max_new_tokens: int | None = None) -> tuple[Tensor, float]:
    """``(loss_sum, count)`` of per-token ``loss [N, C]`` under ``mask`` for aggregation mode ``agg``."""
    m = mask.to(loss.dtype)
    per_row = (loss * m).sum(dim=1)
    if agg == "token_mean":
        return per_row.sum(), float(m.sum().item())
    if agg == "seq_mean_token_mean":
        return (per_row / m.sum(dim=1).clamp(min=1.0)).sum(), float(loss.shape[0])
    if agg == "seq_mean_token_sum_norm":
        if not max_new_tokens:
            raise ValueError("seq_mean_token_sum_norm needs max_new_tokens (the constant L_max)")
        return per_row.sum() / float(max_new_tokens), float(loss.shape[0])
    raise ValueError(f"unknown loss aggregation {agg!r}; expected token_mean, seq_mean_token_mean or "
                     "seq_mean_token_sum_norm")


def agg_count(mask: Tensor, agg: str) -> float:
    """The ``count`` `aggregate` reports, without the loss (the Objective's ``count``)."""
    if agg == "token_mean":
        return float(mask.sum().item())
    return float(mask.shape[0])


def policy_loss(logps: Tensor, old_logps: Tensor | None, advantages: Tensor, mask: Tensor, eps_low: float = 0.2,
                eps_high: float | None = None, agg: str = "seq_mean_token_mean", *, ref_logps: Tensor | None = None,
                beta: float = 0.0, kl_estimator: str = "k3", max_new_tokens: int | None = None
                ) -> tuple[Tensor, float, dict[str, float]]:
    """``(loss_sum, count, metrics)`` of the clipped surrogate (module docstring), the Objective contract.

    ``logps`` ``[N, C]`` (with grad), ``old_logps`` ``[N, C]`` or None (= ``logps.detach()``: one
    update per rollout), ``advantages`` ``[N]`` or ``[N, C]``, ``mask`` ``[N, C]`` the completion
    tokens. ``metrics`` are token means: ``clip_ratio/low_mean``, ``clip_ratio/high_mean``,
    ``clip_ratio/region_mean``, ``ratio_mean``, ``kl`` (when ``ref_logps`` are given).
    """
    hi = eps_low if eps_high is None else eps_high
    loss, parts = per_token_loss(logps, old_logps, advantages, eps_low, hi, ref_logps=ref_logps, beta=beta,
                                 kl_estimator=kl_estimator)
    loss_sum, count = aggregate(loss, mask, agg, max_new_tokens=max_new_tokens)
    m = mask.bool()
    n_tok = max(int(m.sum().item()), 1)
    low = float(parts["clipped_low"][m].sum().item()) / n_tok
    high = float(parts["clipped_high"][m].sum().item()) / n_tok
    metrics = {"clip_ratio/low_mean": low, "clip_ratio/high_mean": high, "clip_ratio/region_mean": low + high,
               "ratio_mean": float(parts["ratio"][m].sum().item()) / n_tok}
    if "kl" in parts:
        metrics["kl"] = float(parts["kl"][m].sum().item()) / n_tok
    return loss_sum, count, metrics
