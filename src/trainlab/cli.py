"""The ``trainlab`` command line: a thin typer app over the library.

Every command takes ``--json`` and then prints one machine-readable JSON document on stdout
(progress and logs go to stderr). Exit codes: 0 success, 2 bad input (one line, no traceback),
1 internal failure.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from trainlab.errors import TrainingDiverged, UserError

app = typer.Typer(
    name="trainlab",
    help="Training optimization and alignment of language models, measured.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
calc_app = typer.Typer(help="Calculators (memory, attention, KV cache, ...).", no_args_is_help=True)
app.add_typer(calc_app, name="calc")

err_console = Console(stderr=True)
out_console = Console()

# Shared options of the training commands.
ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="YAML config file")]
PresetOpt = Annotated[str, typer.Option("--preset", help="tiny | quick | full")]
OutOpt = Annotated[Path | None, typer.Option("--out", "-o", help="output folder")]
MaxStepsOpt = Annotated[int | None, typer.Option("--max-steps", help="optimizer steps")]
SeedOpt = Annotated[int | None, typer.Option("--seed", help="random seed")]
DeviceOpt = Annotated[str | None, typer.Option("--device", help="auto | cpu | cuda | cuda:N")]
ResumeOpt = Annotated[bool, typer.Option("--resume", help="continue from the last checkpoint in --out")]
JsonOpt = Annotated[bool, typer.Option("--json", help="print machine-readable JSON on stdout")]
OverridesArg = Annotated[list[str] | None, typer.Argument(help="section.key=value overrides, e.g. train.lr=1e-3")]


def _emit(obj: Any, as_json: bool) -> None:
    if as_json:
        sys.stdout.write(json.dumps(obj, indent=2, default=str) + "\n")
        sys.stdout.flush()


def _training_overrides(max_steps: int | None, seed: int | None, device: str | None,
                        extra: list[str] | None) -> list[str]:
    """Turn the shared flags into overrides, placed before the user's so explicit k=v wins."""
    out: list[str] = []
    if max_steps is not None:
        out.append(f"train.max_steps={max_steps}")
    if seed is not None:
        out.append(f"train.seed={seed}")
    if device is not None:
        out.append(f"train.device={device}")
    return out + list(extra or [])


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
        err_console.print(f"[bold]{result.lab}[/bold]: {result.status} in {result.wall_time_s:.0f} s"
                          + (f" ({result.error})" if result.error else ""))

    command = "trainlab run " + " ".join(lab_names) + f" --preset {preset}"
    suite = run_labs(lab_names, out_dir=out, preset=preset, device=device, seed=seed, quiet=as_json,
                     command=command, on_done=done)
    summary = {"out": str(out), "report_html": str(out / "report.html"), "report_md": str(out / "report.md"),
               "results": str(out / "results.json"),
               "labs": [{"lab": r.lab, "status": r.status, "wall_time_s": r.wall_time_s, "error": r.error}
                        for r in suite.labs]}
    if as_json:
        _emit(summary, True)
    else:
        err_console.print(f"report: {out / 'report.html'}")
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
    seed: SeedOpt = None,
    device: DeviceOpt = None,
    resume: ResumeOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Pre-train the decoder from scratch (embedded corpus by default, or your text)."""
    from trainlab.config import load_config

    base = {"data": {"source": data}} if data else None
    cfg = load_config(config, preset=preset, base=base,
                      overrides=_training_overrides(max_steps, seed, device, overrides))
    from trainlab.recipes.pretrain import run_pretrain

    out_dir = out or Path("runs/pretrain")
    result = run_pretrain(cfg, out_dir, resume=resume, quiet=as_json)
    _emit(result, as_json)
    if not as_json:
        err_console.print(f"saved model to {out_dir / 'model'}; validation loss {result['final_val_loss']:.3f}")


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
    as_json: JsonOpt = False,
) -> None:
    """Sample continuations from a model (greedy by default)."""
    from trainlab.recipes.generation import generate_texts

    if not prompt:
        raise UserError("give at least one --prompt TEXT")
    outputs = generate_texts(model, list(prompt), max_new_tokens=max_new_tokens, temperature=temperature,
                             top_k=top_k, top_p=top_p, seed=seed, device=device)
    if as_json:
        _emit([{"prompt": p, "completion": c} for p, c in zip(prompt, outputs, strict=True)], True)
        return
    for p, c in zip(prompt, outputs, strict=True):
        out_console.print(f"[bold]{p}[/bold]{c}", highlight=False, markup=False)


def main() -> None:
    """Entry point: map errors to exit codes (2 for bad input, 1 for internal failures)."""
    if os.environ.get("TRAINLAB_DEBUG"):
        app()
        return
    try:
        app(standalone_mode=False)
    except UserError as exc:
        err_console.print(f"error: {exc}", highlight=False, markup=False, soft_wrap=True)
        sys.exit(2)
    except TrainingDiverged as exc:
        err_console.print(f"error: {exc}", highlight=False, markup=False, soft_wrap=True)
        sys.exit(1)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        err_console.print("aborted")
        sys.exit(130)
    except Exception as exc:  # click usage errors carry their own exit code (2)
        import click

        if isinstance(exc, click.exceptions.ClickException):
            exc.show()
            sys.exit(exc.exit_code)
        if isinstance(exc, click.exceptions.Exit):
            sys.exit(exc.exit_code)
        raise


if __name__ == "__main__":
    main()
