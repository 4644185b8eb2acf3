"""Hooks into the training loop. Subclass `Callback` and override what you need.

Order within an optimizer step ``s``: update → log → ``on_step_end`` → eval (``on_eval``) →
checkpoint (``on_checkpoint``). A callback can end training cleanly with
``trainer.request_stop(reason)``: the loop finishes the step, evaluates, saves and returns.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from trainlab.train.loop import Trainer, TrainResult


class Callback:
    """No-op base; every hook receives the `Trainer` first."""

    def on_fit_start(self, trainer: Trainer) -> None:
        """After the model, optimizer and data are set up (and restored, on resume)."""

    def on_step_end(self, trainer: Trainer, step: int, metrics: dict[str, Any]) -> None:
        """After optimizer step ``step`` (1-based); ``metrics`` are that step's values."""

    def on_eval(self, trainer: Trainer, step: int, metrics: dict[str, Any]) -> None:
        """After an evaluation at ``step``."""

    def on_checkpoint(self, trainer: Trainer, step: int, path: Path) -> None:
        """After ``path`` was written for ``step``."""

    def on_fit_end(self, trainer: Trainer, result: TrainResult) -> None:
        """When `Trainer.fit` returns normally (not on an exception)."""
