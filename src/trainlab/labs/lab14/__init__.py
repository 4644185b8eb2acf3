"""Lab 1.4: mixed precision, loss scaling, accumulation, checkpointing, memory (seeds 000, 002, 003).

Five parts, one module each, each a function ``part_x(lab) -> Part`` usable on its own (the
notebooks call them through `run_part`):

1. `precision`: fp32 vs fp16 (our `DynamicLossScaler`) vs bf16 on the same model, data and
   samples; why 16-bit is (not) faster here, measured (`hardware`); the loss-scale trace under
   injected overflow beside torch's GradScaler; fp16 gradient underflow and loss scaling.
2. `accumulation`: K micro-batches vs the true large batch: gradients, time, memory, curves.
3. `checkpointing`: none / every_n / full / selective on two model sizes: memory saved, time added.
4. `memory`: estimate vs measurement per component, the step timeline, a batch-size sweep under a
   memory cap, the combined "optimized" configuration vs fp32, profiler tables.
5. `advisor`: the technique decision tree beside the seed's size rule; ZeRO memory per GPU.

Memory is measured exactly on CPU (`trainlab.memory.measure`) and from the allocator on CUDA;
times are medians of repeated steps of the training loop's own step. Each seed claim is printed
beside the measured value, with a verdict computed from the numbers.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from trainlab.env import EnvInfo, detect_env
from trainlab.labs.common import Part, merge_parts, part_markdown, pinned_threads, resolve_preset, show
from trainlab.labs.lab14.accumulation import part_accumulation
from trainlab.labs.lab14.advisor import part_advisor
from trainlab.labs.lab14.checkpointing import part_checkpointing
from trainlab.labs.lab14.lab import SETTINGS, TITLE, LabEnv, Settings
from trainlab.labs.lab14.memory import part_memory
from trainlab.labs.lab14.precision import InjectOverflow, part_precision
from trainlab.results import LabResult
from trainlab.train.device import resolve_device

PARTS: dict[str, Callable[[LabEnv], Part]] = {
    "precision": part_precision,
    "accumulation": part_accumulation,
    "checkpointing": part_checkpointing,
    "memory": part_memory,
    "advisor": part_advisor,
}

#: Intra-op threads on CPU while a part runs. The lab's models are small: a second thread costs more
#: in synchronization than it gains, and on a shared machine OpenMP's spin-waiting makes steps 5-10x
#: slower and their times meaningless. Every configuration runs with the same setting.
CPU_THREADS = 1


def make_env(preset: str = "tiny", out_dir: str | Path | None = None, device: str = "auto", seed: int = 0,
             rel: Callable[[Path], str] | None = None, env: EnvInfo | None = None) -> LabEnv:
    """A `LabEnv` for running parts on their own (the notebooks use this)."""
    settings = resolve_preset(SETTINGS, preset, lab="lab14")
    out = Path(out_dir) if out_dir is not None else Path(os.environ.get("TRAINLAB_LAB14_OUT", "runs/lab14"))
    return LabEnv(settings, out, resolve_device(device), seed, env or detect_env(), rel, preset)


def run_part(name: str, lab: LabEnv) -> Part:
    """Run one part (on CPU with `CPU_THREADS` intra-op threads, restored afterwards)."""
    start = time.perf_counter()
    with pinned_threads(lab.device, CPU_THREADS):
        part = PARTS[name](lab)
    part.wall_time_s = time.perf_counter() - start
    return part


def run(ctx: Any) -> LabResult:
    settings = resolve_preset(SETTINGS, ctx.preset, lab="lab14")
    lab = LabEnv(settings, ctx.out_dir, torch.device(ctx.device), ctx.seed, ctx.env, ctx.rel, ctx.preset)
    parts = [run_part(name, lab) for name in PARTS]
    merged = merge_parts(parts)
    summary = [
        "Five parts on one small Llama-style decoder family, trained on the embedded corpus with trainlab's own "
        "loop: precision, accumulation, checkpointing, memory, and the advisor. Memory is measured "
        + ("exactly, by accounting for every live tensor (CPU)" if lab.device.type == "cpu"
           else "from the CUDA allocator's statistics") + "; times are medians of repeated steps"
        + (f", with {CPU_THREADS} intra-op thread on CPU (for models this small a second thread costs more in "
           "synchronization than it gains, and makes timings collapse on a shared machine)."
           if lab.device.type == "cpu" else "."),
        *merged["summary"],
    ]
    return LabResult(lab="lab14", title=TITLE, preset=ctx.preset, device=ctx.device, seed=ctx.seed,
                     config={"settings": {k: (v if not isinstance(v, dict) else {str(a): b for a, b in v.items()})
                                          for k, v in vars(lab.s).items()}},
                     summary=summary, claims=merged["claims"], tables=merged["tables"], figures=merged["figures"],
                     data=merged["data"])


__all__ = ["CPU_THREADS", "PARTS", "SETTINGS", "InjectOverflow", "LabEnv", "Part", "Settings", "make_env",
           "part_markdown", "run", "run_part", "show"]
