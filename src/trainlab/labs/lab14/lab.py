"""Lab 1.4's shared setup: presets, the `LabEnv` every part receives, and the measurement helpers.

Every measurement of a training step goes through the training loop's own code: whole runs
through `Trainer`, timed steps through `trainlab.train.optimizer_step` (with the loss scaler
training uses), memory through `trainlab.memory.measure.measure_training_step` (which runs the same
step), gradients through `accumulate_gradients`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import nn

from trainlab.bench import time_fn
from trainlab.config import DataConfig, ModelConfig, TrainConfig, preset_dict
from trainlab.data.datasets import collate_padded
from trainlab.data.embedded import PretrainingData, build_pretraining_data
from trainlab.env import EnvInfo
from trainlab.evaluation import validation_loss
from trainlab.labs.common import mib, pct
from trainlab.labs.lab14.hardware import measure_matmul_speeds, why_hardware
from trainlab.memory.estimate import ModelShape, estimate_memory
from trainlab.memory.measure import StepMemory, measure_training_step
from trainlab.model.decoder import Decoder
from trainlab.optim import build_optimizer
from trainlab.results import Figure, Verdict
from trainlab.train.amp import LossScaler, build_loss_scaler
from trainlab.train.callbacks import Callback
from trainlab.train.data import StepBatcher
from trainlab.train.loop import Trainer, TrainResult, accumulate_gradients, optimizer_step
from trainlab.train.objectives import Batch, CausalLMObjective
from trainlab.utils import seed_everything

TITLE = "Lab 1.4: mixed precision, loss scaling, accumulation, checkpointing, memory"
SOURCE_002 = "seed 002 (Lab-1.4 README)"
SOURCE_000 = "seed 000 (labs summary)"
SOURCE_003 = "seed 003 (theory 1.3)"
SOURCE_001 = "seed 001 (learning path)"
MiB = 2**20

Dims = tuple[int, int, int]  # (width, layers, heads)


@dataclass(frozen=True)
class Settings:
    """Sizes and lengths of one preset (tiny: a test in seconds; quick: the demo; full: a GPU)."""

    data_preset: str
    seq: int  # checkpointing and memory parts, where activations should matter
    prec_seq: int
    accum_seq: int
    prec_model: Dims
    prec_batch: int
    prec_steps: int
    trace_model: Dims
    trace_batch: int
    trace_steps: int
    trace_growth_interval: int
    trace_inject: dict[int, str]
    accum_model: Dims
    accum_micro: int
    accum_steps: tuple[int, ...]
    accum_samples: int
    ckpt_models: tuple[Dims, ...]
    ckpt_batch: int
    repeats: int
    mem_model: Dims
    mem_batch: int
    sweep_batches: tuple[int, ...]
    sweep_cap_batch: int
    opt_model: Dims
    opt_batch: int
    opt_accum: int
    lr: float = 3e-3
    warmup: int = 1  # untimed steps before timing (0 in tiny: its times are not looked at)
    matmul_sizes: tuple[int, ...] = (64, 1024)  # square matmuls timed per precision (`hardware`)


SETTINGS: dict[str, Settings] = {
    "tiny": Settings(
        data_preset="tiny", seq=32, prec_seq=32, accum_seq=32, prec_model=(32, 2, 4), prec_batch=4, prec_steps=2,
        trace_model=(32, 2, 4), trace_batch=2, trace_steps=8, trace_growth_interval=2,
        trace_inject={3: "inf", 4: "nan", 6: "inf"},
        accum_model=(32, 2, 4), accum_micro=2, accum_steps=(1, 4), accum_samples=16,
        ckpt_models=((32, 2, 4), (32, 3, 4)), ckpt_batch=4, repeats=1,
        mem_model=(32, 2, 4), mem_batch=2, sweep_batches=(1, 2, 4, 8), sweep_cap_batch=2,
        opt_model=(32, 2, 4), opt_batch=8, opt_accum=4, warmup=0, matmul_sizes=(64, 256)),
    "quick": Settings(
        data_preset="quick", seq=128, prec_seq=64, accum_seq=64, prec_model=(64, 2, 4), prec_batch=8,
        prec_steps=24, trace_model=(32, 2, 4), trace_batch=2, trace_steps=32, trace_growth_interval=6,
        trace_inject={8: "inf", 9: "inf", 10: "nan", 22: "inf"},
        accum_model=(64, 2, 4), accum_micro=2, accum_steps=(1, 4, 8, 16), accum_samples=128,
        ckpt_models=((64, 4, 4), (128, 6, 4)), ckpt_batch=8, repeats=3,
        mem_model=(64, 2, 4), mem_batch=4, sweep_batches=(1, 2, 4, 8, 16, 32, 64), sweep_cap_batch=8,
        opt_model=(96, 4, 4), opt_batch=16, opt_accum=4),
    "full": Settings(
        data_preset="full", seq=512, prec_seq=512, accum_seq=512, prec_model=(512, 8, 8), prec_batch=16,
        prec_steps=300, trace_model=(128, 4, 4), trace_batch=8, trace_steps=200, trace_growth_interval=25,
        trace_inject={40: "inf", 41: "inf", 42: "nan", 120: "inf"},
        accum_model=(384, 6, 6), accum_micro=2, accum_steps=(1, 4, 8, 16), accum_samples=1024,
        ckpt_models=((512, 8, 8), (1024, 12, 16)), ckpt_batch=16, repeats=5,
        mem_model=(256, 4, 4), mem_batch=8, sweep_batches=(1, 2, 4, 8, 16, 32, 64, 128, 256), sweep_cap_batch=64,
        opt_model=(1024, 12, 16), opt_batch=32, opt_accum=8, lr=1e-3),
}


class LabEnv:
    """What every part needs: settings, device, seed, output folder, data (built once)."""

    def __init__(self, settings: Settings, out_dir: Path, device: torch.device, seed: int, env: EnvInfo,
                 rel: Callable[[Path], str] | None = None, preset: str = "quick") -> None:
        self.s = settings
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.device = device
        self.seed = seed
        self.env = env
        self.preset = preset
        self._rel = rel
        self._data: dict[int, PretrainingData] = {}
        self._speeds: dict[str, Any] | None = None

    def matmul_speeds(self) -> dict[str, Any]:
        """bf16/fp16 vs fp32 matmul speeds at ``s.matmul_sizes`` on this device (measured once)."""
        if self._speeds is None:
            self._speeds = measure_matmul_speeds(self.device, self.s.matmul_sizes, repeats=max(1, self.s.repeats))
        return self._speeds

    def why_precision(self, width: int) -> str:
        """Why 16-bit training is (not) faster here, from the measured matmul speeds (`hardware`)."""
        return why_hardware(self.env, self.matmul_speeds(), width)

    def rel(self, path: Path) -> str:
        return self._rel(path) if self._rel is not None else str(path)

    def figure(self, path: Path, caption: str) -> Figure:
        return Figure(path=self.rel(path), caption=caption)

    def data(self, seq: int | None = None) -> PretrainingData:
        """The preset's embedded data packed into ``seq``-token windows (the token streams are cached
        on disk by `build_pretraining_data`; re-packing for another length is cheap)."""
        seq = seq or self.s.seq
        if seq not in self._data:
            dcfg = DataConfig(**{**preset_dict(self.s.data_preset).get("data", {}), "seq_len": seq})
            self._data[seq] = build_pretraining_data(dcfg)
        return self._data[seq]

    @property
    def vocab(self) -> int:
        return len(self.data().tokenizer)

    @property
    def pad_id(self) -> int:
        return int(self.data().tokenizer.pad_token_id)

    def model_config(self, dims: Dims, checkpointing: str = "none", n_kv_heads: int | None = None) -> ModelConfig:
        dim, layers, heads = dims
        # attention pinned to SDPA: the activation formula assumes a fused kernel (q, k, v, out, lse).
        seq = max(self.s.seq, self.s.prec_seq, self.s.accum_seq)
        return ModelConfig(vocab_size=self.vocab, dim=dim, n_layers=layers, n_heads=heads, n_kv_heads=n_kv_heads,
                           max_seq_len=seq, attention="sdpa", checkpointing=checkpointing)  # type: ignore[arg-type]

    def model(self, dims: Dims, checkpointing: str = "none", n_kv_heads: int | None = None) -> Decoder:
        seed_everything(self.seed)
        return Decoder(self.model_config(dims, checkpointing, n_kv_heads))

    def batches(self, n: int, batch: int, offset: int = 0, seq: int | None = None) -> list[Batch]:
        """``n`` fixed micro-batches of ``batch`` training windows (deterministic, for measurements)."""
        data = self.data(seq).train
        out = []
        for i in range(n):
            idx = [(offset + i * batch + j) % len(data) for j in range(batch)]
            out.append(collate_padded([data[k] for k in idx], self.pad_id))
        return out

    def train_config(self, **kw: Any) -> TrainConfig:
        base: dict[str, Any] = dict(lr=self.s.lr, warmup_steps=2, eval_every=0, save_every=0, log_every=1,
                                    eval_batches=2, device=str(self.device), seed=self.seed, grad_clip=1.0)
        base.update(kw)
        return TrainConfig(**base)


_mib, _pct = mib, pct


def _verdict_range(value: float, lo: float, hi: float, *, direction_ok: bool) -> Verdict:
    """consistent inside [lo, hi]; partly when the effect has the claimed sign but another size;
    not reproduced when it is absent or reversed."""
    if lo <= value <= hi:
        return "consistent"
    return "partly" if direction_ok else "not reproduced"


class _Record(Callback):
    """Collects the per-step metrics the loop reports (loss, loss scale, skipped)."""

    def __init__(self) -> None:
        self.steps: list[dict[str, Any]] = []

    def on_step_end(self, trainer: Trainer, step: int, metrics: dict[str, Any]) -> None:
        self.steps.append({k: metrics[k] for k in ("step", "loss", "loss_scale", "skipped", "tokens",
                                                   "step_time_s")})

    def tokens_per_s(self) -> float:
        """Throughput without the first step, which carries one-time costs (lazy initialization)."""
        rest = self.steps[1:] or self.steps
        seconds = sum(r["step_time_s"] for r in rest)
        return sum(r["tokens"] for r in rest) / seconds if seconds > 0 else float("nan")


def _train(lab: LabEnv, name: str, dims: Dims, tcfg: TrainConfig, *, seq: int, scaler: LossScaler | None = None,
           objective: Any = None) -> tuple[TrainResult, Decoder, _Record]:
    """One run of the real training loop on the lab's data (quiet, no TensorBoard)."""
    data = lab.data(seq)
    seed_everything(lab.seed)
    model = Decoder(lab.model_config(dims))
    batcher = StepBatcher(data.train, tcfg.batch_size, tcfg.grad_accum, partial(collate_padded, pad_id=lab.pad_id),
                          tcfg.seed)

    def eval_fn(m: nn.Module) -> dict[str, float]:
        return {"val_loss": validation_loss(m, data.val, batch_size=tcfg.batch_size * tcfg.grad_accum,
                                            max_batches=tcfg.eval_batches, pad_id=lab.pad_id)}

    rec = _Record()
    trainer = Trainer(model, objective or CausalLMObjective(), batcher, tcfg, lab.out_dir / "runs" / name,
                      eval_fn=eval_fn, quiet=True, scaler=scaler, callbacks=[rec], tensorboard=False)
    result = trainer.fit()
    # The lab keeps the curves (metrics.jsonl), not the resumable state: drop the checkpoint files.
    for ckpt in (lab.out_dir / "runs" / name).glob("checkpoint*.pt"):
        ckpt.unlink()
    return result, trainer.model, rec  # type: ignore[return-value]


