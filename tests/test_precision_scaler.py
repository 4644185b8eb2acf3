"""DynamicLossScaler against torch.amp.GradScaler on the same gradient sequences."""

from __future__ import annotations

import pytest
import torch
from _tiny import TinyLM, fixed_examples, pad_collate, train_config
from torch import nn

from trainlab.precision.scaler import DynamicLossScaler
from trainlab.train.amp import LossScaler, build_loss_scaler
from trainlab.train.data import StepBatcher
from trainlab.train.loop import Trainer
from trainlab.train.objectives import CausalLMObjective


class GradScalerRef:
    """torch.amp.GradScaler used directly (the reference); skips are detected from the weights."""

    def __init__(self, **kw: float) -> None:
        self.s = torch.amp.GradScaler("cpu", **kw)  # type: ignore[arg-type]

    def scale(self, loss: torch.Tensor) -> torch.Tensor:
        return self.s.scale(loss)

    def unscale_(self, opt: torch.optim.Optimizer) -> None:
        self.s.unscale_(opt)

    def step(self, opt: torch.optim.Optimizer) -> None:
        self.s.step(opt)

    def update(self) -> None:
        self.s.update()

    def get_scale(self) -> float:
        return float(self.s.get_scale())


def _run(scaler: object, inject: dict[int, str], *, steps: int, fp16: bool, seed: int = 0) -> dict[str, list]:
    """Train a small MLP; at the injected steps make the loss (or one gradient) non-finite."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(8, 32), nn.Tanh(), nn.Linear(32, 4))
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    gen = torch.Generator().manual_seed(seed + 1)
    out: dict[str, list] = {"stepped": [], "scale": [], "grads": []}
    for step in range(1, steps + 1):
        x, y = torch.randn(6, 8, generator=gen), torch.randn(6, 4, generator=gen)
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.float16, enabled=fp16):
            pred = model(x)
        loss = ((pred.float() - y) ** 2).mean()
        kind = inject.get(step)
        if kind in ("inf", "nan"):
            loss = loss * float(kind)
        scaler.scale(loss).backward()  # type: ignore[attr-defined]
        if kind == "one":  # a single overflowing gradient entry
            model[0].weight.grad[0, 0] = float("inf")
        scaler.unscale_(opt)  # type: ignore[attr-defined]
        out["grads"].append([p.grad.clone() for p in model.parameters()])
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)  # clipping sees unscaled gradients
        before = [p.detach().clone() for p in model.parameters()]
        scaler.step(opt)  # type: ignore[attr-defined]
        scaler.update()  # type: ignore[attr-defined]
        out["stepped"].append(any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True)))
        out["scale"].append(scaler.get_scale())  # type: ignore[attr-defined]
    out["params"] = [p.detach().clone() for p in model.parameters()]
    return out


def _assert_same(a: dict[str, list], b: dict[str, list]) -> None:
    assert a["stepped"] == b["stepped"]
    assert a["scale"] == b["scale"]
    for ga, gb in zip(a["grads"], b["grads"], strict=True):
        for x, y in zip(ga, gb, strict=True):
            assert torch.equal(x.nan_to_num(), y.nan_to_num())  # bit-identical unscaled gradients
    for x, y in zip(a["params"], b["params"], strict=True):
        assert torch.equal(x, y)


INJECT = {3: "inf", 4: "inf", 9: "nan", 10: "one", 17: "inf"}


@pytest.mark.parametrize(("kw", "fp16"), [
    (dict(init_scale=2.0**16, growth_interval=3), False),
    # Real fp16 overflow: a huge initial scale makes the autocast backward overflow until it backs off.
    (dict(init_scale=2.0**40, growth_interval=4), True),
    # Factors that are not powers of two: the scale must be rounded to fp32 exactly as GradScaler does.
    (dict(init_scale=1000.0, growth_factor=1.7, backoff_factor=0.37, growth_interval=2), True),
])
def test_same_skips_scale_trace_and_weights_as_gradscaler(kw: dict, fp16: bool) -> None:
    ours = _run(DynamicLossScaler(**kw), INJECT, steps=24, fp16=fp16)
    ref = _run(GradScalerRef(**kw), INJECT, steps=24, fp16=fp16)
    _assert_same(ours, ref)
    skipped = [i + 1 for i, s in enumerate(ours["stepped"]) if not s]
    assert set(INJECT) <= set(skipped)  # every injected overflow was skipped
    assert len(set(ours["scale"])) > 2  # the trace both backed off and grew


def test_skip_flag_and_history_agree_with_the_weights() -> None:
    scaler = DynamicLossScaler(init_scale=2.0**8, growth_interval=2)
    out = _run(scaler, INJECT, steps=12, fp16=False)
    assert [not h["overflow"] for h in scaler.history] == out["stepped"]
    assert [h["next_scale"] for h in scaler.history] == out["scale"]


def test_state_dict_is_interchangeable_with_gradscaler() -> None:
    ref = torch.amp.GradScaler("cpu", init_scale=512.0, growth_interval=7)
    ours = DynamicLossScaler()
    ours.load_state_dict(ref.state_dict())
    assert ours.get_scale() == 512.0 and ours.growth_interval == 7
    ours._growth_tracker = 3
    back = torch.amp.GradScaler("cpu")
    back.load_state_dict(ours.state_dict())
    assert back.state_dict() == ours.state_dict()


def test_call_order_errors() -> None:
    model = nn.Linear(2, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = DynamicLossScaler()
    scaler.scale(model(torch.ones(1, 2)).sum()).backward()
    scaler.unscale_(opt)
    with pytest.raises(RuntimeError, match="already been called"):
        scaler.unscale_(opt)
    assert scaler.step(opt) is True
    with pytest.raises(RuntimeError, match="step"):
        scaler.step(opt)
    scaler.update()
    with pytest.raises(RuntimeError, match="before"):
        scaler.update()


def test_fp16_gradients_are_refused() -> None:
    model = nn.Linear(2, 1).half()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    with pytest.raises(ValueError, match="fp32"):
        DynamicLossScaler().unscale_(opt)


def test_the_training_loop_uses_it_for_fp16(tmp_path) -> None:
    scaler = build_loss_scaler("fp16", torch.device("cpu"))
    assert isinstance(scaler, DynamicLossScaler) and isinstance(scaler, LossScaler)
    torch.manual_seed(0)
    cfg = train_config(precision="fp16", max_steps=3, init_loss_scale=2.0**8)
    batcher = StepBatcher(fixed_examples(16), 4, 1, pad_collate, 0)
    trainer = Trainer(TinyLM(), CausalLMObjective(), batcher, cfg, tmp_path, quiet=True, tensorboard=False)
    assert isinstance(trainer.scaler, DynamicLossScaler)
    result = trainer.fit()
    assert result.steps == 3 and len(trainer.scaler.history) == 3
