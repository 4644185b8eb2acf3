"""Lab 1.4, part 1: fp32 vs fp16 (dynamic loss scaling) vs bf16.

The same model, data and samples in each precision: loss curves, final validation loss, tokens/s,
peak memory; why 16-bit is (not) faster here, from bf16/fp16 vs fp32 matmul times at two sizes
(`trainlab.labs.lab14.hardware`); the loss-scale trace under injected overflow beside
``torch.amp.GradScaler`` on the same run; how much of a real gradient fp16 flushes to zero and
how loss scaling (Micikevicius et al. 2018, "Mixed Precision Training", §3.2) rescues it.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from trainlab.labs.common import Part
from trainlab.labs.lab14.hardware import native_support
from trainlab.labs.lab14.lab import (
    SOURCE_002,
    SOURCE_003,
    LabEnv,
    _measure,
    _mib,
    _pct,
    _train,
    _verdict_range,
)
from trainlab.model.decoder import Decoder
from trainlab.precision.formats import get_format, underflow_report
from trainlab.precision.scaler import DynamicLossScaler
from trainlab.report.plots import line_plot
from trainlab.report.plots_lab14 import scale_trace_plot, underflow_plot
from trainlab.results import Claim, Table, Verdict
from trainlab.train.amp import TorchLossScaler
from trainlab.train.loop import accumulate_gradients
from trainlab.train.objectives import Batch, CausalLMObjective, ObjectiveOutput

SEED_SMALLEST = 6e-5  # seed 003: "FP16's smallest positive number is about 6e-5"


def underflow_verdict(min_positive: float, flushed_unscaled: float, flushed_scaled: float) -> Verdict:
    """The fp16 underflow claim has two halves, each checked against numbers:

    1. "the smallest positive number is about 6e-5": true when fp16's smallest positive value
       (``min_positive``, the smallest subnormal) is within 3x of 6e-5;
    2. "smaller gradients are truncated to zero and loss scaling prevents it": true when some
       gradient is flushed to zero unscaled (``flushed_unscaled`` > 0) and less is after scaling.

    Both: consistent; one: partly; neither: not reproduced.
    """
    smallest = SEED_SMALLEST / 3 <= min_positive <= SEED_SMALLEST * 3
    rescued = flushed_unscaled > 0 and flushed_scaled < flushed_unscaled
    return "consistent" if smallest and rescued else "partly" if smallest or rescued else "not reproduced"


class InjectOverflow:
    """Wraps an objective: on chosen optimizer steps the loss becomes inf (or NaN), so every
    gradient of that step is non-finite, as after a real fp16 overflow."""

    def __init__(self, inner: CausalLMObjective, steps: dict[int, str], grad_accum: int = 1) -> None:
        self.inner = inner
        self.steps = steps
        self.grad_accum = grad_accum
        self.calls = 0

    def count(self, batch: Batch) -> int:
        return self.inner.count(batch)

    def __call__(self, model: nn.Module, batch: Batch) -> ObjectiveOutput:
        self.calls += 1
        step = (self.calls - 1) // self.grad_accum + 1
        out = self.inner(model, batch)
        kind = self.steps.get(step)
        if kind is not None:
            out.loss_sum = out.loss_sum * float("inf" if kind == "inf" else "nan")
        return out


def _gradient_magnitudes(model: Decoder, batch: Batch, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(parameter gradients, activation gradients at every block output), flattened, fp32.

    The loss is the step's mean over supervised tokens, as the training loop backpropagates it.
    """
    acts: list[torch.Tensor] = []

    def hook(_mod: nn.Module, _inp: Any, out: torch.Tensor) -> None:
        out.register_hook(lambda g: acts.append(g.detach().float().reshape(-1).cpu()))

    handles = [blk.register_forward_hook(hook) for blk in model.layers]
    try:
        model.to(device).train()
        model.zero_grad(set_to_none=True)
        accumulate_gradients(model, CausalLMObjective(token_accuracy=False), [batch], device=device)
    finally:
        for h in handles:
            h.remove()
    params = torch.cat([p.grad.detach().float().reshape(-1).cpu() for p in model.parameters() if p.grad is not None])
    model.zero_grad(set_to_none=True)
    return params, torch.cat(acts)


