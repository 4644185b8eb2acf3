"""``trainlab calc lora``: what a LoRA adapter costs on a model, from its shape alone.

For an adapted matrix ``W ∈ R^{d×k}`` (``k`` inputs, ``d`` outputs) LoRA trains ``A ∈ R^{r×k}`` and ``B ∈ R^{d×r}``:
``r(d + k)`` parameters instead of ``dk``, a compression of ``r(d + k) / (dk)`` (Hu et al., 2021). Summed over
the target matrices of every layer: Llama-2-7B (4096 wide, 32 layers), r = 8 on q_proj and v_proj:
``32 · 2 · 8 · (4096 + 4096) = 4,194,304`` parameters (the LoRA paper's GPT-3 175B at r=4 on W_q, W_v: 4.7M).
DoRA adds one magnitude per output row (``d``). Adapter bytes: parameters × bytes per element (fp32 as trained).

Shapes of Llama-style models (ours, Llama, Mistral, Qwen): q_proj ``dim → heads·head_dim``, k/v_proj
``dim → kv_heads·head_dim``, o_proj back, gate/up_proj ``dim → intermediate``, down_proj back. GPT-2: c_attn
``dim → 3·dim``, attn.c_proj ``dim → dim``, c_fc ``dim → intermediate``, mlp.c_proj back (the name c_proj
matches both, as in PEFT).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from trainlab.errors import UserError
from trainlab.peft.config import ALL_LINEAR


def module_shapes(*, dim: int, intermediate: int, heads: int, kv_heads: int, head_dim: int | None = None,
                  arch: str = "llama") -> dict[str, list[tuple[int, int]]]:
    """Per layer: module name -> the ``(in, out)`` of every matrix it names."""
    hd = head_dim or dim // heads
    if arch == "gpt2":
        return {"c_attn": [(dim, 3 * dim)], "c_proj": [(dim, dim), (intermediate, dim)],
                "c_fc": [(dim, intermediate)]}
    q, kv = heads * hd, kv_heads * hd
    return {"q_proj": [(dim, q)], "k_proj": [(dim, kv)], "v_proj": [(dim, kv)], "o_proj": [(q, dim)],
            "gate_proj": [(dim, intermediate)], "up_proj": [(dim, intermediate)], "down_proj": [(intermediate, dim)]}


def lora_calc(*, layers: int, dim: int, intermediate: int, heads: int, kv_heads: int | None = None,
              head_dim: int | None = None, r: int = 8, targets: str | list[str] = ("q_proj", "v_proj"),  # type: ignore[assignment]
              arch: str = "llama", dora: bool = False, base_params: int | None = None,
              source: str = "shape") -> dict[str, Any]:
    """The ``--json`` document of ``trainlab calc lora`` (module docstring)."""
    if min(layers, dim, intermediate, heads, r) <= 0:
        raise UserError("--layers, --hidden, --intermediate, --heads and --r must be positive")
    kv = kv_heads or heads
    if heads % kv or (head_dim is None and dim % heads):
        raise UserError(f"--heads {heads} / --kv-heads {kv} / --hidden {dim} do not divide")
    shapes = module_shapes(dim=dim, intermediate=intermediate, heads=heads, kv_heads=kv, head_dim=head_dim,
                           arch=arch)
    names = list(shapes) if targets == ALL_LINEAR else (
        [t.strip() for t in targets.split(",") if t.strip()] if isinstance(targets, str) else list(targets))
    unknown = [n for n in names if n.rsplit(".", 1)[-1] not in shapes]
    if unknown or not names:
        raise UserError(f"--targets: unknown module {', '.join(unknown) or '(none)'}; this architecture has "
                        f"{', '.join(shapes)} (or all-linear)")
    matrices = []
    per_layer = 0
    for name in dict.fromkeys(n.rsplit(".", 1)[-1] for n in names):
        for k, d in shapes[name]:
            params = r * (d + k) + (d if dora else 0)
            per_layer += params
            matrices.append({"module": name, "in": k, "out": d, "full_params": d * k, "lora_params": params,
                             "compression": params / (d * k)})
    trainable = layers * per_layer
    out: dict[str, Any] = {
        "source": source, "arch": arch, "layers": layers, "hidden": dim, "intermediate": intermediate,
        "heads": heads, "kv_heads": kv, "r": r, "method": "dora" if dora else "lora", "targets": names,
        "matrices": matrices, "per_layer_params": per_layer, "trainable_params": trainable,
        "adapter_bytes": {"fp32": 4 * trainable, "bf16": 2 * trainable},
    }
    if base_params:
        out["base_params"] = base_params
        out["trainable_fraction"] = trainable / base_params
        linear = layers * sum(k * d for mats in shapes.values() for k, d in mats)
        out["model_states_bytes"] = model_states(base_params, linear, trainable)
    return out


#: NF4 with double quantization, bits per weight: 4-bit codes + 8-bit absmax per 64 + fp32 absmax per 64·256
NF4_DQ_BITS = 4 + 8 / 64 + 32 / (64 * 256)


def model_states(params: int, linear: int, trainable: int) -> dict[str, int]:
    """Bytes of weights + gradients + AdamW states (activations aside: ``trainlab calc memory``), as trainlab
    trains: fp32 master weights, fp32 gradients and two fp32 AdamW states for the trainable parameters.

    full fine-tune ``16·P``; LoRA ``4·P + 16·T`` (the base frozen: no gradient, no state); QLoRA
    ``4·(P − L) + L·4.127/8 + 16·T`` with the ``L`` weights of the base's linear layers in NF4 (double quantized).
    """
    return {"full_finetune": 16 * params, "lora": 4 * params + 16 * trainable,
            "qlora": 4 * (params - linear) + round(linear * NF4_DQ_BITS / 8) + 16 * trainable}


def lora_calc_for_model(model: str | Path, **kwargs: Any) -> dict[str, Any]:
    """`lora_calc` with the shape read from a trainlab YAML, an HF model folder or its ``config.json``."""
    from trainlab.memory.estimate import load_shape, read_model_config

    path, raw = read_model_config(model)
    shape = load_shape(model)
    arch = "gpt2" if raw is not None and raw.get("model_type") == "gpt2" else "llama"
    return lora_calc(layers=shape.n_layers, dim=shape.dim, intermediate=shape.ffn_dim, heads=shape.n_heads,
                     kv_heads=shape.n_kv_heads, head_dim=shape.head_dim, arch=arch, base_params=shape.params,
                     source=str(path), **kwargs)


def lora_tables(doc: dict[str, Any]) -> list[tuple[str, list[str], list[list[str]]]]:
    rows = [[m["module"], f"{m['in']} -> {m['out']}", f"{m['full_params']:,}", f"{m['lora_params']:,}",
             f"{m['compression']:.4%}"] for m in doc["matrices"]]
    title = (f"{doc['method']} r={doc['r']} on {', '.join(doc['targets'])} x {doc['layers']} layers: "
             f"{doc['trainable_params']:,} trainable parameters, adapter {doc['adapter_bytes']['fp32']:,} bytes fp32")
    if "trainable_fraction" in doc:
        title += f" ({doc['trainable_fraction']:.4%} of {doc['base_params']:,})"
    tables = [(title, ["module", "in -> out", "full", "lora r(d+k)", "r(d+k)/(dk)"], rows)]
    states = doc.get("model_states_bytes")
    if states:
        tables.append(("weights + gradients + AdamW states (fp32 master weights; activations: trainlab calc memory)",
                       ["training", "bytes", "GiB"],
                       [[k.replace("_", " "), f"{v:,}", f"{v / 2**30:.2f}"] for k, v in states.items()]))
    return tables
