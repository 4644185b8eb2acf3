"""Optimizer construction (decay groups, AdamW/SGD) and the warm-up + cosine schedule."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from _tiny import TinyLM, tiny_decoder, train_config

from trainlab.optim import (
    CosineWarmupScheduler,
    build_optimizer,
    build_scheduler,
    cosine_with_warmup,
    param_groups,
    register_optimizer,
)


def _names(opt: torch.optim.Optimizer, wd: float) -> set[str]:
    return {n for g in opt.param_groups if g["weight_decay"] == wd for n in g["param_names"]}


# ---- schedule -------------------------------------------------------------------------------

def test_schedule_known_values() -> None:
    kw = dict(lr=1.0, min_lr=0.1, warmup_steps=4, max_steps=12)
    assert cosine_with_warmup(1, **kw) == pytest.approx(0.25)  # lr·k/w: no wasted lr=0 step
    assert cosine_with_warmup(2, **kw) == pytest.approx(0.5)
    assert cosine_with_warmup(4, **kw) == pytest.approx(1.0)  # peak at the end of warm-up
    # progress ¼ (k=6): min + ½(lr−min)(1 + cos(π/4)); progress ½ (k=8): min + ½(lr−min)
    assert cosine_with_warmup(6, **kw) == pytest.approx(0.1 + 0.45 * (1 + math.cos(math.pi / 4)))
    assert cosine_with_warmup(8, **kw) == pytest.approx(0.55)
    assert cosine_with_warmup(12, **kw) == pytest.approx(0.1)  # floor exactly at max_steps
    assert cosine_with_warmup(30, **kw) == pytest.approx(0.1)  # and after
    assert cosine_with_warmup(1, lr=2.0, min_lr=0.0, warmup_steps=0, max_steps=10) == pytest.approx(
        0.5 * 2.0 * (1 + math.cos(math.pi * 0.1)))
    with pytest.raises(ValueError):
        cosine_with_warmup(0, **kw)


def test_schedule_is_monotone_in_each_phase() -> None:
    lrs = [cosine_with_warmup(k, lr=3e-3, min_lr=3e-4, warmup_steps=10, max_steps=100) for k in range(1, 101)]
    assert all(a < b for a, b in itertools.pairwise(lrs[:10]))
    assert all(a >= b for a, b in itertools.pairwise(lrs[9:]))
    assert max(lrs) == pytest.approx(3e-3)


def test_scheduler_sets_group_lrs_and_round_trips() -> None:
    model = TinyLM()
    cfg = train_config(lr=0.1, warmup_steps=2, max_steps=10, min_lr_ratio=0.0)
    opt = build_optimizer(model, cfg)
    sched = build_scheduler(opt, cfg)
    seen = []
    for _ in range(5):
        seen.append(sched.get_last_lr()[0])
        sched.step()
    assert seen[0] == pytest.approx(0.05) and seen[1] == pytest.approx(0.1)
    assert seen[4] == pytest.approx(cosine_with_warmup(5, lr=0.1, min_lr=0.0, warmup_steps=2, max_steps=10))
    expected6 = cosine_with_warmup(6, lr=0.1, min_lr=0.0, warmup_steps=2, max_steps=10)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([expected6] * len(opt.param_groups))

    opt2 = build_optimizer(TinyLM(), cfg)
    sched2 = CosineWarmupScheduler(opt2, warmup_steps=2, max_steps=10)
    sched2.load_state_dict(sched.state_dict())
    assert sched2.get_last_lr() == pytest.approx(sched.get_last_lr())
    assert sched2.last_step == 5


def test_trainer_uses_lr_k_for_update_k(tmp_path) -> None:
    from _tiny import fixed_examples

    from trainlab.train import CausalLMObjective, StepBatcher, Trainer

    cfg = train_config(max_steps=7, warmup_steps=3, lr=0.02, min_lr_ratio=0.25, log_every=1)
    batcher = StepBatcher(fixed_examples(16), 4, 1, None, 0)
    result = Trainer(tiny_decoder(), CausalLMObjective(), batcher, cfg, tmp_path, quiet=True).fit()
    logged = [r["lr"] for r in result.history]
    expected = [cosine_with_warmup(k, lr=0.02, min_lr=0.005, warmup_steps=3, max_steps=7) for k in range(1, 8)]
    assert logged == pytest.approx(expected)


# ---- optimizer groups -----------------------------------------------------------------------

def test_decay_groups_by_dimension() -> None:
    opt = build_optimizer(TinyLM(), train_config(weight_decay=0.1))
    assert _names(opt, 0.1) == {"embed.weight", "mix.weight"}
    assert _names(opt, 0.0) == {"mix.bias", "gain"}


def test_decoder_groups_tied_embedding_once_and_norms_undecayed() -> None:
    model = tiny_decoder()
    opt = build_optimizer(model, train_config(weight_decay=0.05))
    decayed, plain = _names(opt, 0.05), _names(opt, 0.0)
    assert "embed.weight" in decayed
    assert plain and all(n.endswith("norm.weight") for n in plain)
    ids = [id(p) for g in opt.param_groups for p in g["params"]]
    assert len(ids) == len(set(ids)) == len(list(model.parameters()))
    assert model.output_embedding() is model.embed.weight  # tied: stepped once, through embed


def test_frozen_parameters_are_left_out() -> None:
    model = TinyLM()
    model.embed.weight.requires_grad_(False)
    groups = param_groups(model, 0.1)
    names = {n for g in groups for n in g["param_names"]}
    assert "embed.weight" not in names and "mix.weight" in names


def test_adamw_decay_is_decoupled_and_only_on_matrices() -> None:
    # With zero gradients Adam's update m/(√v+ε) is 0, so only decoupled decay moves weights:
    # θ ← θ·(1 − lr·λ) for the decayed group, unchanged for the rest.
    model = TinyLM()
    cfg = train_config(lr=0.1, weight_decay=0.5)
    opt = build_optimizer(model, cfg)
    assert isinstance(opt, torch.optim.AdamW)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    for n, p in model.named_parameters():
        factor = 1 - 0.1 * 0.5 if before[n].ndim >= 2 else 1.0
        torch.testing.assert_close(p.detach(), before[n] * factor)


def test_sgd_with_momentum() -> None:
    opt = build_optimizer(TinyLM(), train_config(optim="sgd", beta1=0.8, lr=0.5))
    assert isinstance(opt, torch.optim.SGD)
    assert all(g["momentum"] == 0.8 and g["lr"] == 0.5 for g in opt.param_groups)


def test_registered_optimizer_is_buildable() -> None:
    @register_optimizer("test-plain-sgd")
    def _plain(groups, cfg):  # type: ignore[no-untyped-def]
        return torch.optim.SGD(groups, lr=cfg.lr)

    cfg = train_config().model_copy(update={"optim": "test-plain-sgd"})
    opt = build_optimizer(TinyLM(), cfg)
    assert isinstance(opt, torch.optim.SGD) and opt.param_groups[0]["momentum"] == 0
