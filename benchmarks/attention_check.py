"""The Triton FlashAttention kernels against a float64 reference at GPU-sized shapes, forward and backward.

    python benchmarks/attention_check.py --device cuda --out check.json     # on a GPU (fp32, fp16, bf16)
    TRITON_INTERPRET=1 python benchmarks/attention_check.py --device cpu --tiny   # the interpreter (fp32, fp16)

``tests/test_flash_triton.py`` checks every feature at tiny shapes (under the interpreter on a CPU, whose
16-wide tiles exercise every boundary); this driver adds what only a GPU shows: the compiled kernels with
their GPU tile configurations (``forward_config``/``backward_config``: 64-128-row blocks, pipelined loads)
over sequences of one to a few thousand tokens with ragged last blocks, in fp32, fp16 and bf16.

Cases: causal; GQA (4 query heads per kv head) not causal; causal with ``Tq < Tk`` (a chunk of queries at
the end of a long context); a sliding window with key padding; packed variable-length sequences (causal,
GQA). Reference: :func:`trainlab.attention.naive_attention` in float64 on the same device (``varlen``: per
sequence). Criterion, for the output and the three gradients: the kernel's largest absolute error against
float64 is at most ``2 x`` that of the naive implementation run in the same dtype (float32 softmax), plus
``1e-6`` x the reference's largest magnitude (the same criterion as the tests' low-precision check: a kernel
is as exact as the textbook formula in that dtype, not exact to an arbitrary tolerance).

Writes a JSON list of rows (case, dtype, errors, pass) to ``--out`` and prints one line per row; exits 1 if
any row fails.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

Fn = Callable[[Tensor, Tensor, Tensor], Tensor]


def _cases(tiny: bool) -> list[dict[str, Any]]:
    """(name, B, Hq, Hkv, Tq, Tk, D, causal, window, padding); ``varlen`` rows give their sequence lengths."""
    if tiny:
        return [
            dict(name="causal", b=1, hq=2, hkv=2, tq=37, tk=37, d=16, causal=True),
            dict(name="gqa", b=2, hq=4, hkv=1, tq=21, tk=21, d=32, causal=False),
            dict(name="causal-tq<tk", b=1, hq=2, hkv=1, tq=9, tk=40, d=16, causal=True),
            dict(name="window-padding", b=2, hq=2, hkv=2, tq=33, tk=33, d=16, causal=False, window=(5, 3),
                 padding=True),
            dict(name="varlen-causal-gqa", varlen=[5, 17, 30], hq=4, hkv=2, d=16, causal=True),
        ]
    return [
        dict(name="causal-d128", b=2, hq=8, hkv=8, tq=1061, tk=1061, d=128, causal=True),
        dict(name="gqa4-d64", b=2, hq=16, hkv=4, tq=2048, tk=2048, d=64, causal=False),
        dict(name="causal-tq<tk-d128", b=2, hq=8, hkv=2, tq=200, tk=1800, d=128, causal=True),
        dict(name="window-padding-d64", b=2, hq=8, hkv=8, tq=1500, tk=1500, d=64, causal=False, window=(256, 64),
             padding=True),
        dict(name="varlen-causal-gqa-d128", varlen=[300, 1200, 777, 64], hq=8, hkv=2, d=128, causal=True),
    ]


def _grads(fn: Fn, q: Tensor, k: Tensor, v: Tensor, do: Tensor) -> list[Tensor]:
    qq, kk, vv = (t.detach().clone().requires_grad_() for t in (q, k, v))
    out = fn(qq, kk, vv)
    out.backward(do)
    assert qq.grad is not None and kk.grad is not None and vv.grad is not None
    return [out.detach(), qq.grad, kk.grad, vv.grad]


def check_case(case: dict[str, Any], dtype: torch.dtype, device: torch.device, seed: int = 0) -> dict[str, Any]:
    from trainlab.attention import naive_attention, varlen_attention
    from trainlab.attention.flash_triton import flash_attention_triton, flash_attention_varlen_triton

    g = torch.Generator().manual_seed(seed)
    hq, hkv, d, causal = case["hq"], case["hkv"], case["d"], case["causal"]
    window = case.get("window")
    if "varlen" in case:
        lens = case["varlen"]
        cu = torch.tensor([0, *torch.tensor(lens).cumsum(0).tolist()], dtype=torch.int32)
        total, longest = int(cu[-1]), max(lens)
        shapes = [(total, hq, d), (total, hkv, d), (total, hkv, d), (total, hq, d)]

        def kernel(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
            return flash_attention_varlen_triton(q, k, v, cu.to(device), cu.to(device), longest, longest,
                                                 causal=causal, window=window)

        def reference(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
            return varlen_attention(q, k, v, cu, cu, causal=causal, window=window, backend="naive")
    else:
        b, tq, tk = case["b"], case["tq"], case["tk"]
        shapes = [(b, hq, tq, d), (b, hkv, tk, d), (b, hkv, tk, d), (b, hq, tq, d)]
        mask = None
        if case.get("padding"):
            mask = torch.ones(b, tk, dtype=torch.bool, device=device)
            mask[0, : tk // 7] = False  # left padding
            mask[-1, -(tk // 5):] = False  # right padding

        def kernel(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
            return flash_attention_triton(q, k, v, causal=causal, key_padding_mask=mask, window=window)

        def reference(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
            return naive_attention(q, k, v, causal=causal, key_padding_mask=mask, window=window)

    q, k, v, do = (torch.randn(*s, generator=g).to(device, dtype) for s in shapes)
    start = time.perf_counter()
    want = _grads(reference, q.double(), k.double(), v.double(), do.double())
    same_dtype = _grads(reference, q, k, v, do)
    got = _grads(kernel, q, k, v, do)
    if device.type == "cuda":
        torch.cuda.synchronize()
    row: dict[str, Any] = {"case": case["name"], "dtype": str(dtype).removeprefix("torch."), "head_dim": d,
                           "shape": list(shapes[0]), "kv_heads": hkv, "causal": causal,
                           "window": list(window) if window else None, "varlen": case.get("varlen")}
    ok = True
    for name, a, n, r in zip(("out", "dq", "dk", "dv"), got, same_dtype, want, strict=True):
        finite = bool(torch.isfinite(a).all())
        err = float((a.double() - r).abs().max())
        base = float((n.double() - r).abs().max())
        bound = 2 * base + 1e-6 * float(r.abs().max())
        row[f"{name}_err"], row[f"{name}_naive_err"] = err, base
        passed = finite and a.dtype == dtype and err <= bound
        row[f"{name}_ok"] = passed
        ok = ok and passed
    row["ok"] = ok
    row["seconds"] = round(time.perf_counter() - start, 3)
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtypes", nargs="+", choices=["fp32", "fp16", "bf16"], default=None,
                        help="default: fp32 fp16 bf16 on CUDA, fp32 fp16 under the interpreter")
    parser.add_argument("--tiny", action="store_true", help="tiny shapes (the interpreter on a CPU)")
    parser.add_argument("--cases", nargs="+", default=None, help="run only these cases (by name)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        parser.error("without CUDA the kernels run only in Triton's interpreter: set TRITON_INTERPRET=1")
    names = args.dtypes or (["fp32", "fp16", "bf16"] if device.type == "cuda" else ["fp32", "fp16"])
    dtypes = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
    rows: list[dict[str, Any]] = []
    for name in names:
        for case in _cases(args.tiny or device.type != "cuda"):
            if args.cases and case["name"] not in args.cases:
                continue
            try:
                row = check_case(case, dtypes[name], device)
            except Exception as exc:  # a kernel that fails to compile or launch is a failed row, not a crash
                row = {"case": case["name"], "dtype": name, "ok": False, "error": f"{type(exc).__name__}: {exc}"[:500]}
            rows.append(row)
            errs = " ".join(f"{k}={row[k + '_err']:.2e}/{row[k + '_naive_err']:.2e}" for k in ("out", "dq", "dk", "dv")
                            if k + "_err" in row)
            print(f"{'PASS' if row['ok'] else 'FAIL'} {row['case']} {row['dtype']} {errs} {row.get('error', '')}",
                  flush=True)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"device": str(device), "rows": rows}, indent=2) + "\n", encoding="utf-8")
    failed = sum(not r["ok"] for r in rows)
    print(f"{len(rows) - failed}/{len(rows)} passed", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
