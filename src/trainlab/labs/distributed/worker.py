"""One strategy's short training run on each rank, measured: losses, weights, bytes communicated, memory, time.

`train_rank(rank, world, spec)` runs on every process of `trainlab.labs.distributed.runner.run_ranks`
(and `train_rank(0, 1, spec)` is the single-process reference): it builds the decoder from the same seed,
lets the registered strategy (`trainlab.distributed.strategy`) wrap it, and trains ``spec.steps``
optimizer steps of ``spec.grad_accum`` micro-batches with `trainlab.train.optimizer_step` (``dist=`` the
strategy), each data-parallel rank taking its contiguous share of every micro-batch. The last step is
measured: its collectives (`trainlab.distributed.comm.CommMeter`) and memory
(`trainlab.distributed.memory.measure_rank_step`); the others are timed.
"""

from __future__ import annotations

import copy
import statistics
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from trainlab.config import DistConfig, ModelConfig
from trainlab.model.decoder import Decoder


@dataclass
class RunSpec:
    strategy: str  # none | ddp | zero2 | fsdp | tp | zero1 | pp | deepspeed:zero1 ...
    model: dict[str, Any] = field(default_factory=lambda: {"vocab_size": 256, "dim": 64, "n_layers": 2,
                                                             "n_heads": 4, "n_kv_heads": 2, "max_seq_len": 64})
    steps: int = 4
    batch: int = 4  # global micro-batch (examples)
    grad_accum: int = 2
    seq: int = 32
    lr: float = 3e-3
    grad_clip: float = 1.0
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def step_batches(spec: RunSpec) -> list[list[dict[str, torch.Tensor]]]:
    """Every step's global micro-batches: fixed-length windows of a learnable pattern, fully supervised."""
    g = torch.Generator().manual_seed(spec.seed + 1)
    vocab = int(spec.model["vocab_size"])
    out = []
    for _ in range(spec.steps):
        micro = []
        for _ in range(spec.grad_accum):
            start = torch.randint(0, vocab, (spec.batch, 1), generator=g)
            stride = torch.randint(1, 4, (spec.batch, 1), generator=g)
            ids = (start + stride * torch.arange(spec.seq)) % vocab
            micro.append({"input_ids": ids, "labels": ids.clone(), "attention_mask": torch.ones_like(ids)})
        out.append(micro)
    return out


def _share(batch: dict[str, torch.Tensor], rank: int, world: int) -> dict[str, torch.Tensor]:
    n = batch["input_ids"].shape[0] // world
    return {k: v[rank * n:(rank + 1) * n] for k, v in batch.items()}


def dist_config(strategy: str, world: int) -> DistConfig:
    engine, _, name = strategy.rpartition(":")
    kw: dict[str, Any] = {"strategy": name, "engine": engine or "torch"}
    if name == "tp":
        kw["tp"] = world
    if name == "pp":
        kw["pp"] = world
    return DistConfig(**kw)


def block_matmul_params(model: torch.nn.Module) -> int:
    """Parameters of the matmuls tensor parallelism splits (q, k, v, o, gate, up, down of every block)."""
    names = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    return sum(p.numel() for n, p in model.named_parameters() if n.rsplit(".", 2)[-2] in names)


def train_rank(rank: int, world: int, spec: RunSpec) -> dict[str, Any]:
    from trainlab.config import TrainConfig
    from trainlab.distributed import build_strategy, env
    from trainlab.distributed.comm import CommMeter
    from trainlab.distributed.memory import measure_rank_step, track_wrap
    from trainlab.optim import build_optimizer
    from trainlab.train.amp import NoLossScaler
    from trainlab.train.objectives import CausalLMObjective
    from trainlab.train.step import optimizer_step

    ctx = env.init(dist_config(spec.strategy, world)) if world > 1 else None
    strategy = build_strategy(ctx)
    torch.manual_seed(spec.seed)
    model = Decoder(ModelConfig(**spec.model))
    n_params = model.num_parameters()
    n_tp = block_matmul_params(model)
    cfg = TrainConfig(lr=spec.lr, max_steps=spec.steps, batch_size=spec.batch, grad_accum=spec.grad_accum,
                      warmup_steps=0, grad_clip=spec.grad_clip, device="cpu", seed=spec.seed,
                      save_every=0, save_every_minutes=0)
    if ctx is not None:
        strategy.validate(cfg)
    with track_wrap(list(model.parameters())) as wrap_mem:
        model = strategy.wrap(model)
    build = getattr(strategy, "build_optimizer", None)  # an engine's own optimizer (DeepSpeed), else None
    opt = (build(model, cfg) if build is not None else None) or build_optimizer(model, cfg)
    objective = CausalLMObjective()
    dp_rank, dp_world = (ctx.dp_rank, ctx.dp_world) if ctx is not None else (0, 1)
    losses, norms, times = [], [], []
    comm: dict[str, Any] = {}
    memory: dict[str, Any] = {}
    device = torch.device("cpu")
    for i, micro in enumerate(step_batches(spec)):
        mine = [_share(mb, dp_rank, dp_world) for mb in micro]
        last = i == spec.steps - 1

        def run(hooks: Any = None, mine: list[dict[str, torch.Tensor]] = mine) -> Any:
            return optimizer_step(model, objective, mine, opt, NoLossScaler(), device=device,
                                  grad_clip=spec.grad_clip, hooks=hooks, dist=strategy if ctx is not None else None)

        if last:
            meter = CommMeter(world)
            out: list[Any] = []
            with meter:
                mem = measure_rank_step(model, opt, lambda hooks, out=out: out.append(run(hooks)),
                                        extras=getattr(strategy, "memory_tensors", None))
            outcome = out[0]
            comm = {"summary": meter.summary(), "wire_total": meter.wire_total,
                    "records": [asdict(r) for r in meter.records]}
            mem.wrap_bytes = wrap_mem.wrap_bytes
            memory = mem.to_dict()
        else:
            if ctx is not None:
                ctx.barrier()
            t0 = time.perf_counter()
            outcome = run()
            times.append(time.perf_counter() - t0)
        losses.append(outcome.loss)
        norms.append(outcome.grad_norm)
    state = strategy.full_state_dict(model) if ctx is not None else {k: v.detach().clone()
                                                                    for k, v in model.state_dict().items()}
    return {"rank": rank, "world": world, "strategy": spec.strategy, "losses": losses, "grad_norms": norms,
            "step_times": times, "step_time_s": statistics.median(times[1:] or times) if times else float("nan"),
            "comm": comm, "memory": memory, "params": n_params, "tp_params": n_tp,
            "state": {k: v.cpu() for k, v in state.items()} if rank == 0 else {}}


def reference_run(spec: RunSpec) -> dict[str, Any]:
    """The single-process run on the same global batches (what every strategy must equal)."""
    return train_rank(0, 1, copy.replace(spec, strategy="none") if hasattr(copy, "replace") else
                      RunSpec(**{**spec.to_dict(), "strategy": "none"}))


__all__ = ["RunSpec", "block_matmul_params", "dist_config", "reference_run", "step_batches", "train_rank"]
