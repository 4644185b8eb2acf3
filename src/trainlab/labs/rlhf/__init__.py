"""The RLHF lab: SFT -> DPO, SFT -> GRPO (oracle reward), SFT -> RM -> PPO and SFT -> RM -> GRPO (seeds 001, 003).

From lab 1.7's SFT model on the embedded tasks (`stages`): DPO is lab 1.7's pure DPO stage; the RL runs
share one sampling budget (rollouts × prompts × completions per prompt). Measured per run: oracle
accuracy on lab 1.7's held-out prompts (greedy), reward curves (the reward the run optimised and, for a
learned reward, the oracle's verdict on the same samples: reward hacking is where they part), KL to the
SFT model on the run's own samples, wall and training time split into generation and update, peak memory
(process RSS above the start; the allocator's peak on CUDA) and the networks forwarded per optimizer step.
The seed claims ("DPO is 50-70% cheaper than RLHF", "2 vs 4 forward passes") get verdicts computed from
those numbers. Parts are functions the notebooks ``rlhf_01..04`` call one by one.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from trainlab.labs import LabContext
from trainlab.labs.common import Part, merge_parts, mib, timed
from trainlab.labs.rlhf.stages import Budget, budget, run_grpo_stage, run_ppo_stage, run_rm_stage, run_sft_dpo
from trainlab.results import Claim, LabResult, Table

TITLE = "RLHF and RL with verifiable rewards: PPO, GRPO and DPO from the same SFT model"
RUNS = ("sft", "dpo", "grpo", "ppo", "grpo_rm")
LABELS = {"sft": "SFT", "dpo": "DPO (pure, cached reference)", "grpo": "GRPO, oracle reward",
          "ppo": "RM -> PPO (RLHF)", "grpo_rm": "RM -> GRPO"}


def _acc(summary: dict[str, Any] | None) -> dict[str, Any]:
    return (summary or {}).get("accuracy") or {}


def _curve(rollouts: list[dict[str, Any]], key: str) -> list[float]:
    return [float(r[key]) for r in rollouts if key in r and r[key] is not None]


def _first_last(xs: list[float]) -> tuple[float, float]:
    """Means of the first and last quarter of a curve (single rollouts are noisy)."""
    if not xs:
        return math.nan, math.nan
    k = max(1, len(xs) // 4)
    return sum(xs[:k]) / k, sum(xs[-k:]) / k


def run_stages(ctx: LabContext) -> dict[str, Any]:
    """Every stage's summary (``sft``/``dpo`` are lab 1.7's, the rest trained here) and the budget."""
    b = budget(ctx.preset)
    times: dict[str, float] = {}
    with timed(times, "sft_dpo"):
        sft, dpo, _ = run_sft_dpo(ctx)
    sft_dir = sft.summary["model_dir"]
    with timed(times, "grpo"):
        grpo = run_grpo_stage(ctx, sft_dir, b, "grpo")
    with timed(times, "rm"):
        rm = run_rm_stage(ctx, sft_dir)
    with timed(times, "ppo"):
        ppo = run_ppo_stage(ctx, sft_dir, rm["model_dir"], b)
    with timed(times, "grpo_rm"):
        grpo_rm = run_grpo_stage(ctx, sft_dir, b, "grpo-rm", extra=["rl.reward=model",
                                                                   f"rl.reward_model={rm['model_dir']}"])
    return {"budget": b, "sft": sft.summary, "dpo": dpo.summary, "grpo": grpo, "rm": rm, "ppo": ppo,
            "grpo_rm": grpo_rm, "stage_wall_s": times, "_sft_model": sft.model, "_tokenizer": sft.tokenizer,
            "_records": sft.data.eval_records if sft.data is not None else None}


def part_accuracy(ctx: LabContext, st: dict[str, Any]) -> Part:
    """Oracle accuracy per task of every final model, and GRPO's win rate over SFT on the same prompts."""
    from trainlab.align.evaluate import task_completions, win_rate_from_completions
    from trainlab.recipes.align import build_alignment_data, stage_config

    part = Part("accuracy", "Oracle accuracy: SFT, DPO, GRPO, PPO and GRPO with the learned reward")
    accs = {k: _acc(st[k]) for k in RUNS}
    tasks = sorted(accs["sft"].get("per_task", {}))
    n = accs["sft"].get("n")
    part.tables.append(Table(
        title="Oracle accuracy on held-out prompts (greedy), per task",
        columns=["task", *[LABELS[k] for k in RUNS]],
        rows=[[t, *[accs[k].get("per_task", {}).get(t) for k in RUNS]] for t in tasks]
        + [["all", *[accs[k].get("overall") for k in RUNS]]],
        note=f"{n} held-out prompts (lab 1.7's), each completion judged exactly by its task's oracle."))
    records = st.get("_records")
    tokenizer = st["_tokenizer"]
    if records is None:
        records = build_alignment_data("sft", stage_config("sft", ctx.preset), tokenizer).eval_records
    sft_comp = task_completions(st["_sft_model"], tokenizer, records)
    grpo_comp = st["grpo"].get("_eval_completions")  # the recipe's final judging, on the same held-out prompts
    if grpo_comp is None or len(grpo_comp) != len(records):
        grpo_comp = task_completions(st["grpo"]["_model"], tokenizer, records)
    wr = win_rate_from_completions(records, grpo_comp, sft_comp)
    part.tables.append(Table(title="GRPO (oracle reward) against SFT, prompt by prompt",
                             columns=["wins", "losses", "ties", "n", "win rate (wins + ties/2)"],
                             rows=[[wr.wins, wr.losses, wr.ties, wr.n, wr.rate]]))
    a = {k: accs[k].get("overall", math.nan) for k in RUNS}
    part.summary.append(
        f"From the SFT model ({a['sft']:.1%} oracle accuracy): DPO {a['dpo']:.1%}, GRPO with the oracle reward "
        f"{a['grpo']:.1%} ({wr.wins} prompts won, {wr.losses} lost against SFT), PPO with the learned reward "
        f"{a['ppo']:.1%}, GRPO with the learned reward {a['grpo_rm']:.1%}.")
    verdict = "consistent" if a["grpo"] > a["sft"] and wr.wins > wr.losses else "not reproduced"
    part.claims.append(Claim(
        claim="RL with a verifiable reward (GRPO, the oracle as reward) improves on the SFT model it starts from",
        source="issue 13; DeepSeekMath (Shao et al. 2024)",
        measured=f"oracle accuracy SFT {a['sft']:.1%} -> GRPO {a['grpo']:.1%}; {wr.wins} wins, {wr.losses} "
                 f"losses, {wr.ties} ties of {wr.n}",
        verdict=verdict, why="greedy answers on held-out prompts, judged exactly; the win/loss count pairs the "
                             "same prompts"))
    part.data = {"accuracy": accs, "win_rate_grpo_vs_sft": wr.to_dict()}
    return part


