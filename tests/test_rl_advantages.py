"""Advantage estimators against TRL 1.16 and verl, and hand-worked values.

TRL computes GRPO's and RLOO's advantages inside ``_generate_and_score_completions`` (not callable on
tensors alone), so the tests transcribe those lines faithfully:
trl/trainer/grpo_trainer.py (``multi_objective_aggregation == "sum_then_normalize"`` branch:
``mean_grouped_rewards``, ``nanstd``, ``advantages / (std_rewards + 1e-4)``) and
trl/trainer/rloo_trainer.py (``rewards - beta * kl`` with the first-order sequence KL, then
``baselines = (grouped_sum - grouped_rewards) / (scorable_counts - 1)``); ``nanstd`` is TRL's own function.
"""

from __future__ import annotations

import pytest
import torch

from trainlab.rl.advantages import compute_advantages, group_stats, masked_whiten

trl_utils = pytest.importorskip("trl.trainer.utils")
G = 4


def _trl_grpo(rewards: torch.Tensor, scale_rewards: str) -> torch.Tensor:
    # grpo_trainer.py, GRPOTrainer._generate_and_score_completions, sum_then_normalize branch
    mean_grouped = torch.nanmean(rewards.view(-1, G), dim=1).repeat_interleave(G, dim=0)
    if scale_rewards in ("group", "none"):
        std = trl_utils.nanstd(rewards.view(-1, G), dim=1).repeat_interleave(G, dim=0)
    else:
        std = trl_utils.nanstd(rewards).expand_as(rewards)
    adv = rewards - mean_grouped
    if scale_rewards != "none":
        adv = adv / (std + 1e-4)
    return adv


def _trl_rloo(rewards: torch.Tensor, old: torch.Tensor, ref: torch.Tensor, mask: torch.Tensor, beta: float
              ) -> torch.Tensor:
    # rloo_trainer.py, RLOOTrainer._generate_and_score_completions
    if beta != 0.0:
        per_token_kl = old - ref
        kl = (per_token_kl * mask).sum(-1)
        rewards = rewards - beta * kl
    grouped = rewards.view(-1, G)
    counts = (~torch.isnan(grouped)).sum(dim=1, keepdim=True)
    baselines = ((torch.nansum(grouped, dim=1, keepdim=True) - grouped) / (counts - 1)).view(-1)
    return torch.nan_to_num(rewards - baselines, nan=0.0)


def _rewards() -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    r = torch.randint(0, 2, (12,), generator=g).float() + 0.1 * torch.randn(12, generator=g)
    r[4:8] = 1.0  # one group with equal rewards
    return r


@pytest.mark.parametrize("scale", ["group", "batch", "none"])
def test_grpo_advantages_equal_trl(scale: str) -> None:
    r = _rewards()
    torch.testing.assert_close(compute_advantages("grpo", r, G, scale_rewards=scale), _trl_grpo(r, scale))


def test_dr_grpo_is_centred_only() -> None:
    r = _rewards()
    torch.testing.assert_close(compute_advantages("dr_grpo", r, G), _trl_grpo(r, "none"))


@pytest.mark.parametrize("beta", [0.0, 0.05])
def test_rloo_advantages_equal_trl(beta: float) -> None:
    r = _rewards()
    g = torch.Generator().manual_seed(1)
    old, ref = -torch.rand(12, 5, generator=g), -torch.rand(12, 5, generator=g)
    mask = (torch.arange(5)[None] < torch.randint(1, 6, (12, 1), generator=g)).float()
    seq_kl = ((old - ref) * mask).sum(1)
    ours = compute_advantages("rloo", r, G, seq_kl=seq_kl, beta=beta)
    torch.testing.assert_close(ours, _trl_rloo(r, old, ref, mask, beta))
    # and the closed form G/(G-1)·(r - mean) without KL
    if beta == 0.0:
        grouped = r.view(-1, G)
        torch.testing.assert_close(ours, (G / (G - 1) * (grouped - grouped.mean(1, keepdim=True))).view(-1))


def test_equal_reward_groups_are_counted_and_give_zero() -> None:
    r = _rewards()
    stats = group_stats(r, G)
    assert stats["groups"] == 3 and stats["groups_equal"] == 1
    assert stats["frac_reward_zero_std"] == pytest.approx(1 / 3)
    for est in ("grpo", "dr_grpo", "rloo"):
        assert torch.all(compute_advantages(est, r, G)[4:8] == 0)


def test_reinforce_pp_hand_worked() -> None:
    """Two completions (lengths 2 and 3), rewards 1 and 0, γ = 1, no KL: returns are the reward on
    every token, [1, 1] and [0, 0, 0]; whitened over the 5 tokens: mean 0.4, unbiased var 0.3."""
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    adv = compute_advantages("reinforce_pp", torch.tensor([1.0, 0.0]), 1, mask=mask)
    sd = (0.3 + 1e-8) ** 0.5
    want = torch.tensor([[0.6 / sd, 0.6 / sd, 0.0], [-0.4 / sd, -0.4 / sd, -0.4 / sd]])
    torch.testing.assert_close(adv, want)
    # KL in the reward: the return at t sums the penalties from t on
    kl = torch.tensor([[0.1, 0.2, 0.0], [0.3, 0.0, 0.1]])
    adv_kl = compute_advantages("reinforce_pp", torch.tensor([1.0, 0.0]), 1, mask=mask, token_kl=kl, beta=1.0)
    returns = torch.tensor([[1 - 0.3, 1 - 0.2, 0.0], [-0.4, -0.1, -0.1]])
    torch.testing.assert_close(adv_kl, masked_whiten(returns, mask) * mask)


def test_reinforce_pp_equals_verl() -> None:
    core = pytest.importorskip("verl.trainer.ppo.core_algos",
                               reason="verl not installed: `pip install verl` 0.9.1 pulls ray, wandb, hydra and "
                                      "would replace transformers 5.24 by 5.10; core_algos imports that stack")
    g = torch.Generator().manual_seed(2)
    mask = (torch.arange(6)[None] < torch.randint(1, 7, (5, 1), generator=g)).float()
    token_rewards = torch.zeros(5, 6)
    last = mask.sum(1).long() - 1
    r = torch.randn(5, generator=g)
    token_rewards[torch.arange(5), last] = r
    theirs, _ = core.compute_reinforce_plus_plus_outcome_advantage(token_rewards, mask, gamma=1.0)
    torch.testing.assert_close(compute_advantages("reinforce_pp", r, 1, mask=mask), theirs)
