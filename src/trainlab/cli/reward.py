"""RLHF commands: ``trainlab rm`` (a Bradley-Terry reward model) and ``trainlab ppo``."""

from __future__ import annotations

from typing import Annotated

import typer

from trainlab.cli.align import (
    AlignDataOpt,
    AlignModelOpt,
    EvalDataOpt,
    SaveDtypeOpt,
    StrictOpt,
    data_extra,
)
from trainlab.cli.app import (
    ConfigOpt,
    DeviceOpt,
    EpochsOpt,
    ForceOpt,
    JsonOpt,
    MaxStepsOpt,
    NprocOpt,
    OutOpt,
    OverridesArg,
    PresetOpt,
    ResumeOpt,
    ResumeOrStartOpt,
    SeedOpt,
    _emit,
    _launch_if_asked,
    _say,
    _training_overrides,
    app,
    prepare_run,
)
from trainlab.cli.rl import RewardModelOpt, RewardOpt, reward_extra


@app.command(name="rm")
def rm(
    overrides: OverridesArg = None,
    config: ConfigOpt = None,
    preset: PresetOpt = "quick",
    model: AlignModelOpt = None,
    data: AlignDataOpt = None,
    out: OutOpt = None,
    max_steps: MaxStepsOpt = None,
    epochs: EpochsOpt = None,
    seed: SeedOpt = None,
    device: DeviceOpt = None,
    resume: ResumeOpt = False,
    resume_or_start: ResumeOrStartOpt = False,
    force: ForceOpt = False,
    strict: StrictOpt = False,
    eval_data: EvalDataOpt = None,
    save_dtype: SaveDtypeOpt = None,
    nproc: NprocOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Train a Bradley-Terry reward model on preference pairs (embedded task pairs by default); saved as
    *ForSequenceClassification (AutoModelForSequenceClassification loads it)."""
    from trainlab.recipes.rlhf import rm_config, run_reward_model

    cfg = rm_config(preset=preset, config_file=config, extra=data_extra(data, strict, eval_data, save_dtype),
                    model=model, overrides=_training_overrides(max_steps, seed, device, overrides, epochs))
    out_dir, mode, model = prepare_run(out, "rm", resume, resume_or_start, force, {"--model": model}, model, preset,
                                       as_json, (data, eval_data))
    _launch_if_asked(nproc)  # --nproc N: the same command on N ranks (inputs checked and built above)
    result = run_reward_model(cfg, model, out_dir, resume=mode, quiet=as_json, force=force)
    shown = {k: result[k] for k in ("method", "model_in", "model_dir", "kind", "steps", "unit", "units_seen",
                                    "final_loss", "train_time_s", "wall_time_s", "peak_memory", "final_eval",
                                    "accuracy", "data")}
    _emit(shown, as_json)
    if not as_json:
        from trainlab.recipes.align import describe_data

        for line in describe_data(result["data"]):
            _say(line)
        acc = result["accuracy"]
        _say(f"saved reward model to {result['model_dir']}; final loss {result['final_loss']:.4f}"
             + (f"; held-out pair accuracy {acc:.1%}" if acc is not None else ""))


@app.command(name="ppo")
def ppo(
    overrides: OverridesArg = None,
    config: ConfigOpt = None,
    preset: PresetOpt = "quick",
    model: AlignModelOpt = None,
    reward: RewardOpt = None,
    reward_model: RewardModelOpt = None,
    data: Annotated[str | None, typer.Option(
        "--data", help="prompts: a JSONL file with a 'prompt' per line (default: the embedded tasks, judged by "
        "their oracle)")] = None,
    out: OutOpt = None,
    max_steps: MaxStepsOpt = None,
    seed: SeedOpt = None,
    device: DeviceOpt = None,
    resume: ResumeOpt = False,
    resume_or_start: ResumeOrStartOpt = False,
    force: ForceOpt = False,
    save_dtype: SaveDtypeOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """PPO (RLHF): sample, score with a reward model or the task oracle, KL penalty to the reference in the
    reward, GAE, clipped policy and value losses (rl.* keys: beta, kl_ctl, ppo_epochs, mini_batches, ...)."""
    from trainlab.recipes.rlhf import ppo_config, run_ppo

    extra = data_extra(data, save_dtype=save_dtype) | {"rl": reward_extra(reward, reward_model)}
    cfg = ppo_config(preset=preset, config_file=config, extra=extra, model=model,
                     overrides=_training_overrides(max_steps, seed, device, overrides))
    out_dir, mode, model = prepare_run(out, "ppo", resume, resume_or_start, force,
                                       {"--model": model, "--reward-model": reward_model}, model, preset, as_json,
                                       (data,))
    result = run_ppo(cfg, model, out_dir, resume=mode, quiet=as_json, force=force)
    shown = {k: result[k] for k in ("method", "reward", "model_in", "model_dir", "value_dir", "steps",
                                    "steps_per_rollout", "final_loss", "train_time_s", "wall_time_s",
                                    "generate_time_s", "update_time_s", "peak_memory", "forward_passes_per_step",
                                    "forward_passes_per_rollout", "forward_passes_per_update",
                                    "models_forwarded", "models", "reward_curve", "kl_curve", "kl_coef_curve",
                                    "accuracy")}
    _emit(shown, as_json)
    if not as_json:
        acc = result["accuracy"]
        rewards = result["reward_curve"]
        _say(f"saved PPO policy to {result['model_dir']}; {result['steps']} steps, {len(rewards)} rollouts; "
             f"reward {rewards[0]:.3f} -> {rewards[-1]:.3f}; KL {result['kl_curve'][-1]:.4f}"
             + (f"; oracle accuracy {acc['overall']:.1%}" if acc else ""))
        passes = ", ".join(f"{k} {v:g}" for k, v in result["forward_passes_per_rollout"].items())
        _say(f"forward passes per rollout: {passes}")