def _measure(lab: LabEnv, dims: Dims, micro: Sequence[Batch], *, precision: str = "fp32", optim: str = "adamw",
             checkpointing: str = "none", n_kv_heads: int | None = None, cap: int | None = None,
             timeline: bool = False) -> StepMemory:
    """Exact memory of two training steps (the second is the steady state) of a fresh model."""
    tcfg = lab.train_config(optim=optim, precision=precision)
    return measure_training_step(lambda: lab.model(dims, checkpointing, n_kv_heads), CausalLMObjective(), micro,
                                 optimizer=lambda m: build_optimizer(m, tcfg), device=lab.device,
                                 precision=precision, steps=2, memory_cap_bytes=cap,
                                 timeline=timeline)


def _estimate(lab: LabEnv, dims: Dims, batch: int, *, precision: str = "fp32", optim: str = "adamw",
              checkpointing: str = "none", n_kv_heads: int | None = None, grad_accum: int = 1,
              seq: int | None = None) -> Any:
    shape = ModelShape.from_model_config(lab.model_config(dims, checkpointing, n_kv_heads))
    return estimate_memory(shape, batch=batch, seq=seq or lab.s.seq, precision=precision, optim=optim,
                           checkpointing=checkpointing, grad_accum=grad_accum)


def _step_fn(model: nn.Module, micro: Sequence[Batch], opt: torch.optim.Optimizer, device: torch.device,
             precision: str) -> Callable[[], None]:
    """One training step, `trainlab.train.optimizer_step` with the training loss scaler (for timing)."""
    obj = CausalLMObjective(token_accuracy=False)
    scaler = build_loss_scaler(precision, device)  # type: ignore[arg-type]
    moved = [{k: v.to(device) for k, v in mb.items()} for mb in micro]

    def step() -> None:
        optimizer_step(model, obj, moved, opt, scaler, device=device, precision=precision)  # type: ignore[arg-type]

    return step


