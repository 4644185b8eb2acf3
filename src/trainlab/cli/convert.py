"""Checkpoint conversions (trainlab convert-gqa)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from trainlab.cli.app import JsonOpt, _emit, _print_tables, app


@app.command("convert-gqa")
def convert_gqa(
    model: Annotated[Path, typer.Option("--model", help="model folder: ours or HF Llama/Mistral/Qwen2/Qwen3 "
                                        "(safetensors)")],
    kv_heads: Annotated[int, typer.Option("--kv-heads", help="key/value heads after conversion (1: MQA); must "
                                          "divide the current KV heads")],
    out: Annotated[Path, typer.Option("--out", "-o", help="output folder (not the model folder)")],
    init: Annotated[str, typer.Option("--init", help="mean (Ainslie et al. 2023) | first | random")] = "mean",
    seed: Annotated[int, typer.Option("--seed", help="random seed for --init random")] = 0,
    as_json: JsonOpt = False,
) -> None:
    """Pool a model's key/value heads into fewer groups (MHA -> GQA/MQA); uptrain the result."""
    from trainlab.model.convert import convert_gqa as convert

    doc = convert(model, out, kv_heads, init, seed=seed)  # type: ignore[arg-type]
    if as_json:
        _emit(doc, True)
        return
    rows = [["model", doc["model"]], ["out", doc["out"]], ["architecture", str(doc["model_type"])],
            ["attention heads", str(doc["heads"])],
            ["KV heads", f"{doc['kv_heads_before']} -> {doc['kv_heads']} (groups of {doc['group_size']})"],
            ["init", doc["init"]], ["k/v tensors converted", str(doc["converted_tensors"])],
            ["KV cache", f"{doc['kv_cache_reduction']:g}x smaller"],
            ["files copied", ", ".join(doc["copied_files"]) or "-"]]
    _print_tables([("convert-gqa", ["", ""], rows)])
