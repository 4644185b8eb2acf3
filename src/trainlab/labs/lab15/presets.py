"""Lab 1.5's presets and the helpers every section shares (inputs, backends, series of points)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from trainlab.attention import attention, available_backends
from trainlab.labs.common import resolve_preset
from trainlab.report.plots_lab15 import series

TITLE = "Lab 1.5: FlashAttention, from the tiled algorithm to a fast Triton kernel"
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
H100_SMS = 132  # streaming multiprocessors of an H100 SXM: the work items a kernel wants to fill


@dataclass(frozen=True)
class Preset:
    """Sizes of every measurement (see the module docstring for what each one is)."""

    exact_shape: tuple[int, int, int, int, int]  # B, Hq, Hkv, N, D
    sweep_seqs: tuple[int, ...]
    sweep_memory_seqs: tuple[int, ...]  # extra lengths measured for memory only (one run each)
    sweep_batch: int
    sweep_heads: int
    sweep_head_dim: int
    warmup: int
    repeats: int
    max_time_s: float
    naive_max_seq: int  # naive attention is not run beyond this length (its N² matrices)
    flash_torch_max_seq: int  # nor the Python-loop reference on a GPU beyond this one
    order_seq: int
    order_block: int
    train_seqs: tuple[int, ...]
    train_dim: int
    train_layers: int
    train_heads: int
    train_vocab: int
    train_timed_steps: int
    memory_cap_bytes: int
    profile_seq: int
    varlen_lengths: tuple[int, ...]
    varlen_heads: int
    varlen_head_dim: int
    flash_block: int  # flash_torch's tile size in the sweep (small at toy lengths, so that tiling shows)
    train_block: int  # ... and in the decoder (larger tiles: fewer Python-loop iterations per step)
    cpu_threads: int | None  # intra-op threads on a CPU during the lab (None: leave torch's setting)


PRESETS: dict[str, Preset] = {
    "tiny": Preset(
        exact_shape=(1, 2, 1, 48, 16), sweep_seqs=(64, 128), sweep_memory_seqs=(256,), sweep_batch=1, sweep_heads=2,
        sweep_head_dim=16, warmup=0, repeats=1, max_time_s=1.0, naive_max_seq=1 << 20, flash_torch_max_seq=1 << 20,
        order_seq=128, order_block=32, train_seqs=(64, 128, 256), train_dim=32, train_layers=1, train_heads=2,
        train_vocab=64, train_timed_steps=1, memory_cap_bytes=3 << 19, profile_seq=64,
        varlen_lengths=(5, 17, 33, 64), varlen_heads=2, varlen_head_dim=16, flash_block=32, train_block=32,
        cpu_threads=1,
    ),
    "quick": Preset(
        exact_shape=(2, 4, 2, 128, 64), sweep_seqs=(512, 1024, 2048, 4096), sweep_memory_seqs=(),
        sweep_batch=1, sweep_heads=2, sweep_head_dim=64, warmup=1, repeats=2, max_time_s=1.0,
        naive_max_seq=1 << 20, flash_torch_max_seq=1 << 20, order_seq=2048, order_block=256,
        train_seqs=(1024, 2048, 4096, 8192), train_dim=64, train_layers=1, train_heads=2, train_vocab=512,
        train_timed_steps=1, memory_cap_bytes=512 << 20, profile_seq=1024,
        varlen_lengths=(64, 96, 128, 200, 256, 300, 400, 512), varlen_heads=2, varlen_head_dim=64,
        flash_block=256, train_block=512, cpu_threads=1,
    ),
    "full": Preset(
        exact_shape=(2, 8, 2, 1024, 128), sweep_seqs=(1024, 2048, 4096, 8192, 16384, 32768),
        sweep_memory_seqs=(), sweep_batch=2, sweep_heads=16, sweep_head_dim=128, warmup=3, repeats=10,
        max_time_s=5.0, naive_max_seq=16384, flash_torch_max_seq=8192, order_seq=8192, order_block=128,
        train_seqs=(1024, 2048, 4096, 8192, 16384, 32768), train_dim=1024, train_layers=4, train_heads=8,
        train_vocab=32000, train_timed_steps=3, memory_cap_bytes=24 << 30, profile_seq=4096,
        varlen_lengths=(300, 700, 1000, 1500, 2048, 3000, 3500, 4096), varlen_heads=16, varlen_head_dim=128,
        flash_block=128, train_block=256, cpu_threads=None,
    ),
}


def get_preset(name: str) -> Preset:
    """The sizes of preset ``name``; an unknown name is a `UserError` (never silently another preset)."""
    return resolve_preset(PRESETS, name, lab="lab15")


def flash_backend(device: torch.device) -> str:
    """The flash implementation the decoder uses here: the Triton kernel on CUDA, the PyTorch reference elsewhere."""
    return "triton" if device.type == "cuda" and "triton" in available_backends() else "flash_torch"


def make_inputs(shape: tuple[int, int, int, int, int], dtype: torch.dtype, device: torch.device, seed: int,
            ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    b, hq, hkv, n, d = shape
    g = torch.Generator(device="cpu").manual_seed(seed)
    q = torch.randn(b, hq, n, d, generator=g).to(device=device, dtype=dtype)
    k = torch.randn(b, hkv, n, d, generator=g).to(device=device, dtype=dtype)
    v = torch.randn(b, hkv, n, d, generator=g).to(device=device, dtype=dtype)
    do = torch.randn(b, hq, n, d, generator=g).to(device=device, dtype=dtype)
    return q, k, v, do


def attention_fn(backend: str) -> Callable[..., Tensor]:
    """``backend`` with the FA1 loop order available as the pseudo-backend ``flash_torch[fa1]``."""
    if backend == "flash_torch[fa1]":
        from trainlab.attention.flash_torch import flash_attention_torch

        return lambda q, k, v, **kw: flash_attention_torch(q, k, v, loop_order="fa1", **kw)
    return lambda q, k, v, **kw: attention(q, k, v, backend=backend, **kw)


def device_backends(device: torch.device) -> tuple[list[str], list[tuple[str, str]]]:
    """Backends to measure here, and those that cannot run here with the reason."""
    names = ["naive", "sdpa", "flash_torch", "triton", "flash_attn"]
    usable, skipped = [], []
    probe = torch.zeros(1, 1, 16, 64, device=device, dtype=torch.float16 if device.type == "cuda" else torch.float32)
    from trainlab.attention import resolve_backend
    from trainlab.errors import UserError

    for name in names:
        if device.type != "cuda" and name in ("triton", "flash_attn"):
            # (under TRITON_INTERPRET=1 the Triton kernels would run on CPU, but only to be tested: the
            # interpreter's speed and memory say nothing about the kernel's)
            skipped.append((name, "needs CUDA"))
            continue
        try:
            resolve_backend(name, probe, causal=True)
            usable.append(name)
        except UserError as exc:
            skipped.append((name, str(exc).split(": ", 1)[-1]))
    return usable, skipped


def empty_cache(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()


def largest_common(pts: list[dict[str, Any]], a: str, b: str, key: str) -> tuple[int, float, float] | None:
    xa, ya = series(pts, a, key)
    xb, yb = series(pts, b, key)
    common = sorted(set(xa) & set(xb))
    if not common:
        return None
    n = common[-1]
    return n, dict(zip(xa, ya, strict=True))[n], dict(zip(xb, yb, strict=True))[n]


def fmt_err(x: float | None) -> str:
    return "—" if x is None else f"{x:.2e}"
