"""Generalized Advantage Estimation (Schulman et al. 2016, "High-dimensional continuous control using GAE").

A completion is an episode whose actions are its tokens. With per-token rewards ``r_t`` and the value
model's estimates ``V_t`` (of the state *before* token ``t``: the hidden state that predicts it)::

    δ_t = r_t + γ·V_{t+1} − V_t                     (TD error; V after the last token is 0)
    A_t = Σ_{l≥0} (γλ)^l δ_{t+l} = δ_t + γλ·A_{t+1}
    R_t = A_t + V_t                                  (the value target: λ-return)

Masking follows verl's ``compute_gae_advantage_return`` (verl/trainer/ppo/core_algos.py, after TRL's
PPOTrainer): positions with ``mask = 0`` are skipped, not terminal: the value and the running advantage
flow through them unchanged, so padding after EOS (and observation tokens inside a multi-turn
completion) take no part; the episode ends after the last masked-in token. Advantages and returns are
0 where ``mask`` is 0 here (verl leaves the carried values there; nothing reads them).

PPO's token rewards (`token_rewards`, Ziegler et al. 2019; Stiennon et al. 2020; "The N+ implementation
details of RLHF with PPO", Huang et al. 2024): a per-token KL penalty to the reference policy on every
completion token and the sequence's score added at its last token::

    r_t = −β·KL_t + [t = T]·score

``whiten`` is verl's / TRL's ``masked_whiten``: ``(A − mean) / sqrt(var + 1e-8)`` over masked tokens with
the unbiased variance (`trainlab.rl.advantages.masked_whiten`). GAE is registered in
`trainlab.rl.advantages.ADVANTAGES` as ``gae`` beside the outcome estimators.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from trainlab.rl.advantages import masked_whiten, register_advantage

__all__ = ["gae", "gae_advantages", "last_token_positions", "masked_whiten", "token_rewards"]


@torch.no_grad()
def gae(rewards: Tensor, values: Tensor, mask: Tensor, gamma: float = 1.0, lam: float = 0.95
        ) -> tuple[Tensor, Tensor]:
    """``(advantages, returns)`` ``[N, C]`` of token ``rewards`` and ``values`` (module docstring); not whitened."""
    if rewards.shape != values.shape or rewards.shape != mask.shape:
        raise ValueError(f"rewards {tuple(rewards.shape)}, values {tuple(values.shape)} and mask "
                         f"{tuple(mask.shape)} must have the same [N, C] shape")
    r, v = rewards.float(), values.float()
    m = mask.to(torch.float32)
    n, c = r.shape
    advantages = torch.zeros_like(r)
    next_value = torch.zeros(n, dtype=r.dtype, device=r.device)
    running = torch.zeros(n, dtype=r.dtype, device=r.device)
    for t in reversed(range(c)):
        delta = r[:, t] + gamma * next_value - v[:, t]
        here = delta + gamma * lam * running
        mt = m[:, t]
        next_value = v[:, t] * mt + next_value * (1.0 - mt)  # skipped positions pass V through
        running = here * mt + running * (1.0 - mt)
        advantages[:, t] = running
    advantages = advantages * m
    return advantages, (advantages + v) * m


def last_token_positions(mask: Tensor) -> tuple[Tensor, Tensor]:
    """``(index [N], has_tokens [N] bool)``: each row's last masked-in column."""
    m = mask.bool()
    cols = torch.arange(m.shape[1], device=m.device)
    return (m.long() * cols).argmax(dim=1), m.any(dim=1)


def token_rewards(scores: Tensor, mask: Tensor, kl: Tensor | None = None, kl_coef: float = 0.0) -> Tensor:
    """``[N, C]`` PPO rewards: ``−kl_coef·kl`` on every masked-in token, plus ``scores [N]`` at the last one."""
    m = mask.to(torch.float32)
    out = torch.zeros_like(m)
    if kl is not None and kl_coef:
        out = out - kl_coef * kl.float() * m
    idx, has = last_token_positions(mask)
    rows = torch.arange(m.shape[0], device=m.device)[has]
    out[rows, idx[has]] += scores.float().to(out.device)[has]
    return out


@register_advantage("gae")
def gae_advantages(rewards: Tensor, group_size: int, *, values: Tensor, mask: Tensor, gamma: float = 1.0,
                   lam: float = 0.95, token_kl: Tensor | None = None, beta: float = 0.0, whiten: bool = True,
                   **_: Any) -> Tensor:
    """The `ADVANTAGES` entry: sequence ``rewards [N]`` (at the last token, ``−β·token_kl`` on every token)
    -> per-token advantages ``[N, C]``, whitened over the batch's tokens unless ``whiten=False``."""
    del group_size  # GAE's baseline is the value model, not the group
    adv, _ = gae(token_rewards(rewards, mask, token_kl, beta), values, mask, gamma, lam)
    return masked_whiten(adv, mask) * mask.to(adv.dtype) if whiten else adv
