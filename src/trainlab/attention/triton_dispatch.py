"""When the Triton backend can run, how much ``auto`` wants it, and a lazy entry point.

Kept apart from :mod:`trainlab.attention.flash_triton` so that ``import trainlab`` never imports Triton:
the kernels are compiled (or interpreted) only when the backend is first called.

Where it runs: CUDA tensors, or CPU tensors when ``TRITON_INTERPRET=1`` was set before the kernel
module is imported (the tests do this; fp32/fp16 only, because the interpreter does not emulate bf16
faithfully). ``auto`` never picks it on the CPU (the interpreter is orders of magnitude slower than
anything else). On CUDA it ranks above SDPA only for fp16/bf16 calls with a key padding mask or a
sliding window, where SDPA has to fall back to a dense-mask kernel (``O(T²)`` memory); elsewhere
SDPA's FlashAttention-2/cuDNN kernels are the measured-good default until ``benchmarks/bench_attention.py``
shows otherwise on the device at hand.
"""

from __future__ import annotations

import functools
import importlib.util
import os

import torch
from torch import Tensor

from trainlab.attention.dispatch import AttentionCall
from trainlab.attention.mask import Window

MIN_HEAD_DIM, MAX_HEAD_DIM = 16, 256


def interpreting() -> bool:
    """True when Triton kernels would run in the interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


@functools.cache
def _triton_installed() -> bool:
    return importlib.util.find_spec("triton") is not None


def triton_unavailable_reason() -> str | None:
    """None when the kernels can run on this machine (a CUDA GPU, or the interpreter), else why not."""
    if not _triton_installed():
        return "triton is not installed (pip install triton; Linux with a CUDA GPU)"
    if not torch.cuda.is_available() and not interpreting():
        return "needs a CUDA GPU (or TRITON_INTERPRET=1 to run the kernels, slowly, in the interpreter)"
    return None


def triton_check(call: AttentionCall) -> str | None:
    """Per-call limits: a CUDA device (or the interpreter on CPU), supported head dims and dtypes."""
    if call.device_type == "cpu":
        if not interpreting():
            return "needs a CUDA GPU (or TRITON_INTERPRET=1 to run the kernels, slowly, in the interpreter)"
        if call.dtype == torch.bfloat16:
            return "bfloat16 is not emulated faithfully by the Triton interpreter (use float32/float16 on CPU)"
    elif call.device_type != "cuda":
        return f"device {call.device_type!r} not supported (needs CUDA)"
    elif call.dtype == torch.bfloat16 and torch.cuda.get_device_capability()[0] < 8:
        return "bfloat16 Triton kernels need compute capability >= 8.0"
    if not MIN_HEAD_DIM <= call.head_dim <= MAX_HEAD_DIM:
        return f"head_dim {call.head_dim} not supported (supports {MIN_HEAD_DIM}-{MAX_HEAD_DIM})"
    return None


def triton_rank(call: AttentionCall) -> int:
    """``auto`` priority for this call (SDPA is 10): see the module docstring."""
    if call.device_type != "cuda":
        return -100
    if call.dtype in (torch.float16, torch.bfloat16) and (call.padding_mask or call.window):
        return 15
    return 8


def triton_attention(q: Tensor, k: Tensor, v: Tensor, *, causal: bool = False,
                     key_padding_mask: Tensor | None = None, scale: float | None = None,
                     window: Window | None = None) -> Tensor:
    """The ``triton`` backend; imports the kernel module on first use."""
    from trainlab.attention.flash_triton import triton_backend

    return triton_backend(q, k, v, causal=causal, key_padding_mask=key_padding_mask, scale=scale, window=window)
