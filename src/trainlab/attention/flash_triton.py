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
from torch import Tensor

from trainlab.attention.mask import Window, check_qkv, normalize_window
from trainlab.attention.triton_dispatch import MAX_HEAD_DIM, MIN_HEAD_DIM
from trainlab.attention.triton_kernels import INTERPRET, _attn_bwd_dkdv, _attn_bwd_dq, _attn_fwd, _bwd_preprocess

LOG2E = 1.4426950408889634


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
