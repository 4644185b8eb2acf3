"""The PEFT lab's runs: every method trained the same way, and what is measured of each.

One SFT run per method (`trainlab.recipes.align.run_alignment` with ``peft.method=...``) from the embedded
base model, on the same task data, for the same number of steps and batch; only the learning rate differs
(adapters start at or near the base function and learn at a higher rate than full fine-tuning, as every
PEFT recipe sets it). Measured per run:

* trainable parameters (after injection) and their share of the model;
* weights held (parameters and buffers: a QLoRA base is NF4 buffers) and the exact training memory of one
  step (`trainlab.memory.measure.training_memory`: weights, gradients and AdamW states of the trainable
  parameters, activations saved for backward), plus the process peak the run's meter saw;
* step time (median of the logged steps), training time;
* quality: oracle accuracy on held-out task prompts (greedy) and the held-out completion loss of the correct
  answers (nats/token), which separates methods even where a short run answers nothing right;
* the saved adapter file (``adapter/adapter_model.safetensors``; the full fine-tune's ``model.safetensors``).
"""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from trainlab.errors import UserError
from trainlab.labs.common import resolve_preset, slug


@dataclass(frozen=True)
class Settings:
    steps: int
    batch: int
    n_train: int
    n_eval_per_task: int
    ranks: tuple[int, ...]  # LoRA rank sweep (besides the table's r = 8)
    virtual: int  # virtual tokens of prompt / P-tuning / prefix


PRESETS: dict[str, Settings] = {
    "tiny": Settings(steps=3, batch=4, n_train=64, n_eval_per_task=2, ranks=(2,), virtual=4),
    "quick": Settings(steps=16, batch=16, n_train=512, n_eval_per_task=6, ranks=(2, 32), virtual=8),
    "full": Settings(steps=400, batch=32, n_train=20000, n_eval_per_task=100, ranks=(1, 2, 4, 16, 32, 64),
                     virtual=20),
}

FULL_LR = 2e-3  # the tuned SFT rate of the embedded model (trainlab.align.config)


@dataclass(frozen=True)
class MethodSpec:
    label: str
    method: str  # peft.method ("none": full fine-tune)
    lr: float
    overrides: tuple[str, ...] = ()


def methods(virtual: int) -> list[MethodSpec]:
    """The table's rows: a full fine-tune, the nine methods of seed 001, DoRA as an extra row."""
    v = f"peft.num_virtual_tokens={virtual}"
    return [
        MethodSpec("full fine-tune", "none", FULL_LR),
        MethodSpec("LoRA r8", "lora", 1e-2, ("peft.r=8", "peft.alpha=16")),
        MethodSpec("QLoRA r8 (NF4 base)", "qlora", 1e-2, ("peft.r=8", "peft.alpha=16")),
        MethodSpec("AdaLoRA (r 12 -> 8)", "adalora", 1e-2, ("peft.r=8", "peft.alpha=16", "peft.adalora_init_r=12")),
        MethodSpec("bottleneck (Houlsby, 16)", "bottleneck", 1e-2, ("peft.adapter_size=16",)),
        MethodSpec("prefix tuning", "prefix", 1e-2, (v,)),
        MethodSpec("prompt tuning", "prompt", 3e-2, (v, "peft.prompt_init=vocab")),
        MethodSpec("P-tuning (MLP)", "ptuning", 1e-2, (v,)),
        MethodSpec("IA3", "ia3", 3e-2),
        MethodSpec("BitFit", "bitfit", 1e-2),
        MethodSpec("DoRA r8 (extra)", "dora", 1e-2, ("peft.r=8", "peft.alpha=16")),
    ]


@dataclass
class MethodRow:
    label: str
    method: str
    status: str = "ok"  # ok | refused
    note: str = ""
    lr: float = 0.0
    trainable: int = 0
    total: int = 0
    weights_bytes: int = 0
    memory: dict[str, int] = field(default_factory=dict)
    meter_peak_bytes: int = 0
    step_time_s: float = float("nan")
    train_time_s: float = float("nan")
    accuracy: float = float("nan")
    heldout_loss: float = float("nan")
    final_loss: float = float("nan")
    file_bytes: int = 0
    steps: int = 0

    @property
    def training_bytes(self) -> int:
        """Exact training memory of a step, buffers included (a quantized base lives in buffers)."""
        return int(self.memory.get("total", 0)) + self.weights_bytes - int(self.memory.get("parameters", 0))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"training_bytes": self.training_bytes}


def settings(preset: str) -> Settings:
    return resolve_preset(PRESETS, preset, lab="peft")


