"""Lab 1.5, section 5: torch.profiler breakdown of one training step, naive vs flash attention."""

from __future__ import annotations

from typing import Any

import torch

from trainlab.bench import synchronize
from trainlab.config import ModelConfig, TrainConfig
from trainlab.labs.lab15.presets import Preset, flash_backend
from trainlab.model.decoder import Decoder
from trainlab.optim import build_optimizer
from trainlab.results import Table
from trainlab.train.amp import NoLossScaler
from trainlab.train.loop import optimizer_step
from trainlab.train.objectives import CausalLMObjective
from trainlab.utils import seed_everything


def profile_step(preset: Preset, device: torch.device, seed: int = 0, top: int = 8) -> dict[str, Any]:
    """Self time by operator for one training step of the decoder (`trainlab.train.optimizer_step`:
    forward, backward, AdamW update), naive vs flash attention."""
    from torch.profiler import ProfilerActivity, profile

    out: dict[str, Any] = {"seq": preset.profile_seq, "runs": []}
    for backend in ("naive", flash_backend(device)):
        seed_everything(seed)
        mcfg = ModelConfig(vocab_size=preset.train_vocab, dim=preset.train_dim, n_layers=preset.train_layers,
                           n_heads=preset.train_heads, max_seq_len=preset.profile_seq, attention=backend)
        model = Decoder.from_config(mcfg, device=device).train()
        g = torch.Generator().manual_seed(seed)
        ids = torch.randint(0, preset.train_vocab, (1, preset.profile_seq), generator=g).to(device)
        batch = {"input_ids": ids, "labels": ids, "attention_mask": torch.ones_like(ids)}
        objective = CausalLMObjective(token_accuracy=False)
        optimizer = build_optimizer(model, TrainConfig(device=str(device), lr=1e-3))
        scaler = NoLossScaler()  # fp32: the scaler is the identity

        def step(model=model, objective=objective, batch=batch, optimizer=optimizer, scaler=scaler) -> None:
            optimizer_step(model, objective, [batch], optimizer, scaler, device=device)

        step()  # warm-up outside the trace (the optimizer allocates its state here)
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
        with profile(activities=activities) as prof:
            step()
            synchronize(device)
        use_cuda = device.type == "cuda"
        events = [e for e in prof.key_averages() if not e.key.startswith("ProfilerStep")]
        key = "self_device_time_total" if use_cuda else "self_cpu_time_total"
        total = sum(getattr(e, key) for e in events) or 1.0
        ranked = sorted(events, key=lambda e: -getattr(e, key))
        rows = [{"op": e.key, "calls": int(e.count), "self_ms": getattr(e, key) / 1e3,
                 "share": getattr(e, key) / total} for e in ranked[:top]]
        ranges = {e.key: e.cpu_time_total / 1e3 for e in events if e.key.startswith("flash_torch.")}
        out["runs"].append({"backend": backend, "total_self_ms": total / 1e3, "top": rows, "ranges_ms": ranges,
                            "time_kind": "device" if use_cuda else "cpu"})
    return out


def _profile_tables(prof: dict[str, Any]) -> list[Table]:
    tables = []
    for r in prof["runs"]:
        rows = [[e["op"], e["calls"], e["self_ms"], f"{e['share']:.1%}"] for e in r["top"]]
        extra = "; ".join(f"{k}: {v:.1f} ms" for k, v in r["ranges_ms"].items())
        tables.append(Table(title=f"5. Profile of one training step at {prof['seq']} tokens: {r['backend']} "
                                  f"(total self {r['time_kind']} time {r['total_self_ms']:.1f} ms)",
                            columns=["operator", "calls", f"self {r['time_kind']} ms", "share"], rows=rows,
                            note=extra))
    return tables
