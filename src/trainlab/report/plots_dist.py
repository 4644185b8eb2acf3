"""The distributed lab's figures: memory per rank by component, and bytes sent per rank, measured vs formula."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from trainlab.report.plots import bar_plot
from trainlab.results import Figure

KiB = 1024.0


def _label(name: str) -> str:
    return name.replace("deepspeed:", "ds:")  # fits under a bar


def dist_figures(out_dir: Path, rel: Callable[[Path], str], data: dict[str, Any]) -> list[Figure]:
    """Two grouped bar charts over the strategies that ran (``data``: `measure_strategies`' document)."""
    rows = [r for r in data["rows"] if not r.get("error")]
    if not rows:
        return []
    names = ["1 proc"] + [_label(r["strategy"]) for r in rows]
    mems = [data["reference"]["memory"]] + [r["memory"] for r in rows]
    comps = ("parameters", "gradients", "optimizer_states", "activations")
    groups = {c.replace("_", " "): [m.get(c, 0) / KiB for m in mems] for c in comps}
    groups["model-state formula"] = [0.0] + [sum(r["memory_formula"].values()) / KiB for r in rows]
    figs = []
    p = bar_plot(out_dir / "memory_per_rank.png", names, groups,
                 title=f"Memory per rank by component ({data['world']} processes, measured)", ylabel="KiB")
    figs.append(Figure(path=rel(p), caption="Bytes each rank holds: parameters, gradients and optimizer states "
                       "(local storages, DTensor shards), activations (live after the first forward), and the ZeRO "
                       "formula for the three model-state components together (ds: DeepSpeed)."))
    comm = {"measured (wire)": [r["wire_model_bytes"] / KiB for r in rows],
            "ring formula": [r["comm_formula"].get("sent_bytes", 0.0) / KiB for r in rows],
            "formula, gloo reduce-scatter": [r["comm_formula"].get("gloo_sent_bytes", 0.0) / KiB for r in rows]}
    p = bar_plot(out_dir / "comm_per_rank.png", [_label(r["strategy"]) for r in rows], comm,
                 title="Bytes sent per rank in one optimizer step", ylabel="KiB")
    figs.append(Figure(path=rel(p), caption="What left each process during one step (/proc/self/io write bytes "
                       "around each collective) beside the ring formulas, and beside them with gloo's reduce-scatter "
                       "counted as the all-reduce it sends."))
    return figs


__all__ = ["dist_figures"]
