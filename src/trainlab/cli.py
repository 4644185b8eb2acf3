"""The ``trainlab`` command line: a thin typer app over the library.

Every command takes ``--json`` and then prints one machine-readable JSON document on stdout
(progress and logs go to stderr). Exit codes: 0 success (``--help``, ``--version``, bare
``trainlab``), 2 bad input — a usage error (unknown command or option, bad or missing value) or a
`UserError` — as one line on stderr with no traceback, 130 interrupted (SIGINT/SIGTERM; the
checkpoint is saved), 1 internal failure. Plain output is plain text: no rich markup is parsed, so
a ``[bracket]`` in a prompt or a path prints as written.
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

from trainlab.errors import TrainingDiverged, TrainingInterrupted, UserError

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


def _say(message: str) -> None:
    """One plain line on stderr (never wrapped: a long path stays one line)."""
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
OverridesArg = Annotated[list[str] | None, typer.Argument(help="section.key=value overrides, e.g. train.lr=1e-3")]


def _emit(obj: Any, as_json: bool) -> None:
    if as_json:
        sys.stdout.write(json.dumps(obj, indent=2, default=str) + "\n")
        sys.stdout.flush()


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
    result = run_pretrain(cfg, out_dir, resume=mode, quiet=as_json, force=force)
    _emit(result, as_json)
    if not as_json:
        _say(f"saved model to {out_dir / 'model'}; validation loss {result['final_val_loss']:.3f}")


def _resume_mode(resume: bool, resume_or_start: bool) -> bool | str:
    return "or_start" if resume_or_start else resume


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
    from rich.text import Text

    for p, c in zip(prompt, outputs, strict=True):
        # the prompt in bold on a terminal; plain text when piped (never literal markup)
        out_console.print(Text.assemble((p, "bold"), c), soft_wrap=True)


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


def _align_command(method: str, overrides: list[str] | None, config: Path | None, preset: str,
                   model: Path | None, data: str | None, out: Path | None, max_steps: int | None,
                   seed: int | None, device: str | None, resume: bool, strict: bool, as_json: bool, *,
                   epochs: float | None = None, resume_or_start: bool = False, force: bool = False,
                   eval_data: str | None = None, ref_model: Path | None = None, save_dtype: str | None = None
                   ) -> None:
    from trainlab.align.config import align_config
    from trainlab.recipes.align import describe_data, run_alignment
    from trainlab.train.checkpoint import check_run_dirs

    extra: dict[str, Any] = {"align_data": {}, "align": {}}
    if data:
        extra["align_data"]["source"] = data
    if strict:
        extra["align_data"]["strict"] = True
    if eval_data:
        extra["align_data"]["eval_source"] = eval_data
    if ref_model is not None:
        extra["align"]["ref_model"] = str(ref_model)
    if save_dtype is not None:
        extra["align"]["save_dtype"] = save_dtype
    # a transformers --model gets TRL's defaults, the embedded one (None) its tuned preset
    cfg = align_config(method, preset=preset, config_file=config, extra=extra, model=model,
                       overrides=_training_overrides(max_steps, seed, device, overrides, epochs))
    out_dir = out or Path(f"runs/{method}")
    mode = _resume_mode(resume, resume_or_start)
    check_run_dirs(out_dir, mode, {"--model": model, "--ref-model": ref_model}, force=force)  # before any work
    if model is None:
        from trainlab.recipes.base_model import embedded_base_model

        model = embedded_base_model(preset, quiet=as_json)  # the base model of the same preset
    result = run_alignment(method, cfg, model, out_dir, resume=mode, quiet=as_json, force=force).summary
    shown = {k: result[k] for k in ("method", "model_in", "model_dir", "defaults", "save_dtype", "steps", "unit",
                                    "units_seen", "final_loss",
                                    "train_time_s", "wall_time_s", "reference", "peak_memory", "final_eval",
                                    "accuracy", "data")}
    _emit(shown, as_json)
    if not as_json:
        acc = result["accuracy"]
        for line in describe_data(result["data"]):  # skipped, truncated, dropped, held out
            _say(line)
        _say(f"saved {method} model to {result['model_dir']}; final loss {result['final_loss']:.4f}"
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
        as_json: JsonOpt = False,
    ) -> None:
        _align_command(method, overrides, config, preset, model, data, out, max_steps, seed, device, resume, strict,
                       as_json, epochs=epochs, resume_or_start=resume_or_start, force=force, eval_data=eval_data,
                       ref_model=ref_model, save_dtype=save_dtype)

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
    for key, value in result.get("pairs", {}).items():
        table.add_row(f"pairs: {key}", f"{value:.4g}")
    if "win_rate" in result:
        w = result["win_rate"]
        table.add_row("win rate vs --against", f"{w['rate']:.1%} ({w['wins']} wins, {w['losses']} losses, "
                      f"{w['ties']} ties)")
    out_console.print(table)


# ------------------------------------------------------------ calculators and the advisor


def _print_tables(tables: list[tuple[str, list[str], list[list[str]]]]) -> None:
    for title, columns, rows in tables:
        table = Table(title=title)
        for col in columns:
            table.add_column(col)
        for row in rows:
            table.add_row(*row)
        out_console.print(table)


@calc_app.command("formats")
def calc_formats(
    fmt: Annotated[list[str] | None, typer.Option("--format", "-f", help="fp32, fp16, bf16, fp8_e4m3, fp8_e5m2 "
                                                  "(repeatable; default all)")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Number formats: bits, range, smallest normal/subnormal, epsilon, decimal digits."""
    from trainlab.memory import calc

    doc = calc.formats_result(fmt)
    _emit(doc, True) if as_json else _print_tables(calc.formats_tables(doc))


