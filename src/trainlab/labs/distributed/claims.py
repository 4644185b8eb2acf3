"""The distributed lab's claims: seed 001's formulas and the ZeRO paper's, each with a computed verdict."""

from __future__ import annotations

from typing import Any

from trainlab.distributed.comm import allreduce_bytes
from trainlab.memory.estimate import zero_bytes_per_gpu
from trainlab.results import Claim, Verdict

#: Equal to one process "within fp32 tolerance": relative weight difference and absolute loss difference.
EQUIV_REL = 1e-5
EQUIV_LOSS = 1e-5


def _rows(data: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {r["strategy"]: r for r in data["rows"] if not r.get("error")}


def allreduce_claim(data: dict[str, Any]) -> Claim | None:
    """Seed 001: "all-reduce sends 2(p−1) × model size" vs the measured DDP gradient all-reduce."""
    ddp = _rows(data).get("ddp")
    if ddp is None:
        return None
    p = data["world"]
    s = float(ddp["comm"]["all_reduce"]["size_bytes"]) if "all_reduce" in ddp["comm"] else 0.0
    wire = float(ddp["wire_model_bytes"])
    ring = allreduce_bytes(data["params"] * 4.0, p)
    seed = 2 * (p - 1) * data["params"] * 4.0
    near_ring = abs(wire - ring) <= 0.02 * ring
    near_seed = abs(wire - seed) <= 0.02 * seed
    verdict: Verdict = "not reproduced" if near_ring and not near_seed else ("consistent" if near_seed else "partly")
    return Claim(claim="ring all-reduce: each rank sends 2(p−1) × model size", source="seed 001",
                 measured=(f"DDP on {p} gloo processes, gradients S = {data['params'] * 4:,} B: {wire:,.0f} B left "
                           f"each rank (all-reduces of {s:,.0f} B incl. a few bookkeeping bytes); ring 2(p−1)/p·S = "
                           f"{ring:,.0f} B, seed 2(p−1)·S = {seed:,.0f} B"),
                 verdict=verdict,
                 why="each of the 2(p−1) ring steps sends one chunk of S/p: a rank sends 2(p−1)/p·S; 2(p−1)·S is "
                     "what all p ranks send together (trainlab calc comm prints both). At p = 2 the two differ 2x.")


def zero_savings_claim(data: dict[str, Any]) -> Claim:
    """Seed 001: ZeRO saves "4x, 8x, Px"; the paper's table; and the measured model states at p = 2."""
    table = [zero_bytes_per_gpu(7_500_000_000, 64, s) / 1e9 for s in range(4)]
    inf = [zero_bytes_per_gpu(1, 1, 0) / zero_bytes_per_gpu(1, 10**9, s) for s in (1, 2)]
    rows = _rows(data)
    measured_txt = []
    ok = all(abs(a - b) <= 0.05 for a, b in zip(table, (120.0, 31.4, 16.6, 1.9), strict=True))
    ok = ok and abs(inf[0] - 4) < 0.01 and abs(inf[1] - 8) < 0.01
    for name in ("zero2", "fsdp"):
        r = rows.get(name)
        ddp = rows.get("ddp")
        if r is None or ddp is None:
            continue
        states = sum(r["memory"][k] for k in ("parameters", "gradients", "optimizer_states"))
        base = sum(ddp["memory"][k] for k in ("parameters", "gradients", "optimizer_states"))
        formula = sum(r["memory_formula"].values()) if r["memory_formula"] else float("nan")
        measured_txt.append(f"{name}: model states {base / states:.2f}x smaller than DDP per rank "
                            f"(formula {sum(ddp['memory_formula'].values()) / formula:.2f}x)")
        ok = ok and (name != "fsdp" or abs(base / states - data["world"]) <= 0.05 * data["world"])
    return Claim(claim="ZeRO-1/2/3 cut model-state memory 4x, 8x and Px",
                 source="seed 001; Rajbhandari et al. 2020, Fig. 1",
                 measured=(f"7.5B on 64 GPUs: {', '.join(f'{x:.1f}' for x in table)} GB (paper 120 / 31.4 / 16.6 / "
                           f"1.9); limits {inf[0]:.2f}x and {inf[1]:.2f}x as p grows; measured on "
                           f"{data['world']} processes: " + ("; ".join(measured_txt) or "no run")),
                 verdict="consistent" if ok else "partly",
                 why="4x and 8x are limits (K = 12, p → ∞): at p = 64 ZeRO-1 gives 3.8x and ZeRO-2 7.2x. FSDP2's "
                     "zero2 also shards parameters at rest (gathered for forward and kept to the backward), so it "
                     "holds what ZeRO-3 holds between steps and is compared with that formula.")


def zero3_comm_claim(data: dict[str, Any]) -> Claim | None:
    """ZeRO paper section 7: ZeRO-3 communicates 1.5x DDP (per micro-batch without accumulation)."""
    rows = _rows(data)
    ddp, fsdp = rows.get("ddp"), rows.get("fsdp")
    if ddp is None or fsdp is None:
        return None
    k = data["spec"]["grad_accum"]
    ratio = fsdp["wire_model_bytes"] / max(ddp["wire_model_bytes"], 1) / k
    f_ratio = fsdp["comm_formula"]["sent_bytes"] / ddp["comm_formula"]["sent_bytes"] / k
    g_ratio = fsdp["comm_formula"]["gloo_sent_bytes"] / ddp["comm_formula"]["gloo_sent_bytes"] / k
    verdict: Verdict = ("consistent" if abs(ratio - f_ratio) <= 0.05 * f_ratio else
                        "partly" if abs(ratio - g_ratio) <= 0.05 * g_ratio else "not reproduced")
    return Claim(claim="ZeRO-3 (FSDP) sends 1.5x the bytes of DDP", source="Rajbhandari et al. 2020, section 7",
                 measured=(f"per micro-batch, FSDP / DDP bytes sent per rank = {ratio:.2f} (ring formula "
                           f"{f_ratio:.2f}; with gloo's reduce-scatter sent as an all-reduce {g_ratio:.2f})"),
                 verdict=verdict,
                 why="measured with /proc/self/io: gloo's reduce_scatter_tensor sends as many bytes as an all-reduce "
                     "(2(p−1)/p·S, not (p−1)/p·S), so on gloo ZeRO-3 costs 2x DDP; NCCL's ring reduce-scatter "
                     "sends (p−1)/p·S. With accumulation DDP reduces once per step, FSDP every micro-batch.")


def equivalence_claim(data: dict[str, Any]) -> Claim:
    rows = [r for r in data["rows"] if not r.get("error")]
    bad = [r["strategy"] for r in rows
           if not (r["max_weight_rel_diff"] <= EQUIV_REL and r["max_loss_diff"] <= EQUIV_LOSS)]
    worst = max((r["max_weight_rel_diff"] for r in rows), default=float("nan"))
    return Claim(claim="every strategy trains the same model as one process (same global batch)",
                 source="issue 14; torchtitan's loss-equivalence tests",
                 measured=(f"{len(rows) - len(bad)}/{len(rows)} strategies equal within {EQUIV_REL:g} (relative "
                           f"weights) and {EQUIV_LOSS:g} (loss) after {data['spec']['steps']} steps with accumulation "
                           f"{data['spec']['grad_accum']} and clipping; worst {worst:.1e}"
                           + (f"; not equal: {', '.join(bad)}" if bad else "")),
                 verdict="consistent" if rows and not bad else ("partly" if rows else "not measurable here"),
                 why="the sums are the same, in another order (reductions, sharded matmuls): fp32 rounding, which "
                     "AdamW's normalised update amplifies where a gradient is near zero (more steps, larger drift)")


def ddp_no_sync_claim(data: dict[str, Any]) -> Claim | None:
    ddp = _rows(data).get("ddp")
    if ddp is None:
        return None
    big = [r for r in ddp.get("comm_records", []) if r["kind"] == "all_reduce" and r["size_bytes"] >= 1024]
    calls = len(big)
    k = data["spec"]["grad_accum"]
    return Claim(claim="DDP skips the gradient all-reduce during accumulation micro-steps", source="seed 001",
                 measured=f"{calls} gradient all-reduce(s) in a step of {k} micro-batches",
                 verdict="consistent" if calls == 1 else "not reproduced",
                 why="no_sync on all but the last micro-batch; the gradients accumulate locally")


def plan_claim(plan: dict[str, Any]) -> Claim:
    rec = plan["recommended"]
    return Claim(claim="30-70B models need DeepSpeed ZeRO-3; 70B+ pipeline parallelism (decision tree)",
                 source="seed 001",
                 measured=(f"trainlab plan for {plan['inputs']['params'] / 1e9:.0f}B on {plan['inputs']['gpus']} x "
                           f"{plan['inputs']['gpu_mem_gb']:g} GB: {rec['name'] if rec else 'nothing fits'} "
                           f"({rec['per_gpu_gb']:.1f} GB per GPU)" if rec else "nothing fits"),
                 verdict="consistent" if plan["agrees_with_seed"] else "partly",
                 why="plan walks the options by memory per GPU (ZeRO formulas, checked against the measured rows "
                     "above) instead of by model size alone")


__all__ = ["EQUIV_LOSS", "EQUIV_REL", "allreduce_claim", "ddp_no_sync_claim", "equivalence_claim", "plan_claim",
           "zero3_comm_claim", "zero_savings_claim"]
