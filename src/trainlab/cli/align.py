"""The alignment commands (sft, dpo, orpo, simpo, kto) and eval."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

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
    out_console,
    prepare_run,
)
from trainlab.errors import UserError

# ------------------------------------------------------------------------------- alignment

AlignModelOpt = Annotated[Path | None, typer.Option(
    "--model", "-m", help="model folder: a trainlab checkpoint or any local transformers causal LM "
    "(default: the embedded base model)")]
AlignDataOpt = Annotated[str | None, typer.Option(
    "--data", help="JSONL file/folder, a `datasets` folder, or .json/.parquet/.csv (default: embedded tasks)")]
StrictOpt = Annotated[bool, typer.Option("--strict", help="stop at the first malformed record (exit 2)")]
EvalDataOpt = Annotated[str | None, typer.Option(
    "--eval-data", help="evaluation pairs (SFT: examples) from this file/folder instead of a hold-out "
    "(align_data.eval_source)")]
RefModelOpt = Annotated[Path | None, typer.Option(
    "--ref-model", help="DPO/KTO: the reference model, a folder with the same tokenizer (default: the starting "
    "model; align.ref_model)")]
SaveDtypeOpt = Annotated[str | None, typer.Option(
    "--save-dtype", help="auto | fp32 | bf16 | fp16: dtype of the saved weights (auto: the input model's; "
    "align.save_dtype)")]


def data_extra(data: str | None, strict: bool = False, eval_data: str | None = None,
               save_dtype: str | None = None) -> dict[str, Any]:
    """The config the shared data flags stand for (``--data``, ``--strict``, ``--eval-data``, ``--save-dtype``)."""
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


def _align_command(method: str, overrides: list[str] | None, config: Path | None, preset: str,
                   model: Path | None, data: str | None, out: Path | None, max_steps: int | None,
                   seed: int | None, device: str | None, resume: bool, strict: bool, as_json: bool, *,
                   epochs: float | None = None, resume_or_start: bool = False, force: bool = False,
                   eval_data: str | None = None, ref_model: Path | None = None, save_dtype: str | None = None,
                   nproc: int | None = None) -> None:
    from trainlab.align.config import align_config
    from trainlab.recipes.align import describe_data, run_alignment

    extra = data_extra(data, strict, eval_data, save_dtype)
    if ref_model is not None:
        extra["align"]["ref_model"] = str(ref_model)
    # a transformers --model gets TRL's defaults, the embedded one (None) its tuned preset
    cfg = align_config(method, preset=preset, config_file=config, extra=extra, model=model,
                       overrides=_training_overrides(max_steps, seed, device, overrides, epochs))
    out_dir, mode, model = prepare_run(out, method, resume, resume_or_start, force,
                                       {"--model": model, "--ref-model": ref_model}, model, preset, as_json,
                                       (data, eval_data))
    _launch_if_asked(nproc, cfg)  # --nproc N: the same command on N ranks (inputs checked and built above)
    result = run_alignment(method, cfg, model, out_dir, resume=mode, quiet=as_json, force=force).summary
    shown = {k: result[k] for k in ("method", "model_in", "model_dir", "defaults", "save_dtype", "prefix_sharing",
                                    "steps", "unit",
                                    "units_seen", "final_loss",
                                    "train_time_s", "wall_time_s", "reference", "peak_memory", "final_eval",
                                    "accuracy", "data")}
    if result.get("peft"):  # trainable parameters, adapter bytes and folder of a PEFT run
        shown["peft"] = result["peft"]
    _emit(shown, as_json)
    if not as_json:
        acc = result["accuracy"]
        for line in describe_data(result["data"]):  # skipped, truncated, dropped, held out
            _say(line)
        if result.get("prefix_sharing"):
            _say(f"prefix sharing {result['prefix_sharing']['detail']}")
        peft = result.get("peft")
        if peft:
            _say(f"{peft['method']}: {peft['trainable_params']:,} trainable of {peft['total_params']:,} parameters "
                 f"({peft['trainable_fraction']:.3%}); adapter {peft['adapter_bytes']:,} bytes in "
                 f"{peft['adapter_dir']}")
        saved = f"model to {result['model_dir']}" if result["model_dir"] or not peft else \
            f"adapter to {peft['adapter_dir']}"
        _say(f"saved {method} {saved}; final loss {result['final_loss']:.4f}"
             + (f"; oracle accuracy {acc['overall']:.1%}" if acc else ""))


def _register_align_command(method: str, summary: str) -> None:
    def command(
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
        ref_model: RefModelOpt = None,
        save_dtype: SaveDtypeOpt = None,
        nproc: NprocOpt = None,
        as_json: JsonOpt = False,
    ) -> None:
        _align_command(method, overrides, config, preset, model, data, out, max_steps, seed, device, resume, strict,
                       as_json, epochs=epochs, resume_or_start=resume_or_start, force=force, eval_data=eval_data,
                       ref_model=ref_model, save_dtype=save_dtype, nproc=nproc)

    command.__doc__ = summary
    app.command(name=method)(command)


for _method, _summary in (
    ("sft", "Supervised fine-tuning on prompt/completion records (embedded task data by default)."),
    ("dpo", "DPO (sigmoid, ipo, hinge, robust via align.loss_type; RPO with align.rpo_alpha>0) on preference "
            "pairs."),
    ("orpo", "ORPO: single-stage NLL + odds-ratio preference optimization, no reference model."),
    ("simpo", "SimPO: reference-free, length-normalized preference optimization."),
    ("kto", "KTO on unpaired desirable/undesirable examples (or preference pairs, unpaired)."),
):
    _register_align_command(_method, _summary)


@app.command(name="eval")
def eval_(
    model: Annotated[Path | None, typer.Option("--model", "-m", help="model folder to judge "
                                               "(default: the embedded base model)")] = None,
    reference: Annotated[Path | None, typer.Option("--reference", help="reference model: implicit rewards "
                                                   "β·log(π/π_ref) and KL(model ‖ reference)")] = None,
    against: Annotated[Path | None, typer.Option("--against", help="another model: oracle win rate")] = None,
    data: AlignDataOpt = None,
    config: ConfigOpt = None,
    preset: PresetOpt = "quick",
    method: Annotated[str, typer.Option("--method", help="how to read implicit rewards: dpo, kto (with "
                                        "--reference), orpo, simpo")] = "dpo",
    device: DeviceOpt = None,
    strict: StrictOpt = False,
    overrides: OverridesArg = None,
    as_json: JsonOpt = False,
) -> None:
    """Judge a model: oracle accuracy on held-out tasks, reward accuracy and KL on pairs, win rate."""
    from trainlab.align.config import align_config
    from trainlab.recipes.align import run_eval

    if method not in ("dpo", "kto", "orpo", "simpo"):
        raise UserError(f"unknown --method {method!r}; expected one of: dpo, kto, orpo, simpo")
    extra: dict[str, Any] | None = {"align_data": {"strict": True}} if strict else None
    cfg = align_config(method, preset=preset, model=model,  # a transformers --model: TRL's lengths and beta
                       config_file=config, extra=extra, overrides=_training_overrides(None, None, device, overrides))
    if model is None:
        from trainlab.recipes.base_model import embedded_base_model

        model = embedded_base_model(preset, quiet=as_json)  # the base model of the same preset
    result = run_eval(model, cfg, reference=reference, against=against, data=data, method=method)
    if as_json:
        _emit(result, True)
        return
    table = Table(title=f"trainlab eval {model}")
    table.add_column("measure")
    table.add_column("value")
    acc = result.get("accuracy")
    if acc:
        table.add_row("oracle accuracy (all tasks)", f"{acc['overall']:.1%} of {acc['n']}")
        for task, value in acc["per_task"].items():
            table.add_row(f"  {task}", f"{value:.1%}")
    for what in ("pairs", "examples"):  # examples: unpaired (KTO) data with --method kto
        for key, value in result.get(what, {}).items():
            table.add_row(f"{what}: {key}", f"{value:.4g}")
    if "win_rate" in result:
        w = result["win_rate"]
        table.add_row("win rate vs --against", f"{w['rate']:.1%} ({w['wins']} wins, {w['losses']} losses, "
                      f"{w['ties']} ties)")
    out_console.print(table)