def kl_curve(s: dict[str, Any]) -> list[float]:
    """KL to the SFT model per rollout: PPO's per-rollout record, else GRPO's per-step metric (k3, per token)."""
    return _curve(s.get("rollouts") or [], "kl") or _curve(s.get("history") or [], "kl")


def _rollout_row(name: str, s: dict[str, Any]) -> list[Any]:
    ro = s.get("rollouts") or []
    r0, r1 = _first_last(_curve(ro, "reward"))
    kl = kl_curve(s)
    eq = _curve(ro, "frac_reward_zero_std")
    return [LABELS[name], len(ro), r0, r1, kl[-1] if kl else None, sum(eq) / len(eq) if eq else None,
            s.get("generate_time_s"), s.get("update_time_s")]


def part_curves(ctx: LabContext, st: dict[str, Any]) -> Part:
    """Reward and KL curves of the RL runs; where the learned reward and the oracle disagree."""
    from trainlab.report.plots_rlhf import rlhf_curve_figures

    part = Part("curves", "Reward and KL to the SFT model during RL")
    grm = st["grpo_rm"]
    part.tables.append(Table(
        title="Rollouts: reward (mean of the first and last quarter), KL, groups without signal, time split",
        columns=["run", "rollouts", "reward, first quarter", "reward, last quarter", "KL to SFT, last (nats/token)",
                 "groups with equal rewards (mean share)", "generation (s)", "update (s)"],
        rows=[_rollout_row(k, st[k]) for k in ("grpo", "ppo", "grpo_rm")],
        note="Rewards are what each run optimised: the oracle's 0/1 for GRPO, the reward model's score for PPO and "
             "RM -> GRPO (other units). KL: k3 estimate per completion token on the run's samples (GRPO); PPO's "
             "own KL measure (see its summary). Equal-reward groups get zero advantage under GRPO."))
    rm_r = _first_last(_curve(grm.get("rollouts") or [], "reward"))
    or_r = _first_last(_curve(grm.get("rollouts") or [], "oracle_reward"))
    a_sft, a_grm = _acc(st["sft"]).get("overall", math.nan), _acc(grm).get("overall", math.nan)
    hacked = rm_r[1] > rm_r[0] and (or_r[1] <= or_r[0] or a_grm <= a_sft)
    part.claims.append(Claim(
        claim="A policy optimised against a learned reward model exploits it where it disagrees with the true "
              "reward (reward hacking)", source="issue 13; Gao et al. 2023 (reward model overoptimization)",
        measured=f"RM -> GRPO: learned reward {rm_r[0]:.3f} -> {rm_r[1]:.3f}, the oracle on the same samples "
                 f"{or_r[0]:.1%} -> {or_r[1]:.1%}; oracle accuracy SFT {a_sft:.1%} -> {a_grm:.1%}",
        verdict="consistent" if hacked else "not reproduced",
        why="first vs last quarter of the rollouts; the reward model is the Bradley-Terry model of this lab, "
            f"held-out pair accuracy {st['rm'].get('accuracy') or math.nan:.1%}"))
    part.figures = rlhf_curve_figures(ctx.out_dir, ctx.rel, {LABELS[k]: st[k] for k in ("grpo", "ppo", "grpo_rm")})
    part.data = {"reward_hacking": {"rm_reward": rm_r, "oracle_reward": or_r}}
    return part


