"""Pipeline parallel (torch.distributed.pipelining, GPipe and 1F1B) on 2 gloo ranks: the step's loss, gradients
and global norm equal one process's (tied embedding summed across the first and last stage)."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch

from trainlab.distributed.pp import stage_layers
from trainlab.errors import UserError
from trainlab.labs.distributed.runner import run_ranks
from trainlab.labs.distributed.worker import RunSpec, step_batches

SPEC = RunSpec("none", model={"vocab_size": 64, "dim": 32, "n_layers": 3, "n_heads": 4, "n_kv_heads": 2,
                              "max_seq_len": 32}, steps=1, batch=2, grad_accum=3, seq=16)


def _pp_vs_single(rank: int, world: int) -> dict[str, Any]:
    from trainlab.config import DistConfig, ModelConfig
    from trainlab.distributed import build_strategy, env
    from trainlab.model.decoder import Decoder
    from trainlab.train.objectives import CausalLMObjective
    from trainlab.train.step import accumulate_gradients, grad_norm_

    strategy = build_strategy(env.init(DistConfig(strategy="pp", pp=world)))
    torch.manual_seed(0)
    model = Decoder(ModelConfig(**SPEC.model))
    objective = CausalLMObjective()
    micro = step_batches(SPEC)[0]
    single = copy.deepcopy(model)
    ref = accumulate_gradients(single, objective, micro, device=torch.device("cpu"))
    ref_norm = float(grad_norm_(list(single.parameters()), 0.0))
    ref_grads = {n: p.grad.clone() for n, p in single.named_parameters()}
    stage = strategy.wrap(model)
    total = sum(objective.count(mb) for mb in micro)
    out: dict[str, Any] = {"ref_loss": float(ref.loss_sum), "ref_norm": ref_norm}
    for schedule in ("gpipe", "1f1b"):
        strategy.schedule_name = schedule
        strategy._schedules.clear()
        stage.zero_grad(set_to_none=True)
        loss, sums, weights = strategy.accumulate(stage, objective, micro, total=total, scale=1.0,
                                                  device=torch.device("cpu"))
        params = list(stage.parameters())
        grads = {n: p.grad.clone() for n, p in stage.named_parameters()}
        grad_diff = max(float((g - ref_grads["embed.weight" if n == "tied_head" else n]).abs().max())
                        for n, g in grads.items())
        out[schedule] = {"loss": float(loss) / total, "norm": float(strategy.clip_grad_norm(params, 0.0)),
                         "grad_diff": grad_diff, "names": sorted(grads), "token_acc": sums["token_acc"] / weights[
                             "token_acc"]}
    out["ref_loss"] /= total
    out["ref_acc"] = ref.metrics["token_acc"]
    return out


def test_pp_two_stages_equal_one_process_gpipe_and_1f1b() -> None:
    results = run_ranks(_pp_vs_single, 2)
    for rank, res in enumerate(results):
        for schedule in ("gpipe", "1f1b"):
            got = res[schedule]
            assert got["loss"] == pytest.approx(res["ref_loss"], rel=1e-6)  # every rank knows the loss
            assert got["norm"] == pytest.approx(res["ref_norm"], rel=1e-5)
            assert got["token_acc"] == pytest.approx(res["ref_acc"], rel=1e-6)
            assert got["grad_diff"] < 1e-6, (rank, schedule)
    first, last = results[0]["1f1b"]["names"], results[1]["1f1b"]["names"]
    assert "embed.weight" in first and "layers.0.attn.q_proj.weight" in first and "norm.weight" not in first
    assert "tied_head" in last and "layers.2.mlp.down_proj.weight" in last and "embed.weight" not in last


def test_stages_split_layers_evenly() -> None:
    assert [list(stage_layers(5, 2, s)) for s in range(2)] == [[0, 1, 2], [3, 4]]
    with pytest.raises(UserError, match="at least 4 layers"):
        stage_layers(3, 4, 0)
