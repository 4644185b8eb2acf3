"""Lab 1.5, section 3: FlashAttention-1 vs -2 loop order (Dao 2023, "FlashAttention-2", §3.1):
bytes moved (counted by the loop itself), rescaling work, independent work items, time.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from trainlab.attention.calc import format_bytes
from trainlab.attention.flash_torch import FlashStats, flash_forward
from trainlab.bench import time_fn
from trainlab.labs.lab15.presets import H100_SMS, Preset, make_inputs
from trainlab.results import Table


def loop_orders(preset: Preset, device: torch.device, seed: int = 0) -> dict[str, Any]:
    """Bytes moved, rescaling work, parallel work items and time of the two forward loop orders."""
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    b, h, d, n, blk = 1, preset.sweep_heads, preset.sweep_head_dim, preset.order_seq, preset.order_block
    q, k, v, _ = make_inputs((b, h, h, n, d), dtype, device, seed)
    scale = 1 / math.sqrt(d)
    rows = []
    outs = {}
    for order in ("fa1", "fa2"):
        stats = FlashStats()
        with torch.no_grad():
            outs[order], _ = flash_forward(q, k, v, scale=scale, window=(-1, 0), block_q=blk, block_k=blk,
                                           loop_order=order, stats=stats)
            timing = time_fn(lambda order=order: flash_forward(q, k, v, scale=scale, window=(-1, 0), block_q=blk,
                                                               block_k=blk, loop_order=order),
                             device=device, warmup=preset.warmup, repeats=preset.repeats, max_time_s=preset.max_time_s)
        blocks_q = math.ceil(n / blk)
        work_items = b * h if order == "fa1" else b * h * blocks_q
        rows.append({"order": order, "outer_loop": "K/V blocks" if order == "fa1" else "Q blocks",
                     "bytes_read": stats.bytes_read, "bytes_written": stats.bytes_written,
                     "bytes_moved": stats.bytes_moved, "block_pairs": stats.block_pairs,
                     "rescale_flops": stats.rescale_flops, "parallel_work_items": work_items,
                     "h100_sm_fill": min(1.0, work_items / H100_SMS), "fwd_s": timing.median_s})
    diff = float((outs["fa1"].double() - outs["fa2"].double()).abs().max())
    return {"seq": n, "batch": b, "heads": h, "head_dim": d, "block": blk, "dtype": str(dtype).removeprefix("torch."),
            "rows": rows, "max_abs_diff_fa1_fa2": diff}


def _order_tables(orders: dict[str, Any]) -> list[Table]:
    rows = [[r["order"], r["outer_loop"], format_bytes(r["bytes_read"]), format_bytes(r["bytes_written"]),
             r["block_pairs"], f"{r['rescale_flops']:.3g}", r["parallel_work_items"], f"{r['h100_sm_fill']:.0%}",
             r["fwd_s"] * 1e3] for r in orders["rows"]]
    return [Table(title=f"3. FlashAttention-1 vs -2 loop order (forward, N={orders['seq']}, block {orders['block']}, "
                        f"{orders['dtype']})",
                  columns=["order", "outer loop", "HBM read", "HBM written", "block pairs", "rescale FLOPs",
                           "independent work items", "H100 SMs filled", "time ms (flash_torch)"],
                  rows=rows, note="Bytes are counted by the loop as it runs: FA1 reads and writes O, ℓ and m for "
                  "every block pair; FA2 keeps them in registers and writes O once. Work items: FA1's outer loop "
                  "carries state, so only batch×heads run in parallel; FA2 adds the query blocks.")]
