"""Turn ``train.device`` into a ``torch.device``, failing early and clearly."""

from __future__ import annotations

import torch

from trainlab.errors import UserError


def resolve_device(spec: str = "auto") -> torch.device:
    """``auto`` → ``cuda`` if available, else ``cpu``; ``cpu``, ``cuda``, ``cuda:N``, ``mps`` as named.

    Asking for a device that is not there is a `UserError` (at start-up, not at the first
    ``.to()`` deep inside the loop).
    """
    spec = spec.strip().lower()
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except RuntimeError:
        raise UserError(f"unknown device {spec!r}; expected auto, cpu, cuda, cuda:N or mps",
                        key="train.device") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"device {spec!r} requested but CUDA is not available "
                            "(no GPU, or a CPU-only torch build); use train.device=cpu or auto",
                            key="train.device")
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise UserError(f"device {spec!r} requested but only {count} CUDA device(s) exist",
                            key="train.device")
    elif device.type == "mps":
        if not torch.backends.mps.is_available():
            raise UserError("device 'mps' requested but MPS is not available", key="train.device")
    elif device.type != "cpu":
        raise UserError(f"unsupported device {spec!r}; expected auto, cpu, cuda, cuda:N or mps",
                        key="train.device")
    return device
