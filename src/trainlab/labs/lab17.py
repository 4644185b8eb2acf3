"""Lab 1.7: DPO. Base -> SFT -> DPO on the verifiable tasks, its variants and a β sweep.

Measures, on held-out task prompts judged by each task's oracle: accuracy per task of the base
model, the SFT model (trained on task data in which a share of answers are plausible but wrong,
so SFT alone stays imperfect) and the DPO model (pairs: the correct answer over a plausible wrong
one); DPO's training curves (loss, reward accuracy, margins) and held-out reward accuracy and
KL(π‖π_ref) over steps; the oracle win rate of DPO over SFT; the variants sigmoid / IPO / hinge /
robust (all pure: no NLL term), RPO (DPO + α·NLL, labelled as such) and a β sweep; what a cached
reference saves per step against a frozen copy (the same steps on both sides, medians after a
warm-up) and what each holds for the reference (measured on the live objects).

The main DPO run (slug ``dpo``) is pure DPO (``align.rpo_alpha=0``, written out); every run has a
slug naming its folder and data key, explicit overrides, and a label derived from its config.

Cost (the demo's budget): the variants and the β sweep are independent runs from the same SFT model;
on a CPU with at least two cores they run two at a time in worker processes of one intra-op thread each
(`run_variants`: tiny models use two single-threaded processes far better than one two-threaded
one), each returning its summary. The held-out completions of the base model are generated once (its
accuracy and the win-rate table both read them).
"""

from __future__ import annotations

import os
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from trainlab.align.evaluate import generation_table, task_completions, win_rate_from_completions
from trainlab.data.tasks import score
from trainlab.evaluation import TaskAccuracy
from trainlab.labs import LabContext
from trainlab.labs.align_common import (
    PURE,
    AlignVariant,
    ReferenceHoldings,
    ReleaseCheckpoint,
    StepTimes,
    describe_run,
    dpo_stage_config,
    eval_task_records,
    median_after_warmup,
)
from trainlab.recipes.align import (
    AlignRun,
    load_policy,
    run_alignment,
    shared_stage,
    stage_config,
)
from trainlab.recipes.base_model import embedded_base_model
from trainlab.report.plots import bar_plot, line_plot
from trainlab.results import Claim, Figure, LabResult, Table

TITLE = "1.7 DPO: preference optimization after SFT"
# Runs from the same SFT model beside the main one (slug ``dpo``: pure DPO with the method's
# defaults). Every variant is pure (no NLL term) unless it says RPO; the labels in the tables are
# derived from the config each run used (`describe_run`).
VARIANTS: tuple[AlignVariant, ...] = (
    # pure DPO at a tenth of the learning rate: a smaller step on these tasks (lab 1.7 text)
    AlignVariant("dpo-lr-10", PURE, lr_scale=0.1),
    # RPO (Pang et al., 2024): DPO plus an NLL term on the chosen answer, α = 1
    AlignVariant("rpo", ("align.rpo_alpha=1",)),
    AlignVariant("ipo", (*PURE, "align.loss_type=ipo")),
    AlignVariant("hinge", (*PURE, "align.loss_type=hinge")),
    AlignVariant("robust", (*PURE, "align.loss_type=robust", "align.label_smoothing=0.1")),
)
BETAS = (0.03, 0.3)  # besides the default β of the main run
TIMING_STEPS = 40  # at most, per side of the cached-vs-frozen comparison


def _fmt_pct(x: float) -> str:
    return f"{x:.1%}"


def _curve(history: list[dict[str, Any]], key: str) -> tuple[list[float], list[float]]:
    pts = [(h["step"], h[key]) for h in history if key in h]
    return [p[0] for p in pts], [p[1] for p in pts]


def _beta_slug(beta: float) -> str:
    return "dpo-beta-" + f"{beta:g}".replace(".", "-")


@dataclass
class _Finished:
    """A variant run done in a worker process: its summary (what the lab reads of it)."""

    summary: dict[str, Any]


