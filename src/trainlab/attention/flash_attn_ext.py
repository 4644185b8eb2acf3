"""The ``flash_attn`` package (Dao, 2023, FlashAttention-2) behind trainlab's attention contract.

Used only when ``import flash_attn`` works and a CUDA GPU of compute capability >= 8.0 is present
(the package's own requirements). flash-attn uses the ``[B, T, H, D]`` layout, bottom-right causal
alignment (>= 2.1, like ours), returns zeros for rows with no visible key, handles GQA natively and
takes ``window_size=(left, right)`` with -1 for unbounded, all our conventions; it has no key padding
mask in the dense API (that needs unpadding into the varlen API, which changes what padded query
rows compute), so the dispatcher never sends it one.
"""

from __future__ import annotations

import functools
import importlib.util

import torch
from torch import Tensor

from trainlab.attention.dispatch import AttentionCall
from trainlab.attention.mask import Window, check_qkv, normalize_window


@functools.cache
def flash_attn_unavailable_reason() -> str | None:
    """None when the flash-attn package can run here, else why not."""
    if importlib.util.find_spec("flash_attn") is None:
        return "the flash-attn package is not installed (pip install flash-attn, CUDA only)"
    if not torch.cuda.is_available():
        return "flash-attn needs a CUDA GPU"
    major, _ = torch.cuda.get_device_capability()
    if major < 8:
        return "flash-attn 2 needs a GPU of compute capability >= 8.0 (Ampere or newer)"
    try:
        import flash_attn  # noqa: F401
    except Exception as exc:  # a broken build (ABI mismatch with torch) fails here
        return f"flash-attn failed to import: {type(exc).__name__}: {exc}"
    return None


def flash_attn_check(call: AttentionCall) -> str | None:
    """Per-call limits of flash-attn 2: head dim a multiple of 8, at most 256."""
    if call.head_dim > 256 or call.head_dim % 8:
        return f"head_dim {call.head_dim} not supported (flash-attn needs a multiple of 8 up to 256)"
    return None


def _window_args(causal: bool, window: Window | None) -> tuple[bool, tuple[int, int]]:
    band = normalize_window(window, causal)
    if band is None:
        return False, (-1, -1)
    if band == (-1, 0):
        return True, (-1, -1)
    return False, band


def flash_attn_backend(q: Tensor, k: Tensor, v: Tensor, *, causal: bool = False,
                       key_padding_mask: Tensor | None = None, scale: float | None = None,
                       window: Window | None = None) -> Tensor:
    """``flash_attn_func`` on ``q [B,Hq,Tq,D]``, ``k, v [B,Hkv,Tk,D]`` (transposed to its layout and back)."""
    from flash_attn import flash_attn_func

    check_qkv(q, k, v, key_padding_mask)
    if key_padding_mask is not None:
        raise ValueError("flash_attn_func has no key padding mask; the dispatcher should not send one")
    is_causal, window_size = _window_args(causal, window)
    out = flash_attn_func(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), softmax_scale=scale,
                          causal=is_causal, window_size=window_size)
    return out.transpose(1, 2)


def flash_attn_varlen(q: Tensor, k: Tensor, v: Tensor, cu_seqlens_q: Tensor, cu_seqlens_k: Tensor,
                      max_seqlen_q: int, max_seqlen_k: int, *, causal: bool = False, scale: float | None = None,
                      window: Window | None = None) -> Tensor:
    """``flash_attn_varlen_func`` on packed ``[total, H, D]`` tensors."""
    from flash_attn import flash_attn_varlen_func

    is_causal, window_size = _window_args(causal, window)
    return flash_attn_varlen_func(q, k, v, cu_seqlens_q.to(torch.int32), cu_seqlens_k.to(torch.int32),
                                  max_seqlen_q, max_seqlen_k, softmax_scale=scale, causal=is_causal,
                                  window_size=window_size)
