"""Mixed precision: the autocast context and the loss-scaler interface the loop talks to.

* fp32: no autocast, no scaling.
* bf16: ``torch.autocast(dtype=bfloat16)``. bf16 has fp32's 8-bit exponent, so gradients do not
  underflow and no loss scaling is needed (Kalamkar et al., "A Study of BFLOAT16 for Deep
  Learning Training", 2019).
* fp16: ``torch.autocast(dtype=float16)`` plus dynamic loss scaling (Micikevicius et al., "Mixed
  Precision Training", ICLR 2018): the loss is multiplied by a scale ``S`` so that small gradients
  survive fp16's 5-bit exponent; gradients are divided by ``S`` before the update; a step whose
  gradients overflowed (inf/NaN) is skipped and ``S`` halves; after ``growth_interval`` clean
  steps ``S`` doubles.

Parameters and optimizer state stay fp32 in every mode (autocast casts per op), so the update
itself is never low-precision. fp16 autocast also works on CPU (torch ≥ 2.x), though slowly; it
is useful here for testing the skip path, not for speed.

`LossScaler` is the loop's only view of scaling. fp16 uses our own
`trainlab.precision.scaler.DynamicLossScaler`; `TorchLossScaler` wraps ``torch.amp.GradScaler``
and is kept as the reference the scaler's parity test compares against; `NoLossScaler` is the
identity for fp32/bf16. Any other scaler plugs in by implementing the protocol and passing
``scaler=`` to the `Trainer`.
"""

from __future__ import annotations

import contextlib
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor

from trainlab.config import Precision
from trainlab.errors import UserError

_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def autocast_context(device: torch.device, precision: Precision) -> contextlib.AbstractContextManager[Any]:
    """The forward-pass context for ``precision`` on ``device`` (a no-op for fp32)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    if precision not in _DTYPES:
        raise UserError(f"unknown precision {precision!r}; expected fp32, bf16 or fp16",
                        key="train.precision")
    if not torch.amp.is_autocast_available(device.type):
        raise UserError(f"{precision} autocast is not available on device {device.type!r}; "
                        "use precision fp32", key="train.precision")
    return torch.autocast(device_type=device.type, dtype=_DTYPES[precision])


@runtime_checkable
class LossScaler(Protocol):
    """The loop's contract with loss scaling (call order per step: scale → unscale_ → step → update)."""

    def scale(self, loss: Tensor) -> Tensor:
        """``loss · S`` (what to call ``backward()`` on)."""
        ...

    def unscale_(self, optimizer: torch.optim.Optimizer) -> None:
        """Divide the gradients by ``S`` in place and record whether any is inf/NaN."""
        ...

    def step(self, optimizer: torch.optim.Optimizer) -> bool:
        """``optimizer.step()`` unless the gradients overflowed; return whether it stepped."""
        ...

    def update(self) -> None:
        """Adjust ``S`` after a step (halve on overflow, grow after a clean streak)."""
        ...

    def get_scale(self) -> float: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class NoLossScaler:
    """fp32/bf16: scale 1, every step is taken."""

    def scale(self, loss: Tensor) -> Tensor:
        return loss

    def unscale_(self, optimizer: torch.optim.Optimizer) -> None:
        del optimizer

    def step(self, optimizer: torch.optim.Optimizer) -> bool:
        optimizer.step()
        return True

    def update(self) -> None:
        pass

    def get_scale(self) -> float:
        return 1.0

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        del state


class TorchLossScaler:
    """``torch.amp.GradScaler`` behind the `LossScaler` protocol.

    GradScaler does not say whether ``step`` skipped; we read the overflow flags that ``unscale_``
    recorded (``_per_optimizer_states[...]["found_inf_per_device"]``, the same ones GradScaler's
    own ``step`` reads). That is private API, hence isolated here.
    """

    def __init__(self, device: torch.device, init_scale: float = 2.0**16,
                 growth_interval: int = 2000) -> None:
        self._scaler = torch.amp.GradScaler(device.type, init_scale=init_scale,
                                            growth_interval=growth_interval)

    def scale(self, loss: Tensor) -> Tensor:
        return self._scaler.scale(loss)

    def unscale_(self, optimizer: torch.optim.Optimizer) -> None:
        self._scaler.unscale_(optimizer)

    def _found_inf(self, optimizer: torch.optim.Optimizer) -> bool:
        state = self._scaler._per_optimizer_states[id(optimizer)]
        flags = state.get("found_inf_per_device", {})
        return any(float(v.item()) != 0.0 for v in flags.values())

    def step(self, optimizer: torch.optim.Optimizer) -> bool:
        state = self._scaler._per_optimizer_states[id(optimizer)]
        if not state.get("found_inf_per_device"):
            self._scaler.unscale_(optimizer)
        overflow = self._found_inf(optimizer)
        self._scaler.step(optimizer)
        return not overflow

    def update(self) -> None:
        self._scaler.update()

    def get_scale(self) -> float:
        return float(self._scaler.get_scale())

    def state_dict(self) -> dict[str, Any]:
        return self._scaler.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._scaler.load_state_dict(state)


def build_loss_scaler(precision: Precision, device: torch.device, init_scale: float = 2.0**16) -> LossScaler:
    """`DynamicLossScaler` for fp16 (on any device), `NoLossScaler` otherwise."""
    if precision == "fp16":
        from trainlab.precision.scaler import DynamicLossScaler

        del device  # our scaler keeps S on the host and works on gradients wherever they are
        return DynamicLossScaler(init_scale=init_scale)
    return NoLossScaler()
