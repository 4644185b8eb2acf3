"""Lab 1.7: DPO. Base -> SFT -> DPO on the verifiable tasks, its variants and a β sweep.

Measures, on held-out task prompts judged by each task's oracle: accuracy per task of the base
model, the SFT model (trained on task data in which a share of answers are plausible but wrong,
so SFT alone stays imperfect) and the DPO model (pairs: the correct answer over a plausible wrong
one); DPO's training curves (loss, reward accuracy, margins) and held-out reward accuracy and
KL(π‖π_ref) over steps; the oracle win rate of DPO over SFT; the variants sigmoid / IPO / hinge /
robust and a β sweep; what a cached reference saves per step against a frozen copy.
"""

from __future__ import annotations

import time
from typing import Any

from trainlab.align.evaluate import generation_table, oracle_accuracy, task_completions, win_rate_from_completions
from trainlab.labs import LabContext
from trainlab.recipes.align import (
    AlignRun,
    build_alignment_data,
    load_policy,
    run_alignment,
    shared_stage,
    stage_config,
)
from trainlab.recipes.base_model import embedded_base_model
from trainlab.report.plots import bar_plot, line_plot
from trainlab.results import Claim, Figure, LabResult, Table

TITLE = "1.7 DPO: preference optimization after SFT"
VARIANTS: dict[str, list[str]] = {
    "sigmoid, no NLL": ["align.rpo_alpha=0"],
    # pure DPO at a tenth of the learning rate: on these tasks the default rate (tuned with the NLL
    # term) moves the model too far for pure DPO, a smaller one stays above SFT (lab 1.7 text)
    "sigmoid, no NLL, lr/10": ["align.rpo_alpha=0", "lr/10"],
    "ipo": ["align.loss_type=ipo"],
    "hinge": ["align.loss_type=hinge"],
    "robust": ["align.loss_type=robust", "align.label_smoothing=0.1"],
}
BETAS = (0.03, 0.3)  # besides the default β of the main run


def _fmt_pct(x: float) -> str:
    return f"{x:.1%}"


def _curve(history: list[dict[str, Any]], key: str) -> tuple[list[float], list[float]]:
    pts = [(h["step"], h[key]) for h in history if key in h]
    return [p[0] for p in pts], [p[1] for p in pts]


