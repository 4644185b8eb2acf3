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


# ------------------------------------------------------------------------------- alignment

AlignModelOpt = Annotated[Path | None, typer.Option(
    "--model", "-m", help="model folder: a trainlab checkpoint or any local transformers causal LM "
    "(default: the embedded base model)")]
AlignDataOpt = Annotated[str | None, typer.Option(
    "--data", help="JSONL file/folder, a `datasets` folder, or .json/.parquet/.csv (default: embedded tasks)")]
StrictOpt = Annotated[bool, typer.Option("--strict", help="stop at the first malformed record (exit 2)")]


def _align_command(method: str, overrides: list[str] | None, config: Path | None, preset: str,
                   model: Path | None, data: str | None, out: Path | None, max_steps: int | None,
                   seed: int | None, device: str | None, resume: bool, strict: bool, as_json: bool) -> None:
    from trainlab.align.config import align_config
    from trainlab.recipes.align import run_alignment

    extra: dict[str, Any] = {"align_data": {}}
    if data:
        extra["align_data"]["source"] = data
    if strict:
        extra["align_data"]["strict"] = True
    cfg = align_config(method, preset=preset, config_file=config, extra=extra,
                       overrides=_training_overrides(max_steps, seed, device, overrides))
    if model is None:
        from trainlab.recipes.base_model import embedded_base_model

        model = embedded_base_model(preset, quiet=as_json)  # the base model of the same preset
    out_dir = out or Path(f"runs/{method}")
    result = run_alignment(method, cfg, model, out_dir, resume=resume, quiet=as_json).summary
    shown = {k: result[k] for k in ("method", "model_in", "model_dir", "steps", "unit", "units_seen", "final_loss",
                                    "train_time_s", "wall_time_s", "reference", "peak_memory", "final_eval",
                                    "accuracy", "data")}
    _emit(shown, as_json)
    if not as_json:
        acc = result["accuracy"]
        load = result["data"].get("load", {})
        if load.get("skipped"):
            err_console.print(f"skipped {load['skipped']} malformed record(s) of {load['read']} "
                              f"(--strict to stop at the first)", highlight=False, markup=False)
        err_console.print(f"saved {method} model to {result['model_dir']}; final loss {result['final_loss']:.4f}"
                          + (f"; oracle accuracy {acc['overall']:.1%}" if acc else ""), highlight=False,
                          markup=False)


def _register_align_command(method: str, summary: str) -> None:
    def command(
        overrides: OverridesArg = None,
        config: ConfigOpt = None,
        preset: PresetOpt = "quick",
        model: AlignModelOpt = None,
        data: AlignDataOpt = None,
        out: OutOpt = None,
        max_steps: MaxStepsOpt = None,
        seed: SeedOpt = None,
        device: DeviceOpt = None,
        resume: ResumeOpt = False,
        strict: StrictOpt = False,
        as_json: JsonOpt = False,
    ) -> None:
        _align_command(method, overrides, config, preset, model, data, out, max_steps, seed, device, resume, strict,
                       as_json)

    command.__doc__ = summary
    app.command(name=method)(command)


for _method, _summary in (
    ("sft", "Supervised fine-tuning on prompt/completion records (embedded task data by default)."),
    ("dpo", "DPO (sigmoid, ipo, hinge, robust via align.loss_type) on preference pairs."),
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
    cfg = align_config(method, preset=preset,
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
