"""Communication per training step: the analytic volume of each strategy, and a meter that counts it.

**Formulas** (per rank, ``p`` ranks, ``S`` bytes of the tensor being reduced or gathered; Patarasuk &
Yuan 2009, "Bandwidth optimal all-reduce algorithms"; Rajbhandari et al. 2020, "ZeRO", section 7):

    ring all-reduce      2·(p−1)/p · S   (reduce-scatter then all-gather: 2(p−1) steps of S/p each)
    reduce-scatter         (p−1)/p · S
    all-gather             (p−1)/p · S   (S = the gathered, full size)

Seed 001 writes "2(p−1) × model size" for the all-reduce. Each of the ``2(p−1)`` ring steps moves one
chunk of ``S/p``, so one rank sends ``2(p−1)/p·S``; ``2(p−1)·S`` is what *all p ranks together* send
(p times the per-rank volume). `seed_allreduce_check` computes both and says which one a rank sends.

Per optimizer step, with ``Ψ`` parameters and gradients of ``e`` bytes (``S = Ψ·e``):

    DDP          all-reduce(grads)                                         2(p−1)/p·S
    ZeRO-1/2     reduce-scatter(grads) + all-gather(updated params)        2(p−1)/p·S   (= DDP)
    ZeRO-3/FSDP  all-gather(params) in forward and again in backward
                 + reduce-scatter(grads)                                   3(p−1)/p·S   (= 1.5 × DDP)
    TP (Megatron, Shoeybi et al. 2019): per layer and micro-batch, 2 all-reduces of the activations
                 ``b·s·h·e_act`` in forward and 2 in backward              4·L·2(p−1)/p·b·s·h·e_act
    PP (GPipe / 1F1B): per micro-batch and stage boundary, the activation ``b·s·h·e_act`` forward and
                 its gradient backward, point to point                    2·m·b·s·h·e_act per boundary

With gradient accumulation, DDP and ZeRO-1/2 reduce once per optimizer step (no sync in micro-steps);
FSDP/ZeRO-3 gathers parameters for every micro-batch's forward and backward.

**Measurement** (`CommMeter`): a ``TorchDispatchMode`` that sees every ``c10d`` collective op (the
dispatcher entry of every process-group collective, which DDP's C++ reducer, FSDP2, DTensor and the
pipelining schedules all go through: ``c10d.allreduce_``, ``_allgather_base_``,
``_reduce_scatter_base_``, ``send``/``recv`` ...), waits for it (so collectives run one at a time
while measuring; point-to-point sends and receives are not waited for, as a pipeline posts them in
batches, and get no wire count of their own: the block's total has them) and records, for each, the
*logical* size (the full tensor ``S``) and the *wire* bytes: the process's ``wchar`` counter in
``/proc/self/io`` before and after, which counts every byte
the process passed to ``write``/``writev`` (gloo's TCP transport sends with ``writev``), so it is what
actually left this rank, headers included. On CUDA (NCCL) the wire count is not available and only
the logical sizes are recorded.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from trainlab.errors import UserError
from trainlab.memory.estimate import parse_count

#: Bytes per element of the dtypes gradients and parameters are communicated in.
DTYPE_BYTES: dict[str, float] = {"fp32": 4, "tf32": 4, "bf16": 2, "fp16": 2, "fp8": 1, "int8": 1}

#: The strategies `strategy_volume` knows.
STRATEGIES = ("ddp", "zero1", "zero2", "zero3", "fsdp", "tp", "pp")


def _check_p(p: int) -> None:
    if p < 1:
        raise UserError(f"need at least one rank, got {p}")


def allreduce_bytes(size: float, p: int) -> float:
    """Bytes one rank sends in a ring all-reduce of ``size`` bytes: ``2(p−1)/p·S``."""
    _check_p(p)
    return 2 * (p - 1) / p * size


def reduce_scatter_bytes(size: float, p: int) -> float:
    """Bytes one rank sends in a ring reduce-scatter of ``size`` bytes (the full input): ``(p−1)/p·S``."""
    _check_p(p)
    return (p - 1) / p * size


def all_gather_bytes(size: float, p: int) -> float:
    """Bytes one rank sends in a ring all-gather whose output is ``size`` bytes: ``(p−1)/p·S``."""
    _check_p(p)
    return (p - 1) / p * size


def _num(v: float) -> float | int:
    """Whole byte counts as ints in JSON (24500000000, not 24500000000.0)."""
    return int(v) if float(v).is_integer() else v


def dtype_bytes(dtype: str) -> float:
    if dtype not in DTYPE_BYTES:
        raise UserError(f"unknown dtype {dtype!r}; expected one of {', '.join(DTYPE_BYTES)}")
    return DTYPE_BYTES[dtype]


@dataclass
class Collective:
    """One kind of collective in a step: how many times, on what size, and what a rank sends."""

    op: str  # all_reduce | reduce_scatter | all_gather | send_recv
    what: str
    size_bytes: float  # S: the full tensor (summed over calls)
    sent_bytes: float  # what one rank sends (ring)
    calls: int = 1


@dataclass
class StrategyVolume:
    strategy: str
    collectives: list[Collective]
    note: str = ""

    @property
    def sent_bytes(self) -> float:
        return sum(c.sent_bytes for c in self.collectives)

    def to_dict(self, bandwidth: float | None = None) -> dict[str, Any]:
        colls = [{k: _num(v) if isinstance(v, float) else v for k, v in asdict(c).items()} for c in self.collectives]
        d = {"strategy": self.strategy, "collectives": colls, "sent_bytes_per_rank": _num(self.sent_bytes),
             "note": self.note}
        if bandwidth:
            d["seconds"] = self.sent_bytes / bandwidth
        return d


def strategy_volume(strategy: str, params: float, p: int, *, dtype: str = "bf16", grad_accum: int = 1,
                    layers: int | None = None, batch: int | None = None, seq: int | None = None,
                    hidden: int | None = None, act_dtype: str | None = None) -> StrategyVolume:
    """Bytes one rank sends per optimizer step under ``strategy`` (module docstring).

    ``params`` and ``dtype``: the parameter/gradient tensors (``S = params·bytes(dtype)``).
    TP and PP move activations: they need ``layers`` (TP), ``batch``, ``seq`` and ``hidden``
    (per micro-batch; ``grad_accum`` micro-batches per step) and count ``act_dtype`` (default ``dtype``).
    """
    e = dtype_bytes(dtype)
    s = float(params) * e
    m = max(int(grad_accum), 1)
    if strategy == "ddp":
        return StrategyVolume("ddp", [Collective("all_reduce", "gradients", s, allreduce_bytes(s, p))],
                              "one all-reduce per optimizer step (accumulation micro-steps skip it)")
    if strategy in ("zero1", "zero2"):
        return StrategyVolume(strategy, [
            Collective("reduce_scatter", "gradients", s, reduce_scatter_bytes(s, p)),
            Collective("all_gather", "updated parameters", s, all_gather_bytes(s, p))],
            "each rank updates its 1/p of the optimizer states; same volume as DDP")
    if strategy in ("zero3", "fsdp"):
        return StrategyVolume(strategy, [
            Collective("all_gather", "parameters (forward)", s * m, all_gather_bytes(s, p) * m, m),
            Collective("all_gather", "parameters (backward)", s * m, all_gather_bytes(s, p) * m, m),
            Collective("reduce_scatter", "gradients", s * m, reduce_scatter_bytes(s, p) * m, m)],
            "parameters gathered for every micro-batch's forward and backward: 1.5x DDP per micro-batch")
    if strategy in ("tp", "pp"):
        missing = [n for n, v in (("batch", batch), ("seq", seq), ("hidden", hidden)) if not v]
        if strategy == "tp" and not layers:
            missing.insert(0, "layers")
        if missing:
            raise UserError(f"{strategy} communicates activations: give {', '.join('--' + x for x in missing)}")
        act = float(batch) * float(seq) * float(hidden) * dtype_bytes(act_dtype or dtype)  # type: ignore[arg-type]
        if strategy == "tp":
            n = 4 * int(layers) * m  # type: ignore[arg-type]
            return StrategyVolume("tp", [Collective("all_reduce", "activations (2 forward + 2 backward per layer)",
                                                    act * n, allreduce_bytes(act, p) * n, n)],
                                  "Megatron-LM: after attention's and the MLP's row-parallel matmuls, and their "
                                  "input gradients in backward")
        hops = 2 * m if p > 1 else 0
        return StrategyVolume("pp", [Collective("send_recv", "activations forward + their gradients backward, "
                                                "per stage boundary", act * hops, act * hops, hops)],
                              "point to point: a middle stage sends this; the first and last half of it")
    raise UserError(f"unknown strategy {strategy!r}; expected one of {', '.join(STRATEGIES)}")


def seed_allreduce_check(params: float, p: int, dtype: str = "bf16") -> dict[str, Any]:
    """Seed 001's "2(p−1) × model size" against the ring all-reduce's per-rank volume."""
    s = float(params) * dtype_bytes(dtype)
    per_rank = allreduce_bytes(s, p)
    seed = 2 * (p - 1) * s
    all_ranks = per_rank * p
    return {"model_bytes": _num(s), "per_rank_ring": _num(per_rank), "seed_2_p_minus_1_times_size": _num(seed),
            "all_ranks_total": _num(all_ranks), "seed_equals_per_rank": seed == per_rank,
            "seed_equals_all_ranks_total": abs(seed - all_ranks) <= 1e-9 * max(seed, 1.0),
            "verdict": (f"one rank sends 2(p-1)/p x S = {per_rank:,.0f} bytes; the seed's 2(p-1) x S = {seed:,.0f} "
                        f"is {seed / per_rank if per_rank else float('nan'):.0f}x that: the bytes all {p} ranks "
                        "send together, not one rank's")}


def comm_result(*, params: str | float, gpus: int, dtype: str = "bf16", bandwidth: float | None = None,
                grad_accum: int = 1, layers: int | None = None, batch: int | None = None, seq: int | None = None,
                hidden: int | None = None) -> dict[str, Any]:
    """The document ``trainlab calc comm --json`` prints. ``bandwidth`` in GB/s (1e9 bytes/s) per rank."""
    psi = parse_count(params) if isinstance(params, str) else int(params)
    if gpus < 1:
        raise UserError(f"--gpus must be at least 1, got {gpus}")
    if bandwidth is not None and bandwidth <= 0:
        raise UserError(f"--bandwidth must be positive (GB/s), got {bandwidth}")
    s = psi * dtype_bytes(dtype)
    bw = bandwidth * 1e9 if bandwidth else None
    prims = {"all_reduce": _num(allreduce_bytes(s, gpus)), "reduce_scatter": _num(reduce_scatter_bytes(s, gpus)),
             "all_gather": _num(all_gather_bytes(s, gpus))}
    strategies = [strategy_volume(n, psi, gpus, dtype=dtype, grad_accum=grad_accum).to_dict(bw)
                  for n in ("ddp", "zero1", "zero2", "zero3")]
    if batch and seq and hidden:
        if layers:
            strategies.append(strategy_volume("tp", psi, gpus, dtype=dtype, grad_accum=grad_accum, layers=layers,
                                              batch=batch, seq=seq, hidden=hidden).to_dict(bw))
        strategies.append(strategy_volume("pp", psi, gpus, dtype=dtype, grad_accum=grad_accum, batch=batch,
                                          seq=seq, hidden=hidden).to_dict(bw))
    return {"params": psi, "gpus": gpus, "dtype": dtype, "model_bytes": _num(s), "bandwidth_gb_s": bandwidth,
            "primitives_bytes_per_rank": prims,
            "primitives_seconds": {k: v / bw for k, v in prims.items()} if bw else None,
            "strategies": strategies, "seed_check": seed_allreduce_check(psi, gpus, dtype),
            "source": "ring algorithms (Patarasuk & Yuan 2009); ZeRO section 7 (Rajbhandari et al. 2020); "
                      "Megatron-LM (Shoeybi et al. 2019)"}


def comm_tables(doc: dict[str, Any]) -> list[tuple[str, list[str], list[list[str]]]]:
    bw = doc["bandwidth_gb_s"]

    def secs(v: float) -> str:
        return f"{v / (bw * 1e9):.3f}" if bw else "-"

    prim = [[k.replace("_", "-"), f"{v:,.0f}", secs(v)] for k, v in doc["primitives_bytes_per_rank"].items()]
    rows = []
    for st in doc["strategies"]:
        detail = "; ".join(f"{c['op'].replace('_', '-')} {c['what']}" for c in st["collectives"])
        rows.append([st["strategy"], f"{st['sent_bytes_per_rank']:,.0f}", secs(st["sent_bytes_per_rank"]), detail])
    title = (f"communication: {doc['params']:,} parameters in {doc['dtype']} ({doc['model_bytes']:,.0f} bytes) "
             f"on {doc['gpus']} ranks" + (f", {bw:g} GB/s per rank" if bw else ""))
    seed = doc["seed_check"]
    return [(title + ": primitives", ["collective", "bytes sent per rank", "seconds"], prim),
            ("per optimizer step", ["strategy", "bytes sent per rank", "seconds", "collectives"], rows),
            ("seed 001: 'all-reduce sends 2(p-1) x model size'", ["", ""],
             [["ring, per rank", f"{seed['per_rank_ring']:,.0f}"],
              ["seed's 2(p-1) x S", f"{seed['seed_2_p_minus_1_times_size']:,.0f}"],
              ["verdict", seed["verdict"]]])]


# --------------------------------------------------------------------------------------------
# Measurement
# --------------------------------------------------------------------------------------------


def wire_bytes_written() -> int | None:
    """This process's ``wchar`` (bytes passed to write-like syscalls, all threads), or None if unreadable."""
    try:
        with open("/proc/self/io", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("wchar:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


#: c10d op name -> (collective kind, which tensor is the full size S).
_OPS: dict[str, str] = {
    "allreduce_": "all_reduce", "allreduce_coalesced_": "all_reduce",
    "_allgather_base_": "all_gather", "allgather_": "all_gather", "allgather_into_tensor_coalesced_": "all_gather",
    "allgather_coalesced_": "all_gather",
    "_reduce_scatter_base_": "reduce_scatter", "reduce_scatter_": "reduce_scatter",
    "reduce_scatter_tensor_coalesced_": "reduce_scatter",
    "broadcast_": "broadcast", "reduce_": "reduce", "alltoall_": "all_to_all", "alltoall_base_": "all_to_all",
    "send": "send", "recv_": "recv", "recv_any_source_": "recv", "gather_": "gather", "scatter_": "scatter",
    "barrier": "barrier",
    # functional collectives (DTensor)
    "all_reduce": "all_reduce", "all_reduce_coalesced": "all_reduce", "all_gather_into_tensor": "all_gather",
    "all_gather_into_tensor_coalesced": "all_gather", "reduce_scatter_tensor": "reduce_scatter",
    "reduce_scatter_tensor_coalesced": "reduce_scatter", "all_to_all_single": "all_to_all",
    "broadcast": "broadcast",
}


def _tensor_bytes(obj: Any) -> list[int]:
    return [t.numel() * t.element_size() for t in tree_flatten(obj)[0] if isinstance(t, torch.Tensor)]


def _full_size(kind: str, args: Any, out: Any, world: int) -> int:
    """``S``: the full tensor a collective reduces or gathers (the convention of the formulas)."""
    sizes = _tensor_bytes(args)
    if not sizes:
        return 0
    if kind == "all_gather":
        return max(max(sizes), min(sizes) * world)  # the output, or p x the input shard
    if kind in ("reduce_scatter", "all_to_all"):
        return max(max(sizes), min(sizes) * world)
    if kind in ("send", "recv", "broadcast", "reduce"):
        return sizes[0]
    return sum(sizes)  # all-reduce: every tensor of the (coalesced) call


@dataclass
class CollectiveRecord:
    kind: str
    op: str
    size_bytes: int
    wire_bytes: int | None


@dataclass
class CommMeter:
    """Count the collectives of a block of code (module docstring): ``with CommMeter(world) as m: ...``.

    ``m.summary()`` gives calls, logical bytes ``S`` and wire bytes per collective kind."""

    world: int = 1
    wait: bool = True
    records: list[CollectiveRecord] = field(default_factory=list)
    wire_total: int | None = None
    _mode: Any = None
    _w0: int | None = None

    def __enter__(self) -> CommMeter:
        meter = self

        class _Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
                kwargs = kwargs or {}
                ns = getattr(func, "namespace", "")
                if ns not in ("c10d", "_c10d_functional"):
                    return func(*args, **kwargs)
                name = func._schema.name.split("::", 1)[-1]
                kind = _OPS.get(name)
                if kind is None:  # wait_tensor, _wrap_tensor_autograd ...: bookkeeping, not collectives
                    return func(*args, **kwargs)
                # Point-to-point ops are not waited for: a pipeline posts sends and receives in batches,
                # and waiting for a send before its rank posts the matching receive would deadlock.
                p2p = kind in ("send", "recv")
                w0 = None if p2p else wire_bytes_written()
                out = func(*args, **kwargs)
                if meter.wait and kind != "barrier" and not p2p:
                    _wait(out, ns)
                w1 = None if p2p else wire_bytes_written()
                if kind != "barrier":
                    size = _full_size(kind, args, out, meter.world)
                    wire = None if w0 is None or w1 is None else w1 - w0
                    meter.records.append(CollectiveRecord(kind, f"{ns}.{name}", size, wire))
                return out

        self._mode = _Mode()
        self._w0 = wire_bytes_written()
        self._mode.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._mode.__exit__(*exc)
        w1 = wire_bytes_written()
        self.wire_total = None if self._w0 is None or w1 is None else w1 - self._w0

    def summary(self) -> dict[str, dict[str, float]]:
        out: dict[str, dict[str, float]] = defaultdict(lambda: {"calls": 0, "size_bytes": 0, "wire_bytes": 0})
        for r in self.records:
            row = out[r.kind]
            row["calls"] += 1
            row["size_bytes"] += r.size_bytes
            row["wire_bytes"] += r.wire_bytes or 0
        return dict(out)


def _wait(out: Any, ns: str) -> None:
    """Finish a collective now: c10d ops return ``Work`` objects; functional ones an async tensor."""
    if ns == "_c10d_functional":
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                torch.ops._c10d_functional.wait_tensor(t)
        return
    for obj in tree_flatten(out)[0]:
        if hasattr(obj, "wait") and not isinstance(obj, torch.Tensor):
            obj.wait()


__all__ = ["DTYPE_BYTES", "STRATEGIES", "Collective", "CollectiveRecord", "CommMeter", "StrategyVolume",
           "all_gather_bytes", "allreduce_bytes", "comm_result", "comm_tables", "dtype_bytes", "reduce_scatter_bytes",
           "seed_allreduce_check", "strategy_volume", "wire_bytes_written"]
