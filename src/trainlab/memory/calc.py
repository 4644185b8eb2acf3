"""The calculators behind ``trainlab calc formats|memory|zero`` and ``trainlab plan``.

Each ``*_result`` function returns the JSON document the command prints with ``--json``, and each
``*_tables`` function the (title, columns, rows) tables it prints otherwise, so the CLI only
parses options and prints. The formulas are in `trainlab.precision.formats`,
`trainlab.memory.estimate` and `trainlab.memory.advisor`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from trainlab.errors import UserError
from trainlab.memory.advisor import plan
from trainlab.memory.estimate import ModelShape, estimate_memory, load_model_spec, parse_count, zero_table
from trainlab.precision.formats import format_table

TextTable = tuple[str, list[str], list[list[str]]]


def human_bytes(n: float) -> str:
    """Bytes in binary units (what GPUs and ``nvidia-smi`` report): ``1.5 GiB``."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.2f} {unit}"
        value /= 1024
    return f"{value:.2f} TiB"


def formats_result(names: list[str] | None = None) -> list[dict[str, Any]]:
    return format_table(names)


def formats_tables(rows: list[dict[str, Any]]) -> list[TextTable]:
    cols = ["format", "bits (s/e/m)", "max", "smallest normal", "smallest subnormal", "epsilon", "digits", "inf"]
    body = [[r["name"], f"{r['bits']} (1/{r['exponent_bits']}/{r['mantissa_bits']})", f"{r['max']:.4g}",
             f"{r['min_normal']:.4g}", f"{r['min_subnormal']:.4g}", f"{r['eps']:.4g}", f"{r['decimal_digits']:.2f}",
             "yes" if r["has_inf"] else "no"] for r in rows]
    return [("number formats (derived from the bit layout)", cols, body)]


def memory_result(*, params: str | None, model: str | Path | None, batch: int | None = None,
                  seq: int | None = None, precision: str | None = None, optim: str | None = None,
                  checkpointing: str | None = None, grad_accum: int | None = None) -> dict[str, Any]:
    """Options left as None come from a trainlab config given as ``model``, else from the defaults
    (batch 1, seq 2048, fp32, AdamW, no checkpointing, no accumulation)."""
    if (params is None) == (model is None):
        raise UserError("give exactly one of --params P (e.g. 7B) or --model CONFIG_OR_HF_DIR")
    settings: dict[str, Any] = {}
    if model is not None:
        shape, settings = load_model_spec(model)
    else:
        shape = ModelShape.guess(parse_count(params or "0"))
    given = {"batch": batch, "seq": seq, "precision": precision, "optim": optim, "checkpointing": checkpointing,
             "grad_accum": grad_accum}
    defaults = {"batch": 1, "seq": 2048, "precision": "fp32", "optim": "adamw", "checkpointing": "none",
                "grad_accum": 1, "checkpoint_every": 2}
    kw = defaults | settings | {k: v for k, v in given.items() if v is not None}
    est = estimate_memory(shape, **kw)
    return est.to_dict()


def memory_tables(doc: dict[str, Any]) -> list[TextTable]:
    b = doc["bytes"]
    rows = [[k.replace("_", " "), human_bytes(v), f"{v:,}"] for k, v in b.items()]
    cfg = doc["config"]
    shape = doc["shape"]
    title = (f"memory: {cfg['params']:,} parameters, batch {cfg['batch']} x seq {cfg['seq']}, {cfg['precision']}, "
             f"{cfg['optim']}, checkpointing {cfg['checkpointing']} ({shape['n_layers']} layers, width "
             f"{shape['dim']}; {shape['source']})")
    k = doc["korthikanti"]
    act_rows = [["our decoder, exact count (blocks, copies, embedding, final norm)", human_bytes(b["activations"])],
                ["Korthikanti et al. 2022, per layer", human_bytes(k["per_layer"])],
                ["Korthikanti et al. 2022, all layers", human_bytes(k["total"])]]
    return [(title, ["component", "size", "bytes"], rows), ("activations: two formulas", ["formula", "size"], act_rows)]


def zero_result(*, params: str, gpus: int, optim: str = "adamw") -> dict[str, Any]:
    p = parse_count(params)
    rows = zero_table(p, gpus, optim=optim)
    return {"params": p, "gpus": gpus, "optim": optim, "k": rows[0]["k"], "stages": rows,
            "source": "Rajbhandari et al. 2020, ZeRO, Fig. 1 (fp16 params and grads, K bytes of optimizer state)"}


def zero_tables(doc: dict[str, Any]) -> list[TextTable]:
    rows = [[str(r["stage"]), r["what"], f"{r['gb_per_gpu']:.2f}", f"{r['reduction']:.1f}x"] for r in doc["stages"]]
    title = f"ZeRO: {doc['params']:,} parameters on {doc['gpus']} GPUs, {doc['optim']} (K = {doc['k']:g})"
    return [(title, ["stage", "what is sharded", "GB per GPU", "vs stage 0"], rows)]


def plan_result(*, params: str, gpu_mem: float, seq: int, gpus: int, batch: int = 1, lora_rank: int = 16
                ) -> dict[str, Any]:
    return plan(parse_count(params), gpu_mem, seq=seq, gpus=gpus, batch=batch, lora_rank=lora_rank)


def plan_tables(doc: dict[str, Any]) -> list[TextTable]:
    rec = doc["recommended"]
    rows = [[("-> " if rec is not None and o["name"] == rec["name"] else "   ") + o["name"], f"{o['per_gpu_gb']:.1f}",
             "yes" if o["fits"] else "no", o["reason"]] for o in doc["options"]]
    inp = doc["inputs"]
    title = (f"plan: {inp['params']:,} parameters, {inp['gpus']} x {inp['gpu_mem_gb']:g} GB, seq {inp['seq']} "
             f"({doc['assumptions']})")
    seed = [["this plan", doc["verdict"]], ["the seed's size rule (001)", doc["seed_rule"]],
            ["agree", "yes" if doc["agrees_with_seed"] else "no"]]
    return [(title, ["option", "GB per GPU", "fits", "why"], rows), ("decision", ["", ""], seed)]


__all__ = ["formats_result", "formats_tables", "human_bytes", "memory_result", "memory_tables", "plan_result",
           "plan_tables", "zero_result", "zero_tables"]
