"""One ``attention()`` entry point over a registry of interchangeable backends.

Every backend computes the *same* function (the contract of
:func:`trainlab.attention.naive.naive_attention`: GQA, bottom-right causal, key padding mask,
zeros for rows with no visible key). They differ in speed, memory and in which calls they can
serve: devices, dtypes, head sizes, features. Each backend therefore declares a :class:`Supports`,
and the dispatcher matches it against the features of the call (:class:`AttentionCall`):

* ``backend="auto"`` picks the highest-priority backend that supports the call and can say why
  (``resolve_backend`` returns the reason, listing what was skipped and for what). A backend's
  priority may depend on the call (its ``rank`` hook): e.g. the Triton kernel ranks above SDPA only
  where SDPA loses its fused kernels (masks, windows), and never on the CPU interpreter;
* a named backend that cannot serve the call raises :class:`AttentionBackendError` (a
  :class:`~trainlab.errors.UserError`) naming the backend, the reason and what would work. A
  backend is never silently replaced, and never run on a call it does not support, because a
  kernel that ignores a mask gives a wrong answer, not an error.

Later backends (``flash_torch``, ``triton``, ``flash_attn``) register themselves with
:func:`register_backend`, with an ``available`` hook for optional imports and a ``check`` hook for
anything the declarative fields do not cover.

Sliding windows (``window=(left, right)``, see :mod:`trainlab.attention.mask`) are an optional
feature: a backend declares ``Supports(window=True)`` and then receives ``window=`` as a keyword;
backends that do not declare it are never called with a window (and never receive the keyword).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import torch
from torch import Tensor

from trainlab.attention.mask import Window, normalize_window
from trainlab.errors import UserError

FLOAT_DTYPES: frozenset[torch.dtype] = frozenset({torch.float16, torch.bfloat16, torch.float32, torch.float64})


class AttentionFn(Protocol):
    """The signature every backend implements."""

    def __call__(
        self,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        *,
        causal: bool = False,
        key_padding_mask: Tensor | None = None,
        scale: float | None = None,
        window: Window | None = None,
    ) -> Tensor: ...


class AttentionBackendError(UserError):
    """A requested attention backend is unknown, unavailable, or cannot serve this call."""


@dataclass(frozen=True)
class AttentionCall:
    """The features of one attention call that decide which backends can serve it."""

    device_type: str
    dtype: torch.dtype
    head_dim: int
    q_len: int
    k_len: int
    causal: bool
    padding_mask: bool
    gqa: bool
    requires_grad: bool
    window: bool = False

    @classmethod
    def of(
        cls,
        q: Tensor,
        k: Tensor | None = None,
        v: Tensor | None = None,
        *,
        causal: bool = False,
        key_padding_mask: Tensor | None = None,
        window: Window | None = None,
    ) -> AttentionCall:
        k = q if k is None else k
        v = k if v is None else v
        return cls(
            device_type=q.device.type,
            dtype=q.dtype,
            head_dim=q.shape[-1],
            q_len=q.shape[-2],
            k_len=k.shape[-2],
            causal=causal,
            padding_mask=key_padding_mask is not None,
            gqa=q.shape[1] != k.shape[1],
            requires_grad=torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad),
            window=normalize_window(window, causal) not in (None, (-1, 0)),
        )

    def describe(self) -> str:
        parts = [self.device_type, str(self.dtype).removeprefix("torch."), f"head_dim={self.head_dim}"]
        if self.causal:
            parts.append("causal" if self.q_len == self.k_len else "causal(Tq!=Tk)")
        if self.padding_mask:
            parts.append("padding_mask")
        if self.gqa:
            parts.append("gqa")
        if self.window:
            parts.append("window")
        if self.requires_grad:
            parts.append("backward")
        return "/".join(parts)


@dataclass(frozen=True)
class Supports:
    """What a backend can compute. ``why_not(call)`` is None when it can serve the call.

    ``devices``: device types (``"cpu"``, ``"cuda"``, ...) or None for any. ``head_dims``: allowed
    head sizes or None for any. ``available``: a runtime check (an optional import, a GPU
    capability) returning None when usable or the reason it is not; it runs whenever a new kind of
    call is resolved, so memoize anything expensive (``functools.cache``). ``check``: a last
    per-call check for constraints the fields cannot express.
    """

    devices: frozenset[str] | None = None
    dtypes: frozenset[torch.dtype] = FLOAT_DTYPES
    head_dims: frozenset[int] | None = None
    causal: bool = True
    causal_unequal_lengths: bool = True
    padding_mask: bool = True
    gqa: bool = True
    backward: bool = True
    window: bool = False
    available: Callable[[], str | None] | None = None
    check: Callable[[AttentionCall], str | None] | None = None

    def unavailable_reason(self) -> str | None:
        return self.available() if self.available is not None else None

    def why_not(self, call: AttentionCall) -> str | None:
        reason = self.unavailable_reason()
        if reason is not None:
            return reason
        if self.devices is not None and call.device_type not in self.devices:
            return f"device {call.device_type!r} not supported (supports {', '.join(sorted(self.devices))})"
        if call.dtype not in self.dtypes:
            names = ", ".join(sorted(str(d).removeprefix("torch.") for d in self.dtypes))
            return f"dtype {str(call.dtype).removeprefix('torch.')} not supported (supports {names})"
        if self.head_dims is not None and call.head_dim not in self.head_dims:
            return f"head_dim {call.head_dim} not supported (supports {sorted(self.head_dims)})"
        if call.causal and not self.causal:
            return "causal masking not supported"
        if call.causal and call.q_len != call.k_len and not self.causal_unequal_lengths:
            return f"causal attention with Tq={call.q_len} != Tk={call.k_len} not supported"
        if call.padding_mask and not self.padding_mask:
            return "key padding mask not supported"
        if call.gqa and not self.gqa:
            return "grouped-query attention (Hq != Hkv) not supported"
        if call.requires_grad and not self.backward:
            return "backward not supported (inputs require grad)"
        if call.window and not self.window:
            return "sliding window not supported"
        return self.check(call) if self.check is not None else None


@dataclass(frozen=True)
class Backend:
    """A registered backend: its function, what it supports and how much ``auto`` prefers it.

    ``rank(call)``, when given, replaces ``priority`` for that call under ``auto`` (a backend that is
    fastest only for some shapes or devices); a forced backend ignores it.
    """

    name: str
    fn: AttentionFn
    supports: Supports = field(default_factory=Supports)
    priority: int = 0
    description: str = ""
    rank: Callable[[AttentionCall], int] | None = None

    def priority_for(self, call: AttentionCall) -> int:
        return self.rank(call) if self.rank is not None else self.priority


_REGISTRY: dict[str, Backend] = {}
# (backend name, call) -> (chosen name, reason, error or None). Resolution runs on every attention
# call of every layer, so its result is memoized; registering a backend clears the memo.
_RESOLVED: dict[tuple[str, AttentionCall], tuple[str, str, str | None]] = {}
_MAX_RESOLVED = 4096


def register_backend(
    name: str,
    fn: AttentionFn,
    *,
    supports: Supports | None = None,
    priority: int = 0,
    description: str = "",
    replace: bool = False,
    rank: Callable[[AttentionCall], int] | None = None,
) -> Backend:
    """Add a backend under ``name``. Higher ``priority`` (or ``rank(call)``) wins under ``backend="auto"``."""
    if name == "auto":
        raise ValueError("'auto' is reserved for automatic selection")
    if name in _REGISTRY and not replace:
        raise ValueError(f"attention backend {name!r} is already registered (pass replace=True)")
    backend = Backend(name, fn, supports or Supports(), priority, description, rank)
    _REGISTRY[name] = backend
    _RESOLVED.clear()
    return backend


def unregister_backend(name: str) -> None:
    """Remove a backend (tests and plugins); unknown names are ignored."""
    _REGISTRY.pop(name, None)
    _RESOLVED.clear()


def get_backend(name: str) -> Backend:
    """The registered backend ``name``, or an :class:`AttentionBackendError` listing the known ones."""
    try:
        return _REGISTRY[name]
    except KeyError:
        known = ", ".join(["auto", *registered_backends()])
        raise AttentionBackendError(f"unknown attention backend {name!r}; expected one of {known}") from None


def registered_backends() -> list[str]:
    """All registered names, highest priority first."""
    return [b.name for b in sorted(_REGISTRY.values(), key=lambda b: -b.priority)]


def available_backends() -> list[str]:
    """Registered names whose runtime requirements are met here, highest priority first."""
    return [n for n in registered_backends() if _REGISTRY[n].supports.unavailable_reason() is None]


def check_backend_name(name: str) -> None:
    """Fail early (e.g. when building a model) if ``name`` is neither ``auto`` nor usable here."""
    if name == "auto":
        return
    reason = get_backend(name).supports.unavailable_reason()
    if reason is not None:
        raise AttentionBackendError(f"attention backend {name!r} is unavailable: {reason}")


def _resolve(name: str, call: AttentionCall) -> tuple[str, str, str | None]:
    key = (name, call)
    hit = _RESOLVED.get(key)
    if hit is not None:
        return hit
    if name != "auto":
        backend = get_backend(name)
        reason = backend.supports.why_not(call)
        if reason is None:
            result = (name, f"{name!r} requested", None)
        else:
            usable = [b for b in registered_backends() if _REGISTRY[b].supports.why_not(call) is None]
            hint = f"; backends that can: {', '.join(usable)}" if usable else ""
            result = (name, "", f"attention backend {name!r} cannot run {call.describe()}: {reason}{hint}")
    else:
        skipped: list[str] = []
        result = ("", "", f"no attention backend supports {call.describe()}")
        # Stable sort: equal call priorities keep the registry's static order.
        ranked = sorted(registered_backends(), key=lambda n: -_REGISTRY[n].priority_for(call))
        for candidate in ranked:
            reason = _REGISTRY[candidate].supports.why_not(call)
            if reason is None:
                why = f"auto chose {candidate!r} (highest priority supporting {call.describe()})"
                if skipped:
                    why += "; skipped " + "; ".join(skipped)
                result = (candidate, why, None)
                break
            skipped.append(f"{candidate}: {reason}")
        else:
            if skipped:
                result = ("", "", result[2] + " (" + "; ".join(skipped) + ")")
    if len(_RESOLVED) >= _MAX_RESOLVED:  # one entry per sequence length while decoding: bound it
        _RESOLVED.clear()
    _RESOLVED[key] = result
    return result


def _canonical(causal: bool, window: Window | None) -> tuple[bool, Window | None]:
    """``(causal, window)`` with a window that only repeats causality (or nothing) dropped."""
    positional = normalize_window(window, causal)
    if positional == (-1, 0):
        return True, None
    return causal, positional


def resolve_backend(
    name: str,
    q: Tensor,
    k: Tensor | None = None,
    v: Tensor | None = None,
    *,
    causal: bool = False,
    key_padding_mask: Tensor | None = None,
    window: Window | None = None,
) -> tuple[str, str]:
    """Which backend ``attention(q, k, v, ..., backend=name)`` would run, and why.

    Raises :class:`AttentionBackendError` for an unknown name, or when the named backend (or, for
    ``"auto"``, every backend) cannot serve the call.
    """
    causal, window = _canonical(causal, window)
    call = AttentionCall.of(q, k, v, causal=causal, key_padding_mask=key_padding_mask, window=window)
    chosen, reason, error = _resolve(name, call)
    if error is not None:
        raise AttentionBackendError(error)
    return chosen, reason


def attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    causal: bool = False,
    key_padding_mask: Tensor | None = None,
    scale: float | None = None,
    window: Window | None = None,
    backend: str = "auto",
) -> Tensor:
    """Scaled dot-product attention ``softmax(q kᵀ · scale + mask) v`` on the chosen backend.

    Shapes: ``q [B,Hq,Tq,D]``, ``k, v [B,Hkv,Tk,D]`` with ``Hq % Hkv == 0``; returns ``[B,Hq,Tq,D]``.
    ``causal`` is bottom-right aligned (query ``i`` sees keys ``j <= i + Tk - Tq``);
    ``key_padding_mask [B,Tk]`` is True for real keys; ``scale`` defaults to ``1/sqrt(D)``;
    ``window=(left, right)`` restricts each query to a band of keys around its diagonal (-1: unbounded).
    """
    if window is not None:
        causal, window = _canonical(causal, window)
    call = AttentionCall.of(q, k, v, causal=causal, key_padding_mask=key_padding_mask, window=window)
    chosen, _, error = _resolve(backend, call)
    if error is not None:
        raise AttentionBackendError(error)
    fn = _REGISTRY[chosen].fn
    if window is not None:
        return fn(q, k, v, causal=causal, key_padding_mask=key_padding_mask, scale=scale, window=window)
    return fn(q, k, v, causal=causal, key_padding_mask=key_padding_mask, scale=scale)
