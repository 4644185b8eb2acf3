"""Advantage estimators for outcome rewards: one scalar reward per completion, groups of G per prompt.

Rows are grouped in contiguous blocks of ``G`` (`trainlab.rl.rollout`). With ``r_i`` the reward of
completion ``i`` of a group, ``μ`` / ``σ`` the group's mean and (Bessel-corrected) standard deviation:

* ``grpo`` (Shao et al. 2024, DeepSeekMath §4.1.2; TRL GRPOTrainer): ``A_i = (r_i - μ) / (σ + 1e-4)``
  for ``scale_rewards="group"``; ``"batch"`` divides by the std of the whole batch, ``"none"`` not at
  all (TRL's ``scale_rewards`` and its 1e-4);
* ``dr_grpo`` (Liu et al. 2025, "Understanding R1-Zero-like training"): ``A_i = r_i - μ`` (the std
  division biases toward too easy / too hard questions); TRL: ``scale_rewards="none"``;
* ``rloo`` (Ahmadian et al. 2024; Kool et al. 2019): leave-one-out baseline
  ``A_i = r_i - 1/(G-1) Σ_{j≠i} r_j = G/(G-1) (r_i - μ)``; with ``β > 0`` the sequence KL
  ``Σ_t (log π_old - log π_ref)`` (k1) is subtracted from the reward first, as TRL's RLOOTrainer (its loss
  then clips one *sequence*-level ratio ``exp(Σ_t log π - log π_old)``; ours clips per token, as verl's RLOO
  with its token-level policy loss. At ratio 1 (one update per rollout) both give Σ_i A_i Σ_t ∇log π_it, divided
  by the sequences (TRL) or by the step's tokens (our token_mean): one direction, another scale);
* ``reinforce_pp`` (Hu 2025, REINFORCE++; verl ``compute_reinforce_plus_plus_outcome_advantage``):
  per-token returns ``G_t = Σ_{s≥t} γ^{s-t} ρ_s`` of the token rewards ``ρ`` (the outcome reward on
  the last completion token, minus ``β·KL_t`` on every token when the KL is in the reward), whitened
  over every completion token of the batch: ``A_t = (G_t - mean) / (std + 1e-8)`` (verl's
  ``masked_whiten``: mean and unbiased variance over masked tokens). No per-prompt baseline: the
  batch statistics are the baseline, which is what makes it "REINFORCE++" and not RLOO/GRPO.

A group whose rewards are all equal gives every member advantage 0 under grpo/dr_grpo/rloo: no
learning signal. `group_stats` counts them (TRL's ``frac_reward_zero_std``), since a large share
means the prompts are too easy or too hard for the policy.

Each estimator is registered in `ADVANTAGES` (name -> function), as verl registers its
``AdvantageEstimator``s; R2's GAE (`trainlab.rl.gae`) registers beside them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

#: name -> fn(rewards [N], group_size, **options) -> advantages [N] or [N, C]
ADVANTAGES: dict[str, Callable[..., Tensor]] = {}


def register_advantage(name: str) -> Callable[[Callable[..., Tensor]], Callable[..., Tensor]]:
    def deco(fn: Callable[..., Tensor]) -> Callable[..., Tensor]:
        ADVANTAGES[name] = fn
        return fn
    return deco


def _groups(rewards: Tensor, group_size: int) -> Tensor:
    if rewards.dim() != 1 or rewards.numel() % group_size:
        raise ValueError(f"rewards must be [N] with N a multiple of group_size={group_size}, "
                         f"got {tuple(rewards.shape)}")
    return rewards.view(-1, group_size)


@register_advantage("grpo")
def grpo_advantages(rewards: Tensor, group_size: int, *, scale_rewards: str = "group", **_: Any) -> Tensor:
    """``(r - group mean) / (std + 1e-4)``, std of the group (``group``), of the batch (``batch``) or 1 (``none``)."""
    g = _groups(rewards, group_size)
    centred = (g - g.mean(dim=1, keepdim=True)).reshape(-1)
    if scale_rewards == "none":
        return centred
    if scale_rewards == "group":
        std = g.std(dim=1, keepdim=True).expand_as(g).reshape(-1) if group_size > 1 else torch.zeros_like(rewards)
    elif scale_rewards == "batch":
        std = rewards.std().expand_as(rewards) if rewards.numel() > 1 else torch.zeros_like(rewards)
    else:
        raise ValueError(f"scale_rewards must be group, batch or none, got {scale_rewards!r}")
    return centred / (std + 1e-4)


@register_advantage("dr_grpo")
def dr_grpo_advantages(rewards: Tensor, group_size: int, **_: Any) -> Tensor:
    """``r - group mean`` (no division by the std)."""
    return grpo_advantages(rewards, group_size, scale_rewards="none")


@register_advantage("rloo")
def rloo_advantages(rewards: Tensor, group_size: int, *, seq_kl: Tensor | None = None, beta: float = 0.0,
                    **_: Any) -> Tensor:
    """``r_i - mean of the other G-1 rewards`` (``seq_kl`` [N]: subtracted × β from the reward first)."""
    if group_size < 2:
        raise ValueError("RLOO needs group_size >= 2 (a leave-one-out baseline)")
    if seq_kl is not None and beta:
        rewards = rewards - beta * seq_kl
    g = _groups(rewards, group_size)
    baseline = (g.sum(dim=1, keepdim=True) - g) / (group_size - 1)
    return (g - baseline).reshape(-1)


def masked_whiten(values: Tensor, mask: Tensor, *, shift_mean: bool = True, eps: float = 1e-8) -> Tensor:
    """``(x - mean) / sqrt(var + eps)`` over the masked entries (unbiased variance, verl's ``masked_whiten``)."""
    m = mask.to(values.dtype)
    n = m.sum()
    mean = (values * m).sum() / n
    var = ((values - mean) ** 2 * m).sum() / n
    if n > 1:
        var = var * n / (n - 1)
    out = (values - mean) * torch.rsqrt(var + eps)
    return out if shift_mean else out + mean


@register_advantage("reinforce_pp")
def reinforce_pp_advantages(rewards: Tensor, group_size: int, *, mask: Tensor, token_kl: Tensor | None = None,
                            beta: float = 0.0, gamma: float = 1.0, **_: Any) -> Tensor:
    """Per-token whitened returns ``[N, C]`` (module docstring); ``token_kl`` [N, C] with ``beta``: KL in the reward."""
    del group_size
    m = mask.to(torch.float32)
    token_rewards = torch.zeros_like(m)
    last = (m.sum(dim=1).long() - 1).clamp(min=0)
    has = m.sum(dim=1) > 0
    rows = torch.arange(m.shape[0], device=m.device)
    token_rewards[rows[has], last[has]] = rewards.to(m.dtype)[has]
    if token_kl is not None and beta:
        token_rewards = token_rewards - beta * token_kl * m
    returns = torch.zeros_like(m)
    running = torch.zeros(m.shape[0], dtype=m.dtype, device=m.device)
    for t in reversed(range(m.shape[1])):
        running = token_rewards[:, t] + gamma * running
        returns[:, t] = running
        running = running * m[:, t]  # nothing flows back from padding
    return masked_whiten(returns, m) * m


def compute_advantages(estimator: str, rewards: Tensor, group_size: int, **options: Any) -> Tensor:
    """``ADVANTAGES[estimator](rewards, group_size, **options)``."""
    try:
        fn = ADVANTAGES[estimator]
    except KeyError:
        raise ValueError(f"unknown advantage estimator {estimator!r}; "
                         f"expected one of {', '.join(ADVANTAGES)}") from None
    return fn(rewards, group_size, **options)


def group_stats(rewards: Tensor, group_size: int) -> dict[str, float]:
    """Reward mean/std and the groups whose rewards are all equal (no signal for group baselines)."""
    g = _groups(rewards.float(), group_size)
    equal = (g.max(dim=1).values - g.min(dim=1).values) == 0
    return {"reward": float(rewards.float().mean()), "reward_std": float(rewards.float().std()) if rewards.numel() > 1
            else 0.0, "groups": int(g.shape[0]), "groups_equal": int(equal.sum()),
            "frac_reward_zero_std": float(equal.float().mean())}
