"""The strategies table: each strategy on 2 processes beside the single-process run and the formulas.

For every strategy of the preset, `measure_strategies` runs `trainlab.labs.distributed.worker.train_rank`
on ``world`` gloo processes and compares with the one-process run on the same global batches:

* equivalence: the largest relative difference of any final weight tensor (``‖W−W₁‖/‖W₁‖``) and of the
  per-step losses;
* memory per rank, measured (parameters, gradients, optimizer states: local storages; activations and
  peak: live tensors) beside `trainlab.distributed.memory.zero_components` (fp32 AdamW: 4 + 4 + 8 bytes);
* bytes sent per rank in the measured step: the wire bytes of the gradient/parameter collectives (those
  of at least 1 KiB; the few-byte all-reduces of the token count and loss are listed apart) beside
  `trainlab.distributed.comm.strategy_volume`;
* step time (median of the timed steps; under whatever load the machine has).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from trainlab.distributed.comm import allreduce_bytes, reduce_scatter_bytes, strategy_volume
from trainlab.distributed.deepspeed import PRELOAD
from trainlab.distributed.memory import zero_components
from trainlab.labs.distributed.runner import run_ranks
from trainlab.labs.distributed.worker import RunSpec, reference_run, train_rank

#: Collectives smaller than this are bookkeeping (count, tokens, loss, metrics), not model state.
SMALL = 1024

#: The formula each strategy's measured communication is compared with (zero2 via FSDP2 gathers once
#: per micro-batch and keeps the parameters to the backward: ZeRO-2's all-gather + reduce-scatter).
FORMULA_OF = {"ddp": "ddp", "zero1": "zero1", "zero2": "zero2", "fsdp": "zero3", "zero3": "zero3", "tp": "tp",
              "pp": "pp"}


@dataclass
class StrategyRow:
    strategy: str
    max_weight_rel_diff: float
    max_loss_diff: float
    memory: dict[str, Any]
    memory_formula: dict[str, float]
    comm: dict[str, Any]
    comm_formula: dict[str, Any]
    wire_model_bytes: int
    wire_small_bytes: int
    step_time_s: float
    wall_s: float
    losses: list[float] = field(default_factory=list)
    comm_records: list[dict[str, Any]] = field(default_factory=list)
    error: str = ""


def _formula_comm(name: str, spec: RunSpec, params: int, world: int) -> dict[str, Any]:
    base = name.rpartition(":")[2]
    key = FORMULA_OF.get(base, base)
    m = spec.model
    if key == "zero2" and base == "zero2":
        # FSDP2's zero2 gathers parameters once per micro-batch (not once per step as ZeRO-2 does)
        s = params * 4.0
        k = spec.grad_accum
        sent = k * (allreduce_bytes(s, world) / 2 + reduce_scatter_bytes(s, world))
        return {"formula": "all-gather once per micro-batch + reduce-scatter: 2(p-1)/p x S x micro-batches",
                "sent_bytes": sent, "gloo_sent_bytes": k * (allreduce_bytes(s, world) / 2 + allreduce_bytes(s, world))}
    if key == "pp" and world == 2:
        # two stages: each sends one direction (activations forward, or their gradients back) per micro-batch,
        # and the tied embedding's gradient is summed between the first and the last stage (an all-reduce)
        act = spec.batch * spec.seq * m["dim"] * 4.0 * spec.grad_accum
        tied = allreduce_bytes(m["vocab_size"] * m["dim"] * 4.0, world) if m.get("tie_embeddings", True) else 0.0
        return {"formula": "send/recv b*s*h per micro-batch + all-reduce of the tied embedding's gradient",
                "sent_bytes": act + tied, "gloo_sent_bytes": act + tied}
    vol = strategy_volume(key, params, world, dtype="fp32", grad_accum=spec.grad_accum, layers=m["n_layers"],
                          batch=spec.batch, seq=spec.seq, hidden=m["dim"])
    # gloo (torch 2.13) implements reduce-scatter as an all-reduce on the wire (measured): what it really sends.
    gloo = sum(allreduce_bytes(c.size_bytes / max(c.calls, 1), world) * c.calls if c.op == "reduce_scatter"
               else c.sent_bytes for c in vol.collectives)
    return {"formula": "; ".join(f"{c.op} {c.what}" for c in vol.collectives), "sent_bytes": vol.sent_bytes,
            "gloo_sent_bytes": gloo}


def _row(name: str, spec: RunSpec, ref: dict[str, Any], results: list[dict[str, Any]], wall: float,
         world: int) -> StrategyRow:
    r0 = results[0]
    rel = max(float((r0["state"][k] - v).norm() / max(float(v.norm()), 1e-30)) for k, v in ref["state"].items())
    dloss = max(abs(a - b) for a, b in zip(r0["losses"], ref["losses"], strict=True))
    base = name.rpartition(":")[2]
    params = int(r0["params"])
    # FSDP2's zero2 shards the parameters at rest too (it only keeps them gathered from forward to backward):
    # between steps it holds what ZeRO-3 holds, not the paper's ZeRO-2 (full parameters on every rank).
    formula_key = {"fsdp": "zero3", "zero2": "zero3"}.get(base, base) if name == base else base
    # DeepSpeed keeps an fp32 master copy of its partition beside the fp32 model: K = 8 (AdamW) + 4.
    engine = name != base
    per = (4.0, 4.0, 12.0) if engine else (4.0, 4.0, 8.0)
    mem_formula = zero_components(params, world, formula_key, tp_params=r0["tp_params"], bytes_per=per) if (
        formula_key in ("ddp", "zero1", "zero2", "zero3", "tp")) else {}
    memory = dict(r0["memory"])
    if engine:
        memory["optimizer_states"] += memory.get("master_weights", 0)
    records = r0["comm"]["records"]
    small_wire = sum(int(r["wire_bytes"] or 0) for r in records if r["size_bytes"] < SMALL)
    if any(r["wire_bytes"] is None for r in records):  # point to point (pp): only the step's total is known
        model_wire = int(r0["comm"]["wire_total"] or 0) - small_wire
    else:
        model_wire = sum(int(r["wire_bytes"] or 0) for r in records if r["size_bytes"] >= SMALL)
    return StrategyRow(strategy=name, max_weight_rel_diff=rel, max_loss_diff=dloss, memory=memory,
                       memory_formula=mem_formula, comm=r0["comm"]["summary"],
                       comm_formula=_formula_comm(name, spec, params, world), wire_model_bytes=model_wire,
                       wire_small_bytes=small_wire, step_time_s=max(r["step_time_s"] for r in results),
                       wall_s=wall, losses=list(r0["losses"]), comm_records=records)


def measure_strategies(strategies: list[str], spec: RunSpec, world: int = 2) -> dict[str, Any]:
    """The single-process reference, then every strategy on ``world`` processes (module docstring)."""
    t0 = time.perf_counter()
    ref = reference_run(spec)
    ref_wall = time.perf_counter() - t0
    rows: list[StrategyRow] = []
    for name in strategies:
        t0 = time.perf_counter()
        try:
            preload = PRELOAD if name.startswith("deepspeed:") else ()
            results = run_ranks(train_rank, world, spec=RunSpec(**{**spec.to_dict(), "strategy": name}),
                                preload=preload)
        except (RuntimeError, ImportError) as exc:
            rows.append(StrategyRow(name, float("nan"), float("nan"), {}, {}, {}, {}, 0, 0, float("nan"),
                                    time.perf_counter() - t0, error=str(exc).splitlines()[0][:300]))
            continue
        rows.append(_row(name, spec, ref, results, time.perf_counter() - t0, world))
    return {"world": world, "spec": spec.to_dict(), "params": ref["params"], "tp_params": ref["tp_params"],
            "reference": {"losses": ref["losses"], "memory": ref["memory"], "step_time_s": ref["step_time_s"],
                          "wall_s": ref_wall},
            "rows": [r.__dict__ for r in rows]}


__all__ = ["FORMULA_OF", "SMALL", "StrategyRow", "measure_strategies"]
