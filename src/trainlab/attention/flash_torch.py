r"""FlashAttention in readable PyTorch: tiling, online softmax, recomputation in the backward.

Standard attention writes the score matrix ``S = QKᵀ·scale`` and the probabilities
``P = softmax(S)`` (``Tq × Tk`` each, per batch and head) to memory and reads them back, so its
memory is ``O(T²)`` and, on a GPU, its time is dominated by moving ``S`` and ``P`` through HBM.
FlashAttention (Dao, Fu, Ermon, Rudra & Ré, 2022, "FlashAttention: Fast and Memory-Efficient Exact
Attention with IO-Awareness") never materializes them: it walks over blocks of queries and keys and
keeps, for each query row, a running maximum ``m``, a running normalizer ``ℓ`` and an unnormalized
output ``Õ`` (the *online softmax*, Milakov & Gimelshein, 2018). When a new key block ``j`` brings
scores ``S_j``::

    m'  = max(m, rowmax(S_j))
    ℓ'  = e^{m - m'} · ℓ + rowsum(e^{S_j - m'})
    Õ'  = e^{m - m'} · Õ + e^{S_j - m'} · V_j

and at the end ``O = Õ / ℓ`` and the row log-sum-exp ``L = m + log ℓ``. The result is exact (the same
function as :func:`~trainlab.attention.naive.naive_attention`, up to rounding), and only ``O`` and
``L`` (``O(T)``) are kept for the backward.

Two loop orders are implemented, selectable with ``loop_order``:

* ``"fa1"`` (Algorithm 1 of the 2022 paper): the **outer** loop runs over K/V blocks, the inner
  loop over Q blocks. Each inner step reads ``O_i, ℓ_i, m_i`` from "HBM" (full-size tensors here),
  updates them, rescales ``O_i`` by ``1/ℓ'`` and writes them back: ``O`` is read and written once per
  K/V block. Only batch × heads are independent work items; the outer loop carries ``O, ℓ, m`` from
  one K/V block to the next, so a GPU kernel cannot spread it over thread blocks.
* ``"fa2"`` (Dao, 2023, "FlashAttention-2: Faster Attention with Better Parallelism and Work
  Partitioning"): the **outer** loop runs over Q blocks, the inner loop over K/V blocks. ``Õ, ℓ, m``
  of one Q block stay in "SRAM" (local variables) for the whole inner loop and ``O`` is written once;
  the division by ``ℓ`` happens once at the end instead of at every step (fewer non-matmul FLOPs), and
  Q blocks are independent, so a kernel parallelizes over batch × heads × Q blocks, which keeps a GPU
  busy when batch × heads is small (long sequences).

The backward (Algorithm 2 of FlashAttention-2) recomputes ``S`` and ``P = exp(S - L)`` block by
block from Q, K and the saved ``L`` instead of reading a stored ``P``::

    D   = rowsum(dO ∘ O)                 (= rowsum(P ∘ dP), one number per query)
    dV  = Pᵀ dO,   dP = dO Vᵀ,   dS = P ∘ (dP − D)
    dQ  = dS K · scale,   dK = dSᵀ Q · scale

with the outer loop over K/V blocks (dK_j, dV_j accumulate locally and are written once) and dQ
accumulated across them. Grouped-query attention is native: a K/V head is broadcast over its group
of query heads inside each block product and its dK/dV are summed over the group, so K and V are
never expanded in memory. Masks (bottom-right causal, sliding window, key padding) are applied per
block, and blocks that the causal/window band excludes entirely are skipped, which halves the work of
causal attention.

Arithmetic follows the GPU kernels: scores, softmax statistics and accumulators in float32 (float64
for float64 inputs); P and dS are rounded to the input dtype before their matmuls, as tensor cores
require. This module is the readable reference for :mod:`trainlab.attention.flash_triton`; on a CPU
its Python loop makes it slower than SDPA's fused kernel, but its memory is linear in the sequence
length.
"""

from __future__ import annotations

import contextlib
import itertools
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

from trainlab.attention.mask import Window, check_qkv, normalize_window

