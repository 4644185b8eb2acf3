"""The RLHF lab's figures: reward and KL curves per rollout, the learned reward beside the oracle, cost bars."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from trainlab.report.plots import bar_plot, line_plot
from trainlab.results import Figure


def _series(rollouts: Sequence[dict[str, Any]], key: str) -> tuple[list[float], list[float]]:
    pts = [(i + 1, float(r[key])) for i, r in enumerate(rollouts) if r.get(key) is not None]
    return [p[0] for p in pts], [p[1] for p in pts]


def rlhf_curve_figures(out_dir: Path, rel: Callable[[Path], str], runs: dict[str, dict[str, Any]]) -> list[Figure]:
    """Reward per rollout (each run's own reward, and the oracle's verdict where the reward was learned) and KL."""
    figs: list[Figure] = []
    rewards: dict[str, tuple[list[float], list[float]]] = {}
    oracle: dict[str, tuple[list[float], list[float]]] = {}
    kl: dict[str, tuple[list[float], list[float]]] = {}
    for label, s in runs.items():
        ro = s.get("rollouts") or []
        rewards[label] = _series(ro, "reward")
        if any("oracle_reward" in r for r in ro):
            oracle[f"{label}: oracle on its samples"] = _series(ro, "oracle_reward")
        # PPO records its KL per rollout; GRPO logs it per optimizer step (one step per rollout when μ = 1)
        kl[label] = _series(ro, "kl") if any("kl" in r for r in ro) else _series(s.get("history") or [], "kl")
    p = line_plot(out_dir / "rlhf_rewards.png", {k: v for k, v in rewards.items() if v[0]},
                  title="Reward per rollout (each run's own reward)", xlabel="rollout", ylabel="mean reward")
    figs.append(Figure(path=rel(p), caption="The reward each run optimised, per rollout: the oracle's 0/1 for GRPO, "
                       "the reward model's score for PPO and RM -> GRPO (a different scale)."))
    if oracle:
        series = {k: v for k, v in oracle.items() if v[0]}
        series.update({f"{k}: oracle reward" : v for k, v in rewards.items() if k.startswith("GRPO, oracle")})
        p = line_plot(out_dir / "rlhf_oracle_vs_learned.png", series,
                      title="The oracle's verdict on the samples of each run", xlabel="rollout",
                      ylabel="share of correct completions")
        figs.append(Figure(path=rel(p), caption="Share of sampled completions the task oracle accepts, per rollout: "
                           "where a run optimised a learned reward, this is what it really gained (reward hacking "
                           "shows as a rising learned reward with a flat or falling oracle share)."))
    p = line_plot(out_dir / "rlhf_kl.png", {k: v for k, v in kl.items() if v[0]},
                  title="KL to the SFT model on each run's samples", xlabel="rollout", ylabel="KL")
    figs.append(Figure(path=rel(p), caption="GRPO: k3 estimate per completion token against a frozen SFT copy; "
                       "PPO: the KL its penalty uses (per sequence)."))
    return figs


def cost_figure(out_dir: Path, rel: Callable[[Path], str], labels: Sequence[str], seconds: Sequence[float],
                peaks_mib: Sequence[float]) -> Figure:
    """Training time and peak memory of each pipeline (two bar groups on one axis, each normalised to its max)."""
    def norm(xs: Sequence[float]) -> list[float]:
        finite = [x for x in xs if isinstance(x, (int, float)) and math.isfinite(x)]
        top = max(finite, default=0.0) or 1.0
        return [float(x) / top if isinstance(x, (int, float)) and math.isfinite(x) else 0.0 for x in xs]

    p = bar_plot(out_dir / "rlhf_cost.png", list(labels),
                 {"training time (relative)": norm(seconds), "peak memory (relative)": norm(peaks_mib)},
                 title="Cost per pipeline after SFT (1 = the largest)", ylabel="relative to the largest")
    return Figure(path=rel(p), caption="Training time and peak memory of each pipeline, each relative to the "
                  "largest (the absolute numbers are in the table).")
