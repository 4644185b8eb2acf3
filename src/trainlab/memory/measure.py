"""Measure the memory of a training step, the same way on every device (the one memory meter).

The step measured is `trainlab.train.optimizer_step`, the training loop's own step; the meter
watches it through `StepHooks` (live bytes and peak per phase; saved-tensor hooks and the loss-head
hook inside each forward), so what is measured is exactly what training runs.

* **CUDA**: the caching allocator's statistics. ``torch.cuda.memory_allocated`` is the bytes held
  by live tensors; ``max_memory_allocated`` after ``reset_peak_memory_stats`` is the high mark of
  one phase. (Reserved-but-free cache blocks are not counted: they are reusable.)
* **CPU**: exact accounting. A `LiveTensorTracker` (a ``TorchDispatchMode``) sees every tensor that
  every operator returns, forward, backward (CPU autograd runs on the calling thread) and optimizer
  alike; it adds the bytes of each new storage and subtracts them when the storage is freed (a
  weak-reference finalizer). That gives the live bytes after every operator and so the true peak,
  which the process RSS cannot (the C allocator keeps freed pages). The RSS high-water mark
  (``VmHWM``, reset through ``/proc/self/clear_refs``) is reported beside it.

On both devices the components are exact: parameters, gradients and optimizer states by summing
the bytes of their storages, activations as the bytes still live after the forward pass that were
not live before it (everything autograd keeps for backward, including what checkpointing keeps in
its own frames), and the loss head's share of them from ``saved_tensors_hooks`` (tensors saved after
the final norm). The tensors autograd saves through the hooks are also summed on their own
(``saved_for_backward``): with ``full``/``none`` checkpointing that is nearly all activations, with
``selective`` it misses the outputs kept by the checkpoint policy, which only the live count sees.

For whole runs (the alignment recipes, benchmarks) `training_memory` gives the same components
without running an update, and `PeakMemory` (`trainlab.memory.rss`) samples the process's RSS.

A memory cap turns out-of-memory into a result: on CPU the tracker raises `MemoryCapExceeded`
as soon as live bytes pass ``memory_cap_bytes``; on CUDA the cap becomes the process's memory
fraction and ``torch.cuda.OutOfMemoryError`` is caught. Either way `measure_training_step` returns
a `StepMemory` with ``oom=True`` instead of raising, so a batch-size sweep records where it broke.
"""

from __future__ import annotations

import contextlib
import gc
import time
import weakref
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from trainlab.memory.rss import PeakMemory, read_rss, release_free_heap, reset_peak_rss, rss_bytes
from trainlab.train.amp import LossScaler, build_loss_scaler
from trainlab.train.device import resolve_device
from trainlab.train.loop import StepHooks, optimizer_step
from trainlab.train.objectives import Batch, Objective


class MemoryCapExceeded(torch.OutOfMemoryError):
    """Live tensor bytes passed the memory cap: the CPU stand-in for an out-of-memory error (a
    ``torch.OutOfMemoryError``, so one ``except`` catches it and CUDA's own)."""


def _storage_key(t: Tensor) -> tuple[int, int, int]:
    st = t.untyped_storage()
    return (st.data_ptr(), st.nbytes(), id(st)) if st.nbytes() == 0 else (st.data_ptr(), st.nbytes(), 0)


def tensors_bytes(tensors: Iterable[Tensor]) -> int:
    """Bytes of the distinct storages behind ``tensors`` (views and aliases counted once)."""
    seen: set[tuple[int, int, int]] = set()
    total = 0
    for t in tensors:
        if not isinstance(t, Tensor) or t.is_meta:
            continue
        key = _storage_key(t)
        if key not in seen:
            seen.add(key)
            total += t.untyped_storage().nbytes()
    return total


def parameter_bytes(model: nn.Module) -> int:
    return tensors_bytes(list(model.parameters()) + list(model.buffers()))


def gradient_bytes(model: nn.Module) -> int:
    return tensors_bytes(p.grad for p in model.parameters() if p.grad is not None)


def optimizer_state_bytes(optimizer: torch.optim.Optimizer) -> int:
    """Bytes of the optimizer's per-parameter state tensors (scalar ``step`` counters included)."""
    return tensors_bytes(v for state in optimizer.state.values() for v in state.values() if isinstance(v, Tensor))