def part_precision(lab: LabEnv) -> Part:
    s = lab.s
    part = Part("precision", "1. Precision: fp32 vs fp16 (loss scaling) vs bf16")
    runs: dict[str, dict[str, Any]] = {}
    curves: dict[str, tuple[list[float], list[float]]] = {}
    models: dict[str, Decoder] = {}
    for prec in ("fp32", "fp16", "bf16"):
        tcfg = lab.train_config(max_steps=s.prec_steps, batch_size=s.prec_batch, precision=prec)
        res, model, rec = _train(lab, f"precision_{prec}", s.prec_model, tcfg, seq=s.prec_seq)
        models[prec] = model
        mem = _measure(lab, s.prec_model, lab.batches(1, s.prec_batch, seq=s.prec_seq), precision=prec)
        final_val = res.eval_history[-1]["val_loss"] if res.eval_history else float("nan")
        runs[prec] = {"final_train_loss": res.final_loss, "final_val_loss": final_val,
                      "tokens_per_s": rec.tokens_per_s(), "train_time_s": res.train_time_s, "peak_bytes": mem.peak,
                      "activation_bytes": mem.activations, "skipped_steps": res.skipped_steps,
                      "tokens": res.tokens, "steps": res.steps}
        pts = [(r["step"], r["loss"]) for r in rec.steps if not r["skipped"] and math.isfinite(r["loss"])]
        curves[prec] = ([p[0] for p in pts], [p[1] for p in pts])
    base = runs["fp32"]
    for r in runs.values():
        r["speedup"] = r["tokens_per_s"] / base["tokens_per_s"] if base["tokens_per_s"] else float("nan")
        r["memory_saving"] = 1 - r["peak_bytes"] / base["peak_bytes"]
        r["activation_saving"] = 1 - r["activation_bytes"] / base["activation_bytes"]
    p = line_plot(lab.out_dir / "precision_loss.png", curves, title="Training loss: same model, data and samples",
                  xlabel="optimizer step", ylabel="loss (nats/token)")
    part.figures.append(lab.figure(p, "Training loss per step in fp32, fp16 (dynamic loss scaling) and bf16."))
    part.tables.append(Table(
        title="1. Precision: same model, data and number of samples",
        columns=["precision", "final train loss", "final val loss", "tokens/s", "speed vs fp32", "peak (MiB)",
                 "memory vs fp32", "activations (MiB)", "skipped steps"],
        rows=[[k, r["final_train_loss"], r["final_val_loss"], round(r["tokens_per_s"]), f"{r['speedup']:.2f}x",
               _mib(r["peak_bytes"]), _pct(-r["memory_saving"]), _mib(r["activation_bytes"]), r["skipped_steps"]]
              for k, r in runs.items()],
        note=f"{s.prec_steps} steps of {s.prec_batch} x {s.prec_seq} tokens, model {s.prec_model}; tokens/s over "
             "steps 2..N (step 1 carries one-time costs); peak from exact accounting of a steady-state step; "
             "parameters, gradients and AdamW states stay fp32 in every mode."))

    # The loss-scale trace with injected overflow, ours beside torch's GradScaler on the same run.
    traces: dict[str, list[dict[str, Any]]] = {}
    finals: dict[str, dict[str, torch.Tensor]] = {}
    init_scale = 2.0**16
    for name, make in (("trainlab DynamicLossScaler",
                        lambda: DynamicLossScaler(init_scale, growth_interval=s.trace_growth_interval)),
                       ("torch.amp.GradScaler",
                        lambda: TorchLossScaler(lab.device, init_scale, growth_interval=s.trace_growth_interval))):
        tcfg = lab.train_config(max_steps=s.trace_steps, batch_size=s.trace_batch, precision="fp16")
        obj = InjectOverflow(CausalLMObjective(), s.trace_inject)
        res, model, rec = _train(lab, "scale_trace_" + name.split()[0].replace(".", "_"), s.trace_model, tcfg,
                                 seq=s.prec_seq, scaler=make(), objective=obj)
        traces[name] = rec.steps
        finals[name] = {k: v.detach().clone() for k, v in model.state_dict().items()}
    ours, ref = traces["trainlab DynamicLossScaler"], traces["torch.amp.GradScaler"]
    same_scale = [a["loss_scale"] for a in ours] == [b["loss_scale"] for b in ref]
    same_skips = [a["skipped"] for a in ours] == [b["skipped"] for b in ref]
    weight_diff = max(float((finals["trainlab DynamicLossScaler"][k].float()
                             - finals["torch.amp.GradScaler"][k].float()).abs().max())
                      for k in finals["torch.amp.GradScaler"])
    skipped = [r["step"] for r in ours if r["skipped"]]
    injected = sorted(s.trace_inject)
    scale_trace_plot(lab.out_dir / "loss_scale_trace.png", ours, ref, injected)
    part.figures.append(lab.figure(lab.out_dir / "loss_scale_trace.png",
                                   f"Loss scale after each fp16 step (growth every {s.trace_growth_interval} clean "
                                   f"steps); overflow injected at steps {injected}; skipped steps marked."))
    part.tables.append(Table(
        title="1. Loss-scale trace with injected overflow (fp16)",
        columns=["step", "injected", "skipped (ours)", "scale after (ours)", "skipped (GradScaler)",
                 "scale after (GradScaler)"],
        rows=[[a["step"], s.trace_inject.get(a["step"], ""), a["skipped"], a["loss_scale"], b["skipped"],
               b["loss_scale"]] for a, b in zip(ours, ref, strict=True)],
        note=f"identical scale trace: {same_scale}; identical skip decisions: {same_skips}; max weight difference "
             f"after {s.trace_steps} steps: {weight_diff:.3g}"))

    # How much of a real gradient fp16 flushes to zero, and how loss scaling rescues it.
    batch = lab.batches(1, s.prec_batch, offset=7, seq=s.prec_seq)[0]
    pgrad, agrad = _gradient_magnitudes(models["fp32"], batch, lab.device)
    scales = [2.0**k for k in range(0, 33, 4)]
    rep_p = underflow_report(pgrad, fmt="fp16", scales=scales)
    rep_a = underflow_report(agrad, fmt="fp16", scales=scales)
    fp16 = get_format("fp16")
    below_normal = float((pgrad.abs() < fp16.min_normal).float()[pgrad != 0].mean())
    underflow_plot(lab.out_dir / "fp16_underflow.png", pgrad, agrad, rep_p, rep_a)
    part.figures.append(lab.figure(lab.out_dir / "fp16_underflow.png",
                                   "Left: log2 |gradient| of the trained fp32 model with fp16's limits. Right: share "
                                   "of nonzero entries flushed to zero, left subnormal (fewer significant bits) or "
                                   "overflowing when cast to fp16 after loss scaling by 2^k."))
    part.tables.append(Table(
        title="1. A real gradient cast to fp16 after loss scaling by S",
        columns=["log2 S", "params: flushed to 0", "params: subnormal", "params: overflow",
                 "activations: flushed to 0", "activations: subnormal", "activations: overflow"],
        rows=[[int(a["log2_scale"]), f"{a['flushed_to_zero']:.2%}", f"{a['subnormal']:.2%}", f"{a['overflow']:.2%}",
               f"{b['flushed_to_zero']:.2%}", f"{b['subnormal']:.2%}", f"{b['overflow']:.2%}"]
              for a, b in zip(rep_p, rep_a, strict=True)],
        note=f"{rep_p[0]['n']:,} parameter-gradient and {rep_a[0]['n']:,} activation-gradient entries (block outputs) "
             "of the fp32 model after its run; the loss is the mean over supervised tokens, as the loop uses it."))

    # Why 16-bit is (not) faster here: matmul speeds by precision, measured on this device.
    speeds = lab.matmul_speeds()
    sizes = speeds["sizes"]
    part.tables.append(Table(
        title="1. Square matmul time by precision on this device",
        columns=["n", *(f"{d} (µs)" for d in ("fp32", "bf16", "fp16")), "bf16 vs fp32", "fp16 vs fp32"],
        rows=[[n, *(round(speeds["seconds"][d][n] * 1e6, 2) for d in ("fp32", "bf16", "fp16")),
               f"{speeds['speedup']['bf16'][n]:.2f}x", f"{speeds['speedup']['fp16'][n]:.2f}x"] for n in sizes],
        note=f"median time of one n x n @ n x n matmul (torch.mm, inputs already in the dtype); > 1x is faster "
             f"than fp32. The lab's precision runs use width-{s.prec_model[0]} models. {native_support(lab.env)}."))
    why = lab.why_precision(s.prec_model[0])
    scaled = next((i for i, r in enumerate(rep_p) if int(r["log2_scale"]) == 16), len(rep_p) - 1)
    bf, f16 = runs["bf16"], runs["fp16"]
    mem_note = (f"trainlab keeps fp32 weights, gradients and AdamW states (16 B/param) in every precision; only the "
                f"activations shrink (bf16: {bf['activation_saving']:.0%} smaller, autocast keeping an fp32 residual "
                "stream and adding 16-bit weight copies), so the peak falls by the activations' share of it")
    part.claims += [
        Claim(claim="Mixed precision trains 2-3x faster than fp32 (FP16 2.2x, BF16 2.1x)", source=SOURCE_002,
              measured=f"bf16 {bf['speedup']:.2f}x, fp16 {f16['speedup']:.2f}x the fp32 tokens/s "
                       f"({base['tokens_per_s']:,.0f} tokens/s)",
              verdict=_verdict_range(max(bf["speedup"], f16["speedup"]), 1.8, 3.5,
                                     direction_ok=max(bf["speedup"], f16["speedup"]) > 1.1),
              why=why),
        Claim(claim="Mixed precision uses ~50% less memory (FP32 ~8 GB vs FP16/BF16 ~4.5 GB)", source=SOURCE_002,
              measured=f"peak {_mib(base['peak_bytes'])} MiB fp32 vs {_mib(bf['peak_bytes'])} MiB bf16 "
                       f"({bf['memory_saving']:.0%} less), {_mib(f16['peak_bytes'])} MiB fp16 "
                       f"({f16['memory_saving']:.0%} less)",
              verdict=_verdict_range(bf["memory_saving"], 0.4, 0.6, direction_ok=bf["memory_saving"] > 0.05),
              why=mem_note),
        Claim(claim="Dynamic loss scaling skips steps whose gradients overflow and adjusts the scale "
                    "(x0.5 on overflow, x2 after a clean interval), as torch.amp.GradScaler does",
              source=SOURCE_003,
              measured=f"overflow injected at steps {injected}; our scaler skipped {skipped}; scale trace and "
                       f"skips identical to GradScaler: {same_scale and same_skips}; final weights differ by "
                       f"{weight_diff:.3g}",
              verdict=("consistent" if same_scale and same_skips and set(injected) <= set(skipped)
                       else "not reproduced"),
              why="same fp16 run twice, once per scaler, on this machine"),
        Claim(claim="FP16's smallest positive number is about 6e-5; smaller gradients are truncated to zero, "
                    "and loss scaling prevents it",
              source=SOURCE_003,
              measured=f"6.1e-5 is fp16's smallest *normal*; subnormals reach {fp16.min_subnormal:.3g}. "
                       f"{below_normal:.1%} of this gradient lies below 6.1e-5, but only "
                       f"{rep_p[0]['flushed_to_zero']:.2%} of parameter and {rep_a[0]['flushed_to_zero']:.2%} of "
                       f"activation gradients flush to zero at S=1; at S=2^{int(rep_p[scaled]['log2_scale'])} "
                       f"{rep_p[scaled]['flushed_to_zero']:.2%} / {rep_a[scaled]['flushed_to_zero']:.2%}",
              verdict=underflow_verdict(fp16.min_subnormal, rep_p[0]["flushed_to_zero"] + rep_a[0]["flushed_to_zero"],
                                        rep_p[scaled]["flushed_to_zero"] + rep_a[scaled]["flushed_to_zero"]),
              why="format facts from the bit layout; gradient from this lab's fp32 run. Verdict: the smallest "
                  "positive value (within 3x of 6e-5?) and whether scaling lowers the share flushed to zero"),
    ]
    part.summary.append(
        f"Precision ({s.prec_steps} steps of {s.prec_batch}x{s.prec_seq} tokens, model width {s.prec_model[0]}, "
        f"{s.prec_model[1]} layers): final validation loss fp32 {base['final_val_loss']:.3f}, fp16 "
        f"{f16['final_val_loss']:.3f}, bf16 {bf['final_val_loss']:.3f}; tokens/s {base['tokens_per_s']:,.0f} / "
        f"{f16['tokens_per_s']:,.0f} / {bf['tokens_per_s']:,.0f}; peak memory {_mib(base['peak_bytes'])} / "
        f"{_mib(f16['peak_bytes'])} / {_mib(bf['peak_bytes'])} MiB. {why}.")
    trace = {"ours": ours, "grad_scaler": ref, "same_scale": same_scale, "same_skips": same_skips,
             "weight_diff": weight_diff, "injected": s.trace_inject}
    part.data = {"runs": runs, "curves": curves, "scale_trace": trace, "matmul_speeds": speeds, "why": why,
                 "underflow": {"params": rep_p, "activations": rep_a, "below_min_normal": below_normal}}
    return part
