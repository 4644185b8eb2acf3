"""Which training technique fits a model on a GPU: the decision tree, with estimated memory.

The seed documents (001, "technique decision tree") give a rule by model size only::

    < 7B → LoRA on one GPU;  7-30B → QLoRA + DDP;  30-70B → DeepSpeed ZeRO-3;  ≥ 70B → Megatron + pipeline

`plan` instead estimates the memory per GPU of each option and recommends the first that fits,
in the order a practitioner would try them (best quality and simplest first)::

    full fine-tune (1 GPU, or DDP) → ZeRO-1 → ZeRO-2 → ZeRO-3 → LoRA → QLoRA → ZeRO-3 + CPU offload
    → pipeline parallel

and prints the seed's rule beside its answer. All options train in bf16 autocast with full
activation checkpointing and micro-batch 1 (the memory-lean setting; raise ``batch`` to see more).
Per option, bytes per GPU (``Ψ`` parameters, ``N`` GPUs, ``A`` activations and logits):

* full fine-tune: fp32 weights, gradients, AdamW states: ``16·Ψ + A`` (`trainlab.memory.estimate`);
* ZeRO stage s: Rajbhandari et al. 2020, Fig. 1 with K = 12 (`zero_bytes_per_gpu`) ``+ A``;
* LoRA (Hu et al. 2021, rank r on every block matmul): frozen bf16 base ``2·Ψ`` + adapters
  ``16·Ψ_lora`` + ``A``;
* QLoRA (Dettmers et al. 2023): NF4 base with double quantization, 4.127 bits per block weight
  (4 bits + an fp8 constant per 64 values + an fp32 constant per 256 constants), bf16 embeddings
  and norms, LoRA adapters as above, ``+ A``;
* ZeRO-3 + offload (ZeRO-Infinity, Rajbhandari et al. 2021): weights, gradients and optimizer
  states in CPU memory (``16·Ψ/N`` each GPU's share); the GPU holds two layers' bf16 weights
  (the one computing, the one prefetched) ``+ A``;
* pipeline parallel (GPipe, Huang et al. 2019; 1F1B schedule, Narayanan et al. 2021): ``L/N``
  layers and their model states per GPU, ``16·Ψ/N + A`` (1F1B keeps at most ``N`` micro-batches
  of ``L/N`` layers in flight: about one micro-batch of all layers).

A GPU "fits" an option when the estimate is at most ``usable_fraction`` (0.9) of its memory: the
CUDA context, the allocator's fragmentation and the kernels' workspaces take the rest.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from trainlab.errors import UserError
from trainlab.memory.estimate import ModelShape, decoder_activations, zero_bytes_per_gpu

#: Bits per quantized weight in QLoRA: 4 + 8/64 (fp8 block constants) + 32/(64·256) (fp32 second level).
NF4_BITS = 4 + 8 / 64 + 32 / (64 * 256)


@dataclass
class Option:
    name: str
    per_gpu_bytes: float
    breakdown: dict[str, float]
    needs_gpus: int = 1
    cpu_bytes: float = 0.0
    fits: bool = False
    reason: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "per_gpu_bytes": self.per_gpu_bytes, "per_gpu_gb": self.per_gpu_bytes / 1e9,
                "breakdown": self.breakdown, "needs_gpus": self.needs_gpus, "cpu_bytes": self.cpu_bytes,
                "fits": self.fits, "reason": self.reason}


def seed_rule(params: int) -> str:
    """The seed's size-only decision tree (001)."""
    if params < 7e9:
        return "LoRA on one GPU"
    if params < 30e9:
        return "QLoRA + DDP"
    if params < 70e9:
        return "DeepSpeed ZeRO-3"
    return "Megatron + pipeline parallel"


def _family(name: str) -> str:
    """The technique family of an option name, to compare with the seed's rule."""
    lower = name.lower()
    for key, family in (("qlora", "qlora"), ("lora", "lora"), ("offload", "zero"), ("zero", "zero"),
                        ("pipeline", "pipeline"), ("full", "full")):
        if key in lower:
            return family
    return lower


def lora_params(shape: ModelShape, rank: int) -> int:
    """Adapter parameters of rank-``rank`` LoRA on q, k, v, o, gate, up and down of every block."""
    d, dq, dkv, f = shape.dim, shape.q_dim, shape.kv_dim, shape.ffn_dim
    per_layer = rank * ((d + dq) + 2 * (d + dkv) + (dq + d) + 2 * (d + f) + (f + d))
    return shape.n_layers * per_layer