def _passes(s: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in (s.get("forward_passes_per_step") or {}).items() if v}


def part_cost(ctx: LabContext, st: dict[str, Any]) -> Part:
    """Training cost of each pipeline and the networks each forwards per optimizer step; the seed's claims."""
    from trainlab.report.plots_rlhf import cost_figure

    part = Part("cost", "Cost: DPO vs RLHF vs GRPO")
    dpo, rm, ppo, grpo, grm = st["dpo"], st["rm"], st["ppo"], st["grpo"], st["grpo_rm"]
    ref = dpo.get("reference") or {}
    dpo_cost = float(dpo.get("cost_s", dpo["train_time_s"]))
    rlhf_cost = float(rm["train_time_s"]) + float(ppo["train_time_s"])
    grpo_cost = float(grpo["train_time_s"])
    grm_cost = float(rm["train_time_s"]) + float(grm["train_time_s"])

    def peak(s: dict[str, Any]) -> float:
        return mib(float((s.get("peak_memory") or {}).get("peak_bytes", math.nan)))

    dpo_networks = 1 + int(ref.get("mode") == "frozen")
    # weights, gradients and AdamW states held while training (exact sizes; activations aside): RSS above a run's
    # start also counts the allocator's pools and lazy imports, which the first run in a process pays alone
    p_bytes = float(sum(q.numel() * q.element_size() for q in grpo["_model"].parameters()))
    models = ppo.get("models") or {}
    mem = dpo.get("memory") or {}
    held = {
        "dpo": float(sum(mem.get(k, 0) for k in ("parameters", "gradients", "optimizer", "reference"))),
        "ppo": 4.0 * (models.get("policy", p_bytes) + models.get("value", 0.0)) + models.get("reference", 0.0)
        + models.get("reward_model", 0.0),
        "grpo": 4.0 * p_bytes,
        "grpo_rm": 4.0 * p_bytes + float(models.get("reward_model", p_bytes)),
    }
    ppo_networks = sorted(ppo.get("models_forwarded") or [k for k in _passes(ppo) if k != "generate"])
    b: Budget = st["budget"]
    rows = [
        ["DPO", f"{dpo['steps']} steps × {dpo['config']['train']['batch_size']} pairs", dpo_cost, peak(dpo),
         f"policy (chosen+rejected rows in one pass); reference {ref.get('mode', '?')}"
         + (" (one pass before training)" if ref.get("mode") == "cached" else ""), dpo_networks, mib(held["dpo"])],
        ["RLHF: RM + PPO", f"RM {rm['steps']} steps; PPO {len(ppo.get('rollouts') or [])} rollouts, "
         f"{ppo['steps']} updates", rlhf_cost, max(peak(rm), peak(ppo)), ", ".join(ppo_networks),
         len(ppo_networks), mib(held["ppo"])],
        ["GRPO (oracle)", f"{len(grpo['rollouts'])} rollouts, {grpo['steps']} updates", grpo_cost, peak(grpo),
         ", ".join(k for k in _passes(grpo) if k != "reference") + " (+ reference for the KL curve)",
         len([k for k in _passes(grpo) if k not in ("generate", "reference")]), mib(held["grpo"])],
        ["RM + GRPO", f"RM {rm['steps']} steps; {len(grm['rollouts'])} rollouts", grm_cost,
         max(peak(rm), peak(grm)), ", ".join(k for k in _passes(grm) if k != "reference")
         + " (+ reference for the KL curve)",
         len([k for k in _passes(grm) if k not in ("generate", "reference")]), mib(held["grpo_rm"])],
    ]
    part.tables.append(Table(
        title="Training cost per pipeline (after SFT)",
        columns=["pipeline", "what ran", "training time (s)", "peak memory (MiB, RSS above start)",
                 "networks forwarded per optimizer step", "networks (excl. sampling)",
                 "weights + grads + AdamW states held (MiB)"],
        rows=rows,
        note=f"Training time: the optimizer steps (incl. sampling for RL) plus DPO's reference pass; RL budget "
             f"{b.rollouts} rollouts × {b.prompts} prompts × {b.group} completions ({b.completions} completions, "
             f"at most {b.max_new_tokens} tokens each). GRPO's frozen reference only measures KL here (β = 0): "
             f"it is not counted as a network the method needs (nor in the held bytes). Peak memory: process RSS above "
             f"each run's start, which for the first RL run of a process also holds the allocator's pools and "
             f"lazy imports; the held bytes are exact sizes. {ctx.env.short()}."))
    cheaper = 1.0 - dpo_cost / rlhf_cost if rlhf_cost > 0 else math.nan
    if not math.isfinite(cheaper):
        verdict = "not measurable here"
    elif 0.5 <= cheaper <= 0.7:
        verdict = "consistent"
    elif cheaper > 0:
        verdict = "partly"  # cheaper, by more or less than claimed (the measured share says which)
    else:
        verdict = "not reproduced"
    part.claims.append(Claim(
        claim="DPO is 50-70% cheaper to train than RLHF", source="seed 000 (Lab-1.7)",
        measured=f"DPO {dpo_cost:.1f} s vs RLHF (reward model {rm['train_time_s']:.1f} s + PPO "
                 f"{ppo['train_time_s']:.1f} s) {rlhf_cost:.1f} s: {cheaper:.0%} cheaper; GRPO {grpo_cost:.1f} s",
        verdict=verdict,
        why="training time of each pipeline after the same SFT model on this machine; DPO is lab 1.7's stage, timed "
            "when lab 1.7 trained it in this suite run, the RL runs share one sampling budget; times on a shared "
            "CPU are noisy"))
    two_four = len(ppo_networks) == 4  # DPO: policy + reference by construction (per step, or once cached)
    part.claims.append(Claim(
        claim="DPO needs 2 forward passes per step (policy, reference) where RLHF needs 4 (policy, reference, "
              "reward, value)", source="seed 001 (3.3, complexity)",
        measured=f"DPO: the policy, the reference {ref.get('mode', '?')} "
                 f"({dpo_networks} network{'s' if dpo_networks > 1 else ''} per step); PPO forwards "
                 f"{len(ppo_networks)} networks per rollout/update ({', '.join(ppo_networks)}) besides sampling; "
                 f"GRPO: sampling + the policy only (β = 0, oracle reward)",
        verdict="consistent" if two_four else "partly",
        why="PPO's networks counted by hooks on each network's input embedding (trainlab.recipes.rlhf); DPO's "
            "from its reference mode (cached: one pass before training instead of one per step)"))
    part.figures.append(cost_figure(ctx.out_dir, ctx.rel, [r[0] for r in rows], [r[2] for r in rows],
                                    [r[3] for r in rows]))
    part.data = {"cost_s": {"dpo": dpo_cost, "rlhf": rlhf_cost, "grpo": grpo_cost, "rm_grpo": grm_cost},
                 "held_bytes": held,
                 "dpo_cheaper_than_rlhf": cheaper, "networks": {"dpo": dpo_networks, "ppo": ppo_networks}}
    return part


