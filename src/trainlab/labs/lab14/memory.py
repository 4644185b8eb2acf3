"""Lab 1.4, part 4: memory estimated vs measured.

Per-component estimates (`trainlab.memory.estimate`) beside exact measurements of the training
step (`trainlab.memory.measure`) for several configurations; the step's timeline; a batch-size
sweep under a memory cap (out-of-memory recorded, not crashed); the combined "optimized"
configuration (bf16 + checkpointing + accumulation) vs fp32; profiler tables; the CUDA memory
snapshot where there is CUDA.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

from trainlab.labs.common import Part
from trainlab.labs.lab14.lab import (
    SOURCE_000,
    SOURCE_002,
    LabEnv,
    _estimate,
    _hardware,
    _measure,
    _mib,
    _pct,
    _step_fn,
    _time_step,
    _verdict_range,
)
from trainlab.memory.measure import StepMemory
from trainlab.memory.profile import cuda_memory_snapshot, profile_step
from trainlab.optim import build_optimizer
from trainlab.report.plots import bar_plot
from trainlab.report.plots_lab14 import sweep_plot, timeline_plot
from trainlab.results import Claim, Table
from trainlab.train.objectives import CausalLMObjective


def snapshot_allocations(path: str | Path) -> int:
    """Allocations recorded in a CUDA memory snapshot (``torch.cuda.memory._dump_snapshot``'s pickle)."""
    with open(path, "rb") as fh:
        snap = pickle.load(fh)  # a file this process just wrote
    return sum(1 for trace in snap.get("device_traces", []) for e in trace if e.get("action") == "alloc")


def part_memory(lab: LabEnv) -> Part:
    s = lab.s
    part = Part("memory", "4. Memory: estimated vs measured")
    micro = lab.batches(1, s.mem_batch, offset=5)
    configs = [
        ("fp32, AdamW, none", dict(precision="fp32", optim="adamw", checkpointing="none")),
        ("bf16, AdamW, full", dict(precision="bf16", optim="adamw", checkpointing="full")),
        ("fp16, SGD, every_n", dict(precision="fp16", optim="sgd", checkpointing="every_n")),
        ("fp32, Lion, selective", dict(precision="fp32", optim="lion", checkpointing="selective")),
        ("bf16, AdamW, none, GQA", dict(precision="bf16", optim="adamw", checkpointing="none", n_kv_heads=2)),
    ]
    rows = []
    comps = ["parameters", "gradients", "optimizer_states", "activations", "logits"]
    errors: list[float] = []
    per_config: dict[str, Any] = {}
    timeline_mem: StepMemory | None = None
    for name, kw in configs:
        mem = _measure(lab, s.mem_model, micro, timeline=timeline_mem is None, **kw)  # type: ignore[arg-type]
        est = _estimate(lab, s.mem_model, s.mem_batch, **kw)  # type: ignore[arg-type]
        if timeline_mem is None:
            timeline_mem = mem
        ec, mc = est.components(), mem.components()
        per_config[name] = {"estimated": ec | {"peak": est.peak}, "measured": mc | {"peak": mem.peak},
                            "saved_for_backward": mem.saved_for_backward}
        for c in [*comps, "peak"]:
            e = est.peak if c == "peak" else ec[c]
            m = mem.peak if c == "peak" else mc[c]
            err = (m - e) / e if e else 0.0
            if c != "peak":
                errors.append(abs(err))
            rows.append([name, c.replace("_", " "), _mib(e), _mib(m), f"{err:+.1%}"])
    worst = max(errors)
    worst_peak = max(abs(v["measured"]["peak"] - v["estimated"]["peak"]) / v["estimated"]["peak"]
                     for v in per_config.values())
    method = "exact CPU accounting" if lab.device.type == "cpu" else "CUDA allocator statistics"
    part.tables.append(Table(
        title=f"4. Estimated vs measured memory (model {s.mem_model}, batch {s.mem_batch} x {s.seq})",
        columns=["configuration", "component", "estimated (MiB)", "measured (MiB)", "error"], rows=rows,
        note=f"Measured by {method} on the second (steady-state) step; estimates from trainlab.memory.estimate "
             "(our decoder's exact count). Peak: the step's high mark."))
    names = list(per_config)
    p = bar_plot(lab.out_dir / "memory_estimate_vs_measured.png", [n.replace(", ", "\n") for n in names],
                 {"estimated peak": [_mib(per_config[n]["estimated"]["peak"]) for n in names],
                  "measured peak": [_mib(per_config[n]["measured"]["peak"]) for n in names],
                  "estimated activations": [_mib(per_config[n]["estimated"]["activations"]) for n in names],
                  "measured activations": [_mib(per_config[n]["measured"]["activations"]) for n in names]},
                 title="Estimated vs measured memory", ylabel="MiB")
    part.figures.append(lab.figure(p, "Peak and activation memory, estimated and measured, per configuration."))
    assert timeline_mem is not None
    timeline_plot(lab.out_dir / "memory_timeline.png", timeline_mem, lab.device.type)
    part.figures.append(lab.figure(lab.out_dir / "memory_timeline.png",
                                   f"Live tensor memory over two training steps ({names[0]}): load, forward, "
                                   "backward, optimizer step. The optimizer's state appears in step 1's update."))
    part.tables.append(Table(
        title=f"4. Step timeline ({names[0]})", columns=["phase", "step", "live at end (MiB)", "peak (MiB)",
                                                           "time (ms)"],
        rows=[[ph.name, ph.step, _mib(ph.live_end), _mib(ph.peak), round(ph.time_s * 1e3, 1)]
              for ph in timeline_mem.phases]))

    # Batch-size sweep under a memory cap.
    cap_est = _estimate(lab, s.mem_model, s.sweep_cap_batch)
    cap = int(cap_est.peak * 1.05)
    sweep_rows = []
    sweep: list[dict[str, Any]] = []
    for b in s.sweep_batches:
        est = _estimate(lab, s.mem_model, b)
        mem = _measure(lab, s.mem_model, lab.batches(1, b, offset=9), cap=cap)
        sweep.append({"batch": b, "estimated_peak": est.peak, "measured_peak": mem.peak, "oom": mem.oom,
                      "message": mem.oom_message})
        sweep_rows.append([b, _mib(est.peak), "OOM" if mem.oom else _mib(mem.peak),
                           "no" if est.peak > cap else "yes", "no (out of memory)" if mem.oom else "yes"])
        if mem.oom and b > s.sweep_cap_batch * 4:
            break
    est_max = max((r["batch"] for r in sweep if r["estimated_peak"] <= cap), default=0)
    meas_max = max((r["batch"] for r in sweep if not r["oom"]), default=0)
    part.tables.append(Table(
        title=f"4. Batch-size sweep under a {_mib(cap)} MiB memory cap",
        columns=["batch", "estimated peak (MiB)", "measured peak (MiB)", "fits (estimate)", "ran"],
        rows=sweep_rows,
        note=f"The cap simulates a device of that size: on CPU the live-tensor tracker raises out-of-memory "
             f"when it is passed; the sweep records it and goes on. Largest batch: estimated {est_max}, "
             f"measured {meas_max}."))
    sweep_plot(lab.out_dir / "memory_batch_sweep.png", sweep, cap)
    part.figures.append(lab.figure(lab.out_dir / "memory_batch_sweep.png",
                                   "Peak memory over batch size: estimate, measurement, the cap, and the batches "
                                   "that ran out of memory."))

    # The combined "optimized" configuration vs the fp32 baseline, same samples per step.
    base_micro = lab.batches(1, s.opt_batch, offset=13)
    ob = s.opt_batch // s.opt_accum
    opt_micro = [{k: v[i * ob:(i + 1) * ob] for k, v in base_micro[0].items()} for i in range(s.opt_accum)]
    m_base = _measure(lab, s.opt_model, base_micro)
    m_opt = _measure(lab, s.opt_model, opt_micro, precision="bf16", checkpointing="full")
    # One timed step each: the claim is about memory, and the difference in time is several-fold.
    t_base = _time_step(lab, lab.model(s.opt_model), base_micro, repeats=1)
    t_opt = _time_step(lab, lab.model(s.opt_model, "full"), opt_micro, precision="bf16", repeats=1)
    e_base = _estimate(lab, s.opt_model, s.opt_batch)
    e_opt = _estimate(lab, s.opt_model, ob, precision="bf16", checkpointing="full", grad_accum=s.opt_accum)
    saving = 1 - m_opt.peak / m_base.peak
    act_saving = 1 - m_opt.activations / m_base.activations
    part.tables.append(Table(
        title=f"4. Optimized (bf16 + full checkpointing + {ob} x {s.opt_accum} accumulation) vs fp32 baseline "
              f"({s.opt_batch} x 1), model {s.opt_model}",
        columns=["configuration", "parameters", "gradients", "optimizer", "activations", "logits",
                 "peak measured (MiB)", "peak estimated (MiB)", "step time (ms)"],
        rows=[["fp32 baseline", *(_mib(v) for v in m_base.components().values()), _mib(m_base.peak),
               _mib(e_base.peak), round(t_base * 1e3, 1)],
              ["optimized", *(_mib(v) for v in m_opt.components().values()), _mib(m_opt.peak), _mib(e_opt.peak),
               round(t_opt * 1e3, 1)]],
        note=f"components in MiB, measured; same {s.opt_batch} samples per optimizer step"))
    p = bar_plot(lab.out_dir / "memory_optimized.png", ["parameters", "gradients", "optimizer", "activations",
                                                        "logits", "peak"],
                 {"fp32 baseline": [_mib(v) for v in [*m_base.components().values(), m_base.peak]],
                  "optimized": [_mib(v) for v in [*m_opt.components().values(), m_opt.peak]]},
                 title="fp32 baseline vs optimized (bf16 + checkpointing + accumulation)", ylabel="MiB")
    part.figures.append(lab.figure(p, "Memory by component, measured: fp32 baseline vs the combined optimized "
                                      "configuration."))

    # Profiler: where the time and the memory of one step go.
    prof_model = lab.model(s.mem_model)
    prof = profile_step(prof_model, CausalLMObjective(token_accuracy=False), micro,
                        build_optimizer(prof_model, lab.train_config()), device=lab.device,
                        out_dir=lab.out_dir / "profile", top=8)
    time_col = "self_device_ms" if lab.device.type == "cuda" else "self_cpu_ms"
    mem_col = "self_device_mem_bytes" if lab.device.type == "cuda" else "self_cpu_mem_bytes"
    part.tables.append(Table(
        title="4. Profiler: top operators by self time (one step)", columns=["operator", "calls", "self time (ms)"],
        rows=[[r["name"], r["calls"], round(r[time_col], 3)] for r in prof.by_time],
        note="phases: " + ", ".join(f"{k} {v['cpu_time_ms']:.1f} ms" for k, v in prof.phases.items())
             + (f"; Chrome trace: {lab.rel(Path(prof.trace_path))}" if prof.trace_path else "")))
    part.tables.append(Table(
        title="4. Profiler: top operators by memory allocated (one step)",
        columns=["operator", "calls", "self memory (MiB)"],
        rows=[[r["name"], r["calls"], _mib(r[mem_col])] for r in prof.by_memory]))
    snap_path, snap_reason = cuda_memory_snapshot(_step_fn(prof_model, micro, build_optimizer(
        prof_model, lab.train_config()), lab.device, "fp32"), lab.out_dir / "profile" / "memory_snapshot.pickle",
        device=lab.device)

    part.claims += [
        Claim(claim="Combining mixed precision, gradient accumulation and checkpointing saves 65-80% of memory",
              source=f"{SOURCE_002} (~65-70%), {SOURCE_000} (70-80%)",
              measured=f"peak {_mib(m_base.peak)} MiB -> {_mib(m_opt.peak)} MiB ({saving:.0%} less; activations "
                       f"{act_saving:.0%} less); step time {_pct(t_opt / t_base - 1)}",
              verdict=_verdict_range(saving, 0.65, 0.8, direction_ok=saving > 0.1),
              why="fp32 weights, gradients and AdamW states (16 B/param) are untouched by these techniques; "
                  "the saving is large where activations dominate the peak (long sequences, big batches), as in "
                  "this baseline. Step time: " + lab.why_precision(s.opt_model[0])),
        Claim(claim="Memory can be estimated per component before training (trainlab: within 10% of a "
                    "measurement)", source="trainlab (issue 1.4)",
              measured=f"largest component error {worst:.1%} over {len(configs)} configurations; largest peak "
                       f"error {worst_peak:.1%}; largest batch under the cap: estimated {est_max}, measured "
                       f"{meas_max}",
              verdict="consistent" if worst <= 0.10 else "not reproduced", why=f"measured by {method}"),
        Claim(claim="The CUDA memory snapshot (torch.cuda.memory._dump_snapshot) shows every allocation",
              source=SOURCE_002, measured=f"written to {lab.rel(Path(snap_path))}" if snap_path else snap_reason,
              verdict=("not measurable here" if not snap_path
                       else "consistent" if snapshot_allocations(snap_path) > 0 else "not reproduced"),
              why="the snapshot records the CUDA caching allocator" if not snap_path else _hardware(lab.env)),
    ]
    part.summary.append(
        f"Memory: per-component estimates agree with the measurement to {worst:.1%} (largest error) over "
        f"{len(configs)} configurations, the step's peak to {worst_peak:.1%}. The combined optimized configuration "
        f"needs {_mib(m_opt.peak)} MiB against {_mib(m_base.peak)} MiB for fp32 ({saving:.0%} less). Under a "
        f"{_mib(cap)} MiB cap the largest batch that runs is {meas_max} (estimated {est_max}).")
    part.data = {"configs": per_config, "worst_component_error": worst, "worst_peak_error": worst_peak,
                 "timeline_phases": [vars(ph) for ph in timeline_mem.phases],
                 "sweep": sweep, "cap_bytes": cap, "optimized": {"baseline": m_base.to_dict(),
                                                                 "optimized": m_opt.to_dict(),
                                                                 "saving": saving, "time_base_s": t_base,
                                                                 "time_opt_s": t_opt},
                 "profile": {"by_time": prof.by_time, "by_memory": prof.by_memory, "phases": prof.phases,
                             "trace": prof.trace_path},
                 "snapshot": snap_path or snap_reason}
    return part