def _variant_worker(job: tuple[str, list[str], dict[str, Any]]) -> dict[str, Any]:
    """One DPO run from the SFT model in a worker process (one intra-op thread); returns its summary."""
    import torch

    slug, overrides, kw = job
    torch.set_num_threads(1)
    cfg = stage_config("dpo", kw["preset"], seed=kw["seed"], device=kw["device"], overrides=overrides)
    r = run_alignment("dpo", cfg, kw["sft_dir"], Path(kw["out_dir"]) / slug, quiet=True, save=False,
                      callbacks=[ReleaseCheckpoint()])
    return r.summary


def run_variants(jobs: list[tuple[str, list[str]]], ctx: LabContext, sft_dir: str) -> dict[str, Any]:
    """Run the DPO ``jobs`` (slug, overrides) from ``sft_dir``: two at a time in single-threaded worker
    processes on a CPU with two or more cores, else one after the other here. Returns slug -> run (``.summary``)."""
    kw = {"preset": ctx.preset, "seed": ctx.seed, "device": ctx.device, "sft_dir": str(sft_dir),
          "out_dir": str(ctx.out_dir)}
    work = [(slug, overrides, kw) for slug, overrides in jobs]
    workers = min(2, os.cpu_count() or 1, len(work))
    if ctx.device != "cpu" or workers < 2:
        return {slug: run_alignment("dpo", stage_config("dpo", ctx.preset, seed=ctx.seed, device=ctx.device,
                                                        overrides=overrides),
                                    sft_dir, ctx.out_dir / slug, quiet=True, save=False,
                                    callbacks=[ReleaseCheckpoint()])
                for slug, overrides, _ in work}
    with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
        summaries = list(pool.map(_variant_worker, work))
    return {slug: _Finished(summary) for (slug, _, _), summary in zip(work, summaries, strict=True)}


def _accuracy(records: list[Any], completions: list[str]) -> TaskAccuracy:
    """Oracle accuracy of given completions (what `oracle_accuracy` computes after generating them)."""
    right: dict[str, int] = {}
    seen: dict[str, int] = {}
    samples: dict[str, list[dict[str, Any]]] = {}
    for record, completion in zip(records, completions, strict=True):
        ok = score(record, completion)
        seen[record.task] = seen.get(record.task, 0) + 1
        right[record.task] = right.get(record.task, 0) + int(ok)
        if len(samples.setdefault(record.task, [])) < 3:
            samples[record.task].append({"task": record.task, "prompt": record.prompt, "completion": completion,
                                         "expected": record.answer, "correct": ok})
    return TaskAccuracy(overall=sum(right.values()) / len(records),
                        per_task={t: right[t] / seen[t] for t in sorted(seen)}, n=len(records),
                        per_task_n=dict(sorted(seen.items())),
                        samples=[x for t in sorted(samples) for x in samples[t]])


