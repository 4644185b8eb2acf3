"""Lab 1.4's figures: the fp16 loss-scale trace, gradient underflow, checkpointing trade-offs, the
memory timeline, the batch-size sweep under a cap, and the advisor's options.

Each function takes the measured numbers (plain dicts, or a `trainlab.memory.measure.StepMemory`)
and writes one PNG; none measures anything.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from trainlab.memory.measure import StepMemory
from trainlab.precision.formats import get_format, magnitude_histogram
from trainlab.report.plots import plt

MiB = 2**20


def scale_trace_plot(path: Path, ours: list[dict[str, Any]], ref: list[dict[str, Any]], injected: list[int]) -> None:
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    ax.step([r["step"] for r in ref], [r["loss_scale"] for r in ref], where="post", linewidth=3, alpha=0.35,
            label="torch.amp.GradScaler")
    ax.step([r["step"] for r in ours], [r["loss_scale"] for r in ours], where="post", linewidth=1.4,
            label="trainlab DynamicLossScaler")
    sk = [r for r in ours if r["skipped"]]
    ax.scatter([r["step"] for r in sk], [r["loss_scale"] for r in sk], color="C3", zorder=3, label="skipped step")
    for st in injected:
        ax.axvline(st, color="C3", alpha=0.15, linewidth=6)
    ax.set_yscale("log", base=2)
    ax.set_title("fp16 loss scale with injected overflow (shaded)")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss scale S (after the step)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def underflow_plot(path: Path, pgrad: torch.Tensor, agrad: torch.Tensor, rep_p: list[dict[str, Any]],
                    rep_a: list[dict[str, Any]]) -> None:
    fp16 = get_format("fp16")
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4.2), dpi=110)
    for name, g in (("parameter gradients", pgrad), ("activation gradients", agrad)):
        edges, counts = magnitude_histogram(g)
        total = max(sum(counts), 1)
        ax1.stairs([c / total for c in counts], edges, label=name)
    for label, v, style in (("fp16 smallest subnormal", fp16.min_subnormal, ":"),
                            ("fp16 smallest normal", fp16.min_normal, "--"), ("fp16 max", fp16.max, "-.")):
        ax1.axvline(math.log2(v), color="k", linestyle=style, linewidth=1, label=label)
    ax1.set_xlabel("log2 |g|")
    ax1.set_ylabel("share of entries")
    ax1.set_title("gradient magnitudes")
    ax1.legend(fontsize=7)
    xs = [r["log2_scale"] for r in rep_p]
    ax2.plot(xs, [r["flushed_to_zero"] for r in rep_p], marker="o", label="params: flushed to 0")
    ax2.plot(xs, [r["flushed_to_zero"] for r in rep_a], marker="o", label="activations: flushed to 0")
    ax2.plot(xs, [r["subnormal"] for r in rep_p], marker="s", linestyle=":", label="params: subnormal")
    ax2.plot(xs, [r["subnormal"] for r in rep_a], marker="s", linestyle=":", label="activations: subnormal")
    ax2.plot(xs, [r["overflow"] for r in rep_p], marker="x", linestyle="--", label="params: overflow")
    ax2.plot(xs, [r["overflow"] for r in rep_a], marker="x", linestyle="--", label="activations: overflow")
    ax2.set_xlabel("log2 of the loss scale S")
    ax2.set_ylabel("share of nonzero entries")
    ax2.set_title("fp16 cast after scaling")
    ax2.grid(alpha=0.3)
    ax2.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def checkpointing_plot(path: Path, res: dict[str, dict[str, dict[str, Any]]]) -> Path:
    """Memory saved per policy and model size (``res[model][policy]``), and the memory/time trade-off."""
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4.2), dpi=110)
    labels = list(res)
    policies = list(res[labels[0]])
    n = 2 * len(labels)
    width = 0.8 / n
    i = 0
    for lab_ in labels:
        for key, name in (("activation_saving", "activations"), ("peak_saving", "peak")):
            xs = [j + (i - (n - 1) / 2) * width for j in range(len(policies))]
            ax1.bar(xs, [100 * res[lab_][pol][key] for pol in policies], width, label=f"{lab_}: {name}")
            i += 1
    ax1.set_xticks(range(len(policies)))
    ax1.set_xticklabels(policies)
    ax1.set_ylabel("% saved vs none")
    ax1.set_title("memory saved")
    ax1.grid(axis="y", alpha=0.3)
    ax1.legend(fontsize=7)
    markers = dict(zip(policies, "os^Dvx", strict=False))
    for k, lab_ in enumerate(labels):
        for pol in policies:
            r = res[lab_][pol]
            ax2.scatter(100 * r["time_added"], 100 * r["peak_saving"], marker=markers[pol], color=f"C{k}",
                        label=f"{lab_}: {pol}")
    ax2.axhspan(30, 50, color="C2", alpha=0.08, label="seed: 30-50% saved")
    ax2.axvspan(20, 30, color="C3", alpha=0.08, label="seed: +20-30% time")
    ax2.set_xlabel("step time added (%)")
    ax2.set_ylabel("peak memory saved (%)")
    ax2.set_title("trade-off")
    ax2.grid(alpha=0.3)
    ax2.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def timeline_plot(path: Path, mem: StepMemory, device_type: str) -> None:
    fig, ax = plt.subplots(figsize=(8, 4.2), dpi=110)
    xs = [t[0] for t in mem.timeline]
    ys = [t[1] / MiB for t in mem.timeline]
    ax.plot(xs, ys, linewidth=1.2, color="k")
    colors = {"load": "C7", "forward": "C0", "backward": "C1", "optimizer": "C2"}
    start = None
    current = None
    spans: list[tuple[str, int, int]] = []
    for x, _, ph in mem.timeline:
        if ph != current:
            if current is not None and start is not None:
                spans.append((current, start, x))
            current, start = ph, x
    if current is not None and start is not None and xs:
        spans.append((current, start, xs[-1]))
    seen: set[str] = set()
    for ph, a, b in spans:
        if ph in colors:
            ax.axvspan(a, b, color=colors[ph], alpha=0.18, label=ph if ph not in seen else None)
            seen.add(ph)
    ax.set_xlabel("operator index" if device_type == "cpu" else "phase boundary")
    ax.set_ylabel("live tensor memory (MiB)")
    ax.set_title("Memory over two training steps")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def sweep_plot(path: Path, sweep: list[dict[str, Any]], cap: int) -> None:
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    bs = [r["batch"] for r in sweep]
    ax.plot(bs, [r["estimated_peak"] / MiB for r in sweep], marker="o", linestyle="--", label="estimated peak")
    ok = [r for r in sweep if not r["oom"]]
    ax.plot([r["batch"] for r in ok], [r["measured_peak"] / MiB for r in ok], marker="o", label="measured peak")
    oom = [r for r in sweep if r["oom"]]
    if oom:
        ax.scatter([r["batch"] for r in oom], [cap / MiB] * len(oom), marker="x", s=80, color="C3",
                   label="out of memory", zorder=3)
    ax.axhline(cap / MiB, color="C3", linestyle=":", label="memory cap")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("batch size (sequences)")
    ax.set_ylabel("MiB")
    ax.set_title("Batch-size sweep under a memory cap")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def options_plot(path: Path, options: list[dict[str, Any]], usable_gb: float, title: str) -> Path:
    fig, ax = plt.subplots(figsize=(8, 4.2), dpi=110)
    names = [o["name"].replace(" (", "\n(").replace(", ", ",\n") for o in options]
    colors = ["C2" if o["fits"] else "C3" for o in options]
    ax.bar(range(len(options)), [o["per_gpu_gb"] for o in options], color=colors)
    ax.axhline(usable_gb, color="k", linestyle="--", linewidth=1, label="usable GPU memory (90%)")
    ax.set_xticks(range(len(options)))
    ax.set_xticklabels(names, fontsize=7)
    ax.set_yscale("log")
    ax.set_ylabel("estimated GB per GPU (log)")
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
