"""Attention through ``torch.nn.functional.scaled_dot_product_attention`` (SDPA).

SDPA computes the same function as :func:`trainlab.attention.naive.naive_attention` but picks a
fused kernel when it can: FlashAttention-2 (Dao, 2023), memory-efficient attention (Rabe & Staats,
2021, "Self-attention Does Not Need O(n²) Memory"), cuDNN, or a fused CPU kernel, falling back to
a math implementation otherwise. This wrapper only translates our conventions:

* SDPA's ``is_causal=True`` is **top-left** aligned (``j <= i``), so it is used only when
  ``Tq == Tk`` and there is no padding mask. Otherwise a boolean mask (bottom-right causal and/or
  padding) is built; fused kernels that take no mask are then not eligible, which is the price of
  those features.
* Rows with no visible key are made finite (they see every key) and zeroed afterwards, because
  some kernels return NaN for them (see :func:`trainlab.attention.mask.open_empty_rows`).
* Grouped-query heads use SDPA's ``enable_gqa`` (torch >= 2.5), which avoids materializing the
  repeated keys/values, else ``repeat_interleave``.
* A sliding window has no SDPA flag: it becomes a dense boolean mask, which costs ``O(Tq·Tk)``
  memory and rules out the mask-free fused kernels (the Triton kernel and flash-attn handle windows
  natively).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from trainlab.attention.mask import Window, check_qkv, normalize_window, open_empty_rows, visibility_mask
from trainlab.attention.naive import repeat_kv

#: SDPA grew ``enable_gqa`` in torch 2.5.
HAS_ENABLE_GQA = torch.torch_version.TorchVersion(torch.__version__) >= (2, 5)


def sdpa_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    causal: bool = False,
    key_padding_mask: Tensor | None = None,
    scale: float | None = None,
    window: Window | None = None,
) -> Tensor:
    """Same contract as :func:`~trainlab.attention.naive.naive_attention`, computed by SDPA."""
    check_qkv(q, k, v, key_padding_mask)
    q_len, k_len = q.shape[2], k.shape[2]
    n_rep = q.shape[1] // k.shape[1]

    extra: dict[str, bool] = {}
    if n_rep > 1:
        if HAS_ENABLE_GQA:
            extra["enable_gqa"] = True
        else:
            k, v = repeat_kv(k, n_rep), repeat_kv(v, n_rep)

    is_causal = False
    mask: Tensor | None = None
    empty: Tensor | None = None
    positional = normalize_window(window, causal)
    if positional is not None and positional != (-1, 0):
        # A sliding window has no SDPA flag: it becomes a dense boolean mask (O(Tq·Tk) memory), and a
        # row can lose every key, so empty rows are opened and zeroed as for padding.
        mask = visibility_mask(q_len, k_len, causal=causal, key_padding_mask=key_padding_mask, device=q.device,
                               window=window)
        assert mask is not None
        mask, empty = open_empty_rows(mask)
    elif key_padding_mask is None and (not causal or q_len == 1):
        # Nothing to mask: a single query with Tk >= 1 keys sees all of them under bottom-right
        # causality, which is the common decode step.
        pass
    elif key_padding_mask is None and q_len == k_len:
        is_causal = True  # top-left == bottom-right; lets SDPA pick a mask-free fused kernel
    else:
        mask = visibility_mask(q_len, k_len, causal=causal, key_padding_mask=key_padding_mask, device=q.device)
        assert mask is not None
        if key_padding_mask is not None or q_len > k_len:  # only then can a row be empty
            mask, empty = open_empty_rows(mask)

    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal, scale=scale, **extra)
    if empty is not None:
        out = out.masked_fill(empty, 0.0)
    return out
