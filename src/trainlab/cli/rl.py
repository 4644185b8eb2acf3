"""The RL commands: ``trainlab grpo`` (GRPO, Dr. GRPO, DAPO, RLOO, REINFORCE++ via rl.*) and ``trainlab rloo``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from trainlab.cli.app import (
    ConfigOpt,
    DeviceOpt,
    ForceOpt,
    JsonOpt,
    MaxStepsOpt,
    OutOpt,
    OverridesArg,
    PresetOpt,
    ResumeOpt,
    ResumeOrStartOpt,
    SeedOpt,
    _emit,
    _say,
    _training_overrides,
    app,
    prepare_run,
)

RLModelOpt = Annotated[Path | None, typer.Option(
    "--model", "-m", help="the starting policy: a trainlab folder or any local transformers causal LM "
    "(default: the embedded base model)")]
PromptsOpt = Annotated[str | None, typer.Option(
    "--data", help="prompts: a JSONL file with a 'prompt' field per line (default: the embedded tasks)")]
RewardOpt = Annotated[str | None, typer.Option(
    "--reward", help="oracle (the embedded tasks' exact check), model (with --reward-model), or module:function "
    "called with prompts and completions (rl.reward)")]
RewardModelOpt = Annotated[Path | None, typer.Option(
    "--reward-model", help="a reward model folder (trainlab rm's output or any *ForSequenceClassification with "
    "num_labels=1): --reward model (rl.reward_model)")]


def reward_extra(reward: str | None, reward_model: Path | None) -> dict[str, Any]:
    """The ``rl`` config ``--reward`` and ``--reward-model`` stand for (a reward model implies ``--reward model``)."""
    rl: dict[str, Any] = {}
    if reward is not None:
        rl["reward"] = reward
    if reward_model is not None:
        rl["reward_model"] = str(reward_model)
        rl.setdefault("reward", "model")
    return rl


def _rl_command(estimator: str | None, overrides: list[str] | None, config: Path | None, preset: str,
                model: Path | None, data: str | None, reward: str | None, reward_model: Path | None,
                out: Path | None, max_steps: int | None, seed: int | None, device: str | None, resume: bool,
                resume_or_start: bool, force: bool, as_json: bool, name: str) -> None:
    from trainlab.rl.config import rl_config
    from trainlab.rl.recipe import run_grpo

    extra: dict[str, Any] = {"align_data": {"source": data} if data else {}, "rl": reward_extra(reward, reward_model)}
    if estimator is not None:
        extra["rl"]["estimator"] = estimator
    cfg = rl_config(preset=preset, config_file=config, extra=extra, model=model,
                    overrides=_training_overrides(max_steps, seed, device, overrides))
    out_dir, mode, model = prepare_run(out, name, resume, resume_or_start, force,
                                       {"--model": model, "--reward-model": reward_model}, model, preset, as_json,
                                       (data,))
    s = run_grpo(cfg, model, out_dir, resume=mode, force=force, quiet=as_json)
    rollouts = s["rollouts"]
    first, last = (rollouts[0], rollouts[-1]) if rollouts else ({}, {})
    shown = {k: s[k] for k in ("method", "estimator", "loss_agg", "reward", "model_in", "model_dir", "steps",
                               "resumed_from", "final_loss", "train_time_s", "generate_time_s", "update_time_s",
                               "completions", "completions_per_s", "forward_passes_per_step", "peak_memory",
                               "accuracy", "n_prompts", "peft")}
    shown["reward_first"] = first.get("reward")
    shown["reward_last"] = last.get("reward")
    shown["groups_equal_last"] = last.get("groups_equal")
    _emit(shown, as_json)
    if not as_json:
        acc = s["accuracy"]
        if rollouts:
            _say(f"{s['estimator']} ({s['loss_agg']}): reward {first['reward']:.3f} -> {last['reward']:.3f} over "
                 f"{len(rollouts)} rollouts; {s['completions']} completions, {s['completions_per_s']:.1f}/s "
                 f"(generation {s['generate_time_s']:.1f} s, update {s['update_time_s']:.1f} s)")
        peft = s.get("peft")
        saved = f"adapter to {peft['adapter_dir']}" if peft and not s["model_dir"] else f"model to {s['model_dir']}"
        _say(f"saved {name} {saved}; final loss {s['final_loss']:.4f}"
             + (f"; oracle accuracy {acc['overall']:.1%}" if acc else ""))


def _register(name: str, estimator: str | None, summary: str) -> None:
    def command(
        overrides: OverridesArg = None,
        config: ConfigOpt = None,
        preset: PresetOpt = "quick",
        model: RLModelOpt = None,
        data: PromptsOpt = None,
        reward: RewardOpt = None,
        reward_model: RewardModelOpt = None,
        out: OutOpt = None,
        max_steps: MaxStepsOpt = None,
        seed: SeedOpt = None,
        device: DeviceOpt = None,
        resume: ResumeOpt = False,
        resume_or_start: ResumeOrStartOpt = False,
        force: ForceOpt = False,
        as_json: JsonOpt = False,
    ) -> None:
        _rl_command(estimator, overrides, config, preset, model, data, reward, reward_model, out, max_steps, seed,
                    device, resume, resume_or_start, force, as_json, name)

    command.__doc__ = summary
    app.command(name=name)(command)


_register("grpo", None, "RL from sampled completions: GRPO by default; rl.estimator=dr_grpo|rloo|reinforce_pp, "
          "rl.loss_agg=token_mean|seq_mean_token_mean|seq_mean_token_sum_norm (or TRL's grpo|dapo|bnpo|dr_grpo).")
_register("rloo", "rloo", "RLOO: the leave-one-out baseline over each prompt's group (trainlab grpo "
          "rl.estimator=rloo).")
