"""Lab 1.4, part 3: activation checkpointing (Chen et al. 2016, "Training Deep Nets with Sublinear
Memory Cost"): none / every_n / full / selective on two model sizes; activation and peak memory
saved against step time added; gradients compared with no checkpointing.
"""

from __future__ import annotations

from typing import Any

from trainlab.labs.common import Part
from trainlab.labs.lab14.lab import (
    SOURCE_000,
    SOURCE_002,
    SOURCE_003,
    LabEnv,
    _estimate,
    _grads,
    _hardware,
    _max_rel_diff,
    _measure,
    _mib,
    _pct,
    _time_step,
    _verdict_range,
)
from trainlab.report.plots_lab14 import checkpointing_plot
from trainlab.results import Claim, Table

POLICIES = ("none", "every_n", "full", "selective")


def part_checkpointing(lab: LabEnv) -> Part:
    s = lab.s
    part = Part("checkpointing", "3. Activation checkpointing")
    micro = lab.batches(1, s.ckpt_batch, offset=3)
    rows = []
    res: dict[str, dict[str, dict[str, Any]]] = {}
    for dims in s.ckpt_models:
        label = f"width {dims[0]}, {dims[1]} layers"
        res[label] = {}
        ref = _grads(lab.model(dims, "none"), micro, lab.device)
        for pol in POLICIES:
            g = _grads(lab.model(dims, pol), micro, lab.device) if pol != "none" else ref
            mem = _measure(lab, dims, micro, checkpointing=pol)
            # More repeats here: the differences are tens of percent on steps of ~0.1 s.
            t = _time_step(lab, lab.model(dims, pol), micro, repeats=2 * s.repeats - 1)
            est = _estimate(lab, dims, s.ckpt_batch, checkpointing=pol)
            res[label][pol] = {"activations": mem.activations, "peak": mem.peak, "time_s": t,
                               "grad_rel_diff": _max_rel_diff(g["grads"], ref["grads"]),
                               "loss_diff": abs(g["loss"] - ref["loss"]), "estimate_activations": est.activations}
        none = res[label]["none"]
        for pol, r in res[label].items():
            r["activation_saving"] = 1 - r["activations"] / none["activations"]
            r["peak_saving"] = 1 - r["peak"] / none["peak"]
            r["time_added"] = r["time_s"] / none["time_s"] - 1
            rows.append([label, pol, _mib(r["activations"]), f"{r['activation_saving']:.0%}", _mib(r["peak"]),
                         f"{r['peak_saving']:.0%}", round(r["time_s"] * 1e3, 1), _pct(r["time_added"]),
                         f"{r['grad_rel_diff']:.1e}"])
    part.tables.append(Table(
        title=f"3. Checkpointing policies (batch {s.ckpt_batch} x {s.seq}, fp32, AdamW)",
        columns=["model", "policy", "activations (MiB)", "activations saved", "peak (MiB)", "peak saved",
                 "step time (ms)", "time added", "grad diff vs none"],
        rows=rows, note="every_n checkpoints every 2nd block; selective keeps matmul and attention outputs and "
                        "recomputes norms, RoPE and SiLU. Activations: bytes kept from forward to backward (exact)."))
    labels = list(res)
    p = checkpointing_plot(lab.out_dir / "checkpointing_memory.png", res)
    part.figures.append(lab.figure(p, "Left: activation and peak memory saved per policy and model size. Right: "
                                      "the trade-off, peak memory saved against step time added (both relative "
                                      "to no checkpointing)."))
    full_act = [res[lab_]["full"]["activation_saving"] for lab_ in labels]
    full_peak = [res[lab_]["full"]["peak_saving"] for lab_ in labels]
    full_time = [res[lab_]["full"]["time_added"] for lab_ in labels]
    worst_grad = max(r["grad_rel_diff"] for d in res.values() for r in d.values())
    part.claims += [
        Claim(claim="Gradient checkpointing saves 30-50% of memory", source=f"{SOURCE_000}, {SOURCE_002}",
              measured="full checkpointing: activations " + ", ".join(f"{x:.0%}" for x in full_act)
                       + " smaller, peak " + ", ".join(f"{x:.0%}" for x in full_peak) + " lower (model sizes "
                       + "; ".join(labels) + ")",
              verdict=_verdict_range(max(full_peak), 0.3, 0.5, direction_ok=max(full_peak) > 0.05),
              why="activations shrink to one block input per layer; the peak keeps weights, gradients and AdamW "
                  "states (16 B/param), so the saving on the peak is the activations' share of it"),
        Claim(claim="Checkpointing costs 20-30% more training time", source=f"{SOURCE_002}, {SOURCE_003}",
              measured="full checkpointing: step time " + ", ".join(_pct(x) for x in full_time),
              verdict=_verdict_range(max(full_time), 0.15, 0.35, direction_ok=max(full_time) > 0.02),
              why=_hardware(lab.env) + "; recomputation repeats the blocks' forward (about a third of a step); the "
                                       "loss head and optimizer, which are not recomputed, weigh more in small models"),
        Claim(claim="Checkpointing does not change the result (only memory and time)", source=SOURCE_002,
              measured=f"largest relative gradient difference to no checkpointing: {worst_grad:.1e}",
              verdict="consistent" if worst_grad < 1e-5 else "not reproduced",
              why="non-reentrant torch.utils.checkpoint recomputes the same ops in the same order"),
    ]
    part.summary.append(
        "Checkpointing: full checkpointing kept " + ", ".join(f"{1 - x:.0%}" for x in full_act)
        + " of the activations and cost " + ", ".join(_pct(x) for x in full_time)
        + " step time on " + "; ".join(labels) + ". Selective checkpointing keeps the matmul outputs, so it "
        "saves less and recomputes only cheap pointwise ops.")
    part.data = {"results": res}
    return part
