r"""The Triton kernels of FlashAttention-2: forward, backward preprocessing, dK/dV and dQ programs.

The algorithm, the launch grid and the host-side wrappers are described and live in
:mod:`trainlab.attention.flash_triton`; this module holds only the ``@triton.jit`` programs so that
each file stays readable on its own. Importing it imports Triton (and reads ``TRITON_INTERPRET``).
"""

from __future__ import annotations

import triton
import triton.language as tl

from trainlab.attention.triton_dispatch import interpreting

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
