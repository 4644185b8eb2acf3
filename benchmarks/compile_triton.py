"""Compile trainlab's Triton FlashAttention kernels for sm_90 / sm_80 without a GPU and check the limits.

    python benchmarks/compile_triton.py                    # sm_90: all kernels, fp16/bf16/fp32, d 32-256
    python benchmarks/compile_triton.py --arch 80
    python benchmarks/compile_triton.py --arch 90 80 --dtypes bfloat16 --head-dims 64 128

For each kernel (forward, backward preprocess, dK/dV with atomic dQ, deterministic dQ), dtype, head
dim and causal flag, the kernel is compiled with the tile config ``flash_triton`` would launch on a GPU
(``triton.compile`` with an explicit target and the bundled ptxas; no CUDA driver needed) and the table
lists shared memory per block, registers per thread, spilled bytes and estimated resident blocks per
SM, against the per-block limits (H100: 227 KiB shared memory; A100: 163 KiB; 255 registers/thread).
See :mod:`trainlab.attention.triton_compile`.

Results: ``benchmarks/results/triton_compile_sm<arch>.json`` and ``.md`` (and the table on stdout).
Compiles run one at a time (each runs ptxas once).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from trainlab.attention.triton_compile import (
    ARCH_LIMITS,
    DTYPES,
    KERNELS,
    KernelCompileInfo,
    Problem,
    TritonToolchainError,
    check_toolchain,
    compile_report,
    markdown_table,
)

RESULTS = Path(__file__).resolve().parent / "results"


def _summary(rows: list[KernelCompileInfo]) -> list[str]:
    bad = [r for r in rows if not r.fits]
    spills = [r for r in rows if r.spill_bytes]
    tight = [r for r in rows if r.fits and not r.spill_bytes and r.registers >= 240]
    out = [f"- {len(rows)} kernels compiled; {len(bad)} exceed a hardware limit; {len(spills)} spill registers"]
    for r in bad:
        out.append(f"  - does not fit: {r.kernel} {r.dtype} d={r.head_dim} causal={r.causal} "
                   f"({r.shared_bytes / 1024:.1f} KiB shared, {r.registers} registers)")
    for r in spills:
        out.append(f"  - spills {r.spill_bytes} B: {r.kernel} {r.dtype} d={r.head_dim} causal={r.causal} "
                   f"(BLOCK {r.block_m}×{r.block_n}, {r.num_warps} warps, {r.num_stages} stages)")
    if tight:
        out.append(f"- {len(tight)} kernels use ≥ 240 of the 255 registers without spilling (little headroom)")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", type=int, nargs="+", default=[90], choices=sorted(ARCH_LIMITS))
    parser.add_argument("--dtypes", nargs="+", default=list(DTYPES), choices=list(DTYPES))
    parser.add_argument("--head-dims", type=int, nargs="+", default=[32, 64, 128, 256])
    parser.add_argument("--causal", choices=["both", "yes", "no"], default="both")
    parser.add_argument("--kernels", nargs="+", default=list(KERNELS), choices=list(KERNELS))
    parser.add_argument("--seqlen", type=int, default=Problem.seqlen_q,
                        help="sequence length the kernels are specialized for (16-divisibility matters)")
    parser.add_argument("--heads", type=int, default=Problem.n_heads)
    parser.add_argument("--kv-heads", type=int, default=Problem.n_kv_heads)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--suffix", default="", help="appended to the result file names")
    args = parser.parse_args(argv)
    causal = {"both": (False, True), "yes": (True,), "no": (False,)}[args.causal]
    problem = Problem(batch=2, n_heads=args.heads, n_kv_heads=args.kv_heads, seqlen_q=args.seqlen,
                      seqlen_k=args.seqlen)

    import triton  # after argparse, so --help works without it

    args.out.mkdir(parents=True, exist_ok=True)
    for arch in args.arch:
        try:
            ptxas = check_toolchain(arch)
        except TritonToolchainError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        limits = ARCH_LIMITS[arch]
        start = time.perf_counter()

        def progress(r: KernelCompileInfo) -> None:
            print(f"  {r.kernel} {r.dtype} d={r.head_dim} causal={r.causal}: {r.shared_bytes / 1024:.1f} KiB, "
                  f"{r.registers} regs, spill {r.spill_bytes} B, {r.compile_s:.1f} s", file=sys.stderr, flush=True)

        print(f"compiling for sm_{arch} ...", file=sys.stderr, flush=True)
        rows = compile_report(arch, args.dtypes, args.head_dims, causal, args.kernels, problem, progress=progress)
        elapsed = time.perf_counter() - start
        table = markdown_table(rows)
        header = [
            f"# Triton FlashAttention kernels compiled for {limits.name}",
            "",
            f"Compiled ahead of time on a CPU-only host ({platform.machine()}, {platform.python_version()}): "
            f"triton {triton.__version__}, {ptxas}, {len(rows)} kernels in {elapsed:.0f} s. "
            f"Limits: {limits.shared_per_block // 1024} KiB shared memory per block "
            f"({limits.shared_per_sm // 1024} KiB per SM), {limits.regs_per_thread} registers per thread, "
            f"{limits.regs_per_sm} per SM.",
            f"Specialized for B={problem.batch}, Hq={problem.n_heads}, Hkv={problem.n_kv_heads}, "
            f"T={problem.seqlen_q} (contiguous tensors). `blocks/SM` is an occupancy estimate from registers, shared "
            "memory and threads. Produced by `benchmarks/compile_triton.py`.",
            "",
            *_summary(rows),
            "",
        ]
        md = "\n".join([*header, table, ""])
        print(md)
        doc = {
            "arch": arch,
            "limits": limits.__dict__,
            "problem": problem.__dict__,
            "triton": triton.__version__,
            "ptxas": ptxas,
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "elapsed_s": round(elapsed, 1),
            "rows": [r.as_dict() for r in rows],
        }
        stem = f"triton_compile_sm{arch}{args.suffix}"
        (args.out / f"{stem}.json").write_text(json.dumps(doc, indent=2), encoding="utf-8")
        (args.out / f"{stem}.md").write_text(md, encoding="utf-8")
        print(f"wrote {args.out / stem}.json/.md", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