def run(ctx: LabContext) -> LabResult:
    base_dir = embedded_base_model(ctx.preset, quiet=True)
    cfg_sft = stage_config("sft", ctx.preset, seed=ctx.seed, device=ctx.device, overrides=ctx.overrides)
    cfg_dpo = stage_config("dpo", ctx.preset, seed=ctx.seed, device=ctx.device, overrides=ctx.overrides)
    sft = shared_stage("sft", "sft", cfg_sft, base_dir, ctx.suite_dir)
    dpo = shared_stage("dpo", "dpo", cfg_dpo, sft.summary["model_dir"], ctx.suite_dir)
    base_model, tokenizer = load_policy(base_dir, ctx.device)

    records = build_alignment_data("sft", cfg_sft, tokenizer).eval_records
    acc_base = oracle_accuracy(base_model, tokenizer, records)
    acc = {"base": acc_base.to_dict(), "SFT": sft.summary["accuracy"], "DPO (sigmoid)": dpo.summary["accuracy"]}

    # variants and β sweep, from the same SFT model with the same data and steps
    runs: dict[str, AlignRun] = {"sigmoid": dpo}
    for name, extra in VARIANTS.items():
        extra = [f"train.lr={cfg_dpo.train.lr / 10:g}" if e == "lr/10" else e for e in extra]
        cfg = stage_config("dpo", ctx.preset, seed=ctx.seed, device=ctx.device, overrides=[*ctx.overrides, *extra])
        runs[name] = run_alignment("dpo", cfg, sft.summary["model_dir"], ctx.out_dir / f"dpo-{name}", quiet=True,
                                   save=False)
        acc[f"DPO ({name})"] = runs[name].summary["accuracy"]
    beta0 = cfg_dpo.align.beta
    sweep: dict[float, AlignRun] = {beta0: dpo}
    for beta in BETAS:
        cfg = stage_config("dpo", ctx.preset, seed=ctx.seed, device=ctx.device,
                           overrides=[*ctx.overrides, f"align.beta={beta}"])
        sweep[beta] = run_alignment("dpo", cfg, sft.summary["model_dir"], ctx.out_dir / f"dpo-beta{beta}",
                                    quiet=True, save=False)
    # the same DPO step with a frozen reference model instead of cached log-probs
    steps_frozen = max(2, min(10, cfg_dpo.train.max_steps))
    cfg_frozen = stage_config("dpo", ctx.preset, seed=ctx.seed, device=ctx.device,
                              overrides=[*ctx.overrides, "align.reference=frozen", f"train.max_steps={steps_frozen}",
                                         "train.eval_every=0", "align.eval_kl=false"])
    frozen = run_alignment("dpo", cfg_frozen, sft.summary["model_dir"], ctx.out_dir / "dpo-frozen-ref", quiet=True,
                           save=False, evaluate_oracle=False)

    # win rate of DPO over SFT, and sample generations, on the same held-out prompts
    t0 = time.perf_counter()
    sft_model, _ = load_policy(sft.summary["model_dir"], ctx.device)
    comp = {"base": task_completions(base_model, tokenizer, records),
            "SFT": task_completions(sft_model, tokenizer, records),
            "DPO": task_completions(dpo.model, tokenizer, records)}
    wr = win_rate_from_completions(records, comp["DPO"], comp["SFT"])
    eval_s = time.perf_counter() - t0

    # ---- figures
    figs: list[Figure] = []
    hist = dpo.summary["history"]
    ev = dpo.summary["eval_history"]
    p = line_plot(ctx.out_dir / "dpo_loss.png",
                  {name: _curve(r.summary["history"], "loss") for name, r in runs.items()},
                  title="DPO loss by variant (train, per pair)", xlabel="optimizer step", ylabel="loss")
    figs.append(Figure(path=ctx.rel(p), caption="Training loss of DPO (sigmoid) and its variants from the same SFT "
                       "model. The losses have different scales (IPO is a squared error, hinge is linear)."))
    p = line_plot(ctx.out_dir / "dpo_rewards.png",
                  {"train reward accuracy": _curve(hist, "rewards/accuracies"),
                   "held-out reward accuracy": _curve(ev, "rewards/accuracies"),
                   "train margin (β·δ)": _curve(hist, "rewards/margins")},
                  title="DPO (sigmoid): implicit reward accuracy and margin", xlabel="optimizer step",
                  ylabel="accuracy / margin")
    figs.append(Figure(path=ctx.rel(p), caption="rewards/accuracies: share of pairs whose implicit reward "
                       "β·log(π/π_ref) ranks the correct answer above the wrong one; rewards/margins: the mean "
                       "difference."))
    p = line_plot(ctx.out_dir / "dpo_kl.png",
                  {name: _curve(r.summary["eval_history"], "kl") for name, r in runs.items()},
                  title="KL(π ‖ π_SFT) on held-out completions", xlabel="optimizer step", ylabel="nats per sequence")
    figs.append(Figure(path=ctx.rel(p), caption="Exact KL divergence of the next-token distributions, summed over "
                       "the completion tokens of held-out pairs: how far each variant moved from the SFT model."))
    tasks = list(acc_base.per_task)
    stages = ["base", "SFT", "DPO (sigmoid)"]
    p = bar_plot(ctx.out_dir / "accuracy_by_stage.png", [*tasks, "all"],
                 {s: [acc[s]["per_task"][t] for t in tasks] + [acc[s]["overall"]] for s in stages},
                 title="Oracle accuracy on held-out prompts (greedy)", ylabel="accuracy", ylim=(0, 1))
    figs.append(Figure(path=ctx.rel(p), caption="Exact-match accuracy per task at each stage."))
    betas = sorted(sweep)
    p = line_plot(ctx.out_dir / "beta_sweep.png",
                  {"oracle accuracy": (betas, [sweep[b].summary["accuracy"]["overall"] for b in betas]),
                   "held-out reward accuracy": (betas, [sweep[b].summary["final_eval"].get("rewards/accuracies",
                                                                                          float("nan"))
                                                        for b in betas])},
                  title="DPO (sigmoid): β sweep", xlabel="β", ylabel="accuracy", logx=True)
    figs.append(Figure(path=ctx.rel(p), caption="Oracle and held-out reward accuracy against β (KL in the table "
                       "below). At DPO's optimum a larger β keeps the policy closer to the reference; in a short run "
                       "with Adam and the NLL term, β also sets how hard the preference term pulls against the NLL "
                       "term, so the measured KL need not fall with β."))

    # ---- tables
    names = list(acc)
    tables = [
        Table(title="Oracle accuracy per task (held-out prompts, greedy)", columns=["task", "n", *names],
              rows=[[t, acc_base.per_task_n[t], *[acc[n]["per_task"][t] for n in names]] for t in tasks]
              + [["all", acc_base.n, *[acc[n]["overall"] for n in names]]]),
        Table(title="DPO variants from the same SFT model",
              columns=["variant", "final loss", "train reward acc", "held-out reward acc", "KL to SFT (nats/seq)",
                       "oracle accuracy", "train time (s)"],
              rows=[[name, r.summary["final_loss"], r.summary["history"][-1].get("rewards/accuracies"),
                     r.summary["final_eval"].get("rewards/accuracies"), r.summary["final_eval"].get("kl"),
                     r.summary["accuracy"]["overall"], r.summary["train_time_s"]] for name, r in runs.items()]),
        Table(title="β sweep (sigmoid)", columns=["β", "held-out reward acc", "KL to SFT (nats/seq)",
                                                  "oracle accuracy"],
              rows=[[b, sweep[b].summary["final_eval"].get("rewards/accuracies"),
                     sweep[b].summary["final_eval"].get("kl"), sweep[b].summary["accuracy"]["overall"]]
                    for b in betas]),
        Table(title="Win rate of DPO over SFT (oracle-judged, same prompts)",
              columns=["wins", "losses", "ties", "n", "win rate (wins + ties/2)", "net (wins − losses)/n"],
              rows=[[wr.wins, wr.losses, wr.ties, wr.n, wr.rate, (wr.wins - wr.losses) / wr.n]]),
    ]
    cached_step = dpo.summary["train_time_s"] / max(dpo.summary["steps"], 1)
    frozen_step = frozen.summary["train_time_s"] / max(frozen.summary["steps"], 1)
    mem_c, mem_f = dpo.summary["memory"], frozen.summary["memory"]
    tables.append(Table(
        title="Reference log-probs: cached once vs a frozen reference model",
        columns=["reference", "time per step (s)", "reference pass before training (s)", "training memory (MiB)",
                 "of which reference weights (MiB)"],
        rows=[["cached", cached_step, dpo.summary["reference"].get("seconds", 0.0), mem_c["total"] / 2**20,
               mem_c["reference"] / 2**20],
              ["frozen", frozen_step, 0.0, mem_f["total"] / 2**20, mem_f["reference"] / 2**20]],
        note="Training memory is exact accounting: parameters, gradients, AdamW states, a frozen reference copy, "
             "and the activations saved for backward in one micro-batch."))
    columns, rows = _generation_rows(comp, records)
    tables.append(Table(title="Sample generations (greedy)", columns=columns, rows=rows))

    # ---- claims
    a_sft, a_dpo = acc["SFT"]["overall"], acc["DPO (sigmoid)"]["overall"]
    net = (wr.wins - wr.losses) / wr.n
    claims = [
        Claim(claim="DPO aligns a model to preferences without RL and improves it over the SFT model it starts "
                    "from: win rate +18-36%", source="seed 000 (Lab-1.7)",
              measured=f"oracle accuracy SFT {_fmt_pct(a_sft)} -> DPO {_fmt_pct(a_dpo)}; DPO vs SFT: {wr.wins} wins, "
                       f"{wr.losses} losses, {wr.ties} ties of {wr.n} (win rate {_fmt_pct(wr.rate)}, net "
                       f"{net:+.1%})",
              verdict="consistent" if (a_dpo > a_sft and 0.18 <= net <= 0.36) else
              "partly" if a_dpo > a_sft else "not reproduced",
              why="Win rate judged by the task oracles on held-out prompts (exact answers), not by a reward "
                  "model or humans; the net margin counts prompts DPO gets right and SFT wrong minus the reverse."),
        Claim(claim="DPO costs about 2 forward passes per step vs 4 for RLHF (policy, reference, reward, value); "
                    "with the reference cached it needs only the policy's", source="seed 001 (3.3, complexity)",
              measured=f"DPO step {cached_step:.3f} s with cached reference log-probs vs {frozen_step:.3f} s with a "
                       f"frozen reference model ({frozen_step / max(cached_step, 1e-9):.2f}x); chosen and rejected "
                       f"share one forward pass",
              verdict="consistent" if frozen_step > cached_step else "not reproduced",
              why=f"{ctx.env.short()}; times are medians of whole optimizer steps, noisy on a shared CPU"),
        Claim(claim="DPO is 50-70% cheaper to train than RLHF", source="seed 000 (Lab-1.7)",
              measured="RLHF (reward model + PPO) is not implemented in trainlab yet, so there is no RLHF run to time",
              verdict="not measurable here", why="needs the RLHF component (reward model, PPO with a value head)"),
    ]
    text = [
        f"The pre-trained embedded base model is fine-tuned on task data (SFT, {sft.summary['steps']} steps) in "
        f"which {cfg_sft.align_data.sft_wrong_share:.0%} of the answers are plausible but wrong (off by one, digits "
        f"swapped, partly sorted, ...), so that SFT alone stays imperfect. DPO then trains "
        f"{dpo.summary['steps']} steps on pairs (correct answer preferred over a plausible wrong one) with β = "
        f"{beta0:g}, the SFT model as the reference, its log-probs computed once and cached, and an NLL term on "
        f"the correct answer of weight α = {cfg_dpo.align.rpo_alpha:g} (RPO, Pang et al., 2024).",
        _pure_dpo_note(runs, sft),
        f"Oracle accuracy on {acc_base.n} held-out prompts: base {_fmt_pct(acc_base.overall)}, SFT "
        f"{_fmt_pct(a_sft)}, DPO {_fmt_pct(a_dpo)}. Against SFT, DPO wins on {wr.wins} prompts and loses on "
        f"{wr.losses}.",
    ]
    data = {"accuracy": acc, "win_rate": wr.to_dict(), "sft": _slim(sft.summary), "dpo": _slim(dpo.summary),
            "variants": {n: _slim(r.summary) for n, r in runs.items()},
            "beta_sweep": {str(b): _slim(r.summary) for b, r in sweep.items()},
            "frozen_reference": _slim(frozen.summary), "eval_time_s": eval_s}
    return LabResult(lab="lab17", title=TITLE, preset=ctx.preset, device=ctx.device, seed=ctx.seed,
                     config={"sft": cfg_sft.model_dump(mode="json"), "dpo": cfg_dpo.model_dump(mode="json")},
                     summary=text, claims=claims, tables=tables, figures=figs, data=data)


