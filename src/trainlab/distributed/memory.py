"""Memory per rank under each strategy: the ZeRO formulas by component, and the same components measured.

**Formulas** (Rajbhandari et al. 2020, "ZeRO", section 5 and Fig. 1), per rank with ``Ψ`` parameters
on ``p`` data-parallel ranks, ``a`` bytes per parameter, ``g`` per gradient and ``K`` of optimizer
state (mixed-precision Adam: a = g = 2, K = 12; trainlab's fp32 AdamW: a = g = 4, K = 8)::

                  parameters   gradients   optimizer states
    DDP (stage 0)    a·Ψ          g·Ψ          K·Ψ
    ZeRO-1           a·Ψ          g·Ψ          K·Ψ/p
    ZeRO-2           a·Ψ          g·Ψ/p        K·Ψ/p
    ZeRO-3 / FSDP    a·Ψ/p        g·Ψ/p        K·Ψ/p
    TP (degree p)    (Ψ_blocks/p + Ψ_rest)·a, and the same split for gradients and states

so ZeRO-1 saves up to 4x at p → ∞ (16 → 4 bytes with K = 12), ZeRO-2 8x (16 → 2), ZeRO-3 p x: the
seed's "4x, 8x, Px". `zero_components` gives the three columns; with (2, 2, 12) they add up to
`trainlab.memory.estimate.zero_bytes_per_gpu` (the paper's 120 / 31.4 / 16.6 / 1.9 GB table).

**Measurement** (`RankMemory`, `measure_rank_step`): on each rank, the bytes of the storages of the
local parameters (a DTensor counts its local shard), of the gradients as the optimizer phase starts
(after all micro-batches' backward and reduction), of the optimizer states after the update; and,
with `trainlab.memory.measure.LiveTensorTracker` (the one CPU meter, here taught to count a
DTensor's local shard), the activations (bytes live after the first micro-batch's forward that were
not live before it: for FSDP this includes the unsharded parameters still held) and the step's peak.
DDP's reducer also holds its gradient buckets (one more copy of the gradients, unless
``gradient_as_bucket_view``): they are allocated when the model is wrapped, which `wrap_bytes` sees.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from trainlab.errors import UserError
from trainlab.memory.measure import LiveTensorTracker
from trainlab.train.step import StepHooks

#: Bytes per parameter: (parameter, gradient, optimizer state) as trainlab trains (fp32 master weights, AdamW).
FP32_ADAMW = (4.0, 4.0, 8.0)
#: The ZeRO paper's mixed-precision Adam (fp16 parameters and gradients, K = 12).
MIXED_ADAM = (2.0, 2.0, 12.0)

_SHARDED = {"none": (False, False, False), "ddp": (False, False, False), "zero1": (False, False, True),
            "zero2": (False, True, True), "zero3": (True, True, True), "fsdp": (True, True, True)}


def zero_components(params: float, p: int, strategy: str, *, bytes_per: tuple[float, float, float] = FP32_ADAMW,
                    tp_params: float | None = None) -> dict[str, float]:
    """Parameters, gradients, optimizer states in bytes per rank (module docstring).

    ``strategy``: none, ddp, zero1, zero2, zero3/fsdp, or tp (then ``tp_params``, the parameters the
    plan shards, is needed) or pp (``params`` = the stage's parameters, nothing sharded)."""
    if p < 1:
        raise UserError(f"need at least one rank, got {p}")
    a, g, k = bytes_per
    psi = float(params)
    if strategy == "tp":
        if tp_params is None:
            raise UserError("the tp formula needs the parameters the plan shards (tp_params)")
        local = float(tp_params) / p + (psi - float(tp_params))
        return {"parameters": a * local, "gradients": g * local, "optimizer_states": k * local}
    if strategy == "pp":
        return {"parameters": a * psi, "gradients": g * psi, "optimizer_states": k * psi}
    if strategy not in _SHARDED:
        raise UserError(f"unknown strategy {strategy!r} for the memory formula")
    sp, sg, so = _SHARDED[strategy]
    return {"parameters": a * psi / (p if sp else 1), "gradients": g * psi / (p if sg else 1),
            "optimizer_states": k * psi / (p if so else 1)}


def local_tensor(t: Tensor) -> Tensor:
    """A DTensor's local shard (the storage this rank holds); any other tensor itself."""
    inner = getattr(t, "_local_tensor", None)
    return inner if isinstance(inner, Tensor) else t


def local_bytes(tensors: Any) -> int:
    """Bytes of the distinct local storages behind ``tensors`` (DTensors: their shards)."""
    seen: set[int] = set()
    total = 0
    for t in tensors:
        if not isinstance(t, Tensor):
            continue
        t = local_tensor(t)
        if t.is_meta:
            continue
        st = t.untyped_storage()
        key = st.data_ptr() or id(st)
        if key not in seen:
            seen.add(key)
            total += st.nbytes()
    return total


class LocalTensorTracker(LiveTensorTracker):
    """`LiveTensorTracker` that counts a DTensor output by its local shard."""

    def _track(self, t: Tensor) -> None:
        # A storage without data (FSDP's freed unsharded buffers) holds no bytes.
        with contextlib.suppress(RuntimeError):
            super()._track(local_tensor(t))


@dataclass
class RankMemory:
    """One rank's measured bytes (module docstring); ``formula`` holds the ZeRO columns beside them."""

    parameters: int = 0
    gradients: int = 0
    optimizer_states: int = 0
    activations: int = 0
    peak: int = 0
    wrap_bytes: int = 0
    master_weights: int = 0  # an engine's own fp32 copy of its parameter partition (DeepSpeed)
    formula: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class _Hooks(StepHooks):
    def __init__(self, tracker: LiveTensorTracker, model: nn.Module, result: RankMemory, extras: Any) -> None:
        self.tracker, self.model, self.result, self.extras = tracker, model, result, extras

    @contextlib.contextmanager
    def phase(self, name: str, index: int) -> Iterator[None]:
        if name == "optimizer":
            grads = [p.grad for p in self.model.parameters() if p.grad is not None]
            if self.extras is not None:  # an engine's own gradient buffers (DeepSpeed's partitions)
                grads += self.extras(self.model).get("gradients", [])
            self.result.gradients = local_bytes(grads)
        before = self.tracker.live
        self.tracker.mark(f"{name}{index}")
        yield
        if name == "forward" and index == 0:
            self.result.activations = self.tracker.live - before


@contextlib.contextmanager
def track_wrap(tensors: Any) -> Iterator[RankMemory]:
    """Measure the bytes a strategy's ``wrap`` adds (DDP's gradient buckets; FSDP frees the unsharded weights)."""
    result = RankMemory()
    tracker = LocalTensorTracker(record=False)
    with tracker:
        tracker.register(tensors)
        del tensors  # the strategy may free the originals (FSDP keeps only shards)
        start = tracker.live
        yield result
        result.wrap_bytes = tracker.live - start


def measure_rank_step(model: nn.Module, optimizer: torch.optim.Optimizer, run_step: Any, *,
                      extras: Any = None) -> RankMemory:
    """Run ``run_step(hooks)`` (one `trainlab.train.optimizer_step` given ``hooks=``) under the tracker.

    ``extras(model) -> {"gradients": [...], "master_weights": [...]}``: tensors an engine keeps outside
    ``p.grad`` and the optimizer's state (a strategy's ``memory_tensors``)."""
    result = RankMemory()
    tracker = LocalTensorTracker(record=False)
    inner = getattr(optimizer, "optim", optimizer)  # ZeroRedundancyOptimizer keeps its shard's states in .optim
    with tracker:
        tracker.register(list(model.parameters()) + list(model.buffers()))
        tracker.register(v for s in inner.state.values() for v in s.values() if isinstance(v, Tensor))
        tracker.reset_peak()
        run_step(_Hooks(tracker, model, result, extras))
        result.peak = tracker.peak
    own = extras(model).get("parameters") if extras is not None else None
    result.parameters = local_bytes(own if own is not None else model.parameters())
    result.optimizer_states = local_bytes(v for s in inner.state.values() for v in s.values()
                                          if isinstance(v, Tensor) and v.dim() > 0)
    if extras is not None:
        result.master_weights = local_bytes(extras(model).get("master_weights", []))
    return result


__all__ = ["FP32_ADAMW", "MIXED_ADAM", "LocalTensorTracker", "RankMemory", "local_bytes", "local_tensor",
           "measure_rank_step", "track_wrap", "zero_components"]
