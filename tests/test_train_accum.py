"""Gradient accumulation: K micro-batches ≡ one batch of the same examples, with real padding."""

from __future__ import annotations

import pytest
import torch
from _tiny import pad_collate, tiny_decoder, train_config, variable_examples

from trainlab.train import CausalLMObjective, StepBatcher, Trainer, accumulate_gradients

CPU = torch.device("cpu")


def _grads(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def _max_rel_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    scale = max(float(t.abs().max()) for t in b.values())
    return max(float((a[k] - b[k]).abs().max()) for k in a) / scale


def _micro(examples: list, k: int) -> list[dict[str, torch.Tensor]]:
    size = len(examples) // k
    # Each micro-batch pads to its own longest example, so shapes and padding differ per K.
    return [pad_collate(examples[i * size:(i + 1) * size]) for i in range(k)]


def test_counts_really_differ_between_micro_batches() -> None:
    # Guard for the test below: equivalence is only meaningful if counts are unequal.
    obj = CausalLMObjective()
    counts = [obj.count(mb) for mb in _micro(variable_examples(8, seed=11), 4)]
    assert len(set(counts)) > 1, counts


@pytest.mark.parametrize("k", [1, 2, 4])
def test_k_micro_batches_give_the_one_batch_gradient(k: int) -> None:
    examples = variable_examples(8, seed=11)
    obj = CausalLMObjective()

    ref_model = tiny_decoder(seed=5)
    ref = accumulate_gradients(ref_model, obj, [pad_collate(examples)], device=CPU)
    ref_grads = _grads(ref_model)

    model = tiny_decoder(seed=5)
    stats = accumulate_gradients(model, obj, _micro(examples, k), device=CPU)
    assert stats.count == ref.count
    torch.testing.assert_close(stats.loss_sum, ref.loss_sum, rtol=1e-6, atol=0.0)
    assert _max_rel_diff(_grads(model), ref_grads) < 1e-6


def test_naive_mean_of_means_would_differ() -> None:
    # The common `loss_mean / K` weights tokens of short micro-batches more; show that it is
    # measurably wrong here, so the equivalence above is not trivially true.
    examples = variable_examples(8, seed=11)
    obj = CausalLMObjective()
    ref_model = tiny_decoder(seed=5)
    accumulate_gradients(ref_model, obj, [pad_collate(examples)], device=CPU)
    model = tiny_decoder(seed=5)
    for mb in _micro(examples, 4):
        out = obj(model, mb)
        (out.loss_sum / out.count / 4).backward()
    assert _max_rel_diff(_grads(model), _grads(ref_model)) > 1e-3


@pytest.mark.parametrize("optim", ["sgd", "adamw"])
def test_trainer_params_match_after_steps_for_any_split(tmp_path, optim: str) -> None:
    """K = 1, 2, 4 micro-batches per step: the same weights after 4 steps, to fp64 rounding.

    In float64, because Adam amplifies rounding where a gradient is ~0: its first update
    ``lr·g/(|g|+eps)`` has slope ``lr·eps/(|g|+eps)²``, so in fp32 a coordinate with g ≈ 4e-8 (pure
    cancellation noise; eps = 1e-8) turns a 5e-10 difference in summation order into a 1.7e-5
    update difference, although the step's gradients agree to 3e-7 relative. In fp64 the
    gradients agree to ~1e-15 and the weights to ~1e-14, while a wrongly weighted accumulation
    (the mean of micro-batch means) is off by more than 1e-3 relative.
    """
    examples = variable_examples(24, seed=4)
    lr = 1e-2
    finals = {}
    for bs, k in [(8, 1), (4, 2), (2, 4)]:
        cfg = train_config(max_steps=4, batch_size=bs, grad_accum=k, lr=lr, warmup_steps=1, optim=optim)
        batcher = StepBatcher(examples, bs, k, pad_collate, seed=9)
        trainer = Trainer(tiny_decoder(seed=5).double(), CausalLMObjective(), batcher, cfg,
                          tmp_path / f"{optim}{k}", quiet=True)
        assert trainer.fit().steps == 4
        finals[k] = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    init = dict(tiny_decoder(seed=5).double().named_parameters())
    moved = max(float((finals[1][n] - init[n].detach()).abs().max()) for n in init)
    assert moved > (lr if optim == "adamw" else 1e-4)  # training really moved the weights
    for k in (2, 4):
        for name, p in finals[k].items():
            assert p.dtype == torch.float64
            torch.testing.assert_close(p, finals[1][name], rtol=1e-10, atol=1e-10 * moved, msg=f"K={k} {name}")
