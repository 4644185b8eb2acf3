"""What a training run returns and the small pieces the loop keeps between log lines.

`TrainResult` is `Trainer.fit`'s return value; `StepWindow` sums the steps since the last log line
(saved in checkpoints so a resumed run logs the same numbers); `isolated_rng` runs evaluation
without moving the training RNG streams.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

EvalFn = Callable[[nn.Module], dict[str, float]]


class Scheduler(Protocol):
    """What the loop needs from a learning-rate scheduler (`CosineWarmupScheduler` or a torch one)."""

    def step(self) -> None: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


@dataclass
class TrainResult:
    """What `Trainer.fit` returns. Counters are cumulative over resumes of the same run."""

    steps: int
    tokens: int  # input tokens processed (non-padding where an attention mask says so)
    count: float  # objective units (supervised tokens for `CausalLMObjective`)
    final_loss: float  # loss of the last optimizer step (loss_sum / count)
    eval_history: list[dict[str, Any]]
    history: list[dict[str, Any]]  # the logged train records (as in metrics.jsonl)
    wall_time_s: float  # this fit() call, end to end
    train_time_s: float  # time inside optimizer steps (no eval/checkpoint), all resumes
    tokens_per_s: float  # tokens / train_time_s
    skipped_steps: int
    stopped_reason: str  # "max_steps", "interrupted" or "stopped: <callback's reason>"
    out_dir: Path
    checkpoint_path: Path | None
    metrics_path: Path
    tensorboard_dir: Path | None = None
    resumed_from: int | None = None  # the checkpoint step this call resumed from


@contextlib.contextmanager
def isolated_rng(device: torch.device) -> Iterator[None]:
    """Run a block without disturbing the training RNG streams (Python, numpy, torch, CUDA).

    Evaluation that samples would otherwise shift dropout masks of later steps, making results
    depend on how often one evaluates.
    """
    py, npst = random.getstate(), np.random.get_state()
    devices = [device.index if device.index is not None else torch.cuda.current_device()] \
        if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        try:
            yield
        finally:
            random.setstate(py)
            np.random.set_state(npst)


class StepWindow:
    """Sums over the steps since the last log line (saved in checkpoints so resumed logs match)."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.steps = 0
        self.updates = 0  # steps whose update was applied (loss and grad norm are averaged over these)
        self.loss_sum = 0.0
        self.count = 0.0
        self.tokens = 0
        self.time = 0.0
        self.grad_norm = 0.0
        self.metric_sums: dict[str, float] = {}
        self.metric_weights: dict[str, float] = {}

    def state_dict(self) -> dict[str, Any]:
        return dict(vars(self))

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for k, v in state.items():
            setattr(self, k, v)
