"""Graceful stop on SIGINT/SIGTERM: finish the step, save, raise `TrainingInterrupted`.

The first signal asks the loop to stop after the current step (it then saves the checkpoint); a
second one raises ``KeyboardInterrupt`` at once, keeping the last periodic checkpoint. In a
distributed run the loop agrees on the stop across ranks every step (`trainlab.train.loop`), and
SIGTERM keeps its default action (torchrun's agent sends it to end the remaining ranks after one
failed: waiting for a step that a collective blocks would never come).
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable
from typing import Any, Protocol

log = logging.getLogger("trainlab.train")


class Stoppable(Protocol):
    _stop_reason: str | None
    _signal_name: str


def install_stop_signals(trainer: Stoppable, *, sigterm: bool = True) -> Callable[[], None]:
    """Install the handlers on ``trainer``; return the function that restores the previous ones."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    signals = [signal.SIGINT] + ([signal.SIGTERM] if sigterm and hasattr(signal, "SIGTERM") else [])
    previous = {sig: signal.getsignal(sig) for sig in signals}

    def handler(signum: int, frame: Any) -> None:
        del frame
        if trainer._stop_reason == "interrupted":
            raise KeyboardInterrupt
        trainer._stop_reason = "interrupted"
        trainer._signal_name = signal.Signals(signum).name
        log.warning("%s: stopping after this step to save a checkpoint (again to abort without saving)",
                    trainer._signal_name)

    for sig in signals:
        signal.signal(sig, handler)

    def restore() -> None:
        for sig, old in previous.items():
            signal.signal(sig, old)

    return restore