def _time_step(lab: LabEnv, model: nn.Module, micro: Sequence[Batch], *, precision: str = "fp32",
               optim: str = "adamw", repeats: int | None = None) -> float:
    """Median seconds of one optimizer step (after ``lab.s.warmup`` untimed ones)."""
    model.to(lab.device).train()
    opt = build_optimizer(model, lab.train_config(optim=optim, precision=precision))
    t = time_fn(_step_fn(model, micro, opt, lab.device, precision), device=lab.device, warmup=lab.s.warmup,
                repeats=repeats or lab.s.repeats)
    return t.median_s


def _grads(model: nn.Module, micro: Sequence[Batch], device: torch.device, precision: str = "fp32") -> dict[str, Any]:
    """Loss and gradients of one step (the loop's accumulation), without an update."""
    model.to(device).train()
    model.zero_grad(set_to_none=True)
    stats = accumulate_gradients(model, CausalLMObjective(token_accuracy=False), micro, device=device,
                                 precision=precision)  # type: ignore[arg-type]
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return {"loss": float(stats.loss_sum / stats.count), "grads": grads}


def _max_rel_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    num = max(float((a[k] - b[k]).abs().max()) for k in a)
    den = max(float(b[k].abs().max()) for k in b)
    return num / den if den > 0 else num


def _hardware(env: EnvInfo) -> str:
    return f"measured on {env.short()}"
