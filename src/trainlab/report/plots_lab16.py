"""Lab 1.6's figures: decode tokens/s over batch, per-token latency over context, uptraining curves, quality."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from trainlab.report.plots import bar_plot, line_plot
from trainlab.results import Figure


def _series(points: list[dict[str, Any]], sweep: str, x: str, y: str, scale: float = 1.0
            ) -> dict[str, tuple[list[float], list[float]]]:
    out: dict[str, tuple[list[float], list[float]]] = {}
    for key in sorted({(p["variant"], p["impl"]) for p in points if p["sweep"] == sweep}):
        pts = sorted((p for p in points if p["sweep"] == sweep and (p["variant"], p["impl"]) == key),
                     key=lambda p: p[x])
        out[f"{key[0]} {key[1]}"] = ([p[x] for p in pts], [p[y] * scale for p in pts])
    return out


def decode_figures(out_dir: Path, rel: Callable[[Path], str], decode: dict[str, Any]) -> list[Figure]:
    pts = decode["points"]
    figs = []
    if any(p["sweep"] == "batch" for p in pts):
        path = line_plot(out_dir / "decode_tokens_per_s_vs_batch.png", _series(pts, "batch", "batch",
                         "decode_tokens_per_s"), title="Decode tokens/s vs batch size", xlabel="batch",
                         ylabel="tokens/s (decode steps)", logx=True, logy=True)
        figs.append(Figure(path=rel(path), caption="Decode throughput (batch / per-token latency) of MHA, GQA and "
                           "MQA variants: ours with the dynamic and static cache, transformers' generate."))
    if any(p["sweep"] == "context" for p in pts):
        path = line_plot(out_dir / "decode_latency_vs_context.png", _series(pts, "context", "context",
                         "per_token_s", 1e3), title="Per-token decode latency vs context", xlabel="context tokens",
                         ylabel="ms per token", logx=True, logy=True)
        figs.append(Figure(path=rel(path), caption="Median time of one decode step at a growing context."))
    return figs


def uptraining_figure(out_dir: Path, rel: Callable[[Path], str], up: dict[str, Any]) -> list[Figure]:
    pct = [100 * f for f in up["fractions"]]
    series = {f"{up['variant']} from {up['base_variant']}, {init} init": (pct, ys) for init, ys in up["curves"].items()}
    hlines = {f"{up['base_variant']} (base model)": up["mha_val_loss"]}
    if up.get("scratch_val_loss") is not None:
        hlines[f"{up['variant']} from scratch, {up['scratch_steps']} steps"] = up["scratch_val_loss"]
    title = f"Validation loss after {up['base_variant']} -> {up['variant']} conversion"
    path = line_plot(out_dir / "uptraining_curves.png", series, title=title,
                     xlabel="uptraining steps, % of pre-training", ylabel="validation loss (nats/token)",
                     hlines=hlines)
    return [Figure(path=rel(path), caption="Right after conversion (0%) and after uptraining; mean-pooled, first "
                   "head and random k/v init; the MHA model and a from-scratch model of the same shape for reference.")]


def quality_figure(out_dir: Path, rel: Callable[[Path], str], quality: dict[str, Any]) -> list[Figure]:
    rows = quality["rows"]
    path = bar_plot(out_dir / "quality_val_loss.png", [r["variant"] for r in rows],
                    {"validation loss": [r["val_loss"] for r in rows]},
                    title=f"Validation loss, same budget ({quality['steps']} steps)", ylabel="nats/token")
    return [Figure(path=rel(path), caption="MHA, GQA and MQA decoders of one size trained from scratch alike.")]
