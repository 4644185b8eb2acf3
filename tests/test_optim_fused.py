"""One optimizer builder: fused or foreach AdamW as ``train.fused`` says, same update, exact resume."""

from __future__ import annotations

import pytest
import torch
from _tiny import TinyLM, fixed_examples, pad_collate, tiny_decoder, train_config

from trainlab.errors import UserError
from trainlab.optim import build_optimizer, fused_supported, param_groups
from trainlab.train import Callback, CausalLMObjective, StepBatcher, Trainer, TrainResult
from trainlab.train.checkpoint import load_checkpoint


def _steps(fused: bool | None, n: int = 5) -> tuple[TinyLM, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = TinyLM()
    opt = build_optimizer(model, train_config(lr=1e-2, weight_decay=0.1, fused=fused))
    g = torch.Generator().manual_seed(1)
    for _ in range(n):
        opt.zero_grad()
        for p in model.parameters():
            p.grad = torch.randn(p.shape, generator=g)
        opt.step()
    return model, opt


def test_default_is_fused_where_torch_has_the_kernel() -> None:
    model = TinyLM()
    opt = build_optimizer(model, train_config())
    assert fused_supported(param_groups(model, 0.0))  # CPU float32: torch >= 2.4 has fused AdamW
    assert opt.defaults["fused"] is True
    assert not build_optimizer(model, train_config(fused=False)).defaults["fused"]


def test_fused_and_foreach_give_the_same_update_within_rounding() -> None:
    fused, opt_f = _steps(None)
    plain, opt_p = _steps(False)
    assert opt_f.defaults["fused"] and not opt_p.defaults["fused"]
    torch.manual_seed(0)
    start = TinyLM().state_dict()
    moved = 0.0
    for (name, a), b in zip(fused.named_parameters(), plain.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)
        moved = max(moved, float((a.detach() - start[name]).abs().max()))
    assert moved > 1e-3  # the steps did move the weights
    sa, sb = opt_f.state_dict()["state"], opt_p.state_dict()["state"]
    for pid in sa:
        for key in ("exp_avg", "exp_avg_sq"):
            torch.testing.assert_close(sa[pid][key], sb[pid][key], rtol=1e-5, atol=1e-8)


def test_fused_true_is_required_or_refused() -> None:
    with pytest.raises(UserError, match=r"train\.fused"):
        build_optimizer(TinyLM(), train_config(optim="sgd", fused=True))
    model = TinyLM().to(torch.float64)
    # float64 on CPU is supported too: explicit fused builds
    assert build_optimizer(model, train_config(fused=True)).defaults["fused"] is True


class StopAt(Callback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, trainer: Trainer, step: int, metrics: dict) -> None:
        if step == self.step:
            trainer.request_stop("test")


def _run(out, *, stop_at: int = 0) -> TrainResult:
    model = tiny_decoder(seed=3)
    cfg = train_config(max_steps=6, save_every=2, batch_size=2, grad_accum=2, seed=4)
    batcher = StepBatcher(fixed_examples(11, seed=5), 2, 2, pad_collate, seed=cfg.seed)
    callbacks = [StopAt(stop_at)] if stop_at else []
    trainer = Trainer(model, CausalLMObjective(), batcher, cfg, out, quiet=True, callbacks=callbacks)
    return trainer.fit(resume="or_start")  # starts, or continues from the checkpoint in out


def test_resume_is_bit_exact_with_the_default_fused_optimizer(tmp_path) -> None:
    _run(tmp_path / "ref")
    _run(tmp_path / "split", stop_at=3)  # stops after step 3; a new Trainer continues from its checkpoint
    assert _run(tmp_path / "split").resumed_from in (2, 3)
    a, b = load_checkpoint(tmp_path / "ref" / "checkpoint.pt"), load_checkpoint(tmp_path / "split" / "checkpoint.pt")
    assert a["step"] == b["step"] == 6
    assert a["optimizer"]["param_groups"][0]["fused"] is True
    for name in a["model"]:
        assert torch.equal(a["model"][name], b["model"][name]), name
    for pid, state in a["optimizer"]["state"].items():
        for key, value in state.items():
            assert torch.equal(value, b["optimizer"]["state"][pid][key]), f"{pid}.{key}"
