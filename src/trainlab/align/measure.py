"""Memory of training runs, for the alignment recipes, labs and benchmarks.

Two measurements, both reported:

**Exact accounting** (`training_memory`), the same on every device and independent of what else
the process did before: the bytes of the parameters, their gradients, the optimizer's states
(AdamW: two per parameter), a frozen reference copy if there is one, and the *activations*: the
tensors autograd saves for the backward pass during one micro-batch's forward, counted through
``torch.autograd.graph.saved_tensors_hooks`` (each storage once; parameters excluded). Logits
held for the backward pass show up there, which is what chunked log-probs remove.

**Peak of the process** (`PeakMemory`):

* CUDA: the caching allocator's exact peak (``torch.cuda.max_memory_allocated``, reset on entry),
  reported as the peak above what was allocated when the block started.
* CPU: PyTorch has no allocator statistics there, so a background thread samples the process's
  resident set size (``/proc/self/statm``) every ``interval_s`` while the block runs. The peak
  above the RSS at entry is the block's working set (activations, gradients, optimizer states
  created inside it, logits). Sampling can miss a spike shorter than the interval; heavy torch
  ops release the GIL, so the sampler keeps running during them.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterable
from types import TracebackType
from typing import Any

import torch
from torch import Tensor, nn

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def rss_bytes() -> int:
    """Current resident set size of this process (0 where /proc is unavailable)."""
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


class SavedTensorBytes:
    """``with SavedTensorBytes(exclude=params) as st: loss = f(...)`` then ``st.bytes``: storage bytes
    autograd saved for backward inside the block (each storage counted once)."""

    def __init__(self, exclude: Iterable[Tensor] = ()) -> None:
        self._skip = {t.untyped_storage().data_ptr() for t in exclude}
        self._seen: set[int] = set()
        self.bytes = 0
        self._hooks: Any = None

    def _pack(self, t: Tensor) -> Tensor:
        ptr = t.untyped_storage().data_ptr()
        if ptr not in self._skip and ptr not in self._seen:
            self._seen.add(ptr)
            self.bytes += t.untyped_storage().nbytes()
        return t

    @staticmethod
    def _unpack(t: Tensor) -> Tensor:
        return t

    def __enter__(self) -> SavedTensorBytes:
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, self._unpack)
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._hooks.__exit__(*exc)


def _nbytes(params: Iterable[Tensor]) -> int:
    return sum(p.numel() * p.element_size() for p in params)


def training_memory(model: nn.Module, step: Callable[[], Any], *, optimizer_states: int = 2,
                    frozen_copies: Iterable[nn.Module] = ()) -> dict[str, int]:
    """Exact bytes of one training micro-step (see the module docstring).

    ``step()`` runs the forward pass of one micro-batch (its result is discarded, no backward);
    ``optimizer_states`` tensors the size of each trainable parameter (AdamW: 2);
    ``frozen_copies``: extra models held during training (a frozen reference).
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
