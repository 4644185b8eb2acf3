"""Profile a training step: where the time and the memory go.

* `profile_step` runs warm-up steps and then profiled steps (`trainlab.train.optimizer_step`, the
  training loop's own step, with its loss scaler) under ``torch.profiler.profile``
  (``profile_memory=True``, ``record_shapes=True``), with ``record_function`` markers around the
  forward, the backward and the optimizer step so those phases appear as rows (and as spans in the
  trace). It returns two operator tables, sorted by self time and by self memory, the phase totals,
  and writes a Chrome trace (open it in ``chrome://tracing`` or https://ui.perfetto.dev).
* `cuda_memory_snapshot` records the CUDA caching allocator's history during a step
  (``torch.cuda.memory._record_memory_history``) and dumps it (``_dump_snapshot``) as a pickle
  for https://pytorch.org/memory_viz: every allocation with its stack trace. There is no CPU
  equivalent; on CPU it returns the reason instead of a file ("needs CUDA").

Profiling adds overhead (the memory profiler above all): take timings from un-profiled runs and
use the profiler for proportions and for finding the operator responsible.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.profiler import ProfilerActivity, profile, record_function

from trainlab.train.amp import LossScaler, build_loss_scaler
from trainlab.train.device import resolve_device
from trainlab.train.loop import StepHooks, optimizer_step
from trainlab.train.objectives import Batch, Objective

PHASES = ("forward", "backward", "optimizer")


@dataclass
class ProfileResult:
    """Operator tables (top rows), phase totals and the trace file."""

    by_time: list[dict[str, Any]]
    by_memory: list[dict[str, Any]]
    phases: dict[str, dict[str, float]]  # phase -> {"cpu_time_ms", "device_time_ms"}
    trace_path: str | None
    table_text: str  # torch's own table, sorted by time
    device: str
    steps: int
    notes: list[str] = field(default_factory=list)
    precision: str = "fp32"
    loss_scale: float | None = None  # fp16: the loss scale after the profiled steps


class _ProfilerHooks(StepHooks):
    """`StepHooks` that name each phase of the step in the profile (``record_function``)."""

    def phase(self, name: str, index: int) -> contextlib.AbstractContextManager[Any]:
        del index
        return record_function(name)


def _train_step(model: nn.Module, objective: Objective, micro: Sequence[Batch], optimizer: torch.optim.Optimizer,
                scaler: LossScaler, device: torch.device, precision: str) -> None:
    optimizer_step(model, objective, micro, optimizer, scaler, device=device, precision=precision,  # type: ignore[arg-type]
                   hooks=_ProfilerHooks())


def _row(evt: Any, cuda: bool) -> dict[str, Any]:
    device_time = getattr(evt, "self_device_time_total", getattr(evt, "self_cuda_time_total", 0.0))
    device_mem = getattr(evt, "self_device_memory_usage", getattr(evt, "self_cuda_memory_usage", 0))
    row = {"name": evt.key, "calls": int(evt.count), "self_cpu_ms": evt.self_cpu_time_total / 1e3,
           "cpu_total_ms": evt.cpu_time_total / 1e3, "self_cpu_mem_bytes": int(evt.self_cpu_memory_usage)}
    if cuda:
        row["self_device_ms"] = float(device_time) / 1e3
        row["self_device_mem_bytes"] = int(device_mem)
    return row


def profile_step(model: nn.Module, objective: Objective, micro_batches: Sequence[Batch],
                 optimizer: torch.optim.Optimizer, *, device: torch.device | str = "cpu", precision: str = "fp32",
                 scaler: LossScaler | None = None, out_dir: str | Path | None = None, warmup: int = 1,
                 steps: int = 1, top: int = 12) -> ProfileResult:
    """Profile ``steps`` training steps after ``warmup`` (see the module docstring).

    Each step is `trainlab.train.optimizer_step`, as in training: in fp16 with dynamic loss scaling
    (``scaler``, default the one training builds for ``precision``), so the profile includes the
    scaling, unscaling and overflow check that an fp16 training step pays.
    """
    dev = resolve_device(str(device))
    scaler = scaler or build_loss_scaler(precision, dev)  # type: ignore[arg-type]
    cuda = dev.type == "cuda"
    model.to(dev).train()
    micro = [{k: v.to(dev) for k, v in mb.items()} for mb in micro_batches]
    for _ in range(warmup):
        _train_step(model, objective, micro, optimizer, scaler, dev, precision)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities, profile_memory=True, record_shapes=True) as prof:
        for _ in range(steps):
            _train_step(model, objective, micro, optimizer, scaler, dev, precision)
        if cuda:
            torch.cuda.synchronize(dev)
    averages = prof.key_averages()
    phase_names = set(PHASES)
    ops = [e for e in averages if e.key not in phase_names]
    time_key = (lambda e: getattr(e, "self_device_time_total", 0.0)) if cuda else (lambda e: e.self_cpu_time_total)
    mem_key = ((lambda e: getattr(e, "self_device_memory_usage", 0)) if cuda
               else (lambda e: e.self_cpu_memory_usage))
    by_time = [_row(e, cuda) for e in sorted(ops, key=time_key, reverse=True)[:top]]
    by_memory = [_row(e, cuda) for e in sorted(ops, key=mem_key, reverse=True)[:top]]
    phases: dict[str, dict[str, float]] = {}
    for e in averages:
        if e.key in phase_names:
            device_total = getattr(e, "device_time_total", getattr(e, "cuda_time_total", 0.0))
            phases[e.key] = {"cpu_time_ms": e.cpu_time_total / 1e3 / steps,
                             "device_time_ms": float(device_total) / 1e3 / steps}
    trace = None
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        trace = str(out / "trace.json")
        prof.export_chrome_trace(trace)
    # torch >= 2.4 names device time "self_device_time_total" (the "cuda" name is deprecated).
    device_key = "self_device_time_total" if averages and hasattr(averages[0], "self_device_time_total") \
        else "self_cuda_time_total"
    sort_by = device_key if cuda else "self_cpu_time_total"
    text = averages.table(sort_by=sort_by, row_limit=top)
    notes = [] if cuda else ["CPU: times are host times; memory is what each operator allocated on the host"]
    return ProfileResult(by_time=by_time, by_memory=by_memory, phases=phases, trace_path=trace, table_text=text,
                         device=str(dev), steps=steps, notes=notes, precision=precision,
                         loss_scale=scaler.get_scale() if precision == "fp16" else None)


def cuda_memory_snapshot(step_fn: Callable[[], None], path: str | Path, *, device: torch.device | str = "cuda",
                         max_entries: int = 100_000) -> tuple[str | None, str]:
    """Record the CUDA allocator's history while ``step_fn()`` runs; dump it to ``path``.

    Returns ``(path, "")`` on CUDA, ``(None, reason)`` where no CUDA device is available.
    """
    dev = torch.device(device)
    if dev.type != "cuda" or not torch.cuda.is_available():
        return None, "needs CUDA: the memory snapshot records the CUDA caching allocator (no CPU equivalent)"
    recorder = getattr(torch.cuda.memory, "_record_memory_history", None)
    dumper = getattr(torch.cuda.memory, "_dump_snapshot", None)
    if recorder is None or dumper is None:
        return None, f"this torch ({torch.__version__}) has no torch.cuda.memory._record_memory_history"
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    recorder(max_entries=max_entries)
    try:
        step_fn()
        torch.cuda.synchronize(dev)
        dumper(str(out))
    finally:
        recorder(enabled=None)
    return str(out), ""


__all__ = ["PHASES", "ProfileResult", "cuda_memory_snapshot", "profile_step"]