# --------------------------------------------------------------------------------------------
# CPU: exact live-tensor accounting
# --------------------------------------------------------------------------------------------


@dataclass
class Sample:
    index: int  # operator count since the tracker started
    live: int
    phase: str


class LiveTensorTracker(TorchDispatchMode):
    """Counts the bytes of live tensor storages created by operators (see the module docstring).

    ``register`` adds tensors that exist already (weights, a batch) so that their views are not
    counted as new. ``cap`` raises `MemoryCapExceeded` when live bytes exceed it.
    """

    def __init__(self, cap: int | None = None, *, record: bool = True, max_samples: int = 200_000) -> None:
        super().__init__()
        self.live = 0
        self.peak = 0
        self.ops = 0
        self.cap = cap
        self.phase = "start"
        self.record = record
        self.max_samples = max_samples
        self.samples: list[Sample] = []
        self._finalizers: dict[int, weakref.finalize] = {}

    def _on_free(self, key: int, nbytes: int) -> None:
        self.live -= nbytes
        self._finalizers.pop(key, None)

    def _track(self, t: Tensor) -> None:
        if t.is_meta or t.device.type == "meta":
            return
        st = t.untyped_storage()
        key = id(st) if st.data_ptr() == 0 else st.data_ptr()
        if key in self._finalizers and self._finalizers[key].alive:
            return
        nbytes = st.nbytes()
        self.live += nbytes
        # The finalizer runs when the storage's Python object dies, which torch ties to the
        # C++ storage (PyObject preservation), i.e. when the memory is released.
        self._finalizers[key] = weakref.finalize(st, self._on_free, key, nbytes)
        if self.live > self.peak:
            self.peak = self.live

    def register(self, tensors: Iterable[Tensor]) -> None:
        for t in tensors:
            if isinstance(t, Tensor):
                self._track(t)

    def mark(self, phase: str) -> None:
        self.phase = phase
        self._sample()

    def _sample(self) -> None:
        if self.record and len(self.samples) < self.max_samples:
            self.samples.append(Sample(self.ops, self.live, self.phase))

    def reset_peak(self) -> None:
        self.peak = self.live

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        self.ops += 1
        for t in tree_flatten(out)[0]:
            if isinstance(t, Tensor):
                self._track(t)
        self._sample()
        if self.cap is not None and self.live > self.cap:
            raise MemoryCapExceeded(f"live tensors {self.live:,} B exceed the memory cap {self.cap:,} B "
                                    f"(during {self.phase})")
        return out


# --------------------------------------------------------------------------------------------
# One API for both devices
# --------------------------------------------------------------------------------------------


