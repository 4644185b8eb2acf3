"""Packed variable-length attention: many sequences in one ``[total, H, D]`` tensor, no padding.

A padded batch ``[B, T_max]`` spends compute and memory on padding tokens (attention on them is
``O(T_max²)`` per row whatever the real length). Packing concatenates the real tokens of every
sequence and records the boundaries in ``cu_seqlens = [0, n₀, n₀+n₁, ...]`` (cumulative lengths, the
flash-attn ``flash_attn_varlen_func`` convention); attention then runs per sequence, so a token
never sees another sequence and no work is spent on padding.

:func:`varlen_attention` dispatches to ``flash_attn`` (CUDA, fp16/bf16), ``triton`` (CUDA, or the
interpreter on CPU when forced), ``flash_torch`` (anywhere) or ``naive`` (anywhere; the reference);
``auto`` takes the first of those that can run the call. :func:`pack` / :func:`unpack` convert
between a right- or left-padded batch and the packed layout.
"""

from __future__ import annotations

import itertools
import math

import torch
from torch import Tensor

from trainlab.attention.dispatch import AttentionBackendError, AttentionCall
from trainlab.attention.flash_attn_ext import flash_attn_unavailable_reason
from trainlab.attention.flash_torch import check_cu_seqlens, flash_attention_varlen_torch
from trainlab.attention.mask import Window
from trainlab.attention.naive import naive_attention
from trainlab.attention.triton_dispatch import triton_check, triton_unavailable_reason

VARLEN_BACKENDS = ("flash_attn", "triton", "flash_torch", "naive")


def pack(x: Tensor, attention_mask: Tensor) -> tuple[Tensor, Tensor, int]:
    """``x [B, T, ...]`` and ``attention_mask [B, T]`` (1 = real) -> ``(packed [total, ...], cu_seqlens, max_len)``.

    Real tokens keep their order within each row (left or right padding both work).
    """
    keep = attention_mask.bool()
    lengths = keep.sum(dim=1)
    cu = torch.zeros(len(lengths) + 1, dtype=torch.int32, device=x.device)
    cu[1:] = lengths.cumsum(0)
    return x[keep], cu, int(lengths.max()) if len(lengths) else 0


def unpack(packed: Tensor, attention_mask: Tensor, fill: float = 0.0) -> Tensor:
    """Inverse of :func:`pack`: scatter ``packed [total, ...]`` back to ``[B, T, ...]`` (``fill`` at padding)."""
    keep = attention_mask.bool()
    out = packed.new_full((*keep.shape, *packed.shape[1:]), fill)
    out[keep] = packed
    return out


def _naive_varlen(q: Tensor, k: Tensor, v: Tensor, cu_q: list[int], cu_k: list[int], *, causal: bool,
                  scale: float | None, window: Window | None) -> Tensor:
    outs = []
    for s in range(len(cu_q) - 1):
        qs = q[cu_q[s]:cu_q[s + 1]].transpose(0, 1).unsqueeze(0)
        ks = k[cu_k[s]:cu_k[s + 1]].transpose(0, 1).unsqueeze(0)
        vs = v[cu_k[s]:cu_k[s + 1]].transpose(0, 1).unsqueeze(0)
        outs.append(naive_attention(qs, ks, vs, causal=causal, scale=scale, window=window)[0].transpose(0, 1))
    return torch.cat(outs, dim=0)


def _why_not(name: str, q: Tensor) -> str | None:
    if name == "flash_attn":
        reason = flash_attn_unavailable_reason()
        if reason is None and (q.device.type != "cuda" or q.dtype not in (torch.float16, torch.bfloat16)):
            reason = "flash-attn needs float16/bfloat16 CUDA tensors"
        return reason
    if name == "triton":
        call = AttentionCall.of(q.transpose(0, 1).unsqueeze(0))
        return triton_unavailable_reason() or triton_check(call)
    return None


def resolve_varlen_backend(backend: str, q: Tensor) -> tuple[str, str]:
    """The backend :func:`varlen_attention` would use for ``q``, and why."""
    if backend != "auto":
        if backend not in VARLEN_BACKENDS:
            raise AttentionBackendError(f"unknown varlen attention backend {backend!r}; expected auto or one of "
                                        f"{', '.join(VARLEN_BACKENDS)}")
        reason = _why_not(backend, q)
        if reason is not None:
            raise AttentionBackendError(f"varlen attention backend {backend!r} cannot run here: {reason}")
        return backend, f"{backend!r} requested"
    skipped = []
    for name in VARLEN_BACKENDS:
        if name == "triton" and q.device.type != "cuda":
            skipped.append("triton: not chosen automatically off CUDA")
            continue
        reason = _why_not(name, q)
        if reason is None:
            return name, f"auto chose {name!r}" + ("; skipped " + "; ".join(skipped) if skipped else "")
        skipped.append(f"{name}: {reason}")
    raise AttentionBackendError("no varlen attention backend can run: " + "; ".join(skipped))  # pragma: no cover


def varlen_attention(q: Tensor, k: Tensor, v: Tensor, cu_seqlens_q: Tensor, cu_seqlens_k: Tensor | None = None,
                     max_seqlen_q: int | None = None, max_seqlen_k: int | None = None, *, causal: bool = False,
                     scale: float | None = None, window: Window | None = None, backend: str = "auto") -> Tensor:
    """Attention within each packed sequence: ``q [total_q, Hq, D]``, ``k, v [total_k, Hkv, D]`` -> like q.

    ``cu_seqlens_k`` defaults to ``cu_seqlens_q`` (self-attention); ``max_seqlen_*`` default to the
    longest sequence (computed on the host).
    """
    cu_seqlens_k = cu_seqlens_q if cu_seqlens_k is None else cu_seqlens_k
    cu_q, cu_k = check_cu_seqlens(q, k, v, cu_seqlens_q, cu_seqlens_k)
    max_q = max_seqlen_q or max(b - a for a, b in itertools.pairwise(cu_q))
    max_k = max_seqlen_k or max(b - a for a, b in itertools.pairwise(cu_k))
    name, _ = resolve_varlen_backend(backend, q)
    if name == "naive":
        return _naive_varlen(q, k, v, cu_q, cu_k, causal=causal, scale=scale, window=window)
    if name == "flash_torch":
        return flash_attention_varlen_torch(q, k, v, cu_seqlens_q, cu_seqlens_k, causal=causal, scale=scale,
                                            window=window)
    if name == "triton":
        from trainlab.attention.flash_triton import flash_attention_varlen_triton

        return flash_attention_varlen_triton(q, k, v, cu_seqlens_q, cu_seqlens_k, max_q, max_k, causal=causal,
                                             scale=scale, window=window,
                                             deterministic=torch.are_deterministic_algorithms_enabled())
    from trainlab.attention.flash_attn_ext import flash_attn_varlen

    return flash_attn_varlen(q, k, v, cu_seqlens_q, cu_seqlens_k, max_q, max_k, causal=causal,
                             scale=scale if scale is not None else 1.0 / math.sqrt(q.shape[-1]), window=window)


__all__ = ["VARLEN_BACKENDS", "pack", "resolve_varlen_backend", "unpack", "varlen_attention"]
