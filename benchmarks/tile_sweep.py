"""A short sweep of the Triton kernel's tile configurations on the main shapes, against the defaults.

    python benchmarks/tile_sweep.py --out sweep.json                 # on a GPU (bf16, causal, N=8K)
    TRITON_INTERPRET=1 python benchmarks/tile_sweep.py --tiny --device cpu --out sweep.json

The defaults (:func:`trainlab.attention.flash_triton.forward_config` / ``backward_config``) were chosen
without a GPU, from what compiles without register spills for sm_90 (``benchmarks/compile_triton.py``).
This measures them beside a handful of neighbours (block sizes, warps, pipeline stages), forward alone
and forward+backward (the backward configuration varied with the forward at its default), in TFLOP/s with
the FlashAttention papers' FLOP convention (:func:`trainlab.attention.calc.attention_flops`). Shapes: bf16,
causal, N=8192, B=2, 16 heads of 128 / 32 heads of 64 (query heads x head dim = 2048). Every candidate's
output is compared with the default's (a configuration that is fast but wrong is reported as wrong).
A configuration the GPU cannot hold (shared memory, registers) is a row with its error. ``--budget-s``
stops the sweep when its time is spent (rows not reached are listed as not run).

JSON: ``{"device", "shapes": [{"shape", "default": {...}, "rows": [...], "best_fwd", "best_fwd_bwd"}]}``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

FWD = [(128, 64, 4, 3), (128, 64, 8, 3), (128, 128, 8, 3), (64, 64, 4, 3), (128, 32, 4, 4), (128, 64, 8, 4),
       (64, 128, 4, 2)]
BWD = [(32, 64, 8, 2), (32, 128, 8, 3), (64, 64, 8, 2), (64, 128, 8, 2), (32, 64, 4, 3), (16, 64, 4, 2)]
TINY_FWD = [(16, 16, 1, 1), (32, 16, 1, 1)]
TINY_BWD = [(16, 16, 1, 1), (16, 32, 1, 1)]


def _shapes(tiny: bool) -> list[dict[str, int]]:
    if tiny:
        return [dict(batch=1, heads=2, seq=48, head_dim=16)]
    return [dict(batch=2, heads=16, seq=8192, head_dim=128), dict(batch=2, heads=32, seq=8192, head_dim=64)]


def sweep_shape(shape: dict[str, int], *, dtype: torch.dtype, device: torch.device, causal: bool,
                fwd: list[tuple[int, ...]], bwd: list[tuple[int, ...]], warmup: int, repeats: int,
                deadline: float) -> dict[str, Any]:
    from trainlab.attention.calc import attention_flops
    from trainlab.attention.flash_triton import KernelConfig, backward_config, flash_attention_triton, forward_config
    from trainlab.bench import time_fn

    b, h, n, d = shape["batch"], shape["heads"], shape["seq"], shape["head_dim"]
    g = torch.Generator().manual_seed(0)
    q, k, v, do = (torch.randn(b, h, n, d, generator=g).to(device, dtype) for _ in range(4))
    qg, kg, vg = (t.detach().requires_grad_() for t in (q, k, v))
    f_fwd = attention_flops(b, h, n, n, d, causal=causal)
    f_all = attention_flops(b, h, n, n, d, causal=causal, mode="fwd_bwd")
    default_f, default_b = forward_config(d, dtype), backward_config(d, dtype)

    def measure(kind: str, fc: Any, bc: Any) -> dict[str, Any]:
        row: dict[str, Any] = {"kind": kind, "fwd_config": list(fc.__dict__.values()),
                               "bwd_config": list(bc.__dict__.values()) if kind == "fwd_bwd" else None}
        if time.monotonic() > deadline:
            row["skipped"] = "time budget spent"
            return row
        try:
            with torch.no_grad():
                out = flash_attention_triton(q, k, v, causal=causal, fwd_config=fc)
            row["max_abs_diff_vs_default"] = float((out.float() - reference.float()).abs().max())
            if kind == "fwd":
                def call() -> Any:
                    with torch.no_grad():
                        return flash_attention_triton(q, k, v, causal=causal, fwd_config=fc)
                flops = f_fwd
            else:
                def call() -> Any:
                    qg.grad = kg.grad = vg.grad = None
                    flash_attention_triton(qg, kg, vg, causal=causal, fwd_config=fc, bwd_config=bc).backward(do)
                flops = f_all
            t = time_fn(call, device=device, warmup=warmup, repeats=repeats)
            row["ms"] = t.median_s * 1e3
            row["tflops"] = flops / t.median_s / 1e12
        except Exception as exc:  # out of resources, a compile error: recorded, the sweep goes on
            row["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:300]
        finally:
            if device.type == "cuda":
                torch.cuda.empty_cache()
        return row

    with torch.no_grad():
        reference = flash_attention_triton(q, k, v, causal=causal)
    rows = [measure("fwd", default_f, default_b), measure("fwd_bwd", default_f, default_b)]
    for r in rows:
        r["default"] = True
    for cfg in fwd:
        kc = KernelConfig(*cfg)
        if kc != default_f:
            rows.append(measure("fwd", kc, default_b))
    for cfg in bwd:
        kc = KernelConfig(*cfg)
        if kc != default_b:
            rows.append(measure("fwd_bwd", default_f, kc))

    def best(kind: str) -> dict[str, Any] | None:
        ok = [r for r in rows if r["kind"] == kind and "tflops" in r and r["max_abs_diff_vs_default"] < 0.05]
        return max(ok, key=lambda r: r["tflops"]) if ok else None

    return {"shape": {**shape, "causal": causal, "dtype": str(dtype).removeprefix("torch.")}, "rows": rows,
            "best_fwd": best("fwd"), "best_fwd_bwd": best("fwd_bwd")}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--tiny", action="store_true", help="a tiny shape and two configs (the interpreter)")
    parser.add_argument("--budget-s", type=float, default=90.0)
    parser.add_argument("--warmup", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    tiny = args.tiny or not cuda
    dtype = torch.bfloat16 if cuda else torch.float32
    warmup = args.warmup if args.warmup is not None else (3 if cuda else 0)
    repeats = args.repeats if args.repeats is not None else (10 if cuda else 1)
    deadline = time.monotonic() + args.budget_s
    doc: dict[str, Any] = {"device": torch.cuda.get_device_name(device) if cuda else "cpu (Triton interpreter)",
                           "settings": {"warmup": warmup, "repeats": repeats, "budget_s": args.budget_s},
                           "shapes": []}
    for shape in _shapes(tiny):
        res = sweep_shape(shape, dtype=dtype, device=device, causal=True, fwd=TINY_FWD if tiny else FWD,
                          bwd=TINY_BWD if tiny else BWD, warmup=warmup, repeats=repeats, deadline=deadline)
        doc["shapes"].append(res)
        for r in res["rows"]:
            what = (f"{r['tflops']:.1f} TFLOP/s" if "tflops" in r else r.get("error") or r.get("skipped"))
            print(f"{res['shape']['head_dim']:>4} {r['kind']:<8} fwd={r['fwd_config']} bwd={r['bwd_config']} "
                  f"{'(default) ' if r.get('default') else ''}{what}", flush=True)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    measured = [r for s in doc["shapes"] for r in s["rows"] if "tflops" in r]
    return 0 if measured else 1


if __name__ == "__main__":
    sys.exit(main())
