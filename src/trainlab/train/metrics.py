"""Where training metrics go: ``metrics.jsonl`` always, TensorBoard if asked, a console view.

``metrics.jsonl`` has one JSON object per line: ``{"kind": "train", "step": ...}`` per logged step
and ``{"kind": "eval", "step": ...}`` per evaluation. On resume from a checkpoint at step ``s``,
lines with ``step > s`` (written by the interrupted run after its last checkpoint, and about to
be written again) are dropped first, so the file reads like one uninterrupted run.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from trainlab.utils import atomic_write

log = logging.getLogger("trainlab.train")

METRICS_NAME = "metrics.jsonl"


def _json_value(v: Any) -> Any:
    # JSON has no inf/NaN; a diverged loss must still be recorded, as a string.
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    return v


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """The records of a ``metrics.jsonl``, skipping a torn last line (a crash mid-write)."""
    records: list[dict[str, Any]] = []
    p = Path(path)
    if not p.is_file():
        return records
    for line in p.read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def tensorboard_available() -> bool:
    """Whether ``torch.utils.tensorboard`` can write (the tensorboard package is installed)."""
    import importlib.util

    return importlib.util.find_spec("tensorboard") is not None


def _tensorboard_writer(log_dir: Path, purge_step: int | None) -> Any | None:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is optional
        return None
    return SummaryWriter(log_dir=str(log_dir), purge_step=purge_step)


class MetricsLogger:
    """JSONL + optional TensorBoard + a rich progress bar (TTY) or plain lines (no TTY)."""

    def __init__(self, out_dir: Path, *, total_steps: int, start_step: int = 0, resumed: bool = False,
                 quiet: bool = False, tensorboard: bool = True) -> None:
        self.path = out_dir / METRICS_NAME
        out_dir.mkdir(parents=True, exist_ok=True)
        if resumed:
            kept = [r for r in read_metrics(self.path) if int(r.get("step", 0)) <= start_step]
            text = "".join(json.dumps(r) + "\n" for r in kept)
            atomic_write(self.path, lambda p: p.write_text(text, encoding="utf-8"))
        else:
            self.path.write_text("", encoding="utf-8")
        self._fh = self.path.open("a", encoding="utf-8")
        self.tb_dir: Path | None = None
        self._tb = None
        if tensorboard:
            # purge_step drops events after the checkpoint, the TensorBoard twin of the JSONL trim.
            self._tb = _tensorboard_writer(out_dir / "tb", start_step + 1 if resumed else None)
            if self._tb is not None:
                self.tb_dir = out_dir / "tb"
        self.console = Console(stderr=True)
        self.quiet = quiet
        self._progress: Progress | None = None
        self._task: Any = None
        if not quiet and self.console.is_terminal:
            self._progress = Progress(
                TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(),
                TextColumn("{task.fields[info]}"), TimeRemainingColumn(),
                console=self.console, transient=False,
            )
            self._task = self._progress.add_task("train", total=total_steps, completed=start_step, info="")
            self._progress.start()

    def write(self, record: dict[str, Any]) -> None:
        """Append one record to ``metrics.jsonl`` (flushed: it survives a crash of the process)."""
        self._fh.write(json.dumps({k: _json_value(v) for k, v in record.items()}) + "\n")
        self._fh.flush()
        if self._tb is not None:
            kind = record.get("kind", "train")
            for k, v in record.items():
                if k not in ("kind", "step") and isinstance(v, int | float) and not isinstance(v, bool):
                    self._tb.add_scalar(f"{kind}/{k}", v, record["step"])

    def train(self, record: dict[str, Any]) -> None:
        self.write({"kind": "train", **record})
        info = (f"loss {record['loss']:.4f}  {record['tokens_per_s']:,.0f} tok/s  lr {record['lr']:.2e}")
        if self._progress is not None:
            self._progress.update(self._task, completed=record["step"], info=info)
        elif not self.quiet:
            self.console.print(f"step {record['step']}: {info}", highlight=False, markup=False)

    def eval(self, record: dict[str, Any]) -> None:
        self.write({"kind": "eval", **record})
        if not self.quiet:
            shown = "  ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                              for k, v in record.items() if k != "step")
            self.console.print(f"eval @ step {record['step']}: {shown}", highlight=False, markup=False)

    def advance(self, step: int) -> None:
        if self._progress is not None:
            self._progress.update(self._task, completed=step)

    def info(self, message: str) -> None:
        log.info(message)
        if not self.quiet:
            self.console.print(message, highlight=False, markup=False, soft_wrap=True)

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None
        if not self._fh.closed:
            self._fh.close()


class NullMetricsLogger(MetricsLogger):
    """The logger of ranks other than 0 in a distributed run: writes and shows nothing (rank 0 logs
    the run; every rank computes the same reduced numbers)."""

    def __init__(self, out_dir: Path) -> None:
        self.path = out_dir / METRICS_NAME
        self.tb_dir = None
        self.quiet = True

    def write(self, record: dict[str, Any]) -> None:
        del record

    def train(self, record: dict[str, Any]) -> None:
        del record

    def eval(self, record: dict[str, Any]) -> None:
        del record

    def advance(self, step: int) -> None:
        del step

    def info(self, message: str) -> None:
        del message

    def close(self) -> None:
        pass
