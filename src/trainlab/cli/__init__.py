"""The ``trainlab`` command line: a thin typer app over the library.

Every command takes ``--json`` and then prints one machine-readable JSON document on stdout
(progress and logs go to stderr). Exit codes: 0 success (``--help``, ``--version``, bare
``trainlab``), 2 bad input — a usage error (unknown command or option, bad or missing value) or a
`UserError` — as one line on stderr with no traceback, 130 interrupted (SIGINT/SIGTERM; the
checkpoint is saved), 1 internal failure. Plain output is plain text: no rich markup is parsed, so
a ``[bracket]`` in a prompt or a path prints as written.
"""

from __future__ import annotations

import os
import sys

import typer

from trainlab.cli import align, calc, commands, convert, reward, rl, serve  # noqa: F401  (they register their commands on the app)
from trainlab.cli import app as app_module
from trainlab.cli import peft as _peft  # noqa: F401  (trainlab calc lora)
from trainlab.cli.app import _say, app, calc_app, err_console, out_console
from trainlab.errors import TrainingDiverged, TrainingInterrupted, UserError

__all__ = ["app", "calc_app", "err_console", "main", "out_console", "run_cli"]


def _usage_error_types() -> tuple[type[BaseException], ...]:
    """typer >= 0.2x raises its own vendored click's exceptions (all `typer.TyperException`);
    older typer raises click's. Both carry ``format_message()`` and the context."""
    types: list[type[BaseException]] = []
    typer_exc = getattr(typer, "TyperException", None)
    if isinstance(typer_exc, type):
        types.append(typer_exc)
    try:
        import click

        types.append(click.ClickException)
    except ImportError:  # pragma: no cover - typer without click
        pass
    return tuple(types)


def _message(exc: BaseException) -> str:
    fmt = getattr(exc, "format_message", None)
    return str(fmt()) if callable(fmt) else str(exc)


def _usage_error_line(exc: BaseException) -> str:
    """A usage error as one line: the message and where to read more."""
    message = " ".join(_message(exc).split())
    ctx = getattr(exc, "ctx", None)
    path = getattr(ctx, "command_path", None) or "trainlab"
    return f"error: {message} (see '{path} --help')"


def run_cli(args: list[str] | None = None) -> int:
    """Run the command line on ``args`` (default ``sys.argv[1:]``) and return the exit code:
    0 done (or help, or ``--version``), 2 bad input (one line on stderr), 130 interrupted, 1 failure."""
    app_module.ARGV = list(args) if args is not None else sys.argv[1:]  # for --nproc (re-run under torchrun)
    if os.environ.get("TRAINLAB_DEBUG"):  # tracebacks and click's own messages, for debugging
        app(args=args, prog_name="trainlab")
        return 0
    argv = app_module.ARGV
    json_mode = "--json" in argv[: argv.index("--")] if "--" in argv else "--json" in argv
    real_stdout = sys.stdout
    if json_mode:  # stdout is the JSON document's alone (see app.JSON_STDOUT)
        app_module.JSON_STDOUT, sys.stdout = real_stdout, sys.stderr
    try:
        return _run(args)
    finally:
        if json_mode:
            app_module.JSON_STDOUT, sys.stdout = None, real_stdout


def _run(args: list[str] | None) -> int:
    try:
        rv = app(args=args, prog_name="trainlab", standalone_mode=False)
    except UserError as exc:
        _say(f"error: {exc}")
        return 2
    except TrainingDiverged as exc:
        _say(f"error: {exc}")
        return 1
    except TrainingInterrupted as exc:
        _say(str(exc))
        return 130
    except typer.Exit as exc:
        return exc.exit_code
    except (typer.Abort, KeyboardInterrupt):
        _say("aborted")
        return 130
    except _usage_error_types() as exc:
        if type(exc).__name__ == "NoArgsIsHelpError":  # bare `trainlab` or `trainlab calc`: the help, exit 0
            out_console.print(_message(exc), soft_wrap=True)
            return 0
        _say(_usage_error_line(exc))
        return 2
    # typer turns Ctrl-C outside training into Exit(130), which non-standalone mode returns
    if rv == 130:
        _say("aborted")
    return rv if isinstance(rv, int) else 0


def main() -> None:
    """Console entry point (``trainlab``): `run_cli` and exit with its code."""
    sys.exit(run_cli())

