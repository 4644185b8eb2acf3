"""User-facing errors.

A `UserError` is bad input: a missing file, a malformed line, an unknown config key, an
impossible setting. The CLI prints its one-line message and exits with code 2, no traceback.
Anything else that escapes is an internal failure (exit 1).
"""

from __future__ import annotations

from pathlib import Path


class UserError(Exception):
    """Bad input from the user. `str(err)` is the one line shown to them."""

    exit_code = 2

    def __init__(self, message: str, *, path: str | Path | None = None, line: int | None = None,
                 key: str | None = None) -> None:
        where = ""
        if path is not None:
            where = str(path)
            if line is not None:
                where += f":{line}"
            where += ": "
        if key is not None:
            message = f"{key}: {message}"
        super().__init__(where + message)
        self.path = path
        self.line = line
        self.key = key


class TrainingDiverged(RuntimeError):
    """A non-finite loss that loss scaling cannot explain. Raised after the last good state is saved."""


class TrainingInterrupted(BaseException):
    """Training stopped on SIGINT (Ctrl-C) or SIGTERM after its checkpoint was saved (exit 130 in the CLI).

    ``step``: the last completed step; ``checkpoint``: where the state is, to continue with ``--resume``.
    A `BaseException`, like `KeyboardInterrupt`: a caller's ``except Exception`` (a lab runner that
    records a failed lab and goes on) must not swallow the user's request to stop.
    """

    exit_code = 130

    def __init__(self, step: int, max_steps: int, checkpoint: Path | None, signal_name: str = "SIGINT") -> None:
        where = f"; checkpoint saved in {checkpoint} (continue with --resume)" if checkpoint is not None else ""
        super().__init__(f"interrupted ({signal_name}) at step {step} of {max_steps}{where}")
        self.step = step
        self.max_steps = max_steps
        self.checkpoint = checkpoint
        self.signal_name = signal_name
