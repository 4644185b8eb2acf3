"""Attention cost calculator: FLOPs, bytes moved, score-matrix size, arithmetic intensity.

For ``B`` sequences, ``H`` query heads, ``N`` tokens and head dimension ``D``:

* **FLOPs.** The forward is two matmuls per head, ``S = QKᵀ`` and ``O = PV``, each ``2·N²·D``:
  ``F_fwd = 4·B·H·N²·D``. The backward has five (``dV = PᵀdO``, ``dP = dOVᵀ``, ``dQ = dS·K``,
  ``dK = dSᵀQ``, and recomputing ``S``) but is conventionally counted as 2.5× the forward (the four
  gradient matmuls plus the softmax gradient; the recomputation is not credited), the convention of
  the FlashAttention papers' and flash-attn's benchmarks, so measured TFLOP/s compare across them.
  Causal attention does half the work: every count is halved.
* **Score matrix.** ``B·H·N²`` elements per materialized matrix (``S``, ``P``, and ``dS``/``dP`` in
  the backward). The seed puts ``N = 8192`` at ``8192² × 4 bytes = 268 GB``; the product is
  268 MB (per head and sequence), which is still why standard attention runs out of memory: multiply
  by ``B·H`` and by the several such matrices a training step keeps.
* **Bytes moved (forward).** Standard attention (Algorithm 0 of Dao et al., 2022) reads Q and K,
  writes S, reads S and writes P (softmax), reads P and V and writes O:
  ``(4·N·D + 4·N²)`` elements per head. Tiled attention (FlashAttention-2 order, query blocks of
  ``M`` rows) reads Q once, reads K and V once per query block that needs them, writes O once and a
  float32 log-sum-exp per row: ``N·D + 2·D·Σ(key rows visited) + N·D`` elements plus ``4·N`` bytes;
  the ``N²`` terms are gone, which is the paper's ``Θ(N²D²/M)`` vs ``Θ(ND + N²)`` (Theorem 2).
  Reuse from caches (L2) is not counted: these are what the algorithm asks of memory.
* **Arithmetic intensity** = forward FLOPs / forward bytes. Below a device's ridge point
  (peak FLOP/s ÷ memory bandwidth; about 295 FLOP/byte for an H100 SXM in bf16: 989 TFLOP/s dense,
  3.35 TB/s, from NVIDIA's datasheet) a kernel is memory-bound.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from trainlab.errors import UserError

DTYPE_BYTES = {"fp32": 4, "float32": 4, "tf32": 4, "bf16": 2, "bfloat16": 2, "fp16": 2, "float16": 2, "fp8": 1}
H100_RIDGE_FLOP_PER_BYTE = 989e12 / 3.35e12


@dataclass(frozen=True)
class AttentionCost:
    batch: int
    heads: int
    kv_heads: int
    seq: int
    head_dim: int
    causal: bool
    dtype: str
    block: int
    flops_forward: float
    flops_backward: float
    flops_total: float
    score_matrix_bytes: int
    score_matrix_bytes_per_head: int
    bytes_naive_forward: int
    bytes_tiled_forward: int
    intensity_naive: float
    intensity_tiled: float
    io_reduction: float  # bytes_naive / bytes_tiled

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _key_rows_visited(seq: int, block: int, causal: bool) -> int:
    """Σ over query blocks of the key rows the tiled loop loads (whole blocks, bottom-right causal)."""
    if not causal:
        return math.ceil(seq / block) * seq
    total = 0
    for i0 in range(0, seq, block):
        last = min(i0 + block, seq) - 1  # the block's last query sees keys 0..last
        total += min(math.ceil((last + 1) / block) * block, seq)
    return total


def attention_cost(batch: int, heads: int, seq: int, head_dim: int, *, causal: bool = False,
                   kv_heads: int | None = None, dtype: str = "bf16", block: int = 128) -> AttentionCost:
    """FLOPs and memory traffic of one attention call (see the module docstring for the formulas)."""
    for name, value in (("batch", batch), ("heads", heads), ("seq", seq), ("head_dim", head_dim), ("block", block)):
        if int(value) != value or value <= 0:
            raise UserError(f"{name} must be a positive integer, got {value}")
    kv = heads if kv_heads is None else kv_heads
    if kv <= 0 or heads % kv:
        raise UserError(f"kv_heads must divide heads ({heads}), got {kv}")
    if dtype not in DTYPE_BYTES:
        raise UserError(f"unknown dtype {dtype!r}; expected one of {', '.join(sorted(DTYPE_BYTES))}")
    e = DTYPE_BYTES[dtype]
    bh = batch * heads
    half = 0.5 if causal else 1.0
    fwd = 4.0 * bh * seq * seq * head_dim * half
    bwd = 2.5 * fwd
    per_head = seq * seq * e
    naive = bh * (4 * seq * head_dim + 4 * seq * seq) * e
    tiled = bh * ((2 * seq * head_dim + 2 * head_dim * _key_rows_visited(seq, block, causal)) * e + 4 * seq)
    return AttentionCost(
        batch=batch, heads=heads, kv_heads=kv, seq=seq, head_dim=head_dim, causal=causal, dtype=dtype, block=block,
        flops_forward=fwd, flops_backward=bwd, flops_total=fwd + bwd,
        score_matrix_bytes=bh * per_head, score_matrix_bytes_per_head=per_head,
        bytes_naive_forward=naive, bytes_tiled_forward=tiled,
        intensity_naive=fwd / naive, intensity_tiled=fwd / tiled, io_reduction=naive / tiled,
    )


def attention_flops(batch: int, heads: int, seq_q: int, seq_k: int, head_dim: int, *, causal: bool = False,
                    mode: str = "fwd") -> float:
    """FLOPs credited to one call (``mode`` = fwd, bwd or fwd_bwd), for TFLOP/s figures.

    Causal with equal lengths is credited half the pairs (the papers' convention); with
    ``seq_q != seq_k`` and bottom-right causality the visible pairs are counted exactly.
    """
    if causal and seq_q == seq_k:
        pairs = seq_q * seq_k / 2  # the convention: "halved when causal"
    elif causal:
        pairs = sum(max(0, min(seq_k, i + 1 + seq_k - seq_q)) for i in range(seq_q))
    else:
        pairs = seq_q * seq_k
    fwd = 4.0 * batch * heads * pairs * head_dim
    return {"fwd": fwd, "bwd": 2.5 * fwd, "fwd_bwd": 3.5 * fwd}[mode]


def format_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def attention_tables(cost: AttentionCost) -> list[tuple[str, list[str], list[list[str]]]]:
    """Human-readable tables (title, columns, rows of strings) for the CLI."""
    c = cost
    shape = (f"B={c.batch} H={c.heads} (kv {c.kv_heads}) N={c.seq} D={c.head_dim} {c.dtype}"
             + (" causal" if c.causal else ""))
    flops = [["forward", f"{c.flops_forward:.4g}", f"{c.flops_forward / 1e12:.3f}"],
             ["backward (2.5x forward)", f"{c.flops_backward:.4g}", f"{c.flops_backward / 1e12:.3f}"],
             ["forward + backward", f"{c.flops_total:.4g}", f"{c.flops_total / 1e12:.3f}"]]
    memory = [
        ["score matrix, all heads", format_bytes(c.score_matrix_bytes), f"{c.score_matrix_bytes:,}"],
        ["score matrix, one head", format_bytes(c.score_matrix_bytes_per_head), f"{c.score_matrix_bytes_per_head:,}"],
        ["naive forward traffic", format_bytes(c.bytes_naive_forward), f"{c.bytes_naive_forward:,}"],
        [f"tiled forward traffic (block {c.block})", format_bytes(c.bytes_tiled_forward), f"{c.bytes_tiled_forward:,}"],
    ]
    intensity = [
        ["naive", f"{c.intensity_naive:.1f}"],
        ["tiled", f"{c.intensity_tiled:.1f}"],
        ["traffic reduction (naive / tiled)", f"{c.io_reduction:.1f}x"],
        ["H100 SXM bf16 ridge point (datasheet)", f"{H100_RIDGE_FLOP_PER_BYTE:.0f}"],
    ]
    return [(f"Attention FLOPs: {shape}", ["pass", "FLOPs", "TFLOP"], flops),
            ("Memory", ["quantity", "size", "bytes"], memory),
            ("Arithmetic intensity (forward FLOPs per byte moved)", ["algorithm", "FLOP/byte"], intensity)]


__all__ = ["H100_RIDGE_FLOP_PER_BYTE", "AttentionCost", "attention_cost", "attention_flops", "attention_tables",
           "format_bytes"]
