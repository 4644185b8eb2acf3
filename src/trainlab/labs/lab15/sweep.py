"""Lab 1.5, section 2: time (forward, forward+backward), TFLOP/s and peak memory over sequence length,
with crossover points and the log-log slope of memory (2 = quadratic, 1 = linear).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from trainlab.attention.calc import attention_cost, attention_flops, format_bytes
from trainlab.bench import measure_peak, time_fn
from trainlab.labs.lab15.presets import Preset, attention_fn, device_backends, empty_cache, make_inputs, series
from trainlab.results import Table


def sweep(preset: Preset, device: torch.device, seed: int = 0) -> dict[str, Any]:
    """Forward and forward+backward time, TFLOP/s and peak memory per backend and length (causal)."""
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    backends, skipped = device_backends(device)
    b, h, d = preset.sweep_batch, preset.sweep_heads, preset.sweep_head_dim
    points: list[dict[str, Any]] = []
    seqs = sorted(set(preset.sweep_seqs) | set(preset.sweep_memory_seqs))
    for n in seqs:
        timed = n in preset.sweep_seqs
        q, k, v, do = make_inputs((b, h, h, n, d), dtype, device, seed)
        for name in backends:
            if (name == "naive" and n > preset.naive_max_seq) or (
                    name == "flash_torch" and device.type == "cuda" and n > preset.flash_torch_max_seq):
                continue
            fn = attention_fn(name)
            qg, kg, vg = (t.detach().requires_grad_() for t in (q, k, v))

            def fwd(fn=fn, q=q, k=k, v=v) -> Tensor:
                with torch.no_grad():
                    return fn(q, k, v, causal=True)

            def fwd_bwd(fn=fn, qg=qg, kg=kg, vg=vg, do=do) -> None:
                qg.grad = kg.grad = vg.grad = None
                fn(qg, kg, vg, causal=True).backward(do)

            point: dict[str, Any] = {"backend": name, "seq": n, "timed": timed}
            # The memory runs come first and double as the first warm-up call of the timing.
            warmup = max(preset.warmup - 1, 0)
            try:
                qg.grad = kg.grad = vg.grad = None
                _, mem_fb = measure_peak(fwd_bwd, device=device, inputs=(qg, kg, vg, do))
                point |= {"peak_fwd_bwd_bytes": mem_fb.peak_bytes, "memory_method": mem_fb.method}
                if timed:
                    _, mem_f = measure_peak(fwd, device=device, inputs=(q, k, v))
                    point["peak_fwd_bytes"] = mem_f.peak_bytes
                    tf = time_fn(fwd, device=device, warmup=warmup, repeats=preset.repeats,
                                 max_time_s=preset.max_time_s)
                    tfb = time_fn(fwd_bwd, device=device, warmup=warmup, repeats=preset.repeats,
                                  max_time_s=preset.max_time_s)
                    point |= {"fwd_s": tf.median_s, "fwd_bwd_s": tfb.median_s,
                              "fwd_tflops": attention_flops(b, h, n, n, d, causal=True) / tf.median_s / 1e12,
                              "fwd_bwd_tflops": attention_flops(b, h, n, n, d, causal=True, mode="fwd_bwd")
                              / tfb.median_s / 1e12}
            except torch.OutOfMemoryError as exc:
                point["oom"] = str(exc)[:200]
                empty_cache(device)
            points.append(point)
    return {"dtype": str(dtype).removeprefix("torch."), "batch": b, "heads": h, "head_dim": d, "causal": True,
            "points": points, "skipped": skipped, "analytic": [
                attention_cost(b, h, n, d, causal=True, dtype="bf16" if dtype == torch.bfloat16 else "fp32"
                               ).to_dict() for n in seqs]}


def loglog_slope(xs: list[int], ys: list[float]) -> float | None:
    """Least-squares slope of log(y) against log(x): 2 for quadratic growth, 1 for linear."""
    pts = [(math.log(x), math.log(y)) for x, y in zip(xs, ys, strict=True) if y > 0]
    if len(pts) < 2:
        return None
    mx = sum(p[0] for p in pts) / len(pts)
    my = sum(p[1] for p in pts) / len(pts)
    var = sum((p[0] - mx) ** 2 for p in pts)
    return sum((p[0] - mx) * (p[1] - my) for p in pts) / var if var else None


def crossover(points: list[dict[str, Any]], fast: str, slow: str, key: str) -> int | None:
    """The smallest length from which ``fast`` stays faster than ``slow`` on ``key``, or None."""
    xs, fa = series(points, fast, key)
    xs2, sl = series(points, slow, key)
    common = sorted(set(xs) & set(xs2))
    by_f, by_s = dict(zip(xs, fa, strict=True)), dict(zip(xs2, sl, strict=True))
    for i, n in enumerate(common):
        if all(by_f[m] < by_s[m] for m in common[i:]):
            return n
    return None


def _sweep_tables(sw: dict[str, Any]) -> list[Table]:
    rows = []
    for p in sw["points"]:
        if "oom" in p:
            rows.append([p["backend"], p["seq"], "OOM", "", "", "", "", ""])
            continue
        rows.append([p["backend"], p["seq"], p.get("fwd_s", None) and p["fwd_s"] * 1e3,
                     p.get("fwd_bwd_s", None) and p["fwd_bwd_s"] * 1e3, p.get("fwd_tflops"), p.get("fwd_bwd_tflops"),
                     format_bytes(p["peak_fwd_bytes"]) if "peak_fwd_bytes" in p else None,
                     format_bytes(p["peak_fwd_bwd_bytes"])])
    pts = sw["points"]
    cross = [f"{fast} faster than naive (fwd+bwd) from N={crossover(pts, fast, 'naive', 'fwd_bwd_s')}"
             for fast in ("sdpa", "flash_torch", "triton", "flash_attn") if series(pts, fast, "fwd_bwd_s")[0]]
    slopes = [f"{name} {s:.2f}" for name in ("naive", "sdpa", "flash_torch", "triton", "flash_attn")
              for s in [loglog_slope(*series(pts, name, "peak_fwd_bwd_bytes"))] if s is not None]
    analytic = [[a["seq"], f"{a['flops_forward']:.3g}", format_bytes(a["score_matrix_bytes"]),
                 format_bytes(a["bytes_naive_forward"]), format_bytes(a["bytes_tiled_forward"]),
                 f"{a['intensity_naive']:.1f}", f"{a['intensity_tiled']:.1f}"] for a in sw["analytic"]]
    return [
        Table(title=f"2. Time and peak memory over sequence length (causal, {sw['dtype']}, B={sw['batch']}, "
                    f"H={sw['heads']}, D={sw['head_dim']})",
              columns=["backend", "N", "fwd ms", "fwd+bwd ms", "fwd TFLOP/s", "fwd+bwd TFLOP/s", "peak fwd",
                       "peak fwd+bwd"],
              rows=rows, note="Crossovers: " + ("; ".join(cross) if cross else "none") + ". Log-log slope of peak "
              "memory vs N (2 = quadratic, 1 = linear): " + ", ".join(slopes) + ". Rows without times were "
              "measured for memory only."),
        Table(title="2b. The same shapes, analytically (trainlab calc attention)",
              columns=["N", "fwd FLOPs", "score matrix", "naive fwd traffic", "tiled fwd traffic",
                       "naive FLOP/B", "tiled FLOP/B"], rows=analytic),
    ]
