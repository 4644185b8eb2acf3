r"""FlashAttention-2 as Triton kernels: forward and backward, GQA, varlen, sliding windows.

The algorithm is the one :mod:`trainlab.attention.flash_torch` spells out in PyTorch (Dao et al.,
2022; Dao, 2023); here each loop body is one Triton program working on tiles held in SRAM/registers:

* **forward** (``_attn_fwd``): one program per (query block, batch·head). It loads its ``Q_i`` once,
  streams ``K_j, V_j`` blocks through, keeps the online-softmax state ``m, ℓ, Õ`` in registers and
  writes ``O_i`` and the row log-sum-exp ``L_i`` once. Scores are scaled by ``scale·log₂e`` so the
  exponentials are ``exp2`` (one MUFU instruction). Blocks strictly inside the causal/window band
  run without any masking code; only the blocks crossing the band's edges, the ragged last block
  and key-padded calls pay for masks; blocks outside the band are never visited (causal: half).
* **backward**: ``_bwd_preprocess`` computes ``D = rowsum(dO ∘ O)``; ``_attn_bwd_dkdv`` runs one
  program per (key block, batch·**kv head**): it keeps ``dK_j, dV_j`` in registers while looping over
  every query head of its group and every query block that can see it, recomputing
  ``P = exp2(S·log₂e − L·log₂e)`` from the saved ``L``. Grouped-query attention is therefore native:
  K/V are never expanded and their gradients are reduced over the group in registers, not by a
  separate sum over a ``[B, Hq, T, D]`` tensor. ``dQ`` is accumulated either with fp32 atomic adds
  from the same program (default; what flash-attn 2 does, but the order of the additions is not
  fixed, so results can differ in the last bits between runs), or, with ``deterministic=True``, by a
  separate ``_attn_bwd_dq`` kernel that owns each query block and loops over the key blocks in a
  fixed order (bitwise reproducible; it recomputes ``S`` and ``dP`` once more, ~40% more backward
  FLOPs).

Features: fp16, bf16 and fp32 (fp32 uses IEEE products unless ``torch.backends.cuda.matmul.allow_tf32``
is set, matching what a float32 matmul would do); head dims 16-256 (padded to a power of two inside
the kernel, masked on load and store); any sequence lengths (ragged last blocks are masked); ``Tq ≠ Tk``
with bottom-right causal alignment; sliding windows ``(left, right)``; key padding masks; packed
variable-length batches (``cu_seqlens``, flash-attn's ``[total, H, D]`` layout) where sequences map
onto the grid and never see each other.

This module imports Triton at import time and is loaded lazily by :mod:`trainlab.attention` only
when the ``triton`` backend runs. On a machine without a GPU the kernels run under
``TRITON_INTERPRET=1`` (NumPy, slow, fp32/fp16 only: bf16 is not emulated faithfully), which is how
the tests check them; the variable must be set before this module is first imported.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import triton
import triton.language as tl
from torch import Tensor

from trainlab.attention.mask import Window, check_qkv, normalize_window
from trainlab.attention.triton_dispatch import MAX_HEAD_DIM, MIN_HEAD_DIM, interpreting

LOG2E = 1.4426950408889634
#: Decided once, at import: ``triton.jit`` reads TRITON_INTERPRET when the kernels are defined.
INTERPRET = interpreting()


# --------------------------------------------------------------------------------------------
# Forward
# --------------------------------------------------------------------------------------------


@triton.jit
def _fwd_inner(acc, l_i, m_i, q, k_base, v_base, kpm_base, offs_m, offs_n, offs_d, start, end,
               q_len, k_len, off, win_left, win_right, sm_scale_log2, s_kn, s_kd, s_vn, s_vd,
               HEAD_DIM: tl.constexpr, BLOCK_N: tl.constexpr, MASKED: tl.constexpr, HAS_LEFT: tl.constexpr,
               HAS_RIGHT: tl.constexpr, HAS_KPM: tl.constexpr, DOT_PREC: tl.constexpr):
    """Online-softmax update of one query block over key blocks ``[start, end)``."""
    d_mask = offs_d < HEAD_DIM
    for start_n in range(start, end, BLOCK_N):
        cols = start_n + offs_n
        n_mask = cols < k_len
        k_t = tl.load(k_base + cols[None, :] * s_kn + offs_d[:, None] * s_kd,
                      mask=n_mask[None, :] & d_mask[:, None], other=0.0)
        s = tl.dot(q, k_t, input_precision=DOT_PREC) * sm_scale_log2
        if MASKED:
            valid = n_mask[None, :] & (offs_m[:, None] < q_len)
            if HAS_RIGHT:
                valid = valid & (cols[None, :] <= offs_m[:, None] + off + win_right)
            if HAS_LEFT:
                valid = valid & (cols[None, :] >= offs_m[:, None] + off - win_left)
            if HAS_KPM:
                keep = tl.load(kpm_base + cols, mask=n_mask, other=0)
                valid = valid & (keep != 0)[None, :]
            s = tl.where(valid, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        # rows that have seen no visible key keep m = -inf; subtracting 0 keeps exp2 at 0, not NaN
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        p = tl.exp2(s - m_safe[:, None])
        alpha = tl.exp2(m_i - m_safe)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None]
        v = tl.load(v_base + cols[:, None] * s_vn + offs_d[None, :] * s_vd,
                    mask=n_mask[:, None] & d_mask[None, :], other=0.0)
        acc = tl.dot(p.to(v.dtype), v, acc, input_precision=DOT_PREC)
        m_i = m_new
    return acc, l_i, m_i


@triton.jit
def _attn_fwd(Q, K, V, O, LSE, KPM, CU_Q, CU_K, sm_scale_log2,
              s_qb, s_qh, s_qm, s_qd, s_kb, s_kh, s_kn, s_kd, s_vb, s_vh, s_vn, s_vd,
              s_ob, s_oh, s_om, s_od, s_lb, s_lh, s_pb,
              n_heads, n_rep, seqlen_q, seqlen_k, win_left, win_right,
              HEAD_DIM: tl.constexpr, D_PAD: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
              HAS_LEFT: tl.constexpr, HAS_RIGHT: tl.constexpr, HAS_KPM: tl.constexpr, IS_VARLEN: tl.constexpr,
              DOT_PREC: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // n_heads
    h = pid_bh % n_heads
    hk = h // n_rep
    if IS_VARLEN:
        q_start = tl.load(CU_Q + b)
        q_len = tl.load(CU_Q + b + 1) - q_start
        k_start = tl.load(CU_K + b)
        k_len = tl.load(CU_K + b + 1) - k_start
    else:
        q_start = 0
        q_len = seqlen_q
        k_start = 0
        k_len = seqlen_k
    if pid_m * BLOCK_M >= q_len:  # this sequence is shorter than the longest one
        return
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, D_PAD)
    d_mask = offs_d < HEAD_DIM
    m_mask = offs_m < q_len
    q = tl.load(Q + b * s_qb + h * s_qh + (q_start + offs_m)[:, None] * s_qm + offs_d[None, :] * s_qd,
                mask=m_mask[:, None] & d_mask[None, :], other=0.0)
    k_base = K + b * s_kb + hk * s_kh + k_start * s_kn
    v_base = V + b * s_vb + hk * s_vh + k_start * s_vn
    kpm_base = KPM + b * s_pb

    off = k_len - q_len  # bottom-right alignment: query i sits at key position i + off
    first_row = pid_m * BLOCK_M
    last_row = tl.minimum(first_row + BLOCK_M, q_len) - 1
    # Key blocks any row of this block may see: [lo, hi). Blocks in [full_lo, full_hi) are inside the
    # band for every row (and not ragged), so they skip all masking.
    lo = 0
    hi = k_len
    full_lo = 0
    full_hi = (k_len // BLOCK_N) * BLOCK_N
    if HAS_LEFT:
        lo = tl.maximum(first_row + off - win_left, 0)
        lo = (lo // BLOCK_N) * BLOCK_N
        full_lo = tl.cdiv(tl.maximum(last_row + off - win_left, 0), BLOCK_N) * BLOCK_N
    if HAS_RIGHT:
        hi = tl.maximum(tl.minimum(last_row + off + win_right + 1, k_len), 0)
        full_hi = tl.minimum(full_hi, (tl.maximum(first_row + off + win_right + 1, 0) // BLOCK_N) * BLOCK_N)
    if HAS_KPM:
        full_hi = full_lo  # every block needs the padding mask
    full_lo = tl.minimum(tl.maximum(full_lo, lo), hi)
    full_hi = tl.maximum(tl.minimum(full_hi, hi), full_lo)

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, D_PAD], dtype=tl.float32)
    acc, l_i, m_i = _fwd_inner(acc, l_i, m_i, q, k_base, v_base, kpm_base, offs_m, offs_n, offs_d, lo, full_lo,
                               q_len, k_len, off, win_left, win_right, sm_scale_log2, s_kn, s_kd, s_vn, s_vd,
                               HEAD_DIM, BLOCK_N, True, HAS_LEFT, HAS_RIGHT, HAS_KPM, DOT_PREC)
    acc, l_i, m_i = _fwd_inner(acc, l_i, m_i, q, k_base, v_base, kpm_base, offs_m, offs_n, offs_d, full_lo,
                               full_hi, q_len, k_len, off, win_left, win_right, sm_scale_log2, s_kn, s_kd, s_vn,
                               s_vd, HEAD_DIM, BLOCK_N, False, HAS_LEFT, HAS_RIGHT, HAS_KPM, DOT_PREC)
    acc, l_i, m_i = _fwd_inner(acc, l_i, m_i, q, k_base, v_base, kpm_base, offs_m, offs_n, offs_d, full_hi, hi,
                               q_len, k_len, off, win_left, win_right, sm_scale_log2, s_kn, s_kd, s_vn, s_vd,
                               HEAD_DIM, BLOCK_N, True, HAS_LEFT, HAS_RIGHT, HAS_KPM, DOT_PREC)
    # One division per row (FA2); rows with no visible key output 0 and L = -inf.
    empty = l_i == 0.0
    l_safe = tl.where(empty, 1.0, l_i)
    out = acc / l_safe[:, None]
    lse = tl.where(empty, float("-inf"), (m_i + tl.log2(l_safe)) / 1.4426950408889634)
    tl.store(O + b * s_ob + h * s_oh + (q_start + offs_m)[:, None] * s_om + offs_d[None, :] * s_od,
             out.to(O.dtype.element_ty), mask=m_mask[:, None] & d_mask[None, :])
    tl.store(LSE + b * s_lb + h * s_lh + q_start + offs_m, lse, mask=m_mask)


# --------------------------------------------------------------------------------------------
# Backward
# --------------------------------------------------------------------------------------------


@triton.jit
def _bwd_preprocess(O, DO, DELTA, CU_Q, s_ob, s_oh, s_om, s_od, s_db, s_dh, s_dm, s_dd, s_lb, s_lh,
                    n_heads, seqlen_q, HEAD_DIM: tl.constexpr, D_PAD: tl.constexpr, BLOCK_M: tl.constexpr,
                    IS_VARLEN: tl.constexpr):
    """``Δ_i = Σ_d dO_id · O_id`` in float32, one value per query row."""
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // n_heads
    h = pid_bh % n_heads
    if IS_VARLEN:
        q_start = tl.load(CU_Q + b)
        q_len = tl.load(CU_Q + b + 1) - q_start
    else:
        q_start = 0
        q_len = seqlen_q
    if pid_m * BLOCK_M >= q_len:
        return
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, D_PAD)
    mask = (offs_m < q_len)[:, None] & (offs_d < HEAD_DIM)[None, :]
    rows = (q_start + offs_m)[:, None]
    o = tl.load(O + b * s_ob + h * s_oh + rows * s_om + offs_d[None, :] * s_od, mask=mask, other=0.0)
    do = tl.load(DO + b * s_db + h * s_dh + rows * s_dm + offs_d[None, :] * s_dd, mask=mask, other=0.0)
    delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), 1)
    tl.store(DELTA + b * s_lb + h * s_lh + q_start + offs_m, delta, mask=offs_m < q_len)


@triton.jit
def _attn_bwd_dkdv(Q, K, V, DO, DQ, DK, DV, LSE, DELTA, KPM, CU_Q, CU_K, sm_scale, sm_scale_log2,
                   s_qb, s_qh, s_qm, s_qd, s_kb, s_kh, s_kn, s_kd, s_vb, s_vh, s_vn, s_vd,
                   s_db, s_dh, s_dm, s_dd, s_gb, s_gh, s_gm, s_gd, s_kgb, s_kgh, s_kgn, s_kgd,
                   s_vgb, s_vgh, s_vgn, s_vgd, s_lb, s_lh, s_pb,
                   n_kv_heads, n_rep, seqlen_q, seqlen_k, win_left, win_right,
                   HEAD_DIM: tl.constexpr, D_PAD: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                   HAS_LEFT: tl.constexpr, HAS_RIGHT: tl.constexpr, HAS_KPM: tl.constexpr,
                   IS_VARLEN: tl.constexpr, COMPUTE_DQ: tl.constexpr, DOT_PREC: tl.constexpr):
    """dK_j, dV_j for one key block of one kv head, summed over its query group; optionally dQ (atomics)."""
    pid_n = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // n_kv_heads
    hk = pid_bh % n_kv_heads
    if IS_VARLEN:
        q_start = tl.load(CU_Q + b)
        q_len = tl.load(CU_Q + b + 1) - q_start
        k_start = tl.load(CU_K + b)
        k_len = tl.load(CU_K + b + 1) - k_start
    else:
        q_start = 0
        q_len = seqlen_q
        k_start = 0
        k_len = seqlen_k
    if pid_n * BLOCK_N >= k_len:
        return
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_m0 = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, D_PAD)
    d_mask = offs_d < HEAD_DIM
    n_mask = offs_n < k_len
    kv_mask = n_mask[:, None] & d_mask[None, :]
    k = tl.load(K + b * s_kb + hk * s_kh + (k_start + offs_n)[:, None] * s_kn + offs_d[None, :] * s_kd,
                mask=kv_mask, other=0.0)
    v = tl.load(V + b * s_vb + hk * s_vh + (k_start + offs_n)[:, None] * s_vn + offs_d[None, :] * s_vd,
                mask=kv_mask, other=0.0)
    col_ok = n_mask
    if HAS_KPM:
        keep = tl.load(KPM + b * s_pb + offs_n, mask=n_mask, other=0)
        col_ok = col_ok & (keep != 0)
    dk = tl.zeros([BLOCK_N, D_PAD], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, D_PAD], dtype=tl.float32)

    off = k_len - q_len
    last_col = tl.minimum(pid_n * BLOCK_N + BLOCK_N, k_len) - 1
    lo = 0
    hi = q_len
    if HAS_RIGHT:  # query i sees key j only if j <= i + off + right
        lo = tl.maximum(pid_n * BLOCK_N - off - win_right, 0)
        lo = (lo // BLOCK_M) * BLOCK_M
    if HAS_LEFT:  # ... and j >= i + off - left
        hi = tl.maximum(tl.minimum(last_col - off + win_left + 1, q_len), 0)

    for g in range(0, n_rep):
        h = hk * n_rep + g
        q_base = Q + b * s_qb + h * s_qh + q_start * s_qm
        do_base = DO + b * s_db + h * s_dh + q_start * s_dm
        dq_base = DQ + b * s_gb + h * s_gh + q_start * s_gm
        l_base = LSE + b * s_lb + h * s_lh + q_start
        d_base = DELTA + b * s_lb + h * s_lh + q_start
        for start_m in range(lo, hi, BLOCK_M):
            offs_m = start_m + offs_m0
            m_mask = offs_m < q_len
            q_t = tl.load(q_base + offs_m[None, :] * s_qm + offs_d[:, None] * s_qd,
                          mask=m_mask[None, :] & d_mask[:, None], other=0.0)
            s_t = tl.dot(k, q_t, input_precision=DOT_PREC) * sm_scale_log2  # Sᵀ: [BLOCK_N, BLOCK_M]
            lse = tl.load(l_base + offs_m, mask=m_mask, other=0.0) * 1.4426950408889634
            valid = col_ok[:, None] & m_mask[None, :]
            if HAS_RIGHT:
                valid = valid & (offs_n[:, None] <= offs_m[None, :] + off + win_right)
            if HAS_LEFT:
                valid = valid & (offs_n[:, None] >= offs_m[None, :] + off - win_left)
            p_t = tl.where(valid, tl.exp2(s_t - lse[None, :]), 0.0)
            do = tl.load(do_base + offs_m[:, None] * s_dm + offs_d[None, :] * s_dd,
                         mask=m_mask[:, None] & d_mask[None, :], other=0.0)
            dv = tl.dot(p_t.to(do.dtype), do, dv, input_precision=DOT_PREC)
            dp_t = tl.dot(v, tl.trans(do), input_precision=DOT_PREC)
            delta = tl.load(d_base + offs_m, mask=m_mask, other=0.0)
            ds_t = p_t * (dp_t - delta[None, :])
            dk = tl.dot(ds_t.to(q_t.dtype), tl.trans(q_t), dk, input_precision=DOT_PREC)
            if COMPUTE_DQ:
                dq = tl.dot(tl.trans(ds_t.to(k.dtype)), k, input_precision=DOT_PREC) * sm_scale
                tl.atomic_add(dq_base + offs_m[:, None] * s_gm + offs_d[None, :] * s_gd, dq,
                              mask=m_mask[:, None] & d_mask[None, :])
    dk = dk * sm_scale
    tl.store(DK + b * s_kgb + hk * s_kgh + (k_start + offs_n)[:, None] * s_kgn + offs_d[None, :] * s_kgd,
             dk.to(DK.dtype.element_ty), mask=kv_mask)
    tl.store(DV + b * s_vgb + hk * s_vgh + (k_start + offs_n)[:, None] * s_vgn + offs_d[None, :] * s_vgd,
             dv.to(DV.dtype.element_ty), mask=kv_mask)


@triton.jit
def _attn_bwd_dq(Q, K, V, DO, DQ, LSE, DELTA, KPM, CU_Q, CU_K, sm_scale, sm_scale_log2,
                 s_qb, s_qh, s_qm, s_qd, s_kb, s_kh, s_kn, s_kd, s_vb, s_vh, s_vn, s_vd,
                 s_db, s_dh, s_dm, s_dd, s_gb, s_gh, s_gm, s_gd, s_lb, s_lh, s_pb,
                 n_heads, n_rep, seqlen_q, seqlen_k, win_left, win_right,
                 HEAD_DIM: tl.constexpr, D_PAD: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                 HAS_LEFT: tl.constexpr, HAS_RIGHT: tl.constexpr, HAS_KPM: tl.constexpr, IS_VARLEN: tl.constexpr,
                 DOT_PREC: tl.constexpr):
    """dQ_i for one query block, over key blocks in a fixed order (the deterministic path)."""
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // n_heads
    h = pid_bh % n_heads
    hk = h // n_rep
    if IS_VARLEN:
        q_start = tl.load(CU_Q + b)
        q_len = tl.load(CU_Q + b + 1) - q_start
        k_start = tl.load(CU_K + b)
        k_len = tl.load(CU_K + b + 1) - k_start
    else:
        q_start = 0
        q_len = seqlen_q
        k_start = 0
        k_len = seqlen_k
    if pid_m * BLOCK_M >= q_len:
        return
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n0 = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, D_PAD)
    d_mask = offs_d < HEAD_DIM
    m_mask = offs_m < q_len
    row_mask = m_mask[:, None] & d_mask[None, :]
    rows = (q_start + offs_m)[:, None]
    q = tl.load(Q + b * s_qb + h * s_qh + rows * s_qm + offs_d[None, :] * s_qd, mask=row_mask, other=0.0)
    do = tl.load(DO + b * s_db + h * s_dh + rows * s_dm + offs_d[None, :] * s_dd, mask=row_mask, other=0.0)
    lse = tl.load(LSE + b * s_lb + h * s_lh + q_start + offs_m, mask=m_mask, other=0.0) * 1.4426950408889634
    delta = tl.load(DELTA + b * s_lb + h * s_lh + q_start + offs_m, mask=m_mask, other=0.0)
    k_base = K + b * s_kb + hk * s_kh + k_start * s_kn
    v_base = V + b * s_vb + hk * s_vh + k_start * s_vn

    off = k_len - q_len
    first_row = pid_m * BLOCK_M
    last_row = tl.minimum(first_row + BLOCK_M, q_len) - 1
    lo = 0
    hi = k_len
    if HAS_LEFT:
        lo = tl.maximum(first_row + off - win_left, 0)
        lo = (lo // BLOCK_N) * BLOCK_N
    if HAS_RIGHT:
        hi = tl.maximum(tl.minimum(last_row + off + win_right + 1, k_len), 0)
    dq = tl.zeros([BLOCK_M, D_PAD], dtype=tl.float32)
    for start_n in range(lo, hi, BLOCK_N):
        cols = start_n + offs_n0
        n_mask = cols < k_len
        k_t = tl.load(k_base + cols[None, :] * s_kn + offs_d[:, None] * s_kd,
                      mask=n_mask[None, :] & d_mask[:, None], other=0.0)
        v_t = tl.load(v_base + cols[None, :] * s_vn + offs_d[:, None] * s_vd,
                      mask=n_mask[None, :] & d_mask[:, None], other=0.0)
        s = tl.dot(q, k_t, input_precision=DOT_PREC) * sm_scale_log2
        valid = n_mask[None, :] & m_mask[:, None]
        if HAS_RIGHT:
            valid = valid & (cols[None, :] <= offs_m[:, None] + off + win_right)
        if HAS_LEFT:
            valid = valid & (cols[None, :] >= offs_m[:, None] + off - win_left)
        if HAS_KPM:
            keep = tl.load(KPM + b * s_pb + cols, mask=n_mask, other=0)
            valid = valid & (keep != 0)[None, :]
        p = tl.where(valid, tl.exp2(s - lse[:, None]), 0.0)
        dp = tl.dot(do, v_t, input_precision=DOT_PREC)
        ds = p * (dp - delta[:, None])
        dq = tl.dot(ds.to(k_t.dtype), tl.trans(k_t), dq, input_precision=DOT_PREC)
    dq = dq * sm_scale
    tl.store(DQ + b * s_gb + h * s_gh + rows * s_gm + offs_d[None, :] * s_gd, dq.to(DQ.dtype.element_ty),
             mask=row_mask)


# --------------------------------------------------------------------------------------------
# Host side
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class KernelConfig:
    """Tile sizes and launch parameters of one kernel."""

    block_m: int
    block_n: int
    num_warps: int = 4
    num_stages: int = 2


def _d_pad(head_dim: int) -> int:
    return max(16, triton.next_power_of_2(head_dim))


def forward_config(head_dim: int, dtype: torch.dtype, interpret: bool | None = None) -> KernelConfig:
    """Forward tiles: large query blocks amortize K/V loads; shrink them as the head grows (SRAM).

    ``interpret`` (default: :data:`INTERPRET`) picks the tiny interpreter tiles; the ahead-of-time
    compile check (:mod:`trainlab.attention.triton_compile`) passes False to get the GPU tiles.
    """
    if INTERPRET if interpret is None else interpret:
        return KernelConfig(16, 16, 1, 1)  # many small blocks exercise every boundary case quickly
    d = _d_pad(head_dim)
    if dtype == torch.float32:
        # IEEE fp32 dots run on FMA units with operands held in registers. The earlier 4-warp tiles
        # (64x32; 32x32 for d=256) spilled on sm_90 (ptxas: 1.8-3 KB at d=64, ~70-80 KB at d>=128, where it
        # gave up at 32 registers); 8 warps and, past d=64, 16-key blocks compile spill-free on sm_90 and
        # sm_80 (benchmarks/compile_triton.py, benchmarks/results/triton_compile_sm*.md).
        return KernelConfig(64, 32, 8, 2) if d <= 64 else KernelConfig(32, 16, 8, 2)
    if d <= 64:
        return KernelConfig(128, 64, 4, 3)
    if d <= 128:
        return KernelConfig(128, 64, 8, 3)
    return KernelConfig(64, 32, 8, 2)


def backward_config(head_dim: int, dtype: torch.dtype, interpret: bool | None = None) -> KernelConfig:
    """Backward tiles: the dK/dV program holds K, V, dK, dV in registers, so blocks are smaller.

    ``interpret``: as in :func:`forward_config`.
    """
    if INTERPRET if interpret is None else interpret:
        return KernelConfig(16, 16, 1, 1)
    d = _d_pad(head_dim)
    # 8 warps throughout: with 4 warps (128 threads) the dK/dV program's register-resident K, V, dK, dV
    # (plus S, dP and the in-loop dQ tile) needed more than 255 registers per thread and spilled on sm_90:
    # 256-432 B for 16-bit d<=64 at 32x128, 330-350 B for 16-bit d=256 at 32x32, 1-100 KB for fp32
    # (benchmarks/compile_triton.py). Spreading the same tiles over 256 threads keeps the tile shape (so
    # the Q/dO reloads and dQ atomics per key stay the same) and compiles without spills on sm_90 and sm_80.
    if dtype == torch.float32:
        return KernelConfig(32, 32, 8, 1) if d <= 128 else KernelConfig(32, 16, 8, 1)  # fp32 d=256: half the keys
    if d <= 64:
        return KernelConfig(32, 128, 8, 3)
    if d <= 128:
        return KernelConfig(32, 64, 8, 2)
    return KernelConfig(32, 32, 8, 2)  # 2 stages: also lowers the deterministic dQ kernel's registers (252 -> 124)


def _dot_precision(dtype: torch.dtype) -> str:
    if dtype == torch.float32 and not torch.backends.cuda.matmul.allow_tf32:
        return "ieee"
    return "tf32"


def _strides(x: Tensor, varlen: bool) -> tuple[int, int, int, int]:
    """(batch, head, seq, dim) strides; a packed ``[total, H, D]`` tensor has no batch stride."""
    if varlen:
        return (0, x.stride(1), x.stride(0), x.stride(2))
    return (x.stride(0), x.stride(1), x.stride(2), x.stride(3))


@dataclass(frozen=True)
class _Call:
    """Everything the kernels need besides the tensors."""

    batch: int  # sequences (varlen) or batch size
    n_heads: int
    n_kv_heads: int
    seqlen_q: int  # max length (varlen) or the length
    seqlen_k: int
    head_dim: int
    scale: float
    left: int
    right: int
    varlen: bool

    def flags(self) -> dict[str, Any]:
        return {"HAS_LEFT": self.left >= 0, "HAS_RIGHT": self.right >= 0, "IS_VARLEN": self.varlen}

    def window_args(self) -> tuple[int, int]:
        return max(self.left, 0), max(self.right, 0)


def _forward(q: Tensor, k: Tensor, v: Tensor, kpm: Tensor | None, cu_q: Tensor | None, cu_k: Tensor | None,
             c: _Call, cfg: KernelConfig | None) -> tuple[Tensor, Tensor]:
    cfg = cfg or forward_config(c.head_dim, q.dtype)
    out = torch.empty_like(q)
    lse_shape = (c.n_heads, q.shape[0]) if c.varlen else (c.batch, c.n_heads, c.seqlen_q)
    lse = torch.empty(lse_shape, dtype=torch.float32, device=q.device)
    s_lb, s_lh = (0, lse.stride(0)) if c.varlen else (lse.stride(0), lse.stride(1))
    dummy = torch.empty(1, dtype=torch.int32, device=q.device)
    grid = (triton.cdiv(c.seqlen_q, cfg.block_m), c.batch * c.n_heads)
    _attn_fwd[grid](
        q, k, v, out, lse, kpm if kpm is not None else dummy, cu_q if cu_q is not None else dummy,
        cu_k if cu_k is not None else dummy, c.scale * LOG2E,
        *_strides(q, c.varlen), *_strides(k, c.varlen), *_strides(v, c.varlen), *_strides(out, c.varlen),
        s_lb, s_lh, kpm.stride(0) if kpm is not None else 0,
        c.n_heads, c.n_heads // c.n_kv_heads, c.seqlen_q, c.seqlen_k, *c.window_args(),
        HEAD_DIM=c.head_dim, D_PAD=_d_pad(c.head_dim), BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n,
        HAS_KPM=kpm is not None, DOT_PREC=_dot_precision(q.dtype), **c.flags(),
        num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )
    return out, lse


def _backward(dout: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor, kpm: Tensor | None,
              cu_q: Tensor | None, cu_k: Tensor | None, c: _Call, deterministic: bool,
              cfg: KernelConfig | None) -> tuple[Tensor, Tensor, Tensor]:
    cfg = cfg or backward_config(c.head_dim, q.dtype)
    d_pad = _d_pad(c.head_dim)
    s_lb, s_lh = (0, lse.stride(0)) if c.varlen else (lse.stride(0), lse.stride(1))
    dummy = torch.empty(1, dtype=torch.int32, device=q.device)
    kpm_arg = kpm if kpm is not None else dummy
    cu_q_arg = cu_q if cu_q is not None else dummy
    cu_k_arg = cu_k if cu_k is not None else dummy
    s_pb = kpm.stride(0) if kpm is not None else 0
    n_rep = c.n_heads // c.n_kv_heads
    win = c.window_args()
    prec = _dot_precision(q.dtype)

    delta = torch.empty_like(lse)
    pre_block = 16 if INTERPRET else 64
    _bwd_preprocess[(triton.cdiv(c.seqlen_q, pre_block), c.batch * c.n_heads)](
        out, dout, delta, cu_q_arg, *_strides(out, c.varlen), *_strides(dout, c.varlen), s_lb, s_lh,
        c.n_heads, c.seqlen_q, HEAD_DIM=c.head_dim, D_PAD=d_pad, BLOCK_M=pre_block, IS_VARLEN=c.varlen,
    )
    dk, dv = torch.empty_like(k), torch.empty_like(v)
    # Atomic path: dQ accumulates in float32 (fp16 atomics would lose the small contributions).
    dq = torch.empty_like(q) if deterministic else torch.zeros_like(q, dtype=torch.float32)
    _attn_bwd_dkdv[(triton.cdiv(c.seqlen_k, cfg.block_n), c.batch * c.n_kv_heads)](
        q, k, v, dout, dq, dk, dv, lse, delta, kpm_arg, cu_q_arg, cu_k_arg, c.scale, c.scale * LOG2E,
        *_strides(q, c.varlen), *_strides(k, c.varlen), *_strides(v, c.varlen), *_strides(dout, c.varlen),
        *_strides(dq, c.varlen), *_strides(dk, c.varlen), *_strides(dv, c.varlen), s_lb, s_lh, s_pb,
        c.n_kv_heads, n_rep, c.seqlen_q, c.seqlen_k, *win,
        HEAD_DIM=c.head_dim, D_PAD=d_pad, BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, HAS_KPM=kpm is not None,
        COMPUTE_DQ=not deterministic, DOT_PREC=prec, **c.flags(), num_warps=cfg.num_warps,
        num_stages=cfg.num_stages,
    )
    if deterministic:
        # The dQ kernel iterates like the forward: its query block is large, its key block small.
        dq_cfg = KernelConfig(cfg.block_n, cfg.block_m, cfg.num_warps, cfg.num_stages)
        _attn_bwd_dq[(triton.cdiv(c.seqlen_q, dq_cfg.block_m), c.batch * c.n_heads)](
            q, k, v, dout, dq, lse, delta, kpm_arg, cu_q_arg, cu_k_arg, c.scale, c.scale * LOG2E,
            *_strides(q, c.varlen), *_strides(k, c.varlen), *_strides(v, c.varlen), *_strides(dout, c.varlen),
            *_strides(dq, c.varlen), s_lb, s_lh, s_pb,
            c.n_heads, n_rep, c.seqlen_q, c.seqlen_k, *win,
            HEAD_DIM=c.head_dim, D_PAD=d_pad, BLOCK_M=dq_cfg.block_m, BLOCK_N=dq_cfg.block_n,
            HAS_KPM=kpm is not None, DOT_PREC=prec, **c.flags(), num_warps=dq_cfg.num_warps,
            num_stages=dq_cfg.num_stages,
        )
        return dq, dk, dv
    return dq.to(q.dtype), dk, dv


class TritonAttentionFunction(torch.autograd.Function):
    """Autograd wrapper: saves Q, K, V, O and L (float32 ``[B, H, T]``); the backward recomputes P."""

    @staticmethod
    def forward(ctx: Any, q: Tensor, k: Tensor, v: Tensor, kpm: Tensor | None, cu_q: Tensor | None,
                cu_k: Tensor | None, c: _Call, deterministic: bool, fwd_cfg: KernelConfig | None,
                bwd_cfg: KernelConfig | None) -> Tensor:
        out, lse = _forward(q, k, v, kpm, cu_q, cu_k, c, fwd_cfg)
        ctx.save_for_backward(q, k, v, out, lse, kpm, cu_q, cu_k)
        ctx.c, ctx.deterministic, ctx.bwd_cfg = c, deterministic, bwd_cfg
        return out

    @staticmethod
    def backward(ctx: Any, dout: Tensor) -> tuple[Tensor | None, ...]:
        q, k, v, out, lse, kpm, cu_q, cu_k = ctx.saved_tensors
        deterministic = ctx.deterministic or torch.are_deterministic_algorithms_enabled()
        dq, dk, dv = _backward(dout, q, k, v, out, lse, kpm, cu_q, cu_k, ctx.c, deterministic, ctx.bwd_cfg)
        return dq, dk, dv, None, None, None, None, None, None, None


def _check_common(q: Tensor, k: Tensor, v: Tensor) -> None:
    if q.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        raise ValueError(f"the Triton kernel supports float16, bfloat16 and float32, got {q.dtype}")
    if k.dtype != q.dtype or v.dtype != q.dtype:
        raise ValueError(f"q, k and v must share a dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    d = q.shape[-1]
    if not MIN_HEAD_DIM <= d <= MAX_HEAD_DIM or v.shape[-1] != d:
        raise ValueError(f"the Triton kernel supports head dims {MIN_HEAD_DIM}-{MAX_HEAD_DIM} (same for q, k, v), "
                         f"got {d} and {v.shape[-1]}")
    if not (q.device == k.device == v.device):
        raise ValueError("q, k and v must be on the same device")


def _band(causal: bool, window: Window | None) -> tuple[int, int]:
    band = normalize_window(window, causal)
    return band if band is not None else (-1, -1)


def flash_attention_triton(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    causal: bool = False,
    key_padding_mask: Tensor | None = None,
    scale: float | None = None,
    window: Window | None = None,
    deterministic: bool = False,
    fwd_config: KernelConfig | None = None,
    bwd_config: KernelConfig | None = None,
) -> Tensor:
    """Attention with the Triton kernels; same contract as :func:`~trainlab.attention.naive.naive_attention`.

    ``q [B,Hq,Tq,D]``, ``k, v [B,Hkv,Tk,D]``. ``deterministic=True`` (or
    ``torch.use_deterministic_algorithms(True)``) selects the atomic-free backward.
    """
    check_qkv(q, k, v, key_padding_mask)
    _check_common(q, k, v)
    left, right = _band(causal, window)
    b, hq, tq, d = q.shape
    c = _Call(b, hq, k.shape[1], tq, k.shape[2], d, 1.0 / math.sqrt(d) if scale is None else float(scale),
              left, right, False)
    kpm = None
    if key_padding_mask is not None:
        kpm = key_padding_mask.to(device=q.device, dtype=torch.int8).contiguous()
    out = TritonAttentionFunction.apply(q, k, v, kpm, None, None, c, deterministic, fwd_config, bwd_config)
    assert isinstance(out, Tensor)
    return out


def flash_attention_varlen_triton(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    cu_seqlens_q: Tensor,
    cu_seqlens_k: Tensor,
    max_seqlen_q: int,
    max_seqlen_k: int,
    *,
    causal: bool = False,
    scale: float | None = None,
    window: Window | None = None,
    deterministic: bool = False,
    fwd_config: KernelConfig | None = None,
    bwd_config: KernelConfig | None = None,
) -> Tensor:
    """Packed variable-length attention: ``q [total_q, Hq, D]``, ``k, v [total_k, Hkv, D]`` (flash-attn's
    ``flash_attn_varlen_func`` layout); sequence ``s`` owns rows ``cu_seqlens[s]:cu_seqlens[s+1]``.

    ``max_seqlen_*`` size the grid (the longest sequence); they must be at least the true maxima.
    """
    if q.dim() != 3 or k.dim() != 3 or v.dim() != 3:
        raise ValueError(f"varlen attention expects q [total_q, Hq, D], k/v [total_k, Hkv, D]; got "
                         f"{tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    if k.shape[:2] != v.shape[:2] or q.shape[2] != k.shape[2] or q.shape[1] % k.shape[1]:
        raise ValueError(f"incompatible shapes q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}")
    _check_common(q, k, v)
    if cu_seqlens_q.shape != cu_seqlens_k.shape or cu_seqlens_q.dim() != 1 or cu_seqlens_q.numel() < 2:
        raise ValueError("cu_seqlens_q and cu_seqlens_k must be 1-D of the same length >= 2")
    lengths_q = cu_seqlens_q.diff()
    lengths_k = cu_seqlens_k.diff()
    if int(lengths_q.max()) > max_seqlen_q or int(lengths_k.max()) > max_seqlen_k:
        raise ValueError("max_seqlen_q/max_seqlen_k are smaller than the longest sequence")
    left, right = _band(causal, window)
    cu_q = cu_seqlens_q.to(device=q.device, dtype=torch.int32).contiguous()
    cu_k = cu_seqlens_k.to(device=q.device, dtype=torch.int32).contiguous()
    c = _Call(cu_q.numel() - 1, q.shape[1], k.shape[1], int(max_seqlen_q), int(max_seqlen_k), q.shape[2],
              1.0 / math.sqrt(q.shape[2]) if scale is None else float(scale), left, right, True)
    out = TritonAttentionFunction.apply(q, k, v, None, cu_q, cu_k, c, deterministic, fwd_config, bwd_config)
    assert isinstance(out, Tensor)
    return out


def triton_backend(q: Tensor, k: Tensor, v: Tensor, *, causal: bool = False, key_padding_mask: Tensor | None = None,
                   scale: float | None = None, window: Window | None = None) -> Tensor:
    """The ``triton`` entry of the attention dispatch (deterministic when torch is asked to be)."""
    return flash_attention_triton(q, k, v, causal=causal, key_padding_mask=key_padding_mask, scale=scale,
                                  window=window, deterministic=torch.are_deterministic_algorithms_enabled())


__all__ = [
    "INTERPRET",
    "KernelConfig",
    "TritonAttentionFunction",
    "backward_config",
    "flash_attention_triton",
    "flash_attention_varlen_triton",
    "forward_config",
    "triton_backend",
]
