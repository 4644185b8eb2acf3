"""The PEFT lab: nine parameter-efficient methods and a full fine-tune on one table (seed 001).

From the embedded base model, on the embedded SFT task data, with the same steps and batch: full
fine-tuning, LoRA, QLoRA (NF4 base, double quantization), AdaLoRA, bottleneck adapters (Houlsby),
prefix tuning, prompt tuning, P-tuning, IA3 and BitFit, with DoRA as an extra row (`trainlab.labs.peft.runs`
says what is measured and how). Then a LoRA rank sweep, QLoRA's memory against LoRA's, and the claims of
seed 001 and of the papers the issue names (LoRA, QLoRA, PEFT's own method comparison), each with a verdict
computed from the numbers measured here. Parts are functions the notebooks ``peft_01..04`` call one by one.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from trainlab.labs import LabContext
from trainlab.labs.common import MiB, Part, merge_parts, mib, timed
from trainlab.labs.peft.runs import MethodRow, MethodSpec, Settings, methods, run_method, settings, shared_data
from trainlab.results import Claim, LabResult, Table

TITLE = "PEFT: nine methods and a full fine-tune, same data and steps"

# GPT-3 175B (Brown et al., 2020, table 2.1) and the LoRA paper's setting (Hu et al., 2021, §4.2, table 4)
GPT3 = {"params": 175e9, "layers": 96, "d_model": 12288, "r": 4}


def _num(x: float, digits: int = 4) -> float | None:
    return round(x, digits) if isinstance(x, float) and math.isfinite(x) else None


def method_table(rows: list[MethodRow]) -> Table:
    """The table's rows; shares are of the base model's parameter count (a QLoRA base is NF4 buffers)."""
    base = max((r.total for r in rows if r.method == "none"), default=0) or max((r.total for r in rows), default=0)
    return Table(
        title="Every method after the same SFT steps from the base model",
        columns=["method", "status", "trainable params", "trainable %", "weights held (MiB)",
                 "training memory (MiB)", "step time (ms)", "oracle accuracy", "held-out loss", "adapter file (KiB)",
                 "lr", "note"],
        rows=[[r.label, r.status, r.trainable, _num(100 * r.trainable / base, 3) if r.total and base else None,
               mib(r.weights_bytes), mib(r.training_bytes), _num(1e3 * r.step_time_s, 2), _num(r.accuracy),
               _num(r.heldout_loss), round(r.file_bytes / 1024, 1), r.lr, r.note] for r in rows],
        note="Training memory: exact accounting of one step (weights incl. buffers, gradients and AdamW states of "
             "the trainable parameters, activations saved for backward). Held-out loss: mean next-token loss of the "
             "correct answers of the held-out prompts. Adapter file: adapter_model.safetensors (full fine-tune: "
             "the model's safetensors). A refused row says why.")


def part_methods(ctx: LabContext, base_dir: Path, s: Settings, data: Any, heldout: Any) -> tuple[Part, list[MethodRow]]:
    part = Part("methods", "Nine PEFT methods and a full fine-tune")
    rows = []
    with timed(log := {}, "all"):
        for spec in methods(s.virtual):
            rows.append(run_method(spec, base_dir=base_dir, out_dir=ctx.out_dir / "runs", s=s, seed=ctx.seed,
                                   device=ctx.device, extra=ctx.overrides, data=data, heldout=heldout))
    part.wall_time_s = log["all"]
    part.tables.append(method_table(rows))
    ok = [r for r in rows if r.status == "ok"]
    full = next((r for r in ok if r.method == "none"), None)
    best = min((r for r in ok if r.method != "none"), key=lambda r: r.heldout_loss, default=None)
    part.summary.append(
        f"{len(ok)} of {len(rows)} runs trained ({s.steps} steps, batch {s.batch}); refused: "
        + (", ".join(f"{r.label} ({r.note.split(';')[0]})" for r in rows if r.status != "ok") or "none") + ".")
    if full is not None and best is not None:
        part.summary.append(f"Full fine-tune: {full.trainable:,} trainable parameters, held-out loss "
                            f"{full.heldout_loss:.3f}; best PEFT method by held-out loss: {best.label} "
                            f"({best.trainable:,} parameters, {best.heldout_loss:.3f}).")
    part.data = {"rows": [r.to_dict() for r in rows], "settings": s.__dict__ | {"ranks": list(s.ranks)}}
    return part, rows


def part_rank_sweep(ctx: LabContext, base_dir: Path, s: Settings, data: Any, heldout: Any,
                    rows: list[MethodRow]) -> Part:
    part = Part("rank_sweep", "LoRA rank sweep")
    sweep: list[dict[str, Any]] = []
    with timed(log := {}, "all"):
        for r in sorted(set(s.ranks)):
            spec = MethodSpec(f"LoRA r{r}", "lora", 1e-2, (f"peft.r={r}", f"peft.alpha={2 * r}"))
            row = run_method(spec, base_dir=base_dir, out_dir=ctx.out_dir / "sweep", s=s, seed=ctx.seed,
                             device=ctx.device, extra=ctx.overrides, data=data, heldout=heldout)
            sweep.append(row.to_dict() | {"r": r})
    table_row = next((r for r in rows if r.method == "lora" and r.status == "ok"), None)
    if table_row is not None:
        sweep.append(table_row.to_dict() | {"r": 8})
    sweep.sort(key=lambda d: d["r"])
    part.wall_time_s = log["all"]
    part.tables.append(Table(
        title="LoRA rank sweep (all linear layers, α = 2r, same steps)",
        columns=["r", "trainable params", "adapter file (KiB)", "held-out loss", "final training loss",
                 "oracle accuracy"],
        rows=[[d["r"], d["trainable"], round(d["file_bytes"] / 1024, 1), _num(d["heldout_loss"]),
               _num(d["final_loss"]), _num(d["accuracy"])] for d in sweep if d["status"] == "ok"]))
    part.data = {"sweep": sweep}
    return part


def nf4_bits(base_dir: Path) -> dict[str, float]:
    """Bits per parameter of the base model's linear weights in NF4, with and without double quantization
    (`trainlab.peft.nf4`, the storage QLoRA trains on), over a multiple of 64·256 of them (no padding)."""
    from trainlab.peft.nf4 import quantize_nf4
    from trainlab.recipes.align_model import load_policy

    model, _ = load_policy(base_dir, "cpu")
    with torch.no_grad():
        flat = torch.cat([m.weight.detach().flatten() for m in model.modules() if isinstance(m, torch.nn.Linear)])
        whole = 64 * 256  # a multiple of both block sizes: no padding in the count
        w = flat[: len(flat) // whole * whole] if len(flat) >= whole else flat
        w = w.view(-1, 64)
        dq, plain = quantize_nf4(w, double_quant=True), quantize_nf4(w, double_quant=False)
    return {"with_double_quant": dq.bits_per_param(), "without": plain.bits_per_param(), "numel": float(w.numel())}


def part_qlora(rows: list[MethodRow], bits: dict[str, float]) -> Part:
    part = Part("qlora", "QLoRA's memory vs LoRA's")
    pick = [r for r in rows if r.status == "ok" and r.method in ("none", "lora", "qlora")]
    part.tables.append(Table(
        title="Weights held and training memory: full fine-tune, LoRA, QLoRA",
        columns=["run", "weights held (MiB)", "gradients (MiB)", "optimizer (MiB)", "activations (MiB)",
                 "training memory (MiB)", "process peak seen by the meter (MiB)"],
        rows=[[r.label, mib(r.weights_bytes), mib(r.memory.get("gradients", 0)), mib(r.memory.get("optimizer", 0)),
               mib(r.memory.get("activations", 0)), mib(r.training_bytes), mib(r.meter_peak_bytes)] for r in pick],
        note="QLoRA keeps every linear weight but the LM head in NF4 buffers; embeddings and norms stay fp32. "
             "The process peak is the resident-set growth while training (noisy on a CPU)."))
    part.tables.append(Table(
        title="NF4 storage of the base model's linear weights (bits per parameter)",
        columns=["format", "bits / parameter"],
        rows=[["fp32", 32.0], ["bf16", 16.0], ["NF4, absmax fp32 per 64", round(bits["without"], 4)],
              ["NF4 + double quantization (absmax 8-bit per 256)", round(bits["with_double_quant"], 4)]]))
    lora = next((r for r in pick if r.method == "lora"), None)
    qlora = next((r for r in pick if r.method == "qlora"), None)
    if lora and qlora:
        part.summary.append(f"QLoRA holds {mib(qlora.weights_bytes)} MiB of weights against LoRA's "
                            f"{mib(lora.weights_bytes)} MiB ({qlora.weights_bytes / lora.weights_bytes:.2f}x); "
                            f"training memory {mib(qlora.training_bytes)} vs {mib(lora.training_bytes)} MiB.")
    part.data = {"nf4_bits": bits}
    return part


def _quality(r: MethodRow, by_accuracy: bool) -> float:
    return r.accuracy if by_accuracy else -r.heldout_loss  # higher is better


def peft_claims(rows: list[MethodRow], bits: dict[str, float], lora_formula: int, env: str) -> list[Claim]:
    """Seed 001's and the issue's anchors, each with a verdict computed from the rows."""
    by = {r.method: r for r in rows if r.status == "ok"}
    full, lora, qlora, prompt = by.get("none"), by.get("lora"), by.get("qlora"), by.get("prompt")
    claims: list[Claim] = []
    if lora is not None:
        claims.append(Claim(
            claim="LoRA trains r(d + k) parameters per d×k matrix", source="seed 001 §3.1",
            measured=f"LoRA r8 on every linear layer: {lora.trainable:,} trainable; Σ r(d + k) over those layers: "
                     f"{lora_formula:,}",
            verdict="consistent" if lora.trainable == lora_formula else "not reproduced",
            why="counted on the live model after injection"))
        g = GPT3
        gpt3 = g["layers"] * 2 * g["r"] * 2 * g["d_model"]
        claims.append(Claim(
            claim="LoRA: 10,000x fewer trainable parameters than full fine-tuning (GPT-3 175B)",
            source="Hu et al., 2021 (LoRA)",
            measured=f"here {lora.total / lora.trainable:,.0f}x ({lora.trainable:,} of {lora.total:,}); the "
                     f"formula for GPT-3 (96 layers, d 12288, r 4 on W_q, W_v): {gpt3:,} -> {g['params'] / gpt3:,.0f}x",
            verdict="reproduced from the formula" if 5_000 <= g["params"] / gpt3 <= 20_000 else "not reproduced",
            why="the ratio grows with d: r(d + k) against d·k; a ~1M-parameter model cannot show 10,000x"))
    if full is not None and lora is not None:
        mem_ratio = full.training_bytes / max(lora.training_bytes, 1)
        claims.append(Claim(
            claim="LoRA cuts training memory about 3x (GPT-3 175B: 1.2 TB → 350 GB)", source="Hu et al., 2021 (LoRA)",
            measured=f"full fine-tune {mib(full.training_bytes)} MiB vs LoRA {mib(lora.training_bytes)} MiB: "
                     f"{mem_ratio:.2f}x",
            verdict="consistent" if mem_ratio >= 2.5 else "partly" if mem_ratio > 1 else "not reproduced",
            why=f"{env}; LoRA removes gradients and AdamW states of the frozen weights (12 of 16 bytes per "
                "parameter in fp32); at this size the activations of a batch weigh as much as the weights"))
        file_ratio = full.file_bytes / max(lora.file_bytes, 1)
        claims.append(Claim(
            claim="A LoRA checkpoint is ~10,000x smaller (350 GB → 35 MB)", source="Hu et al., 2021 (LoRA)",
            measured=f"model.safetensors {full.file_bytes / 1024:,.0f} KiB vs adapter_model.safetensors "
                     f"{lora.file_bytes / 1024:,.0f} KiB: {file_ratio:,.1f}x",
            verdict="consistent" if file_ratio >= 5_000 else "partly" if file_ratio > 1 else "not reproduced",
            why="the same ratio as the trainable parameters (all-linear r 8 here, W_q/W_v r 4 in the paper)"))
        by_acc = max(full.accuracy, lora.accuracy) > 0
        q_full, q_lora = _quality(full, by_acc), _quality(lora, by_acc)
        close = q_lora >= q_full - (0.05 if by_acc else 0.05 * abs(full.heldout_loss))
        cheaper = lora.training_bytes < full.training_bytes
        what = (f"oracle accuracy LoRA {lora.accuracy:.1%} vs full {full.accuracy:.1%}" if by_acc else
                f"held-out loss LoRA {lora.heldout_loss:.3f} vs full {full.heldout_loss:.3f} (no run answered any "
                "held-out prompt right yet)")
        claims.append(Claim(
            claim="LoRA matches full fine-tuning at less memory (Llama-3.2-3B: 0.478 vs 0.472, 20.8 vs 36.2 GiB)",
            source="HF PEFT method comparison", measured=f"{what}; memory {mib(lora.training_bytes)} vs "
                                                         f"{mib(full.training_bytes)} MiB",
            verdict="consistent" if close and cheaper else "partly" if close or cheaper else "not reproduced",
            why="same data, steps and batch; LoRA at a 5x learning rate; 'matches' = within 5 points of accuracy "
                "(or 5% of the loss)"))
        if prompt is not None:
            gap = q_lora - _quality(prompt, by_acc)  # > 0: prompt tuning is worse
            far = 0.10 if by_acc else 0.05 * abs(lora.heldout_loss)  # 10 points, or 5% of the loss
            claims.append(Claim(
                claim="Prompt tuning lags far behind LoRA (Llama-3.2-3B: 0.057 vs 0.478)",
                source="HF PEFT method comparison",
                measured=(f"oracle accuracy prompt tuning {prompt.accuracy:.1%} vs LoRA {lora.accuracy:.1%}" if by_acc
                          else f"held-out loss prompt tuning {prompt.heldout_loss:.3f} vs LoRA "
                               f"{lora.heldout_loss:.3f}"),
                verdict="consistent" if gap >= far else "partly" if gap > 0 else "not reproduced",
                why=f"{prompt.trainable:,} prompt parameters against LoRA's {lora.trainable:,}; 'far' = 10 points of "
                    "accuracy (or 5% of the loss), behind but closer is 'partly'"))
    saved = bits["without"] - bits["with_double_quant"]
    claims.append(Claim(
        claim="Double quantization saves ~0.37 bits per parameter", source="Dettmers et al., 2023 (QLoRA)",
        measured=f"NF4 {bits['without']:.3f} → {bits['with_double_quant']:.3f} bits/param: {saved:.3f} saved "
                 f"(on {int(bits['numel']):,} of the base model's linear weights)",
        verdict="consistent" if abs(saved - 0.373) < 0.02 else "not reproduced",
        why="32/64 bits of fp32 absmax per weight become 8/64 + 32/(64·256)"))
    weights_65b = 65e9 * bits["with_double_quant"] / 8
    claims.append(Claim(
        claim="QLoRA fine-tunes a 65B model on one 48 GB GPU", source="Dettmers et al., 2023 (QLoRA)",
        measured=f"65B × {bits['with_double_quant']:.3f} bits = {weights_65b / 1e9:.1f} GB of NF4 weights"
                 + (f"; here QLoRA holds {mib(qlora.weights_bytes)} MiB of weights vs LoRA's {mib(lora.weights_bytes)}"
                    if qlora is not None and lora is not None else ""),
        verdict="reproduced from the formula" if weights_65b < 48e9 else "not reproduced",
        why="from the measured storage; adapters, activations and paged optimizer states need the rest"))
    return claims


def lora_formula_count(base_dir: Path, r: int = 8) -> int:
    """Σ r(d + k) over the layers LoRA's ``all-linear`` adapts in the base model."""
    from trainlab.peft.targets import find_targets, linear_shape
    from trainlab.recipes.align_model import load_policy

    model, _ = load_policy(base_dir, "cpu")
    return sum(r * sum(linear_shape(m)) for _, m in find_targets(model, "all-linear"))