def stage_overrides(s: Settings, seed: int, device: str) -> list[str]:
    return [f"train.max_steps={s.steps}", f"train.batch_size={s.batch}", f"align_data.n_train={s.n_train}",
            f"align_data.n_eval_per_task={s.n_eval_per_task}", "align_data.n_eval_pairs=0", "train.eval_every=0",
            "train.warmup_steps=2", "train.log_every=1", "train.save_every=0", f"train.seed={seed}",
            f"train.device={device}"]


def weights_bytes(model: nn.Module) -> int:
    """Bytes of parameters and buffers (shared tensors once)."""
    seen: set[int] = set()
    total = 0
    for t in [*model.parameters(), *model.buffers()]:
        if id(t) not in seen:
            seen.add(id(t))
            total += t.numel() * t.element_size()
    return total


def heldout_examples(data: Any) -> Any:
    """The held-out prompts with their correct answers, as an SFT dataset (the held-out loss)."""
    from trainlab.align.datasets import SFTDataset
    from trainlab.align.records import CompletionRecord

    records = [CompletionRecord(prompt=r.prompt, completion=r.answer) for r in data.eval_records]
    return SFTDataset(data.tokenizer, records)


def run_method(spec: MethodSpec, *, base_dir: Path, out_dir: Path, s: Settings, seed: int, device: str,
               extra: list[str] | None = None, data: Any = None, heldout: Any = None) -> MethodRow:
    """Train one row (module docstring); a method the model cannot take (BitFit without biases) is a
    ``refused`` row carrying the reason."""
    from trainlab.recipes.align import completion_loss, run_alignment, stage_config

    overrides = [*stage_overrides(s, seed, device), f"train.lr={spec.lr}", f"peft.method={spec.method}",
                 *spec.overrides, *(extra or [])]
    cfg = stage_config("sft", "quick", seed=seed, device=device, overrides=overrides)
    row = MethodRow(spec.label, spec.method, lr=spec.lr)
    try:
        run = run_alignment("sft", cfg, base_dir, out_dir / slug(spec.label), quiet=True, data=data)
    except UserError as exc:
        row.status, row.note = "refused", str(exc)
        return row
    sm = run.summary
    peft = sm.get("peft") or {}
    model = run.model
    row.trainable = int(peft.get("trainable_params") or sum(p.numel() for p in model.parameters()
                                                            if p.requires_grad))
    row.total = int(peft.get("total_params") or sum(p.numel() for p in model.parameters()))
    row.note = "; ".join(peft.get("notes") or [])
    row.weights_bytes = weights_bytes(model)
    row.memory = {k: int(v) for k, v in sm["memory"].items()}
    row.meter_peak_bytes = int((sm.get("peak_memory") or {}).get("peak_bytes", 0))
    times = [h["step_time_s"] for h in sm["history"] if "step_time_s" in h]
    row.step_time_s = statistics.median(times) if times else sm["train_time_s"] / max(sm["steps"], 1)
    row.train_time_s = float(sm["train_time_s"])
    row.final_loss = float(sm["final_loss"])
    row.steps = int(sm["steps"])
    if sm.get("accuracy"):
        row.accuracy = float(sm["accuracy"]["overall"])
    if heldout is not None:
        pad = run.data.pad_id if run.data is not None else int(run.tokenizer.eos_token_id)
        was = model.training
        model.eval()
        row.heldout_loss = float(completion_loss(model, heldout, pad)["eval_loss"])
        model.train(was)
    folder = Path(sm["peft"]["adapter_dir"]) if peft.get("adapter_dir") else Path(sm["model_dir"])
    files = sorted(folder.glob("*.safetensors"))
    row.file_bytes = sum(f.stat().st_size for f in files)
    return row


def shared_data(base_dir: Path, s: Settings, seed: int, device: str) -> tuple[Any, Any]:
    """The tokenized SFT data (built once, every run trains on it) and the held-out examples."""
    from trainlab.recipes.align import build_alignment_data, stage_config
    from trainlab.recipes.align_model import load_policy, max_positions

    cfg = stage_config("sft", "quick", seed=seed, device=device, overrides=stage_overrides(s, seed, device))
    model, tokenizer = load_policy(base_dir, "cpu")
    data = build_alignment_data("sft", cfg, tokenizer, max_positions=max_positions(model))
    return data, heldout_examples(data)


__all__ = ["FULL_LR", "PRESETS", "MethodRow", "MethodSpec", "Settings", "heldout_examples", "methods",
           "run_method", "settings", "shared_data", "stage_overrides", "weights_bytes"]