def run(ctx: LabContext) -> LabResult:
    base_dir = embedded_base_model(ctx.preset, quiet=True)
    cfg_sft = stage_config("sft", ctx.preset, seed=ctx.seed, device=ctx.device, overrides=ctx.overrides)
    cfg_dpo = dpo_stage_config(ctx)
    sft = shared_stage("sft", "sft", cfg_sft, base_dir, ctx.suite_dir)
    dpo = shared_stage("dpo", "dpo", cfg_dpo, sft.summary["model_dir"], ctx.suite_dir)
    base_model, tokenizer = load_policy(base_dir, ctx.device)

    records = eval_task_records(cfg_sft, tokenizer)
    base_completions = task_completions(base_model, tokenizer, records)  # generated once: accuracy and win table
    acc_base = _accuracy(records, base_completions)

    def dpo_run(slug: str, overrides: list[str], **kw: Any) -> tuple[AlignRun, Any]:
        cfg = stage_config("dpo", ctx.preset, seed=ctx.seed, device=ctx.device,
                           overrides=[*ctx.overrides, *overrides])
        callbacks = [ReleaseCheckpoint(), *kw.pop("callbacks", [])]
        r = run_alignment("dpo", cfg, sft.summary["model_dir"], ctx.out_dir / slug, quiet=True, save=False,
                          callbacks=callbacks, **kw)
        return r, cfg

    # variants and β sweep, from the same SFT model with the same data and steps; keys are slugs
    jobs = [(v.slug, [*ctx.overrides, *PURE, *v.override_list(cfg_dpo.train.lr)]) for v in VARIANTS]
    jobs += [(_beta_slug(beta), [*ctx.overrides, *PURE, f"align.beta={beta}"]) for beta in BETAS]
    done = run_variants(jobs, ctx, sft.summary["model_dir"])
    runs: dict[str, Any] = {"dpo": dpo, **{v.slug: done[v.slug] for v in VARIANTS}}
    labels: dict[str, str] = {"dpo": describe_run("dpo", cfg_dpo)}
    for slug, overrides in jobs[:len(VARIANTS)]:
        labels[slug] = describe_run("dpo", stage_config("dpo", ctx.preset, seed=ctx.seed, device=ctx.device,
                                                        overrides=overrides))
    beta0 = cfg_dpo.align.beta
    sweep: dict[float, Any] = {beta0: dpo, **{beta: done[_beta_slug(beta)] for beta in BETAS}}
    acc: dict[str, Any] = {"base": acc_base.to_dict(), "sft": sft.summary["accuracy"],
                           **{k: r.summary["accuracy"] for k, r in runs.items()}}
    acc_labels = {"base": "base", "sft": "SFT", **labels}

    # the same DPO steps with cached reference log-probs and with a frozen reference model: same
    # config, same data order, same number of steps; per-step times, medians after the warm-up
    steps = max(2, min(TIMING_STEPS, cfg_dpo.train.max_steps))
    warmup = max(1, steps // 5)
    timing: dict[str, dict[str, Any]] = {}
    for mode in ("cached", "frozen"):
        times, held = StepTimes(), ReferenceHoldings()
        r, _ = dpo_run(f"ref-{mode}", [*PURE, f"align.reference={mode}", f"train.max_steps={steps}",
                                        "train.eval_every=0", "align.eval_kl=false"],
                       evaluate_oracle=False, callbacks=[times, held])
        timing[mode] = {"step_times_s": times.times, "median_step_s": median_after_warmup(times.times, warmup),
                        "reference_pass_s": float(r.summary["reference"].get("seconds", 0.0)),
                        "memory": r.summary["memory"], "held": held.to_dict(), "steps": r.summary["steps"]}

    # win rate of DPO over SFT, and sample generations, on the same held-out prompts
    t0 = time.perf_counter()
    sft_model, _ = load_policy(sft.summary["model_dir"], ctx.device)
    comp = {"base": base_completions,
            "SFT": task_completions(sft_model, tokenizer, records),
            "DPO": task_completions(dpo.model, tokenizer, records)}
    wr = win_rate_from_completions(records, comp["DPO"], comp["SFT"])
    eval_s = time.perf_counter() - t0

    # ---- figures
    figs: list[Figure] = []
    hist = dpo.summary["history"]
    ev = dpo.summary["eval_history"]
    p = line_plot(ctx.out_dir / "dpo_loss.png",
                  {labels[k]: _curve(r.summary["history"], "loss") for k, r in runs.items()},
                  title="DPO loss by variant (train, per pair)", xlabel="optimizer step", ylabel="loss")
    figs.append(Figure(path=ctx.rel(p), caption="Training loss of pure DPO and its variants from the same SFT "
                       "model (RPO adds the NLL term). The losses have different scales (IPO is a squared error, "
                       "hinge is linear)."))
    p = line_plot(ctx.out_dir / "dpo_rewards.png",
                  {"train reward accuracy": _curve(hist, "rewards/accuracies"),
                   "held-out reward accuracy": _curve(ev, "rewards/accuracies"),
                   "train margin (β·δ)": _curve(hist, "rewards/margins")},
                  title=f"{labels['dpo']}: implicit reward accuracy and margin", xlabel="optimizer step",
                  ylabel="accuracy / margin")
    figs.append(Figure(path=ctx.rel(p), caption="rewards/accuracies: share of pairs whose implicit reward "
                       "β·log(π/π_ref) ranks the correct answer above the wrong one; rewards/margins: the mean "
                       "difference."))
    p = line_plot(ctx.out_dir / "dpo_kl.png",
                  {labels[k]: _curve(r.summary["eval_history"], "kl") for k, r in runs.items()},
                  title="KL(π ‖ π_SFT) on held-out completions", xlabel="optimizer step", ylabel="nats per sequence")
    figs.append(Figure(path=ctx.rel(p), caption="Exact KL divergence of the next-token distributions, summed over "
                       "the completion tokens of held-out pairs: how far each variant moved from the SFT model."))
    tasks = list(acc_base.per_task)
    stages = ["base", "sft", "dpo"]
    p = bar_plot(ctx.out_dir / "accuracy_by_stage.png", [*tasks, "all"],
                 {acc_labels[s]: [acc[s]["per_task"][t] for t in tasks] + [acc[s]["overall"]] for s in stages},
                 title="Oracle accuracy on held-out prompts (greedy)", ylabel="accuracy", ylim=(0, 1))
    figs.append(Figure(path=ctx.rel(p), caption="Exact-match accuracy per task at each stage (DPO: pure DPO)."))
    betas = sorted(sweep)
    p = line_plot(ctx.out_dir / "beta_sweep.png",
                  {"oracle accuracy": (betas, [sweep[b].summary["accuracy"]["overall"] for b in betas]),
                   "held-out reward accuracy": (betas, [sweep[b].summary["final_eval"].get("rewards/accuracies",
                                                                                          float("nan"))
                                                        for b in betas])},
                  title="Pure DPO (sigmoid): β sweep", xlabel="β", ylabel="accuracy", logx=True)
    figs.append(Figure(path=ctx.rel(p), caption="Oracle and held-out reward accuracy against β (KL in the table "
                       "below). At DPO's optimum a larger β keeps the policy closer to the reference; in a short run "
                       "with Adam, the measured KL need not fall with β."))

    # ---- tables
    names = list(acc)
    tables = [
        Table(title="Oracle accuracy per task (held-out prompts, greedy)",
              columns=["task", "n", *[acc_labels[n] for n in names]],
              rows=[[t, acc_base.per_task_n[t], *[acc[n]["per_task"][t] for n in names]] for t in tasks]
              + [["all", acc_base.n, *[acc[n]["overall"] for n in names]]]),
        Table(title="DPO variants from the same SFT model",
              columns=["run", "what it ran", "final loss", "train reward acc", "held-out reward acc",
                       "KL to SFT (nats/seq)", "oracle accuracy", "train time (s)"],
              rows=[[k, labels[k], r.summary["final_loss"], r.summary["history"][-1].get("rewards/accuracies"),
                     r.summary["final_eval"].get("rewards/accuracies"), r.summary["final_eval"].get("kl"),
                     r.summary["accuracy"]["overall"], r.summary["train_time_s"]] for k, r in runs.items()],
              note="Every run is pure DPO-family (no NLL term) except the one labelled RPO."),
        Table(title="β sweep (pure DPO, sigmoid)", columns=["β", "held-out reward acc", "KL to SFT (nats/seq)",
                                                            "oracle accuracy"],
              rows=[[b, sweep[b].summary["final_eval"].get("rewards/accuracies"),
                     sweep[b].summary["final_eval"].get("kl"), sweep[b].summary["accuracy"]["overall"]]
                    for b in betas]),
        Table(title="Win rate of DPO over SFT (oracle-judged, same prompts)",
              columns=["wins", "losses", "ties", "n", "win rate (wins + ties/2)", "net (wins − losses)/n"],
              rows=[[wr.wins, wr.losses, wr.ties, wr.n, wr.rate, (wr.wins - wr.losses) / wr.n]]),
    ]
    cached_step, frozen_step = timing["cached"]["median_step_s"], timing["frozen"]["median_step_s"]
    tables.append(Table(
        title="Reference log-probs: cached once vs a frozen reference model",
        columns=["reference", "steps", "median step time after warm-up (s)", "reference pass before training (s)",
                 "held for the reference, measured (MiB)", "training memory (MiB)"],
        rows=[[mode, t["steps"], t["median_step_s"], t["reference_pass_s"], t["held"]["total_bytes"] / 2**20,
               t["memory"]["total"] / 2**20] for mode, t in timing.items()],
        note=f"Both sides: the same pure-DPO config and data order, {steps} steps each, the median of the per-step "
             f"times of steps {warmup + 1}-{steps} (the first {warmup} warm up). Held for the reference: the "
             "tensors the objective reaches besides the policy (a frozen model's weights) plus the cached "
             "per-pair log-probs in the training data, measured on the live objects. Training memory is exact "
             "accounting: parameters, gradients, AdamW states, a frozen reference copy and the activations "
             "saved for backward in one micro-batch."))
    columns, rows = _generation_rows(comp, records)
    tables.append(Table(title="Sample generations (greedy)", columns=columns, rows=rows))

    # ---- claims
    a_sft, a_dpo = acc["sft"]["overall"], acc["dpo"]["overall"]
    net = (wr.wins - wr.losses) / wr.n
    claims = [
        Claim(claim="DPO aligns a model to preferences without RL and improves it over the SFT model it starts "
                    "from: win rate +18-36%", source="seed 000 (Lab-1.7)",
              measured=f"pure DPO ({labels['dpo']}): oracle accuracy SFT {_fmt_pct(a_sft)} -> DPO "
                       f"{_fmt_pct(a_dpo)}; DPO vs SFT: {wr.wins} wins, {wr.losses} losses, {wr.ties} ties of "
                       f"{wr.n} (win rate {_fmt_pct(wr.rate)}, net {net:+.1%})",
              verdict=_win_verdict(a_sft, a_dpo, net),
              why="Win rate judged by the task oracles on held-out prompts (exact answers), not by a reward "
                  "model or humans; the net margin counts prompts DPO gets right and SFT wrong minus the reverse."),
        Claim(claim="DPO costs about 2 forward passes per step vs 4 for RLHF (policy, reference, reward, value); "
                    "with the reference cached it needs only the policy's", source="seed 001 (3.3, complexity)",
              measured=f"median DPO step {cached_step:.4f} s with cached reference log-probs vs {frozen_step:.4f} s "
                       f"with a frozen reference model ({frozen_step / max(cached_step, 1e-12):.2f}x), steps "
                       f"{warmup + 1}-{steps} of each; chosen and rejected share one forward pass",
              verdict="consistent" if frozen_step > cached_step else "not reproduced",
              why=f"{ctx.env.short()}; per-step wall times of the same steps on both sides, medians after "
                  f"{warmup} warm-up step(s), noisy on a shared CPU"),
    ]
    text = [
        f"The pre-trained embedded base model is fine-tuned on task data (SFT, {sft.summary['steps']} steps) in "
        f"which {cfg_sft.align_data.sft_wrong_share:.0%} of the answers are plausible but wrong (off by one, digits "
        f"swapped, partly sorted, ...), so that SFT alone stays imperfect. DPO (the row 'dpo', pure DPO: no NLL "
        f"term, {labels['dpo']}) then trains {dpo.summary['steps']} steps on pairs (correct answer preferred over "
        f"a plausible wrong one) with the SFT model as the reference, its log-probs computed once and cached.",
        _rpo_note(runs, labels, sft),
        f"Oracle accuracy on {acc_base.n} held-out prompts: base {_fmt_pct(acc_base.overall)}, SFT "
        f"{_fmt_pct(a_sft)}, DPO {_fmt_pct(a_dpo)}. Against SFT, DPO wins on {wr.wins} prompts and loses on "
        f"{wr.losses}.",
    ]
    data = {"accuracy": acc, "labels": acc_labels, "win_rate": wr.to_dict(), "sft": _slim(sft.summary),
            "dpo": _slim(dpo.summary), "variants": {k: _slim(r.summary) for k, r in runs.items()},
            "beta_sweep": {str(b): _slim(r.summary) for b, r in sweep.items()},
            "reference_timing": {"steps": steps, "warmup": warmup, **timing}, "eval_time_s": eval_s}
    return LabResult(lab="lab17", title=TITLE, preset=ctx.preset, device=ctx.device, seed=ctx.seed,
                     config={"sft": cfg_sft.model_dump(mode="json"), "dpo": cfg_dpo.model_dump(mode="json")},
                     summary=text, claims=claims, tables=tables, figures=figs, data=data)


def _win_verdict(a_sft: float, a_dpo: float, net: float) -> str:
    """The win-rate claim's verdict from the measured accuracies and net win rate."""
    if a_dpo > a_sft and 0.18 <= net <= 0.36:
        return "consistent"
    return "partly" if a_dpo > a_sft else "not reproduced"


def _rpo_note(runs: dict[str, AlignRun], labels: dict[str, str], sft: AlignRun) -> str:
    """Pure DPO next to RPO (DPO + NLL) and pure DPO at lr/10, from the numbers each run measured."""
    pure, rpo = runs["dpo"], runs.get("rpo")
    if rpo is None or pure.summary["accuracy"] is None or rpo.summary["accuracy"] is None:
        return ""
    p, m = pure.summary["final_eval"], rpo.summary["final_eval"]
    nan = float("nan")
    lp_pure, lp_rpo = p.get("logps/chosen", nan), m.get("logps/chosen", nan)
    lp_sft = sft.summary["final_eval"].get("logps/chosen", nan)
    text = (f"Pure DPO ('dpo') beside RPO ('rpo': {labels['rpo']}): held-out reward accuracy "
            f"{p.get('rewards/accuracies', nan):.0%} vs {m.get('rewards/accuracies', nan):.0%}, KL to the SFT model "
            f"{p.get('kl', nan):.2f} vs {m.get('kl', nan):.2f} nats per sequence, log-probability of the correct "
            f"held-out answers {lp_pure:.2f} vs {lp_rpo:.2f} (SFT {lp_sft:.2f}), oracle accuracy "
            f"{pure.summary['accuracy']['overall']:.1%} vs {rpo.summary['accuracy']['overall']:.1%}.")
    if lp_pure < min(lp_rpo, lp_sft):
        text += (" Widening the margin pushed the correct answers down too (likelihood displacement), which "
                 "greedy decoding pays for; the NLL term of RPO keeps them up.")
    slow = runs.get("dpo-lr-10")
    if slow is not None and slow.summary["accuracy"] is not None:
        a_slow, a_sft = slow.summary["accuracy"]["overall"], sft.summary["accuracy"]["overall"]
        a_rpo = rpo.summary["accuracy"]["overall"]
        text += (f" Pure DPO at a tenth of the learning rate ('dpo-lr-10': {labels['dpo-lr-10']}) reaches "
                 f"{a_slow:.1%} (SFT {a_sft:.1%}, RPO {a_rpo:.1%}), log-probability of the correct answers "
                 f"{slow.summary['final_eval'].get('logps/chosen', nan):.2f}: "
                 + ("it does not improve on SFT." if a_slow <= a_sft else
                    "it improves on SFT, by more than RPO." if a_slow > a_rpo else
                    "it improves on SFT, by no more than RPO."))
    return text


def _slim(summary: dict[str, Any]) -> dict[str, Any]:
    """A run summary without what is already in its folder (curves, config)."""
    return {k: v for k, v in summary.items() if k not in ("history", "config", "data")}


def _generation_rows(comp: dict[str, list[str]], records: list[Any]) -> tuple[list[str], list[list[Any]]]:
    return generation_table(comp, records, n=12)