@calc_app.command("memory")
def calc_memory(
    params: Annotated[str | None, typer.Option("--params", help="parameter count: 7B, 125M, 7e9")] = None,
    model: Annotated[Path | None, typer.Option("--model", help="trainlab YAML config, HF model folder or "
                                               "config.json")] = None,
    batch: Annotated[int | None, typer.Option("--batch", help="sequences per micro-batch (1)")] = None,
    seq: Annotated[int | None, typer.Option("--seq", help="tokens per sequence (2048)")] = None,
    precision: Annotated[str | None, typer.Option("--precision", help="fp32 | fp16 | bf16 (fp32)")] = None,
    optim: Annotated[str | None, typer.Option("--optim", help="adamw | lion | sgd | adamw8bit (adamw)")] = None,
    checkpointing: Annotated[str | None, typer.Option("--checkpointing", help="none | full | every_n | "
                                                      "selective (none)")] = None,
    grad_accum: Annotated[int | None, typer.Option("--grad-accum", help="micro-batches per step (1)")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Training memory by component (parameters, gradients, optimizer, activations, logits).

    With a trainlab YAML as --model, unset options come from its train/data/model sections."""
    from trainlab.memory import calc

    doc = calc.memory_result(params=params, model=model, batch=batch, seq=seq, precision=precision, optim=optim,
                             checkpointing=checkpointing, grad_accum=grad_accum)
    _emit(doc, True) if as_json else _print_tables(calc.memory_tables(doc))


@calc_app.command("zero")
def calc_zero(
    params: Annotated[str, typer.Option("--params", help="parameter count: 7.5B, 7e9")],
    gpus: Annotated[int, typer.Option("--gpus", help="data-parallel GPUs")] = 8,
    optim: Annotated[str, typer.Option("--optim", help="adamw | lion | sgd | adamw8bit")] = "adamw",
    as_json: JsonOpt = False,
) -> None:
    """Model-state memory per GPU for ZeRO stages 0-3 (Rajbhandari et al. 2020)."""
    from trainlab.memory import calc

    doc = calc.zero_result(params=params, gpus=gpus, optim=optim)
    _emit(doc, True) if as_json else _print_tables(calc.zero_tables(doc))


@calc_app.command("attention")
def calc_attention(
    batch: Annotated[int, typer.Option("--batch", help="sequences")] = 1,
    heads: Annotated[int, typer.Option("--heads", help="query heads")] = 32,
    seq: Annotated[int, typer.Option("--seq", help="tokens per sequence")] = 4096,
    head_dim: Annotated[int, typer.Option("--head-dim", help="dimension per head")] = 128,
    causal: Annotated[bool, typer.Option("--causal", help="causal attention (half the work)")] = False,
    kv_heads: Annotated[int | None, typer.Option("--kv-heads", help="key/value heads (GQA); default: heads")] = None,
    dtype: Annotated[str, typer.Option("--dtype", help="fp32 | bf16 | fp16 | fp8")] = "bf16",
    block: Annotated[int, typer.Option("--block", help="query block of the tiled algorithm")] = 128,
    as_json: JsonOpt = False,
) -> None:
    """Attention FLOPs, score-matrix bytes, bytes moved (naive vs tiled) and arithmetic intensity."""
    from trainlab.attention.calc import attention_cost, attention_tables

    cost = attention_cost(batch, heads, seq, head_dim, causal=causal, kv_heads=kv_heads, dtype=dtype, block=block)
    _emit(cost.to_dict(), True) if as_json else _print_tables(attention_tables(cost))


@app.command()
def plan(
    params: Annotated[str, typer.Option("--params", help="parameter count: 7B, 125M, 7e9")],
    gpu_mem: Annotated[float, typer.Option("--gpu-mem", help="memory per GPU in GB")],
    seq: Annotated[int, typer.Option("--seq", help="tokens per sequence")] = 2048,
    gpus: Annotated[int, typer.Option("--gpus", help="number of GPUs")] = 1,
    batch: Annotated[int, typer.Option("--batch", help="sequences per micro-batch")] = 1,
    lora_rank: Annotated[int, typer.Option("--lora-rank", help="LoRA rank for the LoRA/QLoRA options")] = 16,
    as_json: JsonOpt = False,
) -> None:
    """Which technique fits: full fine-tune, ZeRO, LoRA, QLoRA, offload, pipeline, with memory per option."""
    from trainlab.memory import calc

    doc = calc.plan_result(params=params, gpu_mem=gpu_mem, seq=seq, gpus=gpus, batch=batch, lora_rank=lora_rank)
    _emit(doc, True) if as_json else _print_tables(calc.plan_tables(doc))


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
    if os.environ.get("TRAINLAB_DEBUG"):  # tracebacks and click's own messages, for debugging
        app(args=args, prog_name="trainlab")
        return 0
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


if __name__ == "__main__":
    main()
