"""Lion (Chen et al. 2023) against steps computed by hand."""

from __future__ import annotations

import pytest
import torch
from _tiny import tiny_decoder, train_config

from trainlab.memory.estimate import optimizer_state_bytes as estimated_state_bytes
from trainlab.memory.measure import optimizer_state_bytes
from trainlab.optim import Lion, build_optimizer


def test_two_steps_match_the_hand_computation() -> None:
    p = torch.nn.Parameter(torch.tensor([1.0, -2.0, 0.5, 0.0], dtype=torch.float64))
    opt = Lion([p], lr=0.1, betas=(0.9, 0.99), weight_decay=0.5)
    # Step 1: m = 0, c = 0.1·g = [.02, -.04, 0, 1e-4], sign = [1, -1, 0, 1];
    # θ ← 0.95·θ − 0.1·sign; m ← 0.01·g.
    p.grad = torch.tensor([0.2, -0.4, 0.0, 1e-3], dtype=torch.float64)
    opt.step()
    torch.testing.assert_close(p.detach(), torch.tensor([0.85, -1.8, 0.475, -0.1], dtype=torch.float64))
    torch.testing.assert_close(opt.state[p]["exp_avg"], torch.tensor([0.002, -0.004, 0.0, 1e-5], dtype=torch.float64))
    # Step 2: c = 0.9·m + 0.1·g = [-.0482, -.0136, .03, 7e-6]: the last coordinate moves *against* its
    # gradient's sign because the interpolation with the momentum is positive.
    p.grad = torch.tensor([-0.5, -0.1, 0.3, -2e-5], dtype=torch.float64)
    opt.step()
    torch.testing.assert_close(p.detach(), torch.tensor([0.9075, -1.61, 0.35125, -0.195], dtype=torch.float64))
    torch.testing.assert_close(opt.state[p]["exp_avg"],
                               torch.tensor([-0.00302, -0.00496, 0.003, 9.7e-6], dtype=torch.float64))


def test_every_coordinate_moves_by_exactly_lr_without_decay() -> None:
    torch.manual_seed(0)
    p = torch.nn.Parameter(torch.randn(1000))
    before = p.detach().clone()
    opt = Lion([p], lr=1e-3)
    p.grad = torch.randn(1000)
    opt.step()
    torch.testing.assert_close((p.detach() - before).abs(), torch.full((1000,), 1e-3))


def test_registered_with_decay_groups_and_one_state_tensor(tmp_path) -> None:
    model = tiny_decoder()
    opt = build_optimizer(model, train_config(optim="lion", lr=1e-3, weight_decay=0.3, beta2=0.99))
    assert isinstance(opt, Lion)
    decays = {g["weight_decay"] for g in opt.param_groups}
    assert decays == {0.3, 0.0}  # norms get no decay
    assert opt.param_groups[0]["betas"] == (0.9, 0.99)
    ids = torch.randint(0, 48, (2, 8))
    model(ids).sum().backward()
    opt.step()
    assert all(set(s) == {"exp_avg"} for s in opt.state.values())
    n = sum(p.numel() for p in model.parameters())
    assert optimizer_state_bytes(opt) == estimated_state_bytes(n, "lion") == 4 * n  # half of AdamW's


def test_bad_hyperparameters() -> None:
    p = torch.nn.Parameter(torch.zeros(2))
    with pytest.raises(ValueError):
        Lion([p], lr=0.0)
    with pytest.raises(ValueError):
        Lion([p], betas=(1.0, 0.99))
