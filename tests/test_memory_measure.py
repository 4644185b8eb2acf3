"""Exact CPU memory accounting: known sizes, the memory cap, the timeline."""

from __future__ import annotations

import pytest
import torch
from _tiny import tiny_decoder
from torch import nn

from trainlab.memory.measure import LiveTensorTracker, MemoryCapExceeded, measure_training_step, read_rss
from trainlab.train.objectives import ObjectiveOutput

B, D_IN, D_H = 8, 64, 32
# The training step's own scalars live across phases (optimizer_step's fp32 loss accumulator, the
# gradient norm and the (loss, norm) pair it reads back): a few bytes beside the exact components.
STEP_SCALARS = 32


class SumObjective:
    """loss_sum = Σ model(x): the simplest objective, so every saved byte is known."""

    def count(self, batch: dict[str, torch.Tensor]) -> int:
        return int(batch["x"].shape[0])

    def __call__(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> ObjectiveOutput:
        return ObjectiveOutput(loss_sum=model(batch["x"]).sum(), count=self.count(batch))


def toy() -> nn.Module:
    torch.manual_seed(0)
    # tanh saves its output [B, D_H] for backward; the second linear saves the same tensor as input.
    return nn.Sequential(nn.Linear(D_IN, D_H, bias=False), nn.Tanh(), nn.Linear(D_H, 1, bias=False))


def test_components_are_exact_for_a_known_model() -> None:
    batch = {"x": torch.randn(B, D_IN)}
    mem = measure_training_step(toy, SumObjective(), [batch], optimizer=lambda m: torch.optim.AdamW(m.parameters()),
                                steps=2)
    n = D_IN * D_H + D_H
    assert mem.parameters == 4 * n
    assert mem.gradients == 4 * n  # read after the last step (zero_grad comes at the next step's start)
    # AdamW: exp_avg and exp_avg_sq (4 B each per parameter) and a 4-byte step counter per tensor.
    assert mem.optimizer_states == 8 * n + 4 * 2
    # Kept from forward to backward: tanh's output (B x D_H fp32) and the loss scalars (2 x 4 B).
    assert mem.activations == 4 * B * D_H + 8
    # The hooks also see the input batch the first matmul saves (live before the step, so not an
    # activation by the live count); parameters are excluded.
    assert mem.saved_for_backward == 4 * B * D_H + 4 * B * D_IN
    assert mem.logits == 0  # no final-norm head in this model
    phases = [(p.name, p.step) for p in mem.phases]
    assert phases == [("load", 0), ("forward", 1), ("backward", 1), ("optimizer", 1), ("forward", 2),
                      ("backward", 2), ("optimizer", 2)]
    load, opt1 = mem.phases[0], mem.phases[3]
    assert load.live_end == 4 * n + 4 * B * D_IN  # weights and the batch
    # gradients and AdamW state now exist
    assert 0 <= opt1.live_end - load.live_end - (4 * n + 8 * n + 8) <= STEP_SCALARS
    assert mem.timeline and {t[2] for t in mem.timeline} >= {"forward", "backward", "optimizer"}
    assert mem.peak >= opt1.live_end and mem.peak_all >= mem.peak


def test_gradients_measured_before_they_are_freed() -> None:
    """With a pre-built model, gradients of the last step can be read from the phases."""
    model = toy()
    batch = {"x": torch.randn(B, D_IN)}
    mem = measure_training_step(model, SumObjective(), [batch], optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
                                steps=1)
    backward = mem.phases[2]
    n = D_IN * D_H + D_H
    assert backward.name == "backward"
    # gradients (activations freed)
    assert 0 <= backward.live_end - mem.phases[0].live_end - 4 * n <= STEP_SCALARS
    assert mem.gradients == 4 * n


def test_memory_cap_records_oom_instead_of_raising() -> None:
    batch = {"x": torch.randn(B, D_IN)}
    n = D_IN * D_H + D_H
    cap = 4 * n + 4 * B * D_IN + 100  # room for the weights and the batch, not for a step
    mem = measure_training_step(toy, SumObjective(), [batch], optimizer=lambda m: torch.optim.AdamW(m.parameters()),
                                memory_cap_bytes=cap)
    assert mem.oom and "memory cap" in mem.oom_message
    assert mem.peak > cap
    ok = measure_training_step(toy, SumObjective(), [batch], optimizer=lambda m: torch.optim.AdamW(m.parameters()),
                               memory_cap_bytes=10 * cap)
    assert not ok.oom


def test_tracker_counts_views_once_and_frees() -> None:
    tracker = LiveTensorTracker(cap=10_000)
    with tracker:
        a = torch.empty(100)  # 400 B
        v = a.view(10, 10)
        b = a * 2  # 400 B
        assert tracker.live == 800  # the view shares a's storage
        del a
        assert tracker.live == 800  # the view still holds the storage
        del v
        assert tracker.live == 400
        del b
        assert tracker.live == 0
    with pytest.raises(MemoryCapExceeded), tracker:
        torch.empty(10_000)
    assert isinstance(MemoryCapExceeded("x"), torch.OutOfMemoryError)


def test_checkpointing_measured_smaller_and_rss_readable() -> None:
    ids = torch.randint(0, 48, (4, 32))
    batch = {"input_ids": ids, "labels": ids.clone(), "attention_mask": torch.ones_like(ids)}
    from trainlab.train.objectives import CausalLMObjective

    def build(policy: str):
        def make() -> nn.Module:
            m = tiny_decoder(n_layers=3)
            m.config = m.config.model_copy(update={"checkpointing": policy})
            return m
        return make

    none = measure_training_step(build("none"), CausalLMObjective(), [batch],
                                 optimizer=lambda m: torch.optim.SGD(m.parameters(), lr=0.1), steps=1)
    full = measure_training_step(build("full"), CausalLMObjective(), [batch],
                                 optimizer=lambda m: torch.optim.SGD(m.parameters(), lr=0.1), steps=1)
    assert full.activations < 0.3 * none.activations
    assert none.logits == full.logits > 0  # the loss head is outside the checkpointed blocks
    rss, hwm = read_rss()
    assert rss is not None and hwm is not None and hwm >= rss > 0


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_cuda_without_a_gpu_is_a_clear_user_error() -> None:
    from trainlab.errors import UserError

    with pytest.raises(UserError, match="CUDA is not available"):
        measure_training_step(toy, SumObjective(), [{"x": torch.randn(B, D_IN)}],
                              optimizer=lambda m: torch.optim.SGD(m.parameters(), lr=0.1), device="cuda")


def test_training_memory_frees_the_forward_graph() -> None:
    """`training_memory` runs a forward with no backward: its saved activations must be freed on return
    (a saved-tensor hook that returned the tensor itself kept the whole graph alive in a C++ cycle)."""
    from trainlab.memory.measure import training_memory

    model = nn.Sequential(nn.Linear(D_IN, D_H), nn.Tanh(), nn.Linear(D_H, D_H), nn.Sigmoid())
    x = torch.randn(B, D_IN)
    with LiveTensorTracker(record=False) as tr:
        tr.register([*model.parameters(), x])
        before = tr.live
        memory = training_memory(model, lambda: ObjectiveOutput(loss_sum=model(x).sum(), count=B))
        assert memory["activations"] > 0
        assert tr.live == before
