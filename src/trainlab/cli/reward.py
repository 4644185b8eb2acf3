"""RLHF commands: ``trainlab rm`` (a Bradley-Terry reward model) and ``trainlab ppo``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from trainlab.cli.align import AlignDataOpt, AlignModelOpt, EvalDataOpt, SaveDtypeOpt, StrictOpt
from trainlab.cli.app import (
    ConfigOpt,
    DeviceOpt,
    EpochsOpt,
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
    _resume_mode,
    _say,
    _training_overrides,
    app,
)


def _data_extra(data: str | None, strict: bool, eval_data: str | None, save_dtype: str | None) -> dict[str, Any]:
    extra: dict[str, Any] = {"align_data": {}, "align": {}}
    if data:
        extra["align_data"]["source"] = data
    if strict:
        extra["align_data"]["strict"] = True
    if eval_data:
        extra["align_data"]["eval_source"] = eval_data
    if save_dtype is not None:
        extra["align"]["save_dtype"] = save_dtype
    return extra


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
    as_json: JsonOpt = False,
) -> None:
    """Train a Bradley-Terry reward model on preference pairs (embedded task pairs by default); saved as
    *ForSequenceClassification (AutoModelForSequenceClassification loads it)."""
    from trainlab.recipes.rlhf import rm_config, run_reward_model
    from trainlab.train.checkpoint import check_run_dirs

    cfg = rm_config(preset=preset, config_file=config, extra=_data_extra(data, strict, eval_data, save_dtype),
                    model=model, overrides=_training_overrides(max_steps, seed, device, overrides, epochs))
    out_dir = out or Path("runs/rm")
    mode = _resume_mode(resume, resume_or_start)
    check_run_dirs(out_dir, mode, {"--model": model}, force=force)  # before any work
    if model is None:
        from trainlab.recipes.base_model import embedded_base_model

        model = embedded_base_model(preset, quiet=as_json)
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


RewardModelOpt = Annotated[Path | None, typer.Option(
    "--reward-model", help="reward model folder (trainlab rm's output or any *ForSequenceClassification with "
    "num_labels=1); default: the embedded tasks' oracle (rl.reward)")]
