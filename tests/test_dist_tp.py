"""Tensor parallel (DTensor) on 2 gloo ranks equals one process: losses, weights, and Megatron's 4 all-reduces."""

from __future__ import annotations

import contextlib
import copy
from typing import Any

import pytest
import torch
from _tiny import fixed_examples, pad_collate, train_config

from trainlab.config import ModelConfig
from trainlab.distributed.tp import check_tp_degree
from trainlab.errors import UserError
from trainlab.labs.distributed.runner import run_ranks
from trainlab.model.decoder import Decoder

DIM, LAYERS, SEQ, BATCH = 32, 2, 16, 4


def _tp_vs_single(rank: int, world: int) -> dict[str, Any]:
    from trainlab.config import DistConfig
    from trainlab.distributed import build_strategy, env
    from trainlab.distributed.comm import CommMeter
    from trainlab.optim import build_optimizer
    from trainlab.train.amp import NoLossScaler
    from trainlab.train.objectives import CausalLMObjective
    from trainlab.train.step import optimizer_step

    ctx = env.init(DistConfig(strategy="tp", tp=world))
    strategy = build_strategy(ctx)
    assert strategy.name == "tp"
    torch.manual_seed(0)
    model = Decoder(ModelConfig(vocab_size=48, dim=DIM, n_layers=LAYERS, n_heads=4, n_kv_heads=2, max_seq_len=64))
    single = copy.deepcopy(model)
    model = strategy.wrap(model)
    assert model.layers[0].attn.q_proj.weight.to_local().shape[0] == DIM // world  # 2 of 4 query heads
    assert model.layers[0].attn.k_proj.weight.to_local().shape[0] == DIM // 4  # 1 of 2 kv heads (head_dim 8)
    cfg = train_config(lr=1e-2)
    objective = CausalLMObjective()
    steps = [[pad_collate(fixed_examples(BATCH, SEQ, seed=2 * s + k)) for k in range(2)] for s in range(3)]
    out: dict[str, Any] = {}
    for name, m, dist in (("single", single, None), ("tp", model, strategy)):
        opt = build_optimizer(m, cfg)
        losses, norms = [], []
        for i, micro in enumerate(steps):
            meter = CommMeter(world)
            with meter if (dist is not None and i == 2) else contextlib.nullcontext():
                o = optimizer_step(m, objective, micro, opt, NoLossScaler(), device=torch.device("cpu"),
                                   grad_clip=0.05, dist=dist)
            losses.append(o.loss)
            norms.append(o.grad_norm)
        out[name] = {"losses": losses, "norms": norms}
        if dist is not None:
            out["records"] = [(r.kind, r.size_bytes) for r in meter.records]
    out["tp_state"] = {k: v.detach().clone() for k, v in _full(model).items()}
    out["single_state"] = single.state_dict()
    final = strategy.final_model(model)
    out["final_ok"] = final is None if rank else (type(final) is Decoder and final.layers[0].attn.n_heads == 4)
    return out


def _full(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    from trainlab.distributed.tp import full_state_dict

    return full_state_dict(model)


def test_tp_two_ranks_equals_one_process() -> None:
    results = run_ranks(_tp_vs_single, 2)
    for res in results:
        assert res["tp"]["losses"] == pytest.approx(res["single"]["losses"], rel=1e-5)
        assert res["tp"]["norms"] == pytest.approx(res["single"]["norms"], rel=1e-5)
        assert res["single"]["norms"][0] > 0.05  # the clip was active
        for key, ref in res["single_state"].items():
            got = res["tp_state"][key]
            assert got.shape == ref.shape
            assert float((got - ref).norm() / ref.norm()) < 1e-5, key
        # Per micro-batch and layer: 2 all-reduces of the activations forward, 2 backward (Megatron-LM).
        act = BATCH * SEQ * DIM * 4
        calls = [k for k, size in res["records"] if k == "all_reduce" and size == act]
        assert len(calls) == 4 * LAYERS * 2  # two micro-batches
        assert res["final_ok"]
    assert torch.equal(results[0]["tp_state"]["layers.0.attn.q_proj.weight"],
                       results[1]["tp_state"]["layers.0.attn.q_proj.weight"])


def test_tp_degree_must_divide_heads_and_kv_heads() -> None:
    check_tp_degree(4, 2, 96, 2)
    with pytest.raises(UserError, match="key/value heads=1"):
        check_tp_degree(4, 1, 96, 2)  # MQA: one kv head cannot be split
    with pytest.raises(UserError, match="n_heads=6"):
        check_tp_degree(6, 6, 96, 4)
