"""Attention masks shared by every backend, so all of them agree on what a query may see.

Conventions (the same as flash-attn >= 2.1 and as decoding with a KV cache):

* ``causal`` is aligned to the **bottom right** of the score matrix. With ``Tq`` queries and ``Tk``
  keys, query ``i`` sees key ``j`` iff ``j <= i + (Tk - Tq)``. When ``Tq == Tk`` this is the usual
  lower triangle; when ``Tq < Tk`` the queries are the *last* ``Tq`` positions of the sequence (a
  decode step against a cache); when ``Tq > Tk`` the first ``Tq - Tk`` queries see no key at all.
* ``key_padding_mask`` is ``[B, Tk]`` bool, ``True`` = a real key (keep), ``False`` = padding.
* A query row with no visible key outputs **zeros** (not NaN, not a uniform average); its gradient
  is zero too. Left-padded batches produce such rows at the padding positions.
* ``window = (left, right)`` is a sliding window (local attention, as in Longformer and Mistral, and
  flash-attn's ``window_size``), on the same bottom-right diagonal: query ``i`` sees key ``j`` iff
  ``i + off - left <= j <= i + off + right`` with ``off = Tk - Tq``; ``-1`` leaves that side
  unbounded. ``causal`` is ``right = 0``; both together give causal local attention.
"""

from __future__ import annotations

import torch
from torch import Tensor

#: A sliding window ``(left, right)``; ``-1`` means unbounded on that side.
Window = tuple[int, int]


def normalize_window(window: Window | None, causal: bool) -> Window | None:
    """Fold ``causal`` into the window: ``(left, right)`` with ``right <= 0`` when causal.

    Returns None when no key is excluded by position (no window, not causal). Raises ValueError for
    a malformed window (a programming error, like a shape mismatch).
    """
    if window is None:
        return (-1, 0) if causal else None
    if len(window) != 2 or any(int(w) != w or w < -1 for w in window):
        raise ValueError(f"window must be (left, right) with each side >= 0 or -1 (unbounded), got {window!r}")
    left, right = int(window[0]), int(window[1])
    if causal:
        right = 0 if right < 0 else min(right, 0)
    if left < 0 and right < 0:
        return None
    return left, right


def window_mask(q_len: int, k_len: int, window: Window, device: torch.device | str | None = None) -> Tensor:
    """``[Tq, Tk]`` mask of ``i + off - left <= j <= i + off + right`` (``off = Tk - Tq``; -1: unbounded)."""
    left, right = window
    rows = torch.arange(q_len, device=device).unsqueeze(1) + (k_len - q_len)
    cols = torch.arange(k_len, device=device).unsqueeze(0)
    mask = torch.ones(q_len, k_len, dtype=torch.bool, device=device)
    if left >= 0:
        mask &= cols >= rows - left
    if right >= 0:
        mask &= cols <= rows + right
    return mask


def causal_mask(q_len: int, k_len: int, device: torch.device | str | None = None) -> Tensor:
    """Bottom-right aligned causal mask ``[Tq, Tk]``: ``mask[i, j] = j <= i + Tk - Tq``."""
    rows = torch.arange(q_len, device=device).unsqueeze(1)
    cols = torch.arange(k_len, device=device).unsqueeze(0)
    return cols <= rows + (k_len - q_len)


def visibility_mask(
    q_len: int,
    k_len: int,
    *,
    causal: bool,
    key_padding_mask: Tensor | None,
    device: torch.device | str | None = None,
    window: Window | None = None,
) -> Tensor | None:
    """The boolean mask ``[B or 1, 1, Tq, Tk]`` of allowed (query, key) pairs, or None if all are.

    It broadcasts against scores ``[B, H, Tq, Tk]``; ``True`` means the query may attend the key.
    """
    mask: Tensor | None = None
    positional = normalize_window(window, causal)
    if positional == (-1, 0):
        mask = causal_mask(q_len, k_len, device)[None, None]
    elif positional is not None:
        mask = window_mask(q_len, k_len, positional, device)[None, None]
    if key_padding_mask is not None:
        keep = key_padding_mask.to(device=device, dtype=torch.bool)[:, None, None, :]
        mask = keep if mask is None else mask & keep
    return mask


def open_empty_rows(mask: Tensor) -> tuple[Tensor, Tensor]:
    """Make every row of ``mask`` attend somewhere; return ``(mask', empty_rows)``.

    Rows with no visible key would give ``softmax(-inf, ..., -inf) = NaN`` (and NaN gradients that
    leak into k and v). Instead we let such rows see every key, which keeps all arithmetic finite,
    and the caller zeroes their output with ``out.masked_fill(empty_rows, 0)``. Because that zeroes
    the upstream gradient of those rows, they contribute exactly nothing to dq, dk or dv.
    ``empty_rows`` has shape ``[B or 1, 1, Tq, 1]``.
    """
    empty = ~mask.any(dim=-1, keepdim=True)
    return mask | empty, empty


def check_qkv(q: Tensor, k: Tensor, v: Tensor, key_padding_mask: Tensor | None) -> None:
    """Shape checks shared by all backends (programming errors, hence ValueError)."""
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError(
            f"attention expects q [B,Hq,Tq,D], k/v [B,Hkv,Tk,D]; got {tuple(q.shape)}, "
            f"{tuple(k.shape)}, {tuple(v.shape)}"
        )
    b, hq, _, d = q.shape
    if k.shape[:3] != v.shape[:3]:
        raise ValueError(f"k {tuple(k.shape)} and v {tuple(v.shape)} must share [B,Hkv,Tk]")
    if k.shape[0] != b or k.shape[3] != d:
        raise ValueError(f"q {tuple(q.shape)} and k {tuple(k.shape)} disagree on batch or head_dim")
    hkv = k.shape[1]
    if hq % hkv:
        raise ValueError(f"query heads ({hq}) must be a multiple of key/value heads ({hkv})")
    if key_padding_mask is not None and tuple(key_padding_mask.shape) != (b, k.shape[2]):
        raise ValueError(f"key_padding_mask must be [B, Tk] = {(b, k.shape[2])}, got {tuple(key_padding_mask.shape)}")
