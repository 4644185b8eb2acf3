"""Lab 1.6's figures: decode tokens/s over batch, per-token latency over context, uptraining curves, quality."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from trainlab.report.plots import bar_plot, line_plot, plt
from trainlab.results import Figure

_STYLES = {"ours-static": "-", "ours-dynamic": "--", "transformers": ":"}


def _styled_plot(path: Path, points: list[dict[str, Any]], sweep: str, x: str, y: str, scale: float, *,
                 title: str, xlabel: str, ylabel: str) -> Path:
    """Colour per variant, line style per implementation (solid: ours static, dashed: ours dynamic, dotted:
    transformers), log-log axes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    variants = list(dict.fromkeys(p["variant"] for p in points if p["sweep"] == sweep))
    for i, variant in enumerate(variants):
        for impl, style in _STYLES.items():
            pts = sorted((p for p in points if p["sweep"] == sweep and p["variant"] == variant and p["impl"] == impl),
                         key=lambda p: p[x])
            if pts:
                ax.plot([p[x] for p in pts], [p[y] * scale for p in pts], linestyle=style, marker="o",
                        color=f"C{i}", label=f"{variant} {impl}", linewidth=1.6)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=len(variants))
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def decode_figures(out_dir: Path, rel: Callable[[Path], str], decode: dict[str, Any]) -> list[Figure]:
    pts = decode["points"]
    figs = []
    if any(p["sweep"] == "batch" for p in pts):
        path = _styled_plot(out_dir / "decode_tokens_per_s_vs_batch.png", pts, "batch", "batch",
                            "decode_tokens_per_s", 1.0, title="Decode tokens/s vs batch size", xlabel="batch",
                            ylabel="tokens/s (decode steps)")
        figs.append(Figure(path=rel(path), caption="Decode throughput (batch / per-token latency) of MHA, GQA and "
                           "MQA variants: ours with the static (solid) and dynamic (dashed) cache, transformers' "
                           "generate (dotted)."))
    if any(p["sweep"] == "context" for p in pts):
        path = _styled_plot(out_dir / "decode_latency_vs_context.png", pts, "context", "context", "per_token_s",
                            1e3, title="Per-token decode latency vs context", xlabel="context tokens",
                            ylabel="ms per token")
        figs.append(Figure(path=rel(path), caption="Time of one decode step at a growing context (same styles)."))
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
