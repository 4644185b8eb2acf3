"""Attention kernels side by side: trainlab's Triton kernel vs every SDPA backend vs flash-attn.

    python benchmarks/bench_attention.py                 # the full grid on a CUDA GPU, a small one on CPU
    python benchmarks/bench_attention.py --seqs 512 1024 --head-dims 64 --gqa 1 --no-backward

Grid (CUDA): bf16; head dims 64 and 128; causal and not; N = 512 ... 16K; GQA ratios 1, 4, 8
(query heads × head dim = 2048, batch × N = 16K tokens, as in flash-attn's own benchmark). Each
configuration is timed forward and forward+backward (median of repeats after warm-up) and reported
in TFLOP/s with the FlashAttention papers' FLOP convention (forward 4·B·H·N²·D, halved when causal;
backward 2.5× forward; see ``trainlab.attention.calc``). On a CPU the grid shrinks to fp32 and
short sequences, and the GPU-only backends are listed as skipped with the reason.

Results: ``benchmarks/results/attention_<device>.json`` and a Markdown table (``.md`` beside it, and
stdout) naming the device; BENCHMARKS.md collects them.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from trainlab.attention import attention, available_backends, resolve_backend
from trainlab.attention.calc import attention_flops
from trainlab.bench import time_fn
from trainlab.env import detect_env
from trainlab.errors import UserError

RESULTS = Path(__file__).resolve().parent / "results"


@contextlib.contextmanager
def _sdpa_kernel(name: str | None) -> Iterator[None]:
    """Restrict SDPA to one of its kernels (``flash``, ``efficient``, ``cudnn``, ``math``)."""
    if name is None:
        yield
        return
    from torch.nn.attention import SDPBackend, sdpa_kernel

    kernel = {"flash": SDPBackend.FLASH_ATTENTION, "efficient": SDPBackend.EFFICIENT_ATTENTION,
              "cudnn": SDPBackend.CUDNN_ATTENTION, "math": SDPBackend.MATH}[name]
    with sdpa_kernel(kernel):
        yield


def candidates(device: torch.device) -> list[tuple[str, str, str | None]]:
    """(label, trainlab backend, SDPA kernel) to measure on ``device``."""
    if device.type == "cuda":
        return [("triton", "triton", None), ("flash_attn", "flash_attn", None), ("sdpa:flash", "sdpa", "flash"),
                ("sdpa:cudnn", "sdpa", "cudnn"), ("sdpa:efficient", "sdpa", "efficient"),
                ("sdpa:math", "sdpa", "math"), ("naive", "naive", None)]
    return [("sdpa", "sdpa", None), ("flash_torch", "flash_torch", None), ("naive", "naive", None),
            ("triton", "triton", None), ("flash_attn", "flash_attn", None)]


def run_one(label: str, backend: str, kernel: str | None, *, batch: int, heads: int, kv_heads: int, seq: int,
            head_dim: int, causal: bool, dtype: torch.dtype, device: torch.device, backward: bool, warmup: int,
            repeats: int, interpret: bool = False) -> dict[str, Any]:
    row: dict[str, Any] = {"backend": label, "batch": batch, "heads": heads, "kv_heads": kv_heads, "seq": seq,
                           "head_dim": head_dim, "causal": causal, "dtype": str(dtype).removeprefix("torch.")}
    g = torch.Generator(device="cpu").manual_seed(0)
    q = torch.randn(batch, heads, seq, head_dim, generator=g).to(device, dtype)
    k = torch.randn(batch, kv_heads, seq, head_dim, generator=g).to(device, dtype)
    v = torch.randn(batch, kv_heads, seq, head_dim, generator=g).to(device, dtype)
    if device.type != "cuda" and backend in ("triton", "flash_attn") and not (backend == "triton" and interpret):
        row["skipped"] = "needs CUDA" + (" (the Triton interpreter, TRITON_INTERPRET=1, is for testing, not timing)"
                                         if backend == "triton" else "")
        return row
    if device.type != "cuda" and backend == "triton":
        row["note"] = "Triton interpreter: a dry run of the code path, not a timing"
    try:
        resolve_backend(backend, q, k, v, causal=causal)
    except UserError as exc:
        row["skipped"] = str(exc).split(": ", 1)[-1].split("; backends that can")[0]
        return row

    def fwd() -> Tensor:
        with torch.no_grad(), _sdpa_kernel(kernel):
            return attention(q, k, v, causal=causal, backend=backend)

    qg, kg, vg = (t.detach().requires_grad_() for t in (q, k, v))
    do = torch.randn_like(q)

    def fwd_bwd() -> None:
        qg.grad = kg.grad = vg.grad = None
        with _sdpa_kernel(kernel):
            out = attention(qg, kg, vg, causal=causal, backend=backend)
        out.backward(do)

    try:
        t = time_fn(fwd, device=device, warmup=warmup, repeats=repeats)
        row["fwd_ms"] = t.median_s * 1e3
        row["fwd_tflops"] = attention_flops(batch, heads, seq, seq, head_dim, causal=causal) / t.median_s / 1e12
        if backward:
            t = time_fn(fwd_bwd, device=device, warmup=warmup, repeats=repeats)
            row["fwd_bwd_ms"] = t.median_s * 1e3
            row["fwd_bwd_tflops"] = (attention_flops(batch, heads, seq, seq, head_dim, causal=causal, mode="fwd_bwd")
                                     / t.median_s / 1e12)
    except torch.OutOfMemoryError:
        row["skipped"] = "out of memory"
    except RuntimeError as exc:  # an SDPA kernel that does not take this shape/dtype ("No available kernel")
        row["skipped"] = str(exc).splitlines()[0][:160]
    finally:
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return row


def markdown(rows: list[dict[str, Any]], device_name: str) -> str:
    """A Markdown table; backends skipped for the same reason everywhere are listed once above it."""
    by_backend: dict[str, set[str]] = {}
    for r in rows:
        by_backend.setdefault(r["backend"], set()).add(r.get("skipped", ""))
    absent = {b: next(iter(reasons)) for b, reasons in by_backend.items() if len(reasons) == 1 and "" not in reasons}
    lines = [f"Device: {device_name}", ""]
    lines += [f"- skipped `{b}`: {why}" for b, why in absent.items()]
    lines += ["", "| backend | dtype | D | GQA | causal | N | B×Hq | fwd TFLOP/s | fwd+bwd TFLOP/s | note |",
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        if r["backend"] in absent:
            continue
        fmt = lambda x: f"{x:.3g}" if isinstance(x, float) else "—"  # noqa: E731
        lines.append(f"| {r['backend']} | {r['dtype']} | {r['head_dim']} | {r['heads'] // r['kv_heads']} | "
                     f"{'yes' if r['causal'] else 'no'} | {r['seq']} | {r['batch']}×{r['heads']} | "
                     f"{fmt(r.get('fwd_tflops'))} | {fmt(r.get('fwd_bwd_tflops'))} | "
                     f"{r.get('skipped', r.get('note', ''))} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--seqs", type=int, nargs="+")
    parser.add_argument("--head-dims", type=int, nargs="+")
    parser.add_argument("--gqa", type=int, nargs="+", help="query heads per kv head")
    parser.add_argument("--causal", choices=["both", "yes", "no"], default="both")
    parser.add_argument("--tokens", type=int, help="batch × N (default 16384 on CUDA, 1024 on CPU)")
    parser.add_argument("--model-dim", type=int, help="query heads × head dim (default 2048 on CUDA, 256 on CPU)")
    parser.add_argument("--backends", nargs="+", help="labels to run (default: all)")
    parser.add_argument("--no-backward", action="store_true")
    parser.add_argument("--warmup", type=int)
    parser.add_argument("--repeats", type=int)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--interpret", action="store_true",
                        help="on a CPU, run the triton backend in Triton's interpreter (TRITON_INTERPRET=1 must be "
                             "set before start): a dry run of the script, not a timing")
    args = parser.parse_args(argv)
    if args.interpret and os.environ.get("TRITON_INTERPRET") != "1":
        parser.error("--interpret needs TRITON_INTERPRET=1 in the environment")

    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    cuda = device.type == "cuda"
    env = detect_env()
    device_name = env.short() if (device.type == "cuda") == (env.device == "cuda") else str(device)
    dtype = torch.bfloat16 if cuda else torch.float32
    seqs = args.seqs or ([512, 1024, 2048, 4096, 8192, 16384] if cuda else [256, 512, 1024])
    head_dims = args.head_dims or ([64, 128] if cuda else [64])
    ratios = args.gqa or ([1, 4, 8] if cuda else [1, 4])
    causals = {"both": [False, True], "yes": [True], "no": [False]}[args.causal]
    tokens = args.tokens or (16384 if cuda else 1024)
    model_dim = args.model_dim or (2048 if cuda else 256)
    warmup = args.warmup if args.warmup is not None else (5 if cuda else 1)
    repeats = args.repeats if args.repeats is not None else (20 if cuda else 3)
    if not cuda:
        torch.set_num_threads(1)  # the CPU numbers are per core: stable on a shared machine

    rows: list[dict[str, Any]] = []
    for d in head_dims:
        heads = max(model_dim // d, 1)
        for ratio in ratios:
            if heads % ratio:
                continue
            for causal in causals:
                for n in seqs:
                    batch = max(tokens // n, 1)
                    for label, backend, kernel in candidates(device):
                        if args.backends and label not in args.backends:
                            continue
                        if label in ("naive", "sdpa:math") and n > 4096 and cuda:
                            continue  # N² memory: minutes per point and tens of GiB
                        row = run_one(label, backend, kernel, batch=batch, heads=heads, kv_heads=heads // ratio,
                                      seq=n, head_dim=d, causal=causal, dtype=dtype, device=device,
                                      backward=not args.no_backward, warmup=warmup, repeats=repeats,
                                      interpret=args.interpret)
                        rows.append(row)
                        print(json.dumps(row), file=sys.stderr, flush=True)
    slug = re.sub(r"[^a-z0-9]+", "_", device_name.lower()).strip("_")[:60]
    args.out.mkdir(parents=True, exist_ok=True)
    doc = {"benchmark": "attention", "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
           "device": device_name, "env": env.to_dict(), "python": platform.python_version(),
           "torch_threads": torch.get_num_threads(), "available_backends": available_backends(),
           "settings": {"seqs": seqs, "head_dims": head_dims, "gqa": ratios, "causal": causals, "tokens": tokens,
                        "model_dim": model_dim, "dtype": str(dtype), "warmup": warmup, "repeats": repeats},
           "rows": rows}
    path = args.out / f"attention_{slug}.json"
    path.write_text(json.dumps(doc, indent=2), encoding="utf-8")
    md = markdown(rows, device_name)
    (args.out / f"attention_{slug}.md").write_text(md, encoding="utf-8")
    print(md)
    print(f"wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