def _pure_dpo_note(runs: dict[str, AlignRun], sft: AlignRun) -> str:
    """What the pure-DPO row measured, next to DPO with the NLL term and the SFT model."""
    pure, main = runs.get("sigmoid, no NLL"), runs["sigmoid"]
    if pure is None or main.summary["accuracy"] is None or pure.summary["accuracy"] is None:
        return ""
    p, m = pure.summary["final_eval"], main.summary["final_eval"]
    nan = float("nan")
    lp_pure, lp_main = p.get("logps/chosen", nan), m.get("logps/chosen", nan)
    lp_sft = sft.summary["final_eval"].get("logps/chosen", nan)
    text = (f"The row 'sigmoid, no NLL' is pure DPO: held-out reward accuracy {p.get('rewards/accuracies', nan):.0%} "
            f"(with the NLL term {m.get('rewards/accuracies', nan):.0%}), KL to the SFT model "
            f"{p.get('kl', nan):.2f} nats per sequence ({m.get('kl', nan):.2f}), log-probability of the correct "
            f"held-out answers {lp_pure:.2f} ({lp_main:.2f}; SFT {lp_sft:.2f}), oracle accuracy "
            f"{pure.summary['accuracy']['overall']:.1%} ({main.summary['accuracy']['overall']:.1%}).")
    if lp_pure < min(lp_main, lp_sft):
        text += (" Widening the margin pushed the correct answers down too (likelihood displacement), which "
                 "greedy decoding pays for; the NLL term keeps them up.")
    slow = runs.get("sigmoid, no NLL, lr/10")
    if slow is not None and slow.summary["accuracy"] is not None:
        a_slow, a_sft = slow.summary["accuracy"]["overall"], sft.summary["accuracy"]["overall"]
        text += (f" Pure DPO at a tenth of the learning rate ({slow.summary['config']['train']['lr']:g}) reaches "
                 f"{a_slow:.1%} (SFT {a_sft:.1%}), log-probability of the correct answers "
                 f"{slow.summary['final_eval'].get('logps/chosen', nan):.2f}: "
                 + ("it improves on SFT without the NLL term, by less than DPO with it." if a_slow > a_sft else
                    "it does not improve on SFT either."))
    return text


def _slim(summary: dict[str, Any]) -> dict[str, Any]:
    """A run summary without what is already in its folder (curves, config)."""
    return {k: v for k, v in summary.items() if k not in ("history", "config", "data")}


def _generation_rows(comp: dict[str, list[str]], records: list[Any]) -> tuple[list[str], list[list[Any]]]:
    return generation_table(comp, records, n=12)