class _Meter:
    """Live bytes and per-phase peaks on one device (CPU tracker or CUDA allocator)."""

    def __init__(self, device: torch.device, cap: int | None, record: bool) -> None:
        self.device = device
        self.cuda = device.type == "cuda"
        self.cap = cap
        self.tracker = None if self.cuda else LiveTensorTracker(cap, record=record)
        self.cuda_samples: list[Sample] = []

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        if self.cuda:
            torch.cuda.synchronize(self.device)
            if self.cap is not None:
                total = torch.cuda.get_device_properties(self.device).total_memory
                torch.cuda.set_per_process_memory_fraction(min(1.0, self.cap / total), self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            try:
                yield
            finally:
                if self.cap is not None:
                    torch.cuda.set_per_process_memory_fraction(1.0, self.device)
        else:
            assert self.tracker is not None
            with self.tracker:
                yield

    def live(self) -> int:
        if self.cuda:
            return int(torch.cuda.memory_allocated(self.device))
        assert self.tracker is not None
        return self.tracker.live

    def peak(self) -> int:
        if self.cuda:
            torch.cuda.synchronize(self.device)
            return int(torch.cuda.max_memory_allocated(self.device))
        assert self.tracker is not None
        return self.tracker.peak

    def reset_peak(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            assert self.tracker is not None
            self.tracker.reset_peak()

    def mark(self, phase: str) -> None:
        if self.cuda:
            self.cuda_samples.append(Sample(len(self.cuda_samples), self.live(), phase))
        else:
            assert self.tracker is not None
            self.tracker.mark(phase)

    def register(self, tensors: Iterable[Tensor]) -> None:
        if self.tracker is not None:
            self.tracker.register(tensors)

    def samples(self) -> list[Sample]:
        return self.cuda_samples if self.cuda else (self.tracker.samples if self.tracker else [])


@dataclass
class Phase:
    """One phase of the step: the live bytes at its end, its peak, its wall time."""

    name: str
    step: int
    live_end: int
    peak: int
    time_s: float


@dataclass
class StepMemory:
    """What `measure_training_step` measured (bytes). Components are those of the *last* step."""

    device: str
    method: str  # "cpu-exact" or "cuda-allocator"
    parameters: int = 0
    gradients: int = 0
    optimizer_states: int = 0
    activations: int = 0  # retained after forward (max over micro-batches), minus the loss head's share
    logits: int = 0  # the loss head's saved tensors (after the final norm)
    saved_for_backward: int = 0  # what saved_tensors_hooks saw, deduplicated, parameters excluded
    peak: int = 0  # high mark of the last step (forward, backward, optimizer)
    peak_all: int = 0  # high mark of the whole measurement, load included
    phases: list[Phase] = field(default_factory=list)
    timeline: list[tuple[int, int, str]] = field(default_factory=list)  # (op index, live bytes, phase)
    rss_start: int | None = None
    rss_peak: int | None = None
    loss: float | None = None
    oom: bool = False
    oom_message: str = ""
    steps: int = 0

    def components(self) -> dict[str, int]:
        return {"parameters": self.parameters, "gradients": self.gradients,
                "optimizer_states": self.optimizer_states, "activations": self.activations, "logits": self.logits}

    def to_dict(self, *, timeline: bool = False) -> dict[str, Any]:
        d = asdict(self)
        if not timeline:
            d.pop("timeline")
        return d


class SavedTensorBytes:
    """Bytes autograd saves for backward: ``with SavedTensorBytes(exclude=params) as st: out = f(...)``
    then ``st.bytes``. Each storage is counted once; ``exclude`` (the parameters) is not counted.

    While ``in_head`` is True (set by a forward hook on the loss head) saved storages count as the
    head's (``head_bytes``), before it as the body's, so logits can be told from activations.
    """

    def __init__(self, exclude: Iterable[Tensor] = ()) -> None:
        self.exclude = {_storage_key(t) for t in exclude}
        self.body: dict[tuple[int, int, int], int] = {}
        self.head: dict[tuple[int, int, int], int] = {}
        self.in_head = False
        self._hooks: Any = None

    def pack(self, t: Tensor) -> Tensor:
        key = _storage_key(t)
        if key not in self.exclude and key not in self.body and key not in self.head:
            (self.head if self.in_head else self.body)[key] = t.untyped_storage().nbytes()
        # detached (same storage): returning ``t`` itself makes a tensor that autograd saved as its own
        # output hold its grad_fn, which holds it: a C++ reference cycle that keeps the whole graph (all
        # saved activations) alive after a forward that is never backwarded (`training_memory`)
        return t.detach()

    @staticmethod
    def unpack(t: Tensor) -> Tensor:
        return t

    @property
    def total(self) -> int:
        return sum(self.body.values()) + sum(self.head.values())

    @property
    def bytes(self) -> int:
        return self.total

    @property
    def head_bytes(self) -> int:
        return sum(self.head.values())

    def __enter__(self) -> SavedTensorBytes:
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self.pack, self.unpack)
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._hooks.__exit__(*exc)


def _nbytes(params: Iterable[Tensor]) -> int:
    return sum(p.numel() * p.element_size() for p in params)


def training_memory(model: nn.Module, step: Callable[[], Any], *, optimizer_states: int = 2,
                    frozen_copies: Iterable[nn.Module] = ()) -> dict[str, int]:
    """Exact bytes of one training micro-step, without running the optimizer (alignment recipes).

    ``step()`` runs the forward pass of one micro-batch (its result is discarded, no backward);
    ``optimizer_states`` tensors the size of each trainable parameter (AdamW: 2);
    ``frozen_copies``: extra models held during training (a frozen reference). Parameters,
    gradients and states are counted from their sizes; activations are what autograd saves for
    the backward (`SavedTensorBytes`): logits held for the backward pass show up there, which is
    what chunked log-probs remove.
    """
    params = list(model.parameters())
    trainable = [p for p in params if p.requires_grad]
    with SavedTensorBytes(exclude=params) as saved:
        out = step()
    del out
    model.zero_grad(set_to_none=True)
    memory = {
        "parameters": _nbytes(params),
        "gradients": _nbytes(trainable),
        "optimizer": optimizer_states * _nbytes(trainable),
        "reference": sum(_nbytes(m.parameters()) for m in frozen_copies),
        "activations": saved.bytes,
    }
    memory["total"] = sum(memory.values())
    return memory


def _batch_tensors(micro: Sequence[Batch]) -> list[Tensor]:
    return [v for mb in micro for v in mb.values() if isinstance(v, Tensor)]


class _MeterHooks(StepHooks):
    """`StepHooks` of the memory meter: live bytes and peak per phase; in each forward, the saved
    tensors (``saved_tensors_hooks``) split at the loss head, and the bytes retained for backward."""

    def __init__(self, meter: _Meter, result: StepMemory, model: nn.Module, head: nn.Module | None) -> None:
        self.meter, self.result, self.model, self.head = meter, result, model, head
        self.step = 0
        self.new_step()

    def new_step(self) -> None:
        self.step += 1
        self.acts = self.head_bytes = self.saved = 0
        self.gradients = 0

    def _done(self, name: str, t_start: float) -> None:
        self.result.phases.append(Phase(name, self.step, self.meter.live(), self.meter.peak(),
                                        time.perf_counter() - t_start))
        self.meter.reset_peak()

    @contextlib.contextmanager
    def phase(self, name: str, index: int) -> Iterator[None]:
        t = time.perf_counter()
        self.meter.mark(name)
        if name == "optimizer":  # the gradients are complete here; the step frees them at its end
            self.gradients = gradient_bytes(self.model)
        if name != "forward":
            yield
            self._done(name, t)
            return
        before = self.meter.live()
        saved = SavedTensorBytes(self.model.parameters())
        handle = (self.head.register_forward_hook(lambda *_a: setattr(saved, "in_head", True))
                  if self.head is not None else None)
        try:
            with saved:
                yield
        finally:
            if handle is not None:
                handle.remove()
        retained = self.meter.live() - before  # what the forward keeps for backward (and the loss)
        self.acts = max(self.acts, retained - saved.head_bytes)
        self.head_bytes = max(self.head_bytes, saved.head_bytes)
        self.saved = max(self.saved, saved.total)
        self._done(name, t)


def measure_training_step(
    model: nn.Module | Callable[[], nn.Module],
    objective: Objective,
    micro_batches: Sequence[Batch] | Sequence[Sequence[Batch]],
    *,
    optimizer: torch.optim.Optimizer | Callable[[nn.Module], torch.optim.Optimizer],
    device: torch.device | str = "cpu",
    precision: str = "fp32",
    scaler: LossScaler | None = None,
    steps: int = 2,
    grad_clip: float = 0.0,
    memory_cap_bytes: int | None = None,
    timeline: bool = True,
    head_module: nn.Module | None = None,
) -> StepMemory:
    """Run ``steps`` training steps and measure their memory (see the module docstring).

    Each step is `trainlab.train.optimizer_step`, the training loop's own step, observed through
    `StepHooks`. ``model`` may be a builder (then building it is the "load" phase of the
    timeline), and ``optimizer`` a builder taking the model. ``micro_batches`` is one step's
    micro-batches (used for every step) or a list of them per step. ``scaler``: the loss scaler
    (default: the one training builds for ``precision``, dynamic loss scaling in fp16). Measure at
    least two steps to see the steady state: the optimizer allocates its state during the first
    update. ``head_module``: where the loss head starts (default: the model's ``norm`` attribute,
    the decoder's final norm).
    """
    dev = resolve_device(str(device))  # "cuda" without a GPU: a clear error, not a crash deep inside
    meter = _Meter(dev, memory_cap_bytes, timeline)
    result = StepMemory(device=str(dev), method="cuda-allocator" if meter.cuda else "cpu-exact")
    per_step: list[Sequence[Batch]]
    if micro_batches and isinstance(micro_batches[0], dict):
        per_step = [micro_batches] * steps  # type: ignore[list-item]
    else:
        per_step = list(micro_batches)[:steps]  # type: ignore[arg-type]
    scaler = scaler or build_loss_scaler(precision, dev)  # type: ignore[arg-type]
    opt: torch.optim.Optimizer | None = None
    m: nn.Module | None = None
    reset_peak_rss()
    result.rss_start = read_rss()[0]
    t0 = time.perf_counter()
    try:
        with meter.active():
            meter.mark("load")
            if isinstance(model, nn.Module):
                m = model
                meter.register(list(m.parameters()) + list(m.buffers()))
                meter.register(p.grad for p in m.parameters() if p.grad is not None)
            else:
                m = model()
            m = m.to(dev)
            opt = optimizer if isinstance(optimizer, torch.optim.Optimizer) else optimizer(m)
            meter.register(v for s in opt.state.values() for v in s.values() if isinstance(v, Tensor))
            # Each distinct micro-batch moved to the device once (a step may reuse them).
            moved: dict[int, Batch] = {}
            for mb in (mb for micro in per_step for mb in micro):
                if id(mb) not in moved:
                    moved[id(mb)] = {k: v.to(dev) if isinstance(v, Tensor) else v for k, v in mb.items()}
            meter.register(_batch_tensors(list(moved.values())))
            result.phases.append(Phase("load", 0, meter.live(), meter.peak(), time.perf_counter() - t0))
            meter.reset_peak()
            hooks = _MeterHooks(meter, result, m, head_module if head_module is not None else getattr(m, "norm", None))
            m.train()
            opt.zero_grad(set_to_none=True)
            for step_i, micro in enumerate(per_step, start=1):
                if step_i > 1:
                    hooks.new_step()
                outcome = optimizer_step(m, objective, [moved[id(mb)] for mb in micro], opt, scaler, device=dev,
                                         precision=precision, grad_clip=grad_clip,  # type: ignore[arg-type]
                                         hooks=hooks)
                result.activations, result.logits, result.saved_for_backward = hooks.acts, hooks.head_bytes, \
                    hooks.saved
                result.gradients = hooks.gradients
                result.loss = outcome.loss
                result.steps = step_i
            result.parameters = parameter_bytes(m)
            result.optimizer_states = optimizer_state_bytes(opt)
            meter.mark("end")
    except torch.OutOfMemoryError as exc:  # our cap on CPU, the allocator on CUDA
        result.oom, result.oom_message = True, (str(exc).splitlines() or ["out of memory"])[0]
    finally:
        if opt is not None:
            opt.zero_grad(set_to_none=True)
        if result.oom:
            gc.collect()  # the failed step's frames may sit in reference cycles (slow: only here)
        if meter.cuda:
            torch.cuda.empty_cache()
    if result.oom:
        # The high mark reached before the failure (at least the cap; the tracker keeps it).
        result.phases.append(Phase("oom", result.steps + 1, meter.live(), meter.peak(), 0.0))
    if result.oom and m is not None:
        result.parameters = parameter_bytes(m)
        result.optimizer_states = optimizer_state_bytes(opt) if opt is not None else 0
    last_step = result.steps + 1 if result.oom else result.steps
    last = [p for p in result.phases if p.step == last_step and p.step > 0]
    result.peak = max((p.peak for p in last), default=0)
    result.peak_all = max((p.peak for p in result.phases), default=0)
    result.rss_peak = read_rss()[1]
    samples = meter.samples()
    if samples:
        stride = max(1, len(samples) // 4000)  # keep plots and JSON small
        result.timeline = [(s.index, s.live, s.phase) for s in samples[::stride]]
    return result


__all__ = [
    "LiveTensorTracker",
    "MemoryCapExceeded",
    "PeakMemory",
    "Phase",
    "SavedTensorBytes",
    "StepMemory",
    "gradient_bytes",
    "measure_training_step",
    "optimizer_state_bytes",
    "parameter_bytes",
    "read_rss",
    "release_free_heap",
    "reset_peak_rss",
    "rss_bytes",
    "tensors_bytes",
    "training_memory",
]
