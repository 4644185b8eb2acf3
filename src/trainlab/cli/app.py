"""The typer app, its consoles and the options every training command shares (see `trainlab.cli`)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

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

# markup off: user text (prompts, paths) is printed as written, never parsed as [style] tags
err_console = Console(stderr=True, markup=False, highlight=False)
out_console = Console(markup=False, highlight=False)


# The command line as given (run_cli sets it): `--nproc` re-runs it under torchrun.
ARGV: list[str] | None = None
# with --json, stdout holds the JSON document alone: `run_cli` points sys.stdout at stderr for the command (a
# library that prints on import, e.g. DeepSpeed's accelerator banner, would break the document) and `_emit`
# writes here
JSON_STDOUT: Any = None


def _say(message: str) -> None:
    """One plain line on stderr (never wrapped: a long path stays one line). In a distributed run an
    error line names its rank (and goes to the launcher, which prints the first one); ranks other than
    0 print nothing else."""
    from trainlab.distributed.launch import name_rank, record_error, worker_quiet

    if message.startswith("error: "):
        message = name_rank(message)
        if record_error(message):
            return
    elif worker_quiet():
        return
    err_console.print(message, soft_wrap=True)


def _version_callback(value: bool) -> None:
    if value:
        from trainlab import __version__

        out_console.print(f"trainlab {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[bool, typer.Option("--version", callback=_version_callback, is_eager=True,
                                          help="print the version and exit")] = False,
) -> None:
    """Training optimization and alignment of language models, measured."""

# Shared options of the training commands.
ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="YAML config file")]
PresetOpt = Annotated[str, typer.Option("--preset", help="tiny | quick | full")]
OutOpt = Annotated[Path | None, typer.Option("--out", "-o", help="output folder")]
MaxStepsOpt = Annotated[int | None, typer.Option("--max-steps", help="optimizer steps")]
SeedOpt = Annotated[int | None, typer.Option("--seed", help="random seed")]
DeviceOpt = Annotated[str | None, typer.Option("--device", help="auto | cpu | cuda | cuda:N")]
EpochsOpt = Annotated[float | None, typer.Option("--epochs", help="passes over the training data (sets max steps)")]
ResumeOpt = Annotated[bool, typer.Option("--resume", help="continue from the checkpoint in --out (error if none)")]
ResumeOrStartOpt = Annotated[bool, typer.Option("--resume-or-start", help="continue from the checkpoint in --out "
                                                "if there is one, else start")]
ForceOpt = Annotated[bool, typer.Option("--force", help="resume even if the checkpoint was trained from another "
                                        "model or on other data; without --resume: start over an unfinished run")]
JsonOpt = Annotated[bool, typer.Option("--json", help="print machine-readable JSON on stdout")]
NprocOpt = Annotated[int | None, typer.Option(
    "--nproc", help="processes on this machine: the command re-runs itself under torchrun (one rank each; "
    "dist.strategy=ddp|fsdp|zero2|... says how they share the work; multi-node: run torchrun yourself)")]
OverridesArg = Annotated[list[str] | None, typer.Argument(help="section.key=value overrides, e.g. train.lr=1e-3")]


def _emit(obj: Any, as_json: bool) -> None:
    from trainlab.distributed.launch import worker_quiet

    if as_json and not worker_quiet():
        stream = JSON_STDOUT or sys.stdout
        stream.write(json.dumps(obj, indent=2, default=str) + "\n")
        stream.flush()


def prepare_run(out: Path | None, default_name: str, resume: bool, resume_or_start: bool, force: bool,
                inputs: dict[str, Path | None], model: Path | None, preset: str, as_json: bool,
                data: tuple[str | None, ...] = ()) -> tuple[Path, Any, Path]:
    """What a training command checks and resolves before any work, in this order: ``--out`` (default
    ``runs/<default_name>``) and ``--resume`` against the run folder and the input folders (``inputs``), the data
    paths, then the starting model (the embedded base model of ``preset`` when ``--model`` is not given, trained
    on first use). Returns (out folder, resume mode, model folder)."""
    from trainlab.data.loaders import check_record_source
    from trainlab.train.checkpoint import check_run_dirs

    out_dir = out or Path(f"runs/{default_name}")
    mode = _resume_mode(resume, resume_or_start)
    check_run_dirs(out_dir, mode, inputs, force=force)
    for source in data:
        if source:
            check_record_source(source)
    if model is None:
        from trainlab.recipes.base_model import embedded_base_model

        model = embedded_base_model(preset, quiet=as_json)  # the base model of the same preset
    return out_dir, mode, model


def _training_overrides(max_steps: int | None, seed: int | None, device: str | None,
                        extra: list[str] | None, epochs: float | None = None) -> list[str]:
    """Turn the shared flags into overrides, placed before the user's so explicit k=v wins."""
    out: list[str] = []
    if max_steps is not None:
        out.append(f"train.max_steps={max_steps}")
    if epochs is not None:
        out.append(f"train.epochs={epochs}")
    if seed is not None:
        out.append(f"train.seed={seed}")
    if device is not None:
        out.append(f"train.device={device}")
    return out + list(extra or [])

def _launch_if_asked(nproc: int | None, cfg: Any = None) -> None:
    """``--nproc N`` (N > 1) outside torchrun: run this command line on N ranks and exit with their code
    (``cfg``, the run's config, is checked for N processes first)."""
    from trainlab.distributed.launch import check_launch, launch, strip_nproc, worker_rank

    if nproc is None or nproc <= 1 or worker_rank() is not None:
        return
    if cfg is not None:
        check_launch(cfg, nproc)
    _, argv = strip_nproc(list(ARGV) if ARGV is not None else sys.argv[1:])
    code = launch(nproc, argv)
    if code == 130:  # interrupted: rank 0 said where the checkpoint is (typer's Exit(130) would add "aborted")
        raise SystemExit(130)
    raise typer.Exit(code)


def _resume_mode(resume: bool, resume_or_start: bool) -> bool | str:
    return "or_start" if resume_or_start else resume


def _print_tables(tables: list[tuple[str, list[str], list[list[str]]]]) -> None:
    for title, columns, rows in tables:
        table = Table(title=title)
        for col in columns:
            table.add_column(col)
        for row in rows:
            table.add_row(*row)
        out_console.print(table)
