"""Lab 1.6's presets: the sizes of every part, and the in-memory MHA -> GQA/MQA variants they share."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from trainlab.labs.common import resolve_preset
from trainlab.model.convert import Init, pool_kv_heads
from trainlab.model.decoder import Decoder

TITLE = "Lab 1.6: MHA, GQA and MQA with a KV cache: bytes, decode speed, quality, uptraining"


@dataclass(frozen=True)
class Preset:
    """What each part measures (see the package docstring)."""

    base_preset: str  # the cached base model (trainlab.recipes.base_model) of this preset: MHA, decoded and converted
    # KV bytes, measured during generation
    kv_batch: int
    kv_prompt: int
    kv_new_tokens: int
    # decode speed: MHA base, its GQA and MQA conversions (same dims), ours dynamic/static vs transformers
    batches: tuple[int, ...]
    batch_context: int
    contexts: tuple[int, ...]
    context_batch: int
    new_tokens: int
    repeats: int
    hf_points: str  # "all" | "batch" (transformers timed on the batch sweep only) | "none"
    # quality: MHA/GQA/MQA trained from scratch with one budget
    quality_dim: int
    quality_layers: int
    quality_heads: int
    quality_kv: tuple[int, ...]
    quality_steps: int
    quality_batch: int
    quality_eval_per_task: int
    quality_eval_batches: int
    # uptraining: base MHA -> GQA (uptrain_kv heads) by mean/first/random, uptrained for fractions of its steps
    uptrain_kv: int
    uptrain_fractions: tuple[float, ...]
    uptrain_inits: tuple[str, ...]
    uptrain_lr_ratio: float  # uptraining lr = the base run's peak lr x this (constant after a short warm-up)
    uptrain_eval_batches: int
    cpu_threads: int | None


PRESETS: dict[str, Preset] = {
    "tiny": Preset(
        base_preset="tiny", kv_batch=2, kv_prompt=6, kv_new_tokens=4,
        batches=(1, 4), batch_context=16, contexts=(16, 48), context_batch=2, new_tokens=4, repeats=1,
        hf_points="batch",
        quality_dim=32, quality_layers=1, quality_heads=4, quality_kv=(4, 2, 1), quality_steps=4, quality_batch=4,
        quality_eval_per_task=1, quality_eval_batches=1,
        uptrain_kv=1, uptrain_fractions=(0.0, 0.05, 0.1), uptrain_inits=("mean", "first", "random"),
        uptrain_lr_ratio=0.3, uptrain_eval_batches=1, cpu_threads=1,
    ),
    "quick": Preset(
        base_preset="quick", kv_batch=4, kv_prompt=32, kv_new_tokens=16,
        batches=(1, 8, 32), batch_context=64, contexts=(128, 512, 1024), context_batch=2, new_tokens=12, repeats=2,
        hf_points="all",
        quality_dim=64, quality_layers=2, quality_heads=8, quality_kv=(8, 4, 2, 1), quality_steps=45,
        quality_batch=8, quality_eval_per_task=2, quality_eval_batches=4,
        uptrain_kv=2, uptrain_fractions=(0.0, 0.01, 0.05, 0.1), uptrain_inits=("mean", "first", "random"),
        uptrain_lr_ratio=0.3, uptrain_eval_batches=2, cpu_threads=1,
    ),
    "full": Preset(
        base_preset="full", kv_batch=8, kv_prompt=128, kv_new_tokens=64,
        batches=(1, 4, 16, 64), batch_context=256, contexts=(128, 512, 1024, 2048, 4096), context_batch=4,
        new_tokens=32, repeats=3, hf_points="all",
        quality_dim=128, quality_layers=4, quality_heads=8, quality_kv=(8, 4, 2, 1), quality_steps=300,
        quality_batch=16, quality_eval_per_task=20, quality_eval_batches=8,
        uptrain_kv=2, uptrain_fractions=(0.0, 0.01, 0.05, 0.1), uptrain_inits=("mean", "first", "random"),
        uptrain_lr_ratio=0.3, uptrain_eval_batches=8, cpu_threads=None,
    ),
}


def get_preset(name: str) -> Preset:
    """The sizes of preset ``name``; an unknown name is a `UserError`."""
    return resolve_preset(PRESETS, name, lab="lab16")


def variant_name(heads: int, kv: int) -> str:
    """``MHA`` (kv = heads), ``MQA`` (kv = 1), else ``GQA-kv`` (kv key/value heads, i.e. kv groups)."""
    return "MHA" if kv == heads else "MQA" if kv == 1 else f"GQA-{kv}"


def kv_variants(heads: int) -> list[int]:
    """MHA, the GQA group counts that divide ``heads`` (halving), MQA: e.g. 8 -> [8, 4, 2, 1]."""
    out, kv = [heads], heads
    while kv > 1:
        kv //= 2
        if heads % kv == 0:
            out.append(kv)
    return out


def reachable_kv(model: Decoder) -> list[int]:
    """The variants a model converts to: its own KV heads and every halving that divides them, down to MQA."""
    return [kv for kv in kv_variants(model.config.n_heads) if model.config.kv_heads % kv == 0]


def to_kv_heads(model: Decoder, kv_heads: int, init: Init = "mean", *, seed: int = 0) -> Decoder:
    """A copy of ``model`` with ``kv_heads`` key/value heads, k/v projections pooled per group
    (`trainlab.model.convert.pool_kv_heads`, the same pooling as ``trainlab convert-gqa``)."""
    cfg = model.config
    new = Decoder(cfg.model_copy(update={"n_kv_heads": kv_heads})).to(model.embed.weight.dtype)
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for name, t in model.state_dict().items():
        if name.endswith(("attn.k_proj.weight", "attn.v_proj.weight")):
            t = pool_kv_heads(t, cfg.kv_heads, kv_heads, init, std=cfg.init_std, generator=generator)
        state[name] = t.clone()
    new.load_state_dict(state)
    return new.eval()
