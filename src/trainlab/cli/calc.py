"""The calculators (trainlab calc ...) and the advisor (trainlab plan)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from trainlab.cli.app import JsonOpt, _emit, _print_tables, app, calc_app

# ------------------------------------------------------------ calculators and the advisor



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


@calc_app.command("kv-cache")
def calc_kv_cache(
    model: Annotated[Path | None, typer.Option("--model", help="trainlab YAML config, HF model folder or "
                                               "config.json")] = None,
    layers: Annotated[int | None, typer.Option("--layers", help="decoder layers")] = None,
    kv_heads: Annotated[int | None, typer.Option("--kv-heads", help="key/value heads (1: MQA)")] = None,
    head_dim: Annotated[int | None, typer.Option("--head-dim", help="dimension per head")] = None,
    heads: Annotated[int | None, typer.Option("--heads", help="query heads (the MHA comparison)")] = None,
    seq: Annotated[int | None, typer.Option("--seq", help="tokens per sequence (default: the model's)")] = None,
    batch: Annotated[int | None, typer.Option("--batch", help="sequences (1)")] = None,
    dtype: Annotated[str | None, typer.Option("--dtype", help="fp32 | fp16 | bf16 | fp8 | int8 | int4 "
                                              "(the model's, else fp16)")] = None,
    sliding_window: Annotated[int | None, typer.Option("--sliding-window", help="cap every layer's cache at "
                                                       "this many tokens")] = None,
    gpu_mem: Annotated[float | None, typer.Option("--gpu-mem", help="GPU memory in GB: longest context and "
                                                  "largest batch beside the weights")] = None,
    params: Annotated[str | None, typer.Option("--params", help="parameter count for the weights' size: 7B")] = None,
    as_json: JsonOpt = False,
) -> None:
    """KV cache bytes: 2 · layers · kv_heads · head_dim · bytes · tokens · batch, vs MHA; what fits in --gpu-mem."""
    from trainlab.memory.kv import kv_cache_result, kv_cache_tables

    doc = kv_cache_result(model=model, layers=layers, kv_heads=kv_heads, head_dim=head_dim, heads=heads, seq=seq,
                          batch=batch, dtype=dtype, gpu_mem=gpu_mem, params=params, sliding_window=sliding_window)
    _emit(doc, True) if as_json else _print_tables(kv_cache_tables(doc))


@calc_app.command("comm")
def calc_comm(
    params: Annotated[str, typer.Option("--params", help="parameter count: 7B, 7e9")],
    gpus: Annotated[int, typer.Option("--gpus", help="ranks (data-parallel, TP or PP degree)")] = 8,
    dtype: Annotated[str, typer.Option("--dtype", help="communicated dtype: fp32 | bf16 | fp16 | fp8")] = "bf16",
    bandwidth: Annotated[float | None, typer.Option("--bandwidth", help="GB/s per rank: time per step")] = None,
    grad_accum: Annotated[int, typer.Option("--grad-accum", help="micro-batches per optimizer step")] = 1,
    layers: Annotated[int | None, typer.Option("--layers", help="decoder layers (TP row)")] = None,
    batch: Annotated[int | None, typer.Option("--batch", help="sequences per micro-batch (TP/PP rows)")] = None,
    seq: Annotated[int | None, typer.Option("--seq", help="tokens per sequence (TP/PP rows)")] = None,
    hidden: Annotated[int | None, typer.Option("--hidden", help="model width (TP/PP rows)")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Bytes each rank sends per step: ring all-reduce, reduce-scatter, all-gather; DDP, ZeRO-1/2/3, TP, PP."""
    from trainlab.distributed.comm import comm_result, comm_tables

    doc = comm_result(params=params, gpus=gpus, dtype=dtype, bandwidth=bandwidth, grad_accum=grad_accum,
                      layers=layers, batch=batch, seq=seq, hidden=hidden)
    _emit(doc, True) if as_json else _print_tables(comm_tables(doc))
