"""Lab 1.5, section 4: long-sequence training under a memory cap, and which technique buys what.

The decoder is trained one step at a time at growing lengths in each setup: naive attention (the
baseline), naive attention + full activation checkpointing, flash attention alone, flash +
checkpointing, and (where bf16 is native) flash + checkpointing + bf16. A step that passes the
memory cap is recorded as out-of-memory, not crashed. `factor_shares` then says how much of the
longest trainable length and of the peak-memory saving each factor brings on its own and together,
so "FlashAttention enables long sequences" is credited with what flash attention alone did.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from trainlab.attention.calc import format_bytes
from trainlab.bench import time_fn
from trainlab.config import ModelConfig, TrainConfig
from trainlab.labs.lab15.presets import Preset, empty_cache, flash_backend
from trainlab.memory.measure import measure_training_step
from trainlab.model.decoder import Decoder
from trainlab.optim import build_optimizer
from trainlab.results import Table
from trainlab.train.amp import build_loss_scaler
from trainlab.train.loop import optimizer_step
from trainlab.train.objectives import CausalLMObjective
from trainlab.utils import seed_everything

BASELINE = "naive"


@dataclass(frozen=True)
class TrainSetup:
    key: str  # "naive", "naive+ckpt", "flash", "flash+ckpt", "flash+ckpt+bf16"
    name: str
    attention: str
    checkpointing: str
    precision: str


def train_setups(device: torch.device, env_bf16_native: bool) -> list[TrainSetup]:
    """The baseline, each factor alone, both together, and (bf16 native only) both + bf16."""
    flash = flash_backend(device)
    setups = [TrainSetup(BASELINE, "naive attention", "naive", "none", "fp32"),
              TrainSetup("naive+ckpt", "naive attention + checkpointing", "naive", "full", "fp32"),
              TrainSetup("flash", f"flash ({flash})", flash, "none", "fp32"),
              TrainSetup("flash+ckpt", f"flash ({flash}) + checkpointing", flash, "full", "fp32")]
    if device.type == "cuda" or env_bf16_native:
        setups.append(TrainSetup("flash+ckpt+bf16", f"flash ({flash}) + checkpointing + bf16", flash, "full", "bf16"))
    return setups


def long_sequence_training(preset: Preset, device: torch.device, seed: int = 0, *,
                           bf16_native: bool = False) -> dict[str, Any]:
    """tokens/s and peak memory of decoder training steps at each length, under ``memory_cap_bytes``."""
    results = []
    setups = train_setups(device, bf16_native)
    for setup in setups:
        oom_at: int | None = None
        for t in preset.train_seqs:
            row: dict[str, Any] = {"setup": setup.name, "key": setup.key, "seq": t}
            if oom_at is not None:
                row["oom"] = f"not run: out of memory already at {oom_at} tokens"
                results.append(row)
                continue
            try:
                row |= _train_at(preset, setup, t, device, seed)
            except torch.OutOfMemoryError as exc:
                oom_at = t
                row["oom"] = str(exc)[:200]
                empty_cache(device)
            results.append(row)
    out = {"cap_bytes": preset.memory_cap_bytes, "model": {"dim": preset.train_dim, "layers": preset.train_layers,
           "heads": preset.train_heads, "vocab": preset.train_vocab},
           "setups": {s.key: s.name for s in setups}, "rows": results}
    out["shares"] = factor_shares(out)
    return out


def _train_at(preset: Preset, setup: TrainSetup, t: int, device: torch.device, seed: int) -> dict[str, Any]:
    """One measured training step (memory, under the cap) then timed steps, at ``t`` tokens."""
    seed_everything(seed)
    mcfg = ModelConfig(vocab_size=preset.train_vocab, dim=preset.train_dim, n_layers=preset.train_layers,
                       n_heads=preset.train_heads, max_seq_len=t, attention=setup.attention,
                       checkpointing=setup.checkpointing)  # type: ignore[arg-type]
    model = Decoder.from_config(mcfg, device=device).train()
    tcfg = TrainConfig(precision=setup.precision, device=str(device), lr=1e-3)  # type: ignore[arg-type]
    optimizer = build_optimizer(model, tcfg)
    scaler = build_loss_scaler(tcfg.precision, device)
    objective = CausalLMObjective(token_accuracy=False)
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, preset.train_vocab, (1, t), generator=g).to(device)
    batch = {"input_ids": ids, "labels": ids, "attention_mask": torch.ones_like(ids)}
    # trainlab.memory's step measurement (the one lab 1.4 uses, running the training loop's own
    # step): parameters, gradients, optimizer states and activations, exact on CPU, allocator
    # statistics on CUDA, and a cap that turns an out-of-memory into a recorded result.
    mem = measure_training_step(model, objective, [batch], optimizer=optimizer, device=device,
                                precision=setup.precision, scaler=scaler, steps=1,
                                memory_cap_bytes=preset.memory_cap_bytes, timeline=False)
    if mem.oom:
        raise torch.OutOfMemoryError(mem.oom_message)

    def step() -> None:
        optimizer_step(model, objective, [batch], optimizer, scaler, device=device,
                       precision=tcfg.precision)

    timing = time_fn(step, device=device, warmup=0, repeats=preset.train_timed_steps)
    return {"peak_bytes": mem.peak, "parameters": mem.parameters, "gradients": mem.gradients,
            "optimizer_states": mem.optimizer_states, "activations": mem.activations, "logits": mem.logits,
            "step_s": timing.median_s, "tokens_per_s": t / timing.median_s, "memory_method": mem.method}


def factor_shares(train: dict[str, Any]) -> dict[str, Any]:
    """What each factor bought, from the measured rows (``row["key"]`` names the setup).

    * ``max_seq[key]``: the longest length that setup trained under the cap (0: none);
    * ``saving[key]``: ``1 - peak[key] / peak[naive]`` at ``common_seq``, the longest length where
      every setup ran (None when there is no such length);
    * ``gain[key]``: ``max_seq[key] / max_seq[naive]`` (None when naive ran at no length).
    """
    rows = [r for r in train["rows"] if "key" in r]
    keys = list(dict.fromkeys(r["key"] for r in rows))
    ok = {(r["key"], r["seq"]): r for r in rows if "peak_bytes" in r}
    max_seq = {k: max((s for (kk, s) in ok if kk == k), default=0) for k in keys}
    common = [s for s in sorted({r["seq"] for r in rows}) if all((k, s) in ok for k in keys)]
    common_seq = common[-1] if common else None
    saving: dict[str, float | None] = {}
    for k in keys:
        if common_seq is None or BASELINE not in keys:
            saving[k] = None
        else:
            saving[k] = 1 - ok[(k, common_seq)]["peak_bytes"] / ok[(BASELINE, common_seq)]["peak_bytes"]
    base = max_seq.get(BASELINE, 0)
    gain = {k: (max_seq[k] / base if base else None) for k in keys}
    return {"max_seq": max_seq, "common_seq": common_seq, "saving": saving, "gain": gain}


def shares_text(train: dict[str, Any]) -> str:
    """One sentence per measure: longest trained length and peak saving per setup."""
    sh, names = train["shares"], train["setups"]
    lengths = ", ".join(f"{names[k]} {n or 'none'}" for k, n in sh["max_seq"].items())
    text = f"longest length trained: {lengths}"
    if sh["common_seq"] is not None:
        savings = ", ".join(f"{names[k]} {v:.0%}" for k, v in sh["saving"].items() if k != BASELINE and v is not None)
        text += f"; peak memory saved vs naive at {sh['common_seq']} tokens: {savings}"
    return text


def _train_tables(train: dict[str, Any]) -> list[Table]:
    rows = []
    for r in train["rows"]:
        if "oom" in r:
            rows.append([r["setup"], r["seq"], "OOM", "", r["oom"][:90]])
        else:
            static = r["parameters"] + r["gradients"] + r["optimizer_states"]
            rows.append([r["setup"], r["seq"], r["tokens_per_s"], format_bytes(r["peak_bytes"]),
                         f"activations {format_bytes(r['activations'])}, logits {format_bytes(r['logits'])}, "
                         f"params+grads+AdamW {format_bytes(static)}"])
    m = train["model"]
    tables = [Table(title=f"4. Long-sequence training under a {format_bytes(train['cap_bytes'])} memory cap",
                    columns=["setup", "tokens", "tokens/s", "peak memory", "breakdown / out-of-memory"], rows=rows,
                    note=f"Decoder dim {m['dim']}, {m['layers']} layers, {m['heads']} heads, vocabulary "
                    f"{m['vocab']}, batch 1, AdamW. Peak = high mark of one whole step (forward, backward, "
                    "optimizer) measured by trainlab.memory.measure (exact accounting on CPU, allocator peak on "
                    "CUDA); activations = what the forward keeps for the backward. A step that passes the cap "
                    "raises out-of-memory, which is recorded; longer lengths are then not run.")]
    sh = train.get("shares")
    if sh:
        common = sh["common_seq"]
        tables.append(Table(
            title="4b. Each factor's share: flash attention alone, checkpointing alone, both",
            columns=["setup", "longest length trained", "vs naive", f"peak saved at {common} tokens"
                     if common else "peak saved (no common length)"],
            rows=[[train["setups"][k], n, f"{sh['gain'][k]:.1f}x" if sh["gain"][k] else "—",
                   f"{sh['saving'][k]:.0%}" if sh["saving"][k] is not None else "—"]
                  for k, n in sh["max_seq"].items()],
            note="From the table above: the longest length each setup trained under the cap, and its peak "
                 "memory saving over naive attention at the longest length every setup ran."))
    return tables


__all__ = ["TrainSetup", "factor_shares", "long_sequence_training", "shares_text", "train_setups"]
