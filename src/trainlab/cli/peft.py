"""``trainlab calc lora``: LoRA's trainable parameters, adapter bytes and per-matrix compression for a model."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from trainlab.cli.app import JsonOpt, _emit, _print_tables, calc_app
from trainlab.errors import UserError


@calc_app.command("lora")
def calc_lora(
    model: Annotated[Path | None, typer.Option("--model", help="trainlab YAML config, HF model folder or "
                                               "config.json")] = None,
    layers: Annotated[int | None, typer.Option("--layers", help="decoder layers")] = None,
    hidden: Annotated[int | None, typer.Option("--hidden", help="hidden size")] = None,
    intermediate: Annotated[int | None, typer.Option("--intermediate", help="MLP inner size")] = None,
    heads: Annotated[int | None, typer.Option("--heads", help="attention heads (default: hidden/128)")] = None,
    kv_heads: Annotated[int | None, typer.Option("--kv-heads", help="key/value heads (default: --heads)")] = None,
    r: Annotated[int, typer.Option("--r", help="LoRA rank")] = 8,
    targets: Annotated[str, typer.Option("--targets", help="comma-separated module names, or all-linear")] =
        "q_proj,v_proj",
    dora: Annotated[bool, typer.Option("--dora", help="DoRA: + one magnitude per output row")] = False,
    as_json: JsonOpt = False,
) -> None:
    """LoRA trainable parameters, adapter bytes and r(d+k)/(dk) per matrix (Hu et al., 2021)."""
    from trainlab.peft.calc import lora_calc, lora_calc_for_model, lora_tables

    if model is not None:
        if any(v is not None for v in (layers, hidden, intermediate, heads, kv_heads)):
            raise UserError("give --model or the shape (--layers --hidden --intermediate ...), not both")
        doc = lora_calc_for_model(model, r=r, targets=targets, dora=dora)
    else:
        if layers is None or hidden is None or intermediate is None:
            raise UserError("give --model, or --layers, --hidden and --intermediate")
        doc = lora_calc(layers=layers, dim=hidden, intermediate=intermediate, heads=heads or max(1, hidden // 128),
                        kv_heads=kv_heads, r=r, targets=targets, dora=dora)
    _emit(doc, True) if as_json else _print_tables(lora_tables(doc))