LoopOrder = Literal["fa1", "fa2"]
DEFAULT_BLOCK = 256  # large enough that the Python loop is not the bottleneck on a CPU
_default_blocks = [DEFAULT_BLOCK, DEFAULT_BLOCK]


@contextlib.contextmanager
def default_blocks(block_q: int, block_k: int | None = None) -> Iterator[None]:
    """Within the block, calls that do not pass block sizes (e.g. through ``attention()`` or a model)
    use ``block_q``/``block_k`` tiles; the lab uses it to show linear memory at toy lengths."""
    if block_q < 1 or (block_k is not None and block_k < 1):
        raise ValueError("block sizes must be positive")
    old = list(_default_blocks)
    _default_blocks[:] = [block_q, block_k or block_q]
    try:
        yield
    finally:
        _default_blocks[:] = old


@dataclass
class FlashStats:
    """What one tiled forward moved between "HBM" (full tensors) and "SRAM" (block locals).

    Counted by the loop itself as it runs, in bytes of the tensors' own dtypes; skipped blocks move
    nothing. ``rescale_flops`` counts the non-matmul multiply/divide work spent rescaling outputs.
    """

    bytes_read: int = 0
    bytes_written: int = 0
    block_pairs: int = 0
    rescale_flops: int = 0

    @property
    def bytes_moved(self) -> int:
        return self.bytes_read + self.bytes_written


def _nbytes(t: Tensor) -> int:
    return t.numel() * t.element_size()


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


class _Masker:
    """Per-block visibility: the causal/window band on the bottom-right diagonal and key padding."""

    def __init__(self, q_len: int, k_len: int, window: Window | None, key_padding_mask: Tensor | None,
                 device: torch.device) -> None:
        self.q_len, self.k_len = q_len, k_len
        self.offset = k_len - q_len  # bottom-right alignment: query i sits at position i + offset
        self.left, self.right = window if window is not None else (-1, -1)
        # [B, 1, 1, 1, Tk] to broadcast against scores [B, Hkv, G, bq, bk]
        self.keep = (None if key_padding_mask is None
                     else key_padding_mask.to(device, torch.bool)[:, None, None, None, :])
        self.device = device

    def key_range(self, i0: int, i1: int) -> tuple[int, int]:
        """Keys ``[lo, hi)`` that any query in ``[i0, i1)`` may see under the band."""
        lo = 0 if self.left < 0 else max(0, i0 + self.offset - self.left)
        hi = self.k_len if self.right < 0 else min(self.k_len, i1 - 1 + self.offset + self.right + 1)
        return lo, hi

    def query_range(self, j0: int, j1: int) -> tuple[int, int]:
        """Queries ``[lo, hi)`` that may see any key in ``[j0, j1)`` under the band."""
        lo = 0 if self.right < 0 else max(0, j0 - self.offset - self.right)
        hi = self.q_len if self.left < 0 else min(self.q_len, j1 - 1 - self.offset + self.left + 1)
        return lo, hi

    def visible(self, i0: int, i1: int, j0: int, j1: int) -> Tensor | None:
        """Boolean ``[B or 1, 1, 1, bq, bk]`` of visible pairs in the block, or None if all are."""
        mask: Tensor | None = None
        # Blocks wholly inside the band need no mask (decided from the corners, without a device sync).
        inside = (self.left < 0 or j0 >= i1 - 1 + self.offset - self.left) and (
            self.right < 0 or j1 - 1 <= i0 + self.offset + self.right)
        if not inside:
            rows = torch.arange(i0, i1, device=self.device)[:, None] + self.offset
            cols = torch.arange(j0, j1, device=self.device)[None, :]
            band = torch.ones(i1 - i0, j1 - j0, dtype=torch.bool, device=self.device)
            if self.left >= 0:
                band &= cols >= rows - self.left
            if self.right >= 0:
                band &= cols <= rows + self.right
            mask = band
        if self.keep is not None:
            keep = self.keep[..., j0:j1]
            mask = keep if mask is None else mask & keep
        return mask


def _blocks(n: int, size: int) -> list[tuple[int, int]]:
    return [(s, min(s + size, n)) for s in range(0, n, size)]


