"""The process's resident memory: current and peak RSS, and a sampling peak meter for whole runs.

`measure_training_step` (in `trainlab.memory.measure`) counts tensors exactly; this module measures
what the operating system sees, for whole training runs (the alignment recipes, the benchmarks):

* `read_rss` / `reset_peak_rss`: the kernel's current RSS and high-water mark (``VmRSS``/``VmHWM``
  in ``/proc/self/status``; the mark is reset through ``/proc/self/clear_refs``, Linux >= 4.0).
* `PeakMemory`: ``with PeakMemory(device) as pm: ...`` then ``pm.peak_bytes``.

  - CUDA: the caching allocator's exact peak (``torch.cuda.max_memory_allocated``, reset on
    entry), reported as the peak above what was allocated when the block started.
  - CPU: PyTorch has no allocator statistics there, so a background thread samples the process's
    resident set size (``/proc/self/statm``) every ``interval_s`` while the block runs. The peak
    above the RSS at entry is the block's working set. Sampling can miss a spike shorter than the
    interval; heavy torch ops release the GIL, so the sampler keeps running during them.
"""

from __future__ import annotations

import os
import threading
import time
from types import TracebackType

import torch

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def read_rss() -> tuple[int | None, int | None]:
    """(current RSS, peak RSS since the last reset) in bytes, from /proc/self/status (Linux)."""
    rss = hwm = None
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    rss = int(line.split()[1]) * 1024
                elif line.startswith("VmHWM:"):
                    hwm = int(line.split()[1]) * 1024
    except OSError:
        pass
    return rss, hwm


def reset_peak_rss() -> bool:
    """Reset the kernel's RSS high-water mark (``echo 5 > /proc/self/clear_refs``, Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def rss_bytes() -> int:
    """Current resident set size of this process (0 where /proc is unavailable); cheap enough to sample."""
    try:
        with open("/proc/self/statm", encoding="ascii") as fh:
            return int(fh.read().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        return 0


def release_free_heap() -> bool:
    """Return freed heap memory to the operating system (glibc's ``malloc_trim(0)``), where possible.

    The C allocator keeps freed blocks for reuse, so RSS stays at its high-water mark; without
    this, memory a setup phase allocated and freed would look like part of what follows.
    """
    try:
        import ctypes

        return bool(ctypes.CDLL("libc.so.6").malloc_trim(0))
    except (OSError, AttributeError):
        return False


class PeakMemory:
    """``with PeakMemory(device) as pm: ...`` then ``pm.peak_bytes`` (above entry) and ``pm.result()``."""

    def __init__(self, device: torch.device | str = "cpu", interval_s: float = 0.002) -> None:
        self.device = torch.device(device)
        self.interval_s = interval_s
        self.start_bytes = 0
        self.peak_abs_bytes = 0
        self.window_peak_abs_bytes = 0
        self.in_window = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def open_window(self) -> None:
        """Also track the peak of a part of the block (e.g. only the training steps); CPU only.

        On opening, freed heap memory is handed back to the system (glibc ``malloc_trim``), so
        what setup allocated and released is not counted as part of the window.
        """
        if not self.in_window:
            release_free_heap()
        self.in_window = True
        self.window_peak_abs_bytes = max(self.window_peak_abs_bytes, rss_bytes())

    def close_window(self) -> None:
        self.window_peak_abs_bytes = max(self.window_peak_abs_bytes, rss_bytes())
        self.in_window = False

    @property
    def window_peak_bytes(self) -> int:
        """Peak during the windows, above the amount in use when the whole block started."""
        return max(0, self.window_peak_abs_bytes - self.start_bytes)

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    def _sample(self) -> None:
        while not self._stop.is_set():
            now = rss_bytes()
            self.peak_abs_bytes = max(self.peak_abs_bytes, now)
            if self.in_window:
                self.window_peak_abs_bytes = max(self.window_peak_abs_bytes, now)
            time.sleep(self.interval_s)

    def __enter__(self) -> PeakMemory:
        if self.cuda:
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.start_bytes = torch.cuda.memory_allocated(self.device)
        else:
            self.start_bytes = rss_bytes()
            self.peak_abs_bytes = self.start_bytes
            self._thread = threading.Thread(target=self._sample, name="peak-rss", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)
            self.peak_abs_bytes = torch.cuda.max_memory_allocated(self.device)
        else:
            self._stop.set()
            if self._thread is not None:
                self._thread.join()
            self.peak_abs_bytes = max(self.peak_abs_bytes, rss_bytes())

    @property
    def peak_bytes(self) -> int:
        """Peak above the amount in use at entry."""
        return max(0, self.peak_abs_bytes - self.start_bytes)

    def result(self) -> dict[str, int | str]:
        return {"kind": "cuda_allocated" if self.cuda else "cpu_rss", "peak_bytes": self.peak_bytes,
                "peak_abs_bytes": self.peak_abs_bytes, "start_bytes": self.start_bytes}


__all__ = ["PeakMemory", "read_rss", "release_free_heap", "reset_peak_rss", "rss_bytes"]
