"""torch.profiler tables and trace for a training step; the CUDA snapshot says why it cannot run on CPU."""

from __future__ import annotations

import json

import torch
from _tiny import tiny_decoder, train_config

from trainlab.memory.profile import cuda_memory_snapshot, profile_step
from trainlab.optim import build_optimizer
from trainlab.precision.scaler import DynamicLossScaler
from trainlab.train.objectives import CausalLMObjective


def test_profile_step_tables_phases_and_trace(tmp_path) -> None:
    model = tiny_decoder()
    ids = torch.randint(0, 48, (2, 16))
    batch = {"input_ids": ids, "labels": ids.clone(), "attention_mask": torch.ones_like(ids)}
    res = profile_step(model, CausalLMObjective(), [batch], build_optimizer(model, train_config()),
                       out_dir=tmp_path, warmup=0, top=5)
    assert set(res.phases) == {"forward", "backward", "optimizer"}
    assert all(v["cpu_time_ms"] > 0 for v in res.phases.values())
    assert len(res.by_time) == 5 and len(res.by_memory) == 5
    names = {r["name"] for r in res.by_time + res.by_memory}
    assert any(n.startswith("aten::") for n in names) and not names & {"forward", "backward", "optimizer"}
    assert res.by_memory[0]["self_cpu_mem_bytes"] >= res.by_memory[-1]["self_cpu_mem_bytes"]
    trace = json.loads((tmp_path / "trace.json").read_text())
    spans = {e.get("name") for e in trace["traceEvents"]}
    assert {"forward", "backward", "optimizer"} <= spans
    assert "Self CPU" in res.table_text


def test_cuda_snapshot_is_honest_without_cuda(tmp_path) -> None:
    ran = []
    path, reason = cuda_memory_snapshot(lambda: ran.append(1), tmp_path / "snap.pickle", device="cpu")
    assert path is None and "needs CUDA" in reason and not ran
    assert not (tmp_path / "snap.pickle").exists()


class CountingScaler(DynamicLossScaler):
    """The training loss scaler, counting how the step uses it."""

    def __init__(self) -> None:
        super().__init__(init_scale=2.0**10)
        self.calls: list[str] = []

    def scale(self, loss):
        self.calls.append("scale")
        return super().scale(loss)

    def unscale_(self, optimizer) -> None:
        self.calls.append("unscale")
        super().unscale_(optimizer)

    def step(self, optimizer) -> bool:
        self.calls.append("step")
        return super().step(optimizer)


def test_fp16_profile_runs_the_training_step_with_loss_scaling(tmp_path) -> None:
    """fp16 is profiled as it trains: loss scaled per micro-batch, unscaled and checked before the update."""
    model = tiny_decoder()
    ids = torch.randint(0, 48, (2, 16))
    batch = {"input_ids": ids, "labels": ids.clone(), "attention_mask": torch.ones_like(ids)}
    scaler = CountingScaler()
    res = profile_step(model, CausalLMObjective(), [batch, batch], build_optimizer(model, train_config()),
                       precision="fp16", scaler=scaler, warmup=0, steps=1, top=3)
    assert scaler.calls == ["scale", "scale", "unscale", "step"]
    assert res.precision == "fp16" and res.loss_scale == scaler.get_scale()
    # Without a scaler given, fp16 gets the training loop's dynamic loss scaler (initial scale 2^16).
    default = profile_step(model, CausalLMObjective(), [batch], build_optimizer(model, train_config()),
                           precision="fp16", warmup=0, steps=1, top=3)
    assert default.loss_scale is not None and default.loss_scale >= 2.0**15
    assert profile_step(model, CausalLMObjective(), [batch], build_optimizer(model, train_config()),
                        warmup=0, top=3).loss_scale is None
