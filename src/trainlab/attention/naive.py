"""Reference attention that materializes the full score matrix.

.. math::

    \\mathrm{Attention}(Q, K, V) = \\mathrm{softmax}\\!\\left(\\frac{Q K^\\top}{\\sqrt{d}} + M\\right) V

(Vaswani et al., 2017, "Attention Is All You Need"), with ``M[i, j] = -inf`` where query ``i`` may
not see key ``j`` (see :mod:`trainlab.attention.mask`). Memory is ``O(B·H·Tq·Tk)``: this is the
readable baseline, and in float64 the reference every faster backend is tested against.

Grouped-query attention (Ainslie et al., 2023, "GQA") shares each key/value head among
``Hq / Hkv`` query heads; multi-query attention (Shazeer, 2019, "Fast Transformer Decoding") is the
special case ``Hkv = 1``. Query head ``h`` uses key/value head ``h // (Hq / Hkv)``, the layout of
Llama and of ``repeat_interleave`` on the head axis.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from trainlab.attention.mask import Window, check_qkv, open_empty_rows, visibility_mask


def repeat_kv(x: Tensor, n_rep: int) -> Tensor:
    """``[B, Hkv, T, D] -> [B, Hkv·n_rep, T, D]``, each kv head repeated for its query group."""
    if n_rep == 1:
        return x
    return x.repeat_interleave(n_rep, dim=1)


def naive_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    causal: bool = False,
    key_padding_mask: Tensor | None = None,
    scale: float | None = None,
    window: Window | None = None,
) -> Tensor:
    """Attention over ``q [B,Hq,Tq,D]``, ``k, v [B,Hkv,Tk,D]`` -> ``[B,Hq,Tq,Dv]`` in q's dtype.

    The softmax runs in float32 (or float64 for float64 inputs) because in half precision
    ``exp`` of large scores and the row sums lose too many bits; the probabilities are cast back
    to v's dtype for the second matmul, as in HF Llama's eager path.
    """
    check_qkv(q, k, v, key_padding_mask)
    n_rep = q.shape[1] // k.shape[1]
    k, v = repeat_kv(k, n_rep), repeat_kv(v, n_rep)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale

    scores = torch.matmul(q, k.transpose(-2, -1)) * scale
    scores = scores.to(torch.promote_types(scores.dtype, torch.float32))
    mask = visibility_mask(q.shape[2], k.shape[2], causal=causal, key_padding_mask=key_padding_mask, device=q.device,
                           window=window)
    empty = None
    if mask is not None:
        mask, empty = open_empty_rows(mask)
        scores = scores.masked_fill(~mask, float("-inf"))
    probs = torch.softmax(scores, dim=-1).to(v.dtype)
    out = torch.matmul(probs, v)
    if empty is not None:
        out = out.masked_fill(empty, 0.0)
    return out.to(q.dtype)
