"""Lab 1.5: FlashAttention, from the tiled algorithm to a fast Triton kernel.

Six measurements, one module each, each a function usable on its own (the notebooks call them):

1. `exactness`: every backend against a float64 reference in fp32/fp16/bf16 (flash-attn's criterion).
2. `sweep`: time, TFLOP/s and peak memory over sequence length, crossovers, log-log memory slopes.
3. `loop_orders`: FlashAttention-1 vs -2 loop order: bytes moved, rescaling work, work items, time.
4. `long_sequences`: the decoder trained at growing lengths under a memory cap: naive attention,
   checkpointing alone, flash attention alone, both (+ bf16 where native): each factor's share.
5. `profile`: torch.profiler breakdown of one training step, naive vs flash.
6. `varlen`: packed variable-length batches vs padded ones: same outputs, tokens/s.

Presets: ``tiny`` (tests, seconds), ``quick`` (a 2-core CPU in a few minutes), ``full`` (a GPU:
lengths to 32K, bf16, the Triton kernel and flash-attn). An unknown preset is an error.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict
from typing import Any

import torch

from trainlab.attention.flash_torch import default_blocks
from trainlab.labs import LabContext
from trainlab.labs.common import pinned_threads, show, timed
from trainlab.labs.lab15.claims import lab_claims, long_sequence_claim, memory_saving_claim
from trainlab.labs.lab15.exactness import _exact_tables, exactness
from trainlab.labs.lab15.long_sequences import _train_tables, factor_shares, long_sequence_training, train_setups
from trainlab.labs.lab15.loop_orders import _order_tables, loop_orders
from trainlab.labs.lab15.presets import PRESETS, TITLE, Preset, get_preset
from trainlab.labs.lab15.profile import _profile_tables, profile_step
from trainlab.labs.lab15.sweep import _sweep_tables, crossover, loglog_slope, sweep
from trainlab.labs.lab15.varlen import _varlen_tables, packed_vs_padded
from trainlab.report.plots_lab15 import lab15_figures
from trainlab.results import LabResult, Table


def run(ctx: LabContext) -> LabResult:
    device = torch.device(ctx.device)
    preset = get_preset(ctx.preset)
    downgraded = ctx.preset == "full" and device.type != "cuda"
    if downgraded:  # 32K-token attention in a Python loop on a CPU would take hours; said in the report
        preset = PRESETS["quick"]
    walls: dict[str, float] = {}
    with default_blocks(preset.flash_block), pinned_threads(device, preset.cpu_threads):
        data = _measure_all(preset, device, ctx.seed, ctx.env.bf16_native, walls)
        data["cpu_threads"] = torch.get_num_threads() if device.type == "cpu" else None
    data["preset_note"] = "the full preset needs a CUDA GPU: the quick sizes were used" if downgraded else ""
    return build_result(ctx, data)


def _measure_all(preset: Preset, device: torch.device, seed: int, bf16_native: bool,
                 walls: dict[str, float]) -> dict[str, Any]:
    with timed(walls, "exactness"):
        exact = exactness(preset, device, seed)
    with timed(walls, "sweep"):
        sw = sweep(preset, device, seed)
    with timed(walls, "loop_orders"):
        orders = loop_orders(preset, device, seed)
    with timed(walls, "long_sequence_training"), default_blocks(preset.train_block):
        train = long_sequence_training(preset, device, seed, bf16_native=bf16_native)
    with timed(walls, "profile"), default_blocks(preset.train_block):
        prof = profile_step(preset, device, seed)
    with timed(walls, "packed_vs_padded"):
        varlen = packed_vs_padded(preset, device, seed)
    return {"preset": asdict(preset), "exactness": exact, "sweep": sw, "loop_orders": orders,
            "long_sequence_training": train, "profile": prof, "packed_vs_padded": varlen, "section_wall_s": walls}


def build_result(ctx: LabContext, data: dict[str, Any]) -> LabResult:
    """Tables, figures and claims from the measured ``data`` (separate so a notebook can re-render)."""
    device = torch.device(ctx.device)
    hw = ctx.env.short()
    sw, exact, orders = data["sweep"], data["exactness"], data["loop_orders"]
    train, varlen = data["long_sequence_training"], data["packed_vs_padded"]
    pts = sw["points"]
    figures = lab15_figures(ctx.out_dir, ctx.rel, sw, train)
    tables = [t for section in SECTIONS for t in section_tables(section, data[section])]
    claims, summary = lab_claims(device, hw, sw, exact, train, orders, varlen, data.get("cpu_threads"))
    summary.append("Section wall times (s): " + ", ".join(f"{k} {v:.1f}" for k, v in data["section_wall_s"].items()))
    if data.get("preset_note"):
        summary.insert(0, data["preset_note"].capitalize() + ".")
    return LabResult(lab="lab15", title=TITLE, preset=ctx.preset, device=ctx.device, seed=ctx.seed,
                     config={"preset": data["preset"]}, summary=summary, claims=claims, tables=tables,
                     figures=figures, data=data | {"points": len(pts)})


SECTIONS: dict[str, Callable[[dict[str, Any]], list[Table]]] = {
    "exactness": _exact_tables, "sweep": _sweep_tables, "loop_orders": _order_tables,
    "long_sequence_training": _train_tables, "profile": _profile_tables, "packed_vs_padded": _varlen_tables}


def section_tables(section: str, data: dict[str, Any]) -> list[Table]:
    """The report tables of one section's measurement (``section`` as in :func:`run`'s data keys)."""
    return SECTIONS[section](data)


__all__ = [
    "PRESETS",
    "SECTIONS",
    "Preset",
    "build_result",
    "crossover",
    "exactness",
    "factor_shares",
    "get_preset",
    "loglog_slope",
    "long_sequence_claim",
    "long_sequence_training",
    "loop_orders",
    "memory_saving_claim",
    "packed_vs_padded",
    "profile_step",
    "run",
    "section_tables",
    "show",
    "sweep",
    "train_setups",
]
