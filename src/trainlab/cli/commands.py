"""The general commands: env, labs, run, pretrain, generate."""

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
    _resume_mode,
    _say,
    _training_overrides,
    app,
    out_console,
)
from trainlab.errors import TrainingInterrupted, UserError

# ------------------------------------------------------------------------------------- env


@app.command()
def env(as_json: JsonOpt = False) -> None:
    """What this machine can do: device, dtypes, GPU, kernels, CPU and memory."""
    from trainlab.env import detect_env

    info = detect_env()
    if as_json:
        _emit(info.to_dict(), True)
        return
    table = Table(title="trainlab env", show_header=False)
    for key, value in info.to_dict().items():
        if key == "notes":
            continue
        if key.endswith("_bytes") and value:
            value = f"{value / 2**30:.1f} GiB"
        table.add_row(key, str(value))
    out_console.print(table)
    for note in info.notes:
        out_console.print(f"note: {note}")


# ------------------------------------------------------------------------------------ labs


@app.command()
def labs(as_json: JsonOpt = False) -> None:
    """List the labs."""
    from trainlab.labs import LABS

    rows = [{"name": s.name, "title": s.title, "seeds": s.seeds, "measures": s.description}
            for s in LABS.values()]
    if as_json:
        _emit(rows, True)
        return
    table = Table(title="trainlab labs")
    for col in ("name", "title", "seeds", "measures"):
        table.add_column(col)
    for r in rows:
        table.add_row(r["name"], r["title"], r["seeds"], r["measures"])
    out_console.print(table)


@app.command()
def run(
    lab_names: Annotated[list[str], typer.Argument(help="lab names, or all")],
    preset: Annotated[str, typer.Option("--preset", help="quick | full (tiny: for tests)")] = "quick",
    device: Annotated[str, typer.Option("--device", help="auto | cpu | cuda")] = "auto",
    out: Annotated[Path, typer.Option("--out", "-o", help="report folder")] = Path("runs/report"),
    seed: Annotated[int, typer.Option("--seed")] = 0,
    as_json: JsonOpt = False,
) -> None:
    """Run labs and write results.json, report.md, report.html and plots into --out."""
    from trainlab.labs import run_labs

    def done(result: Any) -> None:
        _say(f"{result.lab}: {result.status} in {result.wall_time_s:.0f} s" + (f" ({result.error})" if result.error
                                                                               else ""))

    command = "trainlab run " + " ".join(lab_names) + f" --preset {preset}"
    try:
        suite = run_labs(lab_names, out_dir=out, preset=preset, device=device, seed=seed, quiet=as_json,
                         command=command, on_done=done)
    except TrainingInterrupted as exc:  # labs are rerun, not resumed: no --resume hint
        _say(f"interrupted ({exc.signal_name}) during the labs")
        raise typer.Exit(130) from None
    summary = {"out": str(out), "report_html": str(out / "report.html"), "report_md": str(out / "report.md"),
               "results": str(out / "results.json"),
               "labs": [{"lab": r.lab, "status": r.status, "wall_time_s": r.wall_time_s, "error": r.error}
                        for r in suite.labs]}
    if as_json:
        _emit(summary, True)
    else:
        _say(f"report: {out / 'report.html'}")
    if any(r.status == "failed" for r in suite.labs):
        raise typer.Exit(1)


# -------------------------------------------------------------------------------- training


@app.command()
def pretrain(
    overrides: OverridesArg = None,
    config: ConfigOpt = None,
    preset: PresetOpt = "quick",
    data: Annotated[str | None, typer.Option("--data", help="text/JSONL file or folder (default: embedded)")] = None,
    out: OutOpt = None,
    max_steps: MaxStepsOpt = None,
    epochs: EpochsOpt = None,
    seed: SeedOpt = None,
    device: DeviceOpt = None,
    resume: ResumeOpt = False,
    resume_or_start: ResumeOrStartOpt = False,
    force: ForceOpt = False,
    nproc: NprocOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Pre-train the decoder from scratch (embedded corpus by default, or your text)."""
    from trainlab.config import load_config
    from trainlab.train.checkpoint import check_run_dirs

    base = {"data": {"source": data}} if data else None
    cfg = load_config(config, preset=preset, base=base,
                      overrides=_training_overrides(max_steps, seed, device, overrides, epochs))
    from trainlab.recipes.pretrain import run_pretrain

    out_dir = out or Path("runs/pretrain")
    mode = _resume_mode(resume, resume_or_start)
    check_run_dirs(out_dir, mode, force=force)
    _launch_if_asked(nproc, cfg)  # --nproc N: the same command on N ranks (config and folders checked above)
    result = run_pretrain(cfg, out_dir, resume=mode, quiet=as_json, force=force)
    _emit(result, as_json)
    if not as_json:
        _say(f"saved model to {out_dir / 'model'}; validation loss {result['final_val_loss']:.3f}")



@app.command()
def generate(
    model: Annotated[Path | None, typer.Option("--model", "-m", help="model folder (default: embedded base)")] = None,
    prompt: Annotated[list[str] | None, typer.Option("--prompt", "-p", help="prompt text (repeatable)")] = None,
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens")] = 48,
    temperature: Annotated[float, typer.Option("--temperature")] = 0.0,
    top_k: Annotated[int, typer.Option("--top-k")] = 0,
    top_p: Annotated[float, typer.Option("--top-p")] = 1.0,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    device: Annotated[str, typer.Option("--device")] = "auto",
    cache: Annotated[str, typer.Option("--cache", help="KV cache: auto (static where the model supports it: "
                                       "trainlab's decoder without adapters), static, dynamic")] = "auto",
    as_json: JsonOpt = False,
) -> None:
    """Sample continuations from a model (greedy by default)."""
    from trainlab.recipes.generation import generate_texts

    if not prompt:
        raise UserError("give at least one --prompt TEXT")
    if cache not in ("auto", "static", "dynamic"):
        raise UserError(f"--cache {cache!r}: expected auto, static or dynamic")
    outputs = generate_texts(model, list(prompt), max_new_tokens=max_new_tokens, temperature=temperature,
                             top_k=top_k, top_p=top_p, seed=seed, device=device, cache=cache)
    if as_json:
        _emit([{"prompt": p, "completion": c} for p, c in zip(prompt, outputs, strict=True)], True)
        return
    from rich.text import Text

    for p, c in zip(prompt, outputs, strict=True):
        # the prompt in bold on a terminal; plain text when piped (never literal markup)
        out_console.print(Text.assemble((p, "bold"), c), soft_wrap=True)
