"""The PEFT lab's figures: trainable parameters vs quality per method, the LoRA rank sweep, memory by part."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from trainlab.report.plots import bar_plot, line_plot
from trainlab.results import Figure

MiB = 2**20


def params_vs_quality(path: Path, rows: Sequence[dict[str, Any]]) -> Path:
    """One point per method: trainable parameters (log x) against the held-out loss."""
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    for i, r in enumerate(rows):
        if r["status"] != "ok" or not math.isfinite(r["heldout_loss"]):
            continue
        ax.scatter([r["trainable"]], [r["heldout_loss"]], color=f"C{i % 10}", s=36)
        ax.annotate(r["label"], (r["trainable"], r["heldout_loss"]), fontsize=7, xytext=(4, 3),
                    textcoords="offset points")
    ax.set_xscale("log")
    ax.set_xlabel("trainable parameters")
    ax.set_ylabel("held-out loss of the correct answers (nats/token)")
    ax.set_title("Trainable parameters vs quality, same steps")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def peft_figures(out_dir: Path, rel: Callable[[Path], str], rows: Sequence[dict[str, Any]],
                 sweep: Sequence[dict[str, Any]]) -> list[Figure]:
    """The lab's figures from its rows (`MethodRow.to_dict`) and the rank sweep's rows."""
    figs = []
    p = params_vs_quality(out_dir / "params_vs_quality.png", rows)
    figs.append(Figure(path=rel(p), caption="Each method after the same SFT steps from the base model: trainable "
                       "parameters (log scale) against the held-out loss of the correct answers (lower is better)."))
    if sweep:
        pts = sorted(sweep, key=lambda r: r["r"])
        xs = [r["r"] for r in pts]
        p = line_plot(out_dir / "lora_rank_sweep.png",
                      {"held-out loss": (xs, [r["heldout_loss"] for r in pts]),
                       "final training loss": (xs, [r["final_loss"] for r in pts])},
                      title="LoRA rank sweep (all linear layers, α = 2r)", xlabel="rank r", ylabel="nats/token",
                      logx=True)
        figs.append(Figure(path=rel(p), caption="Quality over LoRA rank at the same steps; trainable parameters "
                           "grow linearly with r (the table beside it)."))
    ok = [r for r in rows if r["status"] == "ok" and r["method"] in ("none", "lora", "qlora", "dora")]
    if ok:
        parts = ("weights", "gradients", "optimizer", "activations")

        def part(r: dict[str, Any], k: str) -> float:
            return (r["weights_bytes"] if k == "weights" else r["memory"].get(k, 0)) / MiB

        p = bar_plot(out_dir / "memory_by_part.png", list(parts), {r["label"]: [part(r, k) for k in parts] for r in ok},
                     title="Training memory of one step by part (exact accounting)", ylabel="MiB")
        figs.append(Figure(path=rel(p), caption="Weights (parameters and buffers: QLoRA's base is NF4), gradients and "
                           "AdamW states of the trainable parameters, activations saved for backward."))
    return figs


__all__ = ["params_vs_quality", "peft_figures"]
