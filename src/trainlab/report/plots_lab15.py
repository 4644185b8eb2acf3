"""Lab 1.5's figures: attention time and memory over sequence length, long-sequence training steps."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from trainlab.attention.calc import format_bytes as _format_bytes
from trainlab.report.plots import bar_plot, line_plot
from trainlab.results import Figure


def series(points: list[dict[str, Any]], backend: str, key: str) -> tuple[list[int], list[float]]:
    """(lengths, values) of ``key`` for one backend's measured points."""
    pts = [p for p in points if p["backend"] == backend and key in p]
    return [p["seq"] for p in pts], [float(p[key]) for p in pts]


def lab15_figures(out_dir: Path, rel: Callable[[Path], str], sw: dict[str, Any],
                  train: dict[str, Any]) -> list[Figure]:
    """Time and memory over sequence length (``sw``: the sweep's points) and the long-sequence training
    steps' peak memory and throughput per setup (``train``); ``rel`` makes figure paths report-relative."""
    pts = sw["points"]
    names = [n for n in ("naive", "sdpa", "flash_torch", "triton", "flash_attn") if series(pts, n, "fwd_bwd_s")[0]]
    figs = []
    curves = {f"{n} fwd+bwd": (lambda xs, ys: (xs, [y * 1e3 for y in ys]))(*series(pts, n, "fwd_bwd_s"))
              for n in names}
    curves |= {f"{n} fwd": (lambda xs, ys: (xs, [y * 1e3 for y in ys]))(*series(pts, n, "fwd_s")) for n in names}
    p = line_plot(out_dir / "time_vs_seq.png", curves, title="Attention time vs sequence length (causal)",
                  xlabel="sequence length N", ylabel="ms (median)", logx=True, logy=True)
    figs.append(Figure(path=rel(p), caption="Median time of one causal attention call, forward and "
                       "forward+backward, log-log."))
    mem_names = [n for n in ("naive", "sdpa", "flash_torch", "triton", "flash_attn")
                 if series(pts, n, "peak_fwd_bwd_bytes")[0]]
    p = line_plot(out_dir / "memory_vs_seq.png",
                  {n: (lambda xs, ys: (xs, [y / 2**20 for y in ys]))(*series(pts, n, "peak_fwd_bwd_bytes"))
                   for n in mem_names},
                  title="Peak memory of attention forward+backward", xlabel="sequence length N", ylabel="MiB",
                  logx=True, logy=True)
    figs.append(Figure(path=rel(p), caption="Peak bytes allocated by one forward+backward, log-log: slope 2 "
                       "is quadratic (the N² score matrix), slope 1 linear."))
    setups = list(dict.fromkeys(r["setup"] for r in train["rows"]))
    ok = [r for r in train["rows"] if "peak_bytes" in r]
    if ok:
        seqs = [str(n) for n in sorted({r["seq"] for r in train["rows"]})]

        def val(setup: str, n: str, key: str, scale: float) -> float:
            r = next((r for r in ok if r["setup"] == setup and str(r["seq"]) == n), None)
            return r[key] / scale if r is not None else 0.0

        p = bar_plot(out_dir / "long_seq_memory.png", seqs,
                     {s: [val(s, n, "peak_bytes", 2**20) for n in seqs] for s in setups},
                     title=f"Training-step peak memory (cap {_format_bytes(train['cap_bytes'])}; 0 = out of memory)",
                     ylabel="MiB")
        figs.append(Figure(path=rel(p), caption="Peak memory of one training step per sequence length; a "
                           "missing bar is an out-of-memory under the cap."))
        p = bar_plot(out_dir / "long_seq_throughput.png", seqs,
                     {s: [val(s, n, "tokens_per_s", 1.0) for n in seqs] for s in setups},
                     title="Training throughput (0 = out of memory)", ylabel="tokens/s")
        figs.append(Figure(path=rel(p), caption="Tokens per second of a training step per sequence length."))
    return figs