def _grouped(q: Tensor, n_kv: int) -> Tensor:
    """``[B, Hq, T, D] -> [B, Hkv, G, T, D]`` (a view): query head ``h`` uses kv head ``h // G``."""
    return q.unflatten(1, (n_kv, q.shape[1] // n_kv))


def flash_forward(q: Tensor, k: Tensor, v: Tensor, *, scale: float, window: Window | None = None,
                  key_padding_mask: Tensor | None = None, block_q: int = DEFAULT_BLOCK,
                  block_k: int = DEFAULT_BLOCK, loop_order: LoopOrder = "fa2",
                  stats: FlashStats | None = None) -> tuple[Tensor, Tensor]:
    """Tiled forward. Returns ``O [B,Hq,Tq,D]`` (q's dtype) and ``L [B,Hq,Tq]`` (float32/64).

    ``window`` is already normalized (causal folded in, see :func:`~trainlab.attention.mask.normalize_window`).
    Rows that see no key get ``O = 0`` and ``L = -inf``.
    """
    b, tq = q.shape[0], q.shape[2]
    hkv, tk, dv = k.shape[1], k.shape[2], v.shape[3]
    acc = _acc_dtype(q.dtype)
    qg = _grouped(q, hkv)  # [B, Hkv, G, Tq, D]
    kg, vg = k.unsqueeze(2), v.unsqueeze(2)  # [B, Hkv, 1, Tk, D]: broadcast over the group, never copied
    masker = _Masker(tq, tk, window, key_padding_mask, q.device)
    st = stats if stats is not None else FlashStats()

    if loop_order == "fa2":
        out = torch.empty(b, hkv, qg.shape[2], tq, dv, dtype=q.dtype, device=q.device)
        lse = torch.empty(b, hkv, qg.shape[2], tq, dtype=acc, device=q.device)
        for i0, i1 in _blocks(tq, block_q):
            q_i = qg[..., i0:i1, :]
            st.bytes_read += _nbytes(q_i)
            m = torch.full((*q_i.shape[:-1], 1), -math.inf, dtype=acc, device=q.device)
            ell = torch.zeros_like(m)
            o = torch.zeros(*q_i.shape[:-1], dv, dtype=acc, device=q.device)
            lo, hi = masker.key_range(i0, i1)
            for j0 in range(lo - lo % block_k, hi, block_k):
                j1 = min(j0 + block_k, tk)
                k_j, v_j = kg[..., j0:j1, :], vg[..., j0:j1, :]
                st.bytes_read += _nbytes(k_j) + _nbytes(v_j)
                st.block_pairs += 1
                s = torch.matmul(q_i.to(acc), k_j.to(acc).transpose(-1, -2)) * scale
                vis = masker.visible(i0, i1, j0, j1)
                if vis is not None:
                    s = s.masked_fill(~vis, -math.inf)
                m_new = torch.maximum(m, s.amax(dim=-1, keepdim=True))
                # A row that has seen no visible key yet keeps m = -inf; subtracting 0 instead keeps
                # exp() at 0 rather than exp(-inf - -inf) = NaN.
                m_safe = m_new.masked_fill(m_new == -math.inf, 0.0)
                p = torch.exp(s - m_safe)
                alpha = torch.exp(m - m_safe)
                ell = alpha * ell + p.sum(dim=-1, keepdim=True)
                o = alpha * o + torch.matmul(p.to(v.dtype).to(acc), v_j.to(acc))
                st.rescale_flops += o.numel()
                m = m_new
            # One division per row at the end (FA2's "delay the rescaling").
            empty = ell == 0
            out[..., i0:i1, :] = (o / ell.masked_fill(empty, 1.0)).to(q.dtype)
            lse[..., i0:i1] = (m + torch.log(ell)).masked_fill(empty, -math.inf).squeeze(-1)
            st.rescale_flops += o.numel()
            st.bytes_written += _nbytes(out[..., i0:i1, :]) + _nbytes(lse[..., i0:i1])
        return out.flatten(1, 2), lse.flatten(1, 2)

    if loop_order != "fa1":
        raise ValueError(f"loop_order must be 'fa1' or 'fa2', got {loop_order!r}")
    # FA1: O, ℓ, m live in "HBM" and are read, updated and written back for every (K/V, Q) block pair.
    out_acc = torch.zeros(b, hkv, qg.shape[2], tq, dv, dtype=acc, device=q.device)
    ell_all = torch.zeros(b, hkv, qg.shape[2], tq, 1, dtype=acc, device=q.device)
    m_all = torch.full_like(ell_all, -math.inf)
    for j0, j1 in _blocks(tk, block_k):
        k_j, v_j = kg[..., j0:j1, :], vg[..., j0:j1, :]
        st.bytes_read += _nbytes(k_j) + _nbytes(v_j)
        lo, hi = masker.query_range(j0, j1)
        for i0 in range(lo - lo % block_q, hi, block_q):
            i1 = min(i0 + block_q, tq)
            q_i = qg[..., i0:i1, :]
            o_i, ell_i, m_i = out_acc[..., i0:i1, :], ell_all[..., i0:i1, :], m_all[..., i0:i1, :]
            st.bytes_read += _nbytes(q_i) + _nbytes(o_i) + _nbytes(ell_i) + _nbytes(m_i)
            st.block_pairs += 1
            s = torch.matmul(q_i.to(acc), k_j.to(acc).transpose(-1, -2)) * scale
            vis = masker.visible(i0, i1, j0, j1)
            if vis is not None:
                s = s.masked_fill(~vis, -math.inf)
            m_ij = s.amax(dim=-1, keepdim=True)
            m_ij_safe = m_ij.masked_fill(m_ij == -math.inf, 0.0)
            p = torch.exp(s - m_ij_safe)
            ell_ij = p.sum(dim=-1, keepdim=True)
            m_new = torch.maximum(m_i, m_ij)
            m_new_safe = m_new.masked_fill(m_new == -math.inf, 0.0)
            a = torch.exp(m_i - m_new_safe)  # weight of the old statistics
            c = torch.exp(m_ij - m_new_safe)  # weight of this block
            ell_new = a * ell_i + c * ell_ij
            pv = torch.matmul(p.to(v.dtype).to(acc), v_j.to(acc))
            # Algorithm 1, line 12: O_i keeps the *normalized* output, so it is rescaled by ℓ_i/ℓ' and
            # divided again at every step.
            o_new = (a * ell_i * o_i + c * pv) / ell_new.masked_fill(ell_new == 0, 1.0)
            st.rescale_flops += 3 * o_new.numel()
            out_acc[..., i0:i1, :] = o_new
            ell_all[..., i0:i1, :] = ell_new
            m_all[..., i0:i1, :] = m_new
            st.bytes_written += _nbytes(o_new) + _nbytes(ell_new) + _nbytes(m_new)
    lse = (m_all + torch.log(ell_all)).masked_fill(ell_all == 0, -math.inf).squeeze(-1)
    return out_acc.to(q.dtype).flatten(1, 2), lse.flatten(1, 2)


def flash_backward(dout: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor, *, scale: float,
                   window: Window | None = None, key_padding_mask: Tensor | None = None,
                   block_q: int = DEFAULT_BLOCK, block_k: int = DEFAULT_BLOCK) -> tuple[Tensor, Tensor, Tensor]:
    """Tiled backward (FlashAttention-2, Algorithm 2): ``dQ, dK, dV`` from ``dO``, Q, K, V, O and L."""
    hkv, tq, tk = k.shape[1], q.shape[2], k.shape[2]
    acc = _acc_dtype(q.dtype)
    qg, dog = _grouped(q, hkv), _grouped(dout, hkv)  # [B, Hkv, G, T, D]
    kg, vg = k.unsqueeze(2), v.unsqueeze(2)
    masker = _Masker(tq, tk, window, key_padding_mask, q.device)
    # D_i = rowsum(dO_i ∘ O_i) = Σ_j P_ij dP_ij: one number per query, so dS = P ∘ (dP − D) needs no
    # row reduction over the (never stored) P.
    delta = (dout.to(acc) * out.to(acc)).sum(dim=-1).unflatten(1, (hkv, -1)).unsqueeze(-1)
    # Rows that saw no key have L = -inf; +inf makes exp(S - L) = 0 there (their output was 0).
    lse_g = lse.unflatten(1, (hkv, -1)).unsqueeze(-1)
    lse_g = lse_g.masked_fill(lse_g == -math.inf, math.inf)
    dq = torch.zeros(qg.shape, dtype=acc, device=q.device)
    dk = torch.empty(k.shape, dtype=k.dtype, device=k.device)
    dv_ = torch.empty(v.shape, dtype=v.dtype, device=v.device)
    for j0, j1 in _blocks(tk, block_k):
        k_j, v_j = kg[..., j0:j1, :].to(acc), vg[..., j0:j1, :].to(acc)
        dk_j = torch.zeros(k_j.shape, dtype=acc, device=q.device)
        dv_j = torch.zeros(v_j.shape, dtype=acc, device=q.device)
        lo, hi = masker.query_range(j0, j1)
        for i0 in range(lo - lo % block_q, hi, block_q):
            i1 = min(i0 + block_q, tq)
            q_i, do_i = qg[..., i0:i1, :].to(acc), dog[..., i0:i1, :].to(acc)
            s = torch.matmul(q_i, k_j.transpose(-1, -2)) * scale
            vis = masker.visible(i0, i1, j0, j1)
            if vis is not None:
                s = s.masked_fill(~vis, -math.inf)
            p = torch.exp(s - lse_g[..., i0:i1, :])  # recomputed, never stored
            p_lo = p.to(q.dtype).to(acc)
            dv_j += torch.matmul(p_lo.transpose(-1, -2), do_i).sum(dim=2, keepdim=True)  # Σ over the group
            dp = torch.matmul(do_i, v_j.transpose(-1, -2))
            ds = (p * (dp - delta[..., i0:i1, :])).to(q.dtype).to(acc)
            dq[..., i0:i1, :] += torch.matmul(ds, k_j) * scale
            dk_j += torch.matmul(ds.transpose(-1, -2), q_i).sum(dim=2, keepdim=True) * scale
        dk[:, :, j0:j1] = dk_j.squeeze(2).to(k.dtype)
        dv_[:, :, j0:j1] = dv_j.squeeze(2).to(v.dtype)
    return dq.flatten(1, 2).to(q.dtype), dk, dv_


class FlashAttentionFunction(torch.autograd.Function):
    """Autograd wrapper: the forward saves only Q, K, V, O and L (``O(T)``), the backward recomputes."""

    @staticmethod
    def forward(ctx: Any, q: Tensor, k: Tensor, v: Tensor, key_padding_mask: Tensor | None, scale: float,
                window: Window | None, block_q: int, block_k: int, loop_order: LoopOrder) -> Tensor:
        # Autocast must not touch the float32 accumulators (it would run the block matmuls in bf16/fp16):
        # the inputs arrive already in the compute dtype, and the precision policy is ours.
        with torch.profiler.record_function(f"flash_torch.forward[{loop_order}]"), \
                torch.autocast(q.device.type, enabled=False):
            out, lse = flash_forward(q, k, v, scale=scale, window=window, key_padding_mask=key_padding_mask,
                                     block_q=block_q, block_k=block_k, loop_order=loop_order)
        ctx.save_for_backward(q, k, v, out, lse, key_padding_mask)
        ctx.scale, ctx.window, ctx.block_q, ctx.block_k = scale, window, block_q, block_k
        return out

    @staticmethod
    def backward(ctx: Any, dout: Tensor) -> tuple[Tensor | None, ...]:
        q, k, v, out, lse, key_padding_mask = ctx.saved_tensors
        with torch.profiler.record_function("flash_torch.backward"), torch.autocast(q.device.type, enabled=False):
            dq, dk, dv = flash_backward(dout, q, k, v, out, lse, scale=ctx.scale, window=ctx.window,
                                        key_padding_mask=key_padding_mask, block_q=ctx.block_q,
                                        block_k=ctx.block_k)
        return dq, dk, dv, None, None, None, None, None, None


def flash_attention_torch(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    causal: bool = False,
    key_padding_mask: Tensor | None = None,
    scale: float | None = None,
    window: Window | None = None,
    block_q: int | None = None,
    block_k: int | None = None,
    loop_order: LoopOrder = "fa2",
) -> Tensor:
    """Tiled exact attention; same contract as :func:`~trainlab.attention.naive.naive_attention`.

    ``block_q``/``block_k`` are the tile sizes (a GPU kernel picks them to fit SRAM; here they trade
    Python-loop overhead against the size of the per-block temporaries; default: :data:`DEFAULT_BLOCK`
    or :func:`default_blocks`). ``loop_order`` selects the FlashAttention-1 or -2 forward; the backward
    is FlashAttention-2's.
    """
    check_qkv(q, k, v, key_padding_mask)
    block_q = _default_blocks[0] if block_q is None else block_q
    block_k = _default_blocks[1] if block_k is None else block_k
    if block_q < 1 or block_k < 1:
        raise ValueError(f"block sizes must be positive, got block_q={block_q}, block_k={block_k}")
    if loop_order not in ("fa1", "fa2"):
        raise ValueError(f"loop_order must be 'fa1' or 'fa2', got {loop_order!r}")
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    band = normalize_window(window, causal)
    out = FlashAttentionFunction.apply(q, k, v, key_padding_mask, scale, band, block_q, block_k, loop_order)
    assert isinstance(out, Tensor)
    return out


def flash_attention_varlen_torch(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    cu_seqlens_q: Tensor,
    cu_seqlens_k: Tensor,
    *,
    causal: bool = False,
    scale: float | None = None,
    window: Window | None = None,
    block_q: int | None = None,
    block_k: int | None = None,
) -> Tensor:
    """Attention over a packed batch: ``q [total_q, Hq, D]``, ``k, v [total_k, Hkv, D]`` (flash-attn's layout).

    Sequence ``s`` owns rows ``cu_seqlens[s]:cu_seqlens[s+1]``; tokens attend only within their own
    sequence, so no padding is computed or stored. Here each sequence simply runs the tiled kernel in
    turn (the Triton kernel instead maps sequences onto its grid).
    """
    cu_q, cu_k = check_cu_seqlens(q, k, v, cu_seqlens_q, cu_seqlens_k)
    outs = []
    for s in range(len(cu_q) - 1):
        q_s = q[cu_q[s]:cu_q[s + 1]].transpose(0, 1).unsqueeze(0)
        k_s = k[cu_k[s]:cu_k[s + 1]].transpose(0, 1).unsqueeze(0)
        v_s = v[cu_k[s]:cu_k[s + 1]].transpose(0, 1).unsqueeze(0)
        o_s = flash_attention_torch(q_s, k_s, v_s, causal=causal, scale=scale, window=window, block_q=block_q,
                                    block_k=block_k)
        outs.append(o_s.squeeze(0).transpose(0, 1))
    return torch.cat(outs, dim=0)


def check_cu_seqlens(q: Tensor, k: Tensor, v: Tensor, cu_seqlens_q: Tensor,
                      cu_seqlens_k: Tensor) -> tuple[list[int], list[int]]:
    if q.dim() != 3 or k.dim() != 3 or v.dim() != 3:
        raise ValueError(f"varlen attention expects q [total_q, Hq, D], k/v [total_k, Hkv, D]; got "
                         f"{tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    if k.shape[:2] != v.shape[:2] or q.shape[2] != k.shape[2] or q.shape[1] % k.shape[1]:
        raise ValueError(f"incompatible shapes q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}")
    cu_q, cu_k = [int(x) for x in cu_seqlens_q.tolist()], [int(x) for x in cu_seqlens_k.tolist()]
    if len(cu_q) != len(cu_k) or len(cu_q) < 2:
        raise ValueError("cu_seqlens_q and cu_seqlens_k must have the same length >= 2")
    for name, cu, total in (("cu_seqlens_q", cu_q, q.shape[0]), ("cu_seqlens_k", cu_k, k.shape[0])):
        if cu[0] != 0 or cu[-1] != total or any(b < a for a, b in itertools.pairwise(cu)):
            raise ValueError(f"{name} must rise from 0 to {total} (the packed length), got {cu}")
    return cu_q, cu_k


__all__ = [
    "FlashAttentionFunction",
    "FlashStats",
    "LoopOrder",
    "default_blocks",
    "flash_attention_torch",
    "flash_attention_varlen_torch",
    "flash_backward",
    "flash_forward",
]
