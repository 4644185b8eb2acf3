"""Timing and peak-memory measurement shared by the labs and the benchmarks.

Timing (:func:`time_fn`): synchronize the device, run ``warmup`` untimed calls (first-call costs:
kernel compilation, allocator growth, lazy initialization), then ``repeats`` timed calls, and
report the **median** (robust to the odd slow run on a shared machine) with min and max.

Peak memory (:func:`measure_peak`): the bytes of tensor storage allocated *by the measured call*
above what was live when it started, at the worst moment.

* CUDA: the caching allocator's own statistics (``reset_peak_memory_stats``,
  ``max_memory_allocated``), the number an out-of-memory error is decided on.
* CPU: exact accounting by :class:`trainlab.memory.measure.LiveTensorTracker` (a
  ``TorchDispatchMode`` that adds the bytes of every new storage an operator returns and subtracts
  them when the storage is freed). The call's inputs are registered first, so views of them (the
  blocks a tiled kernel slices) are not mistaken for allocations. With ``cap_bytes`` it raises
  ``torch.OutOfMemoryError`` as soon as the call's live bytes pass the cap, so a CPU run "runs out of
  memory" where a device with that much free memory would, without the machine having to.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch


def synchronize(device: torch.device | str | None) -> None:
    """Wait for queued device work (a no-op on CPU) so that wall-clock time covers it."""
    dev = torch.device(device) if device is not None else torch.device("cpu")
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


@dataclass
class Timing:
    """Wall-clock seconds of ``repeats`` timed calls after ``warmup`` untimed ones."""

    median_s: float
    min_s: float
    max_s: float
    repeats: int
    warmup: int
    times_s: list[float] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def time_fn(fn: Callable[[], Any], *, device: torch.device | str | None = None, warmup: int = 1,
            repeats: int = 5, max_time_s: float | None = None) -> Timing:
    """Time ``fn()``: ``warmup`` untimed calls, then up to ``repeats`` timed ones (median reported).

    ``max_time_s`` stops repeating once that much time was spent timing (at least one timed call
    always runs), which keeps slow configurations (naive attention at long lengths on a CPU) from
    dominating a lab's wall time.
    """
    if repeats < 1:
        raise ValueError("repeats must be >= 1")
    for _ in range(warmup):
        fn()
    synchronize(device)
    times: list[float] = []
    spent = 0.0
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        synchronize(device)
        elapsed = time.perf_counter() - start
        times.append(elapsed)
        spent += elapsed
        if max_time_s is not None and spent >= max_time_s:
            break
    return Timing(median_s=statistics.median(times), min_s=min(times), max_s=max(times), repeats=len(times),
                  warmup=warmup, times_s=times)


@dataclass
class PeakMemory:
    """Peak bytes allocated by one call above the level at its start, and how it was measured."""

    peak_bytes: int
    method: str


def measure_peak(fn: Callable[[], Any], *, device: torch.device | str | None = None,
                 cap_bytes: int | None = None, inputs: Iterable[torch.Tensor] = ()) -> tuple[Any, PeakMemory]:
    """Run ``fn()`` once; return its result and the peak memory it allocated above the starting level.

    ``inputs``: tensors that exist before the call (and their ``.grad``), registered with the CPU
    tracker so that operators returning views of them do not count as allocations. On CUDA
    ``cap_bytes`` is checked after the call (exceeding it raises ``torch.OutOfMemoryError``, as a
    device with that much free memory would have); on CPU while the call runs.
    """
    from trainlab.memory.measure import LiveTensorTracker

    dev = torch.device(device) if device is not None else torch.device("cpu")
    if dev.type == "cuda":
        synchronize(dev)
        torch.cuda.reset_peak_memory_stats(dev)
        base = torch.cuda.memory_allocated(dev)
        result = fn()
        synchronize(dev)
        peak = torch.cuda.max_memory_allocated(dev) - base
        if cap_bytes is not None and peak > cap_bytes:
            raise torch.OutOfMemoryError(f"memory cap exceeded: peak {peak / 2**20:.1f} MiB > cap "
                                         f"{cap_bytes / 2**20:.1f} MiB")
        return result, PeakMemory(int(peak), "torch.cuda.max_memory_allocated")
    tracker = LiveTensorTracker(record=False)
    with tracker:
        existing = [t for x in inputs for t in (x, x.grad) if isinstance(t, torch.Tensor)]
        tracker.register(existing)
        base = tracker.live
        tracker.reset_peak()
        if cap_bytes is not None:
            tracker.cap = base + cap_bytes
        result = fn()
    return result, PeakMemory(int(tracker.peak - base), "exact accounting of tensor storages (LiveTensorTracker)")


__all__ = ["PeakMemory", "Timing", "measure_peak", "synchronize", "time_fn"]
