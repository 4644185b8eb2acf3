"""DeepSpeed ZeRO-1/2/3 (optional extra) on 2 gloo processes equals one process: losses, norms, weights."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch

from trainlab.distributed.deepspeed import PRELOAD, available
from trainlab.labs.distributed.runner import run_ranks
from trainlab.labs.distributed.worker import RunSpec, _share, step_batches

OK, WHY = available()
pytestmark = pytest.mark.skipif(not OK, reason=f"DeepSpeed is not installed or does not import: {WHY}")

SPEC = RunSpec("none", model={"vocab_size": 64, "dim": 32, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2,
                              "max_seq_len": 32}, steps=2, batch=4, grad_accum=2, seq=16, grad_clip=0.05)


def _stages(rank: int, world: int) -> dict[str, Any]:
    from trainlab.config import DistConfig, ModelConfig, TrainConfig
    from trainlab.distributed import env
    from trainlab.distributed.deepspeed import DeepSpeedStrategy
    from trainlab.distributed.memory import local_bytes
    from trainlab.distributed.strategy import _REGISTRY
    from trainlab.model.decoder import Decoder
    from trainlab.optim import build_optimizer
    from trainlab.train.amp import NoLossScaler
    from trainlab.train.objectives import CausalLMObjective
    from trainlab.train.step import optimizer_step

    ctx = env.init(DistConfig(strategy="zero2", engine="deepspeed"))
    cfg = TrainConfig(lr=3e-3, max_steps=SPEC.steps, batch_size=SPEC.batch, grad_accum=SPEC.grad_accum,
                      warmup_steps=0, grad_clip=SPEC.grad_clip, device="cpu", save_every=0, save_every_minutes=0)
    objective = CausalLMObjective()
    steps = step_batches(SPEC)
    torch.manual_seed(0)
    base = Decoder(ModelConfig(**SPEC.model))
    out: dict[str, Any] = {}
    single = copy.deepcopy(base)
    opt = build_optimizer(single, cfg)
    out["single"] = [optimizer_step(single, objective, micro, opt, NoLossScaler(), device=torch.device("cpu"),
                                    grad_clip=SPEC.grad_clip) for micro in steps]
    out["single"] = [(o.loss, o.grad_norm) for o in out["single"]]
    reference = single.state_dict()
    for stage in (1, 2, 3):
        strategy = _REGISTRY[f"deepspeed:zero{stage}"](ctx)
        assert isinstance(strategy, DeepSpeedStrategy)
        strategy.validate(cfg)
        model = strategy.wrap(copy.deepcopy(base))
        opt = strategy.build_optimizer(model, cfg)
        res = []
        for micro in steps:
            mine = [_share(mb, ctx.dp_rank, ctx.dp_world) for mb in micro]
            o = optimizer_step(model, objective, mine, opt, NoLossScaler(), device=torch.device("cpu"),
                               grad_clip=SPEC.grad_clip, dist=strategy)
            res.append((o.loss, o.grad_norm))
        extra = strategy.memory_tensors(model)
        params = local_bytes(extra.get("parameters") or strategy.unwrap(model).parameters())
        state = strategy.full_state_dict(model)
        diff = max(float((state[k] - v).norm() / v.norm()) for k, v in reference.items()) if rank == 0 else 0.0
        out[stage] = {"steps": res, "diff": diff, "param_bytes": params,
                      "optimizer_bytes": local_bytes(v for s in opt.state.values() for v in s.values()
                                                     if isinstance(v, torch.Tensor) and v.dim() > 0)}
        if stage == 2:  # checkpoint round trip: name-keyed states into a fresh engine, which continues identically
            saved_model, saved_opt = strategy.model_state_dict(model), strategy.optimizer_state_dict(model, opt)
            fresh = _REGISTRY["deepspeed:zero2"](ctx)
            fresh.validate(cfg)
            other = fresh.wrap(copy.deepcopy(base))
            other_opt = fresh.build_optimizer(other, cfg)
            fresh.load_model_state_dict(other, saved_model)
            fresh.load_optimizer_state_dict(other, other_opt, saved_opt)
            again = fresh.optimizer_state_dict(other, other_opt)
            out["roundtrip"] = max(float((again["state"][n][k] - v).abs().max())
                                   for n, e in saved_opt["state"].items() for k, v in e.items())
            extra_step = [_share(mb, ctx.dp_rank, ctx.dp_world) for mb in steps[0]]
            a = optimizer_step(model, objective, extra_step, opt, NoLossScaler(), device=torch.device("cpu"),
                               grad_clip=SPEC.grad_clip, dist=strategy)
            b = optimizer_step(other, objective, extra_step, other_opt, NoLossScaler(), device=torch.device("cpu"),
                               grad_clip=SPEC.grad_clip, dist=fresh)
            out["resumed_step"] = (a.loss, b.loss, a.grad_norm, b.grad_norm)
            wa, wb = strategy.model_state_dict(model), fresh.model_state_dict(other)
            out["resumed_diff"] = max(float((wa[n] - wb[n]).abs().max()) for n in wa)
    return out


@pytest.mark.slow
def test_deepspeed_zero_stages_equal_one_process() -> None:
    res = run_ranks(_stages, 2, preload=PRELOAD)
    for r in res:
        for stage in (1, 2, 3):
            got = r[stage]
            assert [x[0] for x in got["steps"]] == pytest.approx([x[0] for x in r["single"]], rel=1e-5)
            assert [x[1] for x in got["steps"]] == pytest.approx([x[1] for x in r["single"]], rel=1e-5)
            assert got["diff"] < 1e-5, stage
        assert r["roundtrip"] == 0.0  # AdamW states by name, back and forth exactly
        la, lb, na, nb = r["resumed_step"]
        assert la == lb and na == nb and r["resumed_diff"] == 0.0  # the restored engine continues bit for bit
    full = res[0][1]["param_bytes"]  # ZeRO-1: every rank holds all parameters
    assert res[0][3]["param_bytes"] * 2 == pytest.approx(full, rel=0.01)  # ZeRO-3: half of them
    assert res[0][1]["optimizer_bytes"] * 2 == pytest.approx(2 * full, rel=0.01)  # AdamW m, v of half (8/2 B)