def plan(params: int, gpu_mem_gb: float, *, seq: int = 2048, gpus: int = 1, batch: int = 1, lora_rank: int = 16,
         usable_fraction: float = 0.9, shape: ModelShape | None = None) -> dict[str, Any]:
    """Walk the options (module docstring); return them, the recommendation and the seed's rule."""
    if gpu_mem_gb <= 0:
        raise UserError(f"--gpu-mem must be positive (GB), got {gpu_mem_gb}")
    if gpus < 1 or seq < 2 or batch < 1:
        raise UserError(f"need gpus >= 1, seq >= 2, batch >= 1; got gpus={gpus}, seq={seq}, batch={batch}")
    shape = shape or ModelShape.guess(params)
    psi = float(params)
    budget = gpu_mem_gb * 1e9 * usable_fraction
    act = decoder_activations(shape, batch, seq, "bf16", "full")
    # Activations with full checkpointing, the loss head, and the recompute of one block in backward.
    a = float(act.total + act.logits_transient + act.recompute)
    block = float(shape.block_matmul_params + 2 * shape.dim)
    embed = float(shape.vocab_size * shape.dim * (1 if shape.tie_embeddings else 2))
    n_lora = float(lora_params(shape, lora_rank))
    options: list[Option] = []

    def add(name: str, breakdown: dict[str, float], needs: int = 1, cpu: float = 0.0) -> None:
        options.append(Option(name, sum(breakdown.values()), breakdown, needs, cpu))

    add("full fine-tune" + (f" (DDP, {gpus} GPUs)" if gpus > 1 else " (1 GPU)"),
        {"model_states": zero_bytes_per_gpu(params, gpus, 0), "activations": a})
    if gpus > 1:
        for stage in (1, 2, 3):
            add(f"full fine-tune, ZeRO-{stage} ({gpus} GPUs)",
                {"model_states": zero_bytes_per_gpu(params, gpus, stage), "activations": a}, needs=gpus)
    add(f"LoRA r={lora_rank} (frozen bf16 base)",
        {"frozen_base": 2 * psi, "adapters_and_optimizer": 16 * n_lora, "activations": a})
    quantized = float(shape.n_layers) * float(shape.block_matmul_params)
    add(f"QLoRA r={lora_rank} (NF4 base)",
        {"frozen_base_nf4": quantized * NF4_BITS / 8, "embeddings_and_norms_bf16": 2 * max(psi - quantized, 0.0),
         "adapters_and_optimizer": 16 * n_lora, "activations": a})
    add(f"full fine-tune, ZeRO-3 + CPU offload ({gpus} GPU{'s' if gpus > 1 else ''})",
        {"working_layers_bf16": 2 * 2 * max(block, embed / 2), "activations": a}, needs=gpus, cpu=16 * psi)
    if gpus > 1:
        add(f"full fine-tune, pipeline parallel ({gpus} stages)",
            {"model_states": 16 * psi / gpus, "activations": a}, needs=gpus)

    recommended: Option | None = None
    for opt in options:
        need_gb = opt.per_gpu_bytes / 1e9
        if opt.needs_gpus > gpus:
            opt.reason = f"needs {opt.needs_gpus} GPUs"
        elif opt.per_gpu_bytes <= budget:
            opt.fits = True
            opt.reason = f"{need_gb:.1f} GB <= {budget / 1e9:.1f} GB usable"
            if recommended is None:
                recommended = opt
        else:
            opt.reason = f"{need_gb:.1f} GB > {budget / 1e9:.1f} GB usable"
    if recommended is not None:
        for opt in options:
            if opt is not recommended and opt.fits:
                opt.reason += " (fits, but a simpler or higher-quality option fits first)"
    rule = seed_rule(params)
    rule_family = {"LoRA on one GPU": "lora", "QLoRA + DDP": "qlora", "DeepSpeed ZeRO-3": "zero",
                   "Megatron + pipeline parallel": "pipeline"}[rule]
    smallest = min(options, key=lambda o: o.per_gpu_bytes)
    return {
        "inputs": {"params": params, "gpu_mem_gb": gpu_mem_gb, "seq": seq, "gpus": gpus, "batch": batch,
                   "lora_rank": lora_rank, "usable_fraction": usable_fraction},
        "shape": shape.to_dict(),
        "assumptions": "bf16 autocast, AdamW, full activation checkpointing, micro-batch "
                       f"{batch}; activations {a / 1e9:.2f} GB per GPU",
        "options": [o.to_dict() for o in options],
        "recommended": recommended.to_dict() if recommended is not None else None,
        "verdict": (f"recommended: {recommended.name}" if recommended is not None else
                    f"nothing fits: the smallest option ({smallest.name}) needs "
                    f"{smallest.per_gpu_bytes / 1e9:.1f} GB per GPU; add GPUs or memory"),
        "seed_rule": rule,
        "agrees_with_seed": recommended is not None and _family(recommended.name) == rule_family,
    }


__all__ = ["NF4_BITS", "Option", "lora_params", "plan", "seed_rule"]
