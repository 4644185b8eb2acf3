"""Dynamic loss scaling for fp16 training, written out.

Micikevicius et al., 2018, "Mixed Precision Training" (ICLR), section 3.2: fp16 flushes gradient
values below 2^-24 to zero, so the loss is multiplied by a scale ``S`` before ``backward()``; by the
chain rule every gradient is multiplied by ``S`` too and moves up into fp16's range. Before the
update the gradients are divided by ``S`` again (in fp32, where the master weights live). ``S`` is
chosen dynamically:

    after backward:  found_inf = any gradient is inf or NaN
    step:            skip optimizer.step() if found_inf            (the update would be garbage)
    update:          if found_inf:  S ← S · backoff_factor,  clean ← 0
                     else:          clean ← clean + 1
                                    if clean == growth_interval:  S ← S · growth_factor (if finite),  clean ← 0

This is the algorithm of ``torch.amp.GradScaler`` (defaults: ``S₀ = 2^16``, growth 2, backoff 0.5,
interval 2000); `DynamicLossScaler` reproduces its decisions exactly, including the details that
decide a trace: ``S`` is an fp32 number, the gradients are multiplied by the fp32 value of
``1/S`` computed in fp64, non-finite values are detected in the *scaled* gradients, and a growth
that would overflow fp32 is not applied. The test runs both on the same overflow sequence.

Why ``unscale_`` is a separate call: gradient clipping must see true gradient norms, so the loop
calls ``unscale_`` then clips then ``step``; ``step`` does not unscale twice.

`DynamicLossScaler` implements :class:`trainlab.train.amp.LossScaler` and its state dict uses
GradScaler's keys, so either can resume from the other's checkpoint.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch import Tensor


def _fp32(x: float) -> float:
    """Round ``x`` to the nearest fp32 value (GradScaler keeps its scale in an fp32 tensor)."""
    with np.errstate(over="ignore"):
        return float(np.float32(x))


class DynamicLossScaler:
    """Dynamic loss scaling (see the module docstring); the `LossScaler` of fp16 training.

    ``history`` records, per `update`, the scale used for that step and whether it overflowed
    (the loss-scale trace the lab plots).
    """

    def __init__(self, init_scale: float = 2.0**16, growth_factor: float = 2.0, backoff_factor: float = 0.5,
                 growth_interval: int = 2000, *, record_history: bool = True) -> None:
        if not init_scale > 0:
            raise ValueError(f"init_scale must be > 0, got {init_scale}")
        if not growth_factor > 1.0:
            raise ValueError(f"growth_factor must be > 1, got {growth_factor}")
        if not 0.0 < backoff_factor < 1.0:
            raise ValueError(f"backoff_factor must be in (0, 1), got {backoff_factor}")
        if growth_interval < 1:
            raise ValueError(f"growth_interval must be >= 1, got {growth_interval}")
        self._scale = _fp32(init_scale)
        self.growth_factor = float(growth_factor)
        self.backoff_factor = float(backoff_factor)
        self.growth_interval = int(growth_interval)
        self._growth_tracker = 0  # consecutive clean steps since the last change of S
        # Per optimizer (by id) in this step: the overflow flag once unscale_ ran, and whether step ran.
        self._found_inf: dict[int, list[Tensor]] = {}
        self._stepped: set[int] = set()
        self.record_history = record_history
        self.history: list[dict[str, Any]] = []

    # -- the LossScaler protocol -----------------------------------------------------------------

    def scale(self, loss: Tensor) -> Tensor:
        """``loss · S`` (multiplied in the loss's dtype, as GradScaler does with its fp32 scale)."""
        return loss * self._scale

    @staticmethod
    def _grads(optimizer: torch.optim.Optimizer) -> Iterator[Tensor]:
        for group in optimizer.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    yield p.grad

    def unscale_(self, optimizer: torch.optim.Optimizer) -> None:
        """Multiply every gradient by ``1/S`` in place and record whether any was inf/NaN."""
        key = id(optimizer)
        if key in self._stepped:
            raise RuntimeError("unscale_() called after step() in the same iteration; call update() first")
        if key in self._found_inf:
            raise RuntimeError("unscale_() has already been called on this optimizer since the last update()")
        # fp64 reciprocal rounded to fp32: for a power-of-two S it is exact, otherwise it is the same
        # rounding GradScaler uses, so the unscaled gradients are bit-identical to its own.
        inv = _fp32(1.0 / self._scale)
        grads = list(self._grads(optimizer))
        for g in grads:
            if g.dtype == torch.float16:
                raise ValueError("fp16 gradients cannot be unscaled safely: keep the parameters (master "
                                 "weights) in fp32 and let autocast produce fp16 activations")
            if g.is_sparse:
                raise ValueError("sparse gradients are not supported by DynamicLossScaler")
        groups: dict[tuple[torch.device, torch.dtype], list[Tensor]] = {}
        for g in grads:
            groups.setdefault((g.device, g.dtype), []).append(g)
        flags: list[Tensor] = []
        for gs in groups.values():
            # Check before multiplying, as GradScaler does: a non-finite scaled gradient is the
            # overflow signal. The inf-norm of a tensor holding a NaN is NaN, so one reduction
            # per tensor catches inf and NaN alike. No host sync here; `found_inf` syncs.
            norms = torch._foreach_norm(gs, float("inf"))
            flags.append((~torch.isfinite(torch.stack(list(norms)))).any())
            torch._foreach_mul_(gs, inv)
        self._found_inf[key] = flags

    def found_inf(self, optimizer: torch.optim.Optimizer) -> bool:
        """Whether `unscale_` found inf/NaN gradients for ``optimizer`` in this step."""
        flags = self._found_inf.get(id(optimizer))
        if flags is None:
            raise RuntimeError("found_inf() before unscale_()")
        return any(bool(f.item()) for f in flags)

    def step(self, optimizer: torch.optim.Optimizer) -> bool:
        """``optimizer.step()`` unless the gradients overflowed; returns whether it stepped."""
        key = id(optimizer)
        if key in self._stepped:
            raise RuntimeError("step() has already been called since the last update()")
        if key not in self._found_inf:
            self.unscale_(optimizer)
        self._stepped.add(key)
        if self.found_inf(optimizer):
            return False
        optimizer.step()
        return True

    def update(self) -> None:
        """Back off after an overflow, grow after ``growth_interval`` clean steps (module docstring)."""
        if not self._found_inf:
            raise RuntimeError("update() called before unscale_()/step() recorded any overflow check")
        overflow = any(bool(f.item()) for flags in self._found_inf.values() for f in flags)
        used = self._scale
        if overflow:
            self._scale = _fp32(self._scale * self.backoff_factor)
            self._growth_tracker = 0
        else:
            clean = self._growth_tracker + 1
            if clean == self.growth_interval:
                grown = _fp32(self._scale * self.growth_factor)
                if math.isfinite(grown):
                    self._scale = grown
                self._growth_tracker = 0
            else:
                self._growth_tracker = clean
        if self.record_history:
            self.history.append({"scale": used, "overflow": overflow, "next_scale": self._scale})
        self._found_inf.clear()
        self._stepped.clear()

    def get_scale(self) -> float:
        return self._scale

    def state_dict(self) -> dict[str, Any]:
        """GradScaler's keys, so checkpoints are interchangeable."""
        return {"scale": self._scale, "growth_factor": self.growth_factor, "backoff_factor": self.backoff_factor,
                "growth_interval": self.growth_interval, "_growth_tracker": self._growth_tracker}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if not state:
            raise RuntimeError("empty loss-scaler state (saved from a run without fp16 loss scaling?)")
        self._scale = _fp32(float(state["scale"]))
        self.growth_factor = float(state["growth_factor"])
        self.backoff_factor = float(state["backoff_factor"])
        self.growth_interval = int(state["growth_interval"])
        self._growth_tracker = int(state["_growth_tracker"])


__all__ = ["DynamicLossScaler"]