def run(ctx: LabContext) -> LabResult:
    from trainlab.recipes.base_model import embedded_base_model
    from trainlab.report.plots_peft import peft_figures

    s = settings(ctx.preset)
    base_dir = embedded_base_model(ctx.preset, quiet=True)
    # one intra-op thread (LabSpec.cpu_threads, applied by the runner): a ~1M-parameter model's threads only spin
    data, heldout = shared_data(base_dir, s, ctx.seed, ctx.device)
    p_methods, rows = part_methods(ctx, base_dir, s, data, heldout)
    p_sweep = part_rank_sweep(ctx, base_dir, s, data, heldout, rows)
    bits = nf4_bits(base_dir)
    p_qlora = part_qlora(rows, bits)
    claims = Part("claims", "Claims", claims=peft_claims(rows, bits, lora_formula_count(base_dir), ctx.env.short()))
    p_methods.figures = peft_figures(ctx.out_dir, ctx.rel, [r.to_dict() for r in rows], p_sweep.data["sweep"])
    merged = merge_parts([p_methods, p_sweep, p_qlora, claims])
    return LabResult(lab="peft", title=TITLE, preset=ctx.preset, device=ctx.device, seed=ctx.seed,
                     config={"settings": p_methods.data["settings"]}, **merged)


__all__ = [
    "TITLE",
    "MiB",
    "lora_formula_count",
    "method_table",
    "nf4_bits",
    "part_methods",
    "part_qlora",
    "part_rank_sweep",
    "peft_claims",
    "run",
]