def _slim(s: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in s.items() if not k.startswith("_") and k not in ("history", "config", "data", "samples")}


def context(preset: str, suite_dir: str | Path, *, device: str = "cpu", seed: int = 0) -> LabContext:
    """A lab context for the notebooks: this lab's folder inside ``suite_dir`` (stages cached there)."""
    from trainlab.env import detect_env

    suite = Path(suite_dir)
    (suite / "rlhf").mkdir(parents=True, exist_ok=True)
    return LabContext(out_dir=suite / "rlhf", suite_dir=suite, preset=preset, device=device, seed=seed,
                      env=detect_env(), quiet=True)


def run(ctx: LabContext) -> LabResult:
    st = run_stages(ctx)
    with timed(log := {}, "accuracy"):
        p_acc = part_accuracy(ctx, st)
    p_acc.wall_time_s = log["accuracy"] + st["stage_wall_s"]["sft_dpo"]
    p_curves = part_curves(ctx, st)
    p_curves.wall_time_s = st["stage_wall_s"]["grpo"] + st["stage_wall_s"]["grpo_rm"]
    p_cost = part_cost(ctx, st)
    p_cost.wall_time_s = st["stage_wall_s"]["rm"] + st["stage_wall_s"]["ppo"]
    merged = merge_parts([p_acc, p_curves, p_cost])
    merged["data"]["runs"] = {k: _slim(st[k]) for k in ("sft", "dpo", "grpo", "rm", "ppo", "grpo_rm")}
    merged["data"]["budget"] = st["budget"].to_dict()
    return LabResult(lab="rlhf", title=TITLE, preset=ctx.preset, device=ctx.device, seed=ctx.seed,
                     config={"budget": st["budget"].to_dict(), "grpo": st["grpo"]["config"],
                             "ppo": st["ppo"].get("config"), "rm": st["rm"].get("config")}, **merged)


__all__ = ["LABELS", "TITLE", "context", "kl_curve", "part_accuracy", "part_cost", "part_curves", "run", "run_stages"]
