"""Quality of MHA/GQA/MQA trained with one budget, and MHA -> GQA conversion with uptraining.

Quality (Ainslie et al. 2023, table 1, on T5: GQA close to MHA, MQA a little below): decoders of one
width, depth and number of query heads, differing only in key/value heads, each trained from scratch by
the one Trainer on the embedded corpus with the same steps, batch, learning rate and data order;
validation loss on the same held-out windows, oracle accuracy on held-out task problems (greedy),
parameter counts and KV bytes per token.

Uptraining (Ainslie et al. 2023, section 2.1 and figure 4: convert by mean-pooling, then uptrain for a
fraction α of the pre-training steps; mean > first > random): the cached base model (MHA) converted to
``uptrain_kv`` key/value heads with each init (`trainlab.labs.lab16.presets.to_kv_heads`, the pooling of
``trainlab convert-gqa``), then trained further on the pre-training data. Validation loss right after
conversion (α = 0) and after α · (pre-training steps) uptraining steps. The rate is constant (the base
run's peak learning rate times ``uptrain_lr_ratio``, no warm-up or decay), so one run evaluated at each
α's step gives what separate runs of those lengths would. Reference points: the MHA base model itself,
and a GQA model of the same shape trained from scratch with the pre-training recipe for the largest
uptraining budget (the same compute as the longest uptraining).
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

from trainlab.config import RunConfig
from trainlab.data.datasets import collate_padded
from trainlab.data.embedded import PretrainingData
from trainlab.data.tasks import TASKS, make_task_records
from trainlab.evaluation import task_accuracy, validation_loss
from trainlab.labs.lab16.presets import Preset, to_kv_heads, variant_name
from trainlab.memory.kv import kv_cache_bytes
from trainlab.model.decoder import Decoder
from trainlab.recipes.pretrain import pretraining_trainer
from trainlab.train import Callback, StepBatcher, Trainer
from trainlab.train.objectives import CausalLMObjective


def _val(model: Decoder, data: PretrainingData, batch: int, batches: int) -> float:
    return validation_loss(model, data.val, batch_size=batch, max_batches=batches, pad_id=data.tokenizer.pad_token_id)


def quality(preset: Preset, base_cfg: RunConfig, data: PretrainingData, out_dir: Path, *, seed: int = 0
            ) -> dict[str, Any]:
    """Train one decoder per ``preset.quality_kv`` with the same budget; losses, accuracy, sizes."""
    records = make_task_records(preset.quality_eval_per_task * len(TASKS), seed + 7, split="eval")
    train = base_cfg.train.model_copy(update={
        "max_steps": preset.quality_steps, "batch_size": preset.quality_batch, "grad_accum": 1,
        "warmup_steps": max(1, preset.quality_steps // 10), "eval_every": 0, "save_every": 0,
        "log_every": max(1, preset.quality_steps), "seed": seed})
    rows = []
    for kv in preset.quality_kv:
        model_cfg = base_cfg.model.model_copy(update={
            "dim": preset.quality_dim, "n_layers": preset.quality_layers, "n_heads": preset.quality_heads,
            "n_kv_heads": kv})
        cfg = base_cfg.model_copy(update={"model": model_cfg, "train": train})
        name = variant_name(preset.quality_heads, kv)
        trainer, _ = pretraining_trainer(cfg, out_dir / name.lower(), data, quiet=True)
        trainer.eval_fn = None
        result = trainer.fit()
        trainer.release_checkpoint()
        model = trainer.model.eval()
        acc = task_accuracy(model, data.tokenizer, records)
        c = model.config
        rows.append({"variant": name, "kv_heads": kv, "params": model.num_parameters(),
                     "attention_params": sum(p.numel() for n, p in model.named_parameters() if ".attn." in n),
                     "kv_bytes_per_token": kv_cache_bytes(c.n_layers, kv, c.head_dim, 1, 1, 4),
                     "val_loss": _val(model, data, preset.quality_batch, preset.quality_eval_batches),
                     "final_train_loss": result.final_loss, "accuracy": acc.overall, "accuracy_per_task": acc.per_task,
                     "train_time_s": result.train_time_s, "tokens": result.tokens})
    return {"rows": rows, "steps": preset.quality_steps, "batch": preset.quality_batch,
            "seq_len": base_cfg.data.seq_len, "dim": preset.quality_dim, "layers": preset.quality_layers,
            "heads": preset.quality_heads, "eval_problems": len(records), "lr": train.lr}


class _EvalAt(Callback):
    """Validation loss after the given optimizer steps."""

    def __init__(self, steps: set[int], evaluate: Any, log: dict[int, float]) -> None:
        self.steps, self.evaluate, self.log = steps, evaluate, log

    def on_step_end(self, trainer: Trainer, step: int, metrics: dict[str, Any]) -> None:
        if step in self.steps:
            self.log[step] = self.evaluate(trainer.model)


def uptraining(preset: Preset, base_cfg: RunConfig, base: Decoder, data: PretrainingData, out_dir: Path, *,
               seed: int = 0) -> dict[str, Any]:
    """Validation loss of the converted base model per init and uptraining fraction (module docstring)."""
    pre_steps = base_cfg.train.max_steps
    steps = sorted({round(f * pre_steps) for f in preset.uptrain_fractions})
    longest = max(steps)
    bs = base_cfg.train.batch_size
    evaluate = partial(_val, data=data, batch=bs, batches=preset.uptrain_eval_batches)
    heads, kv = base.config.n_heads, preset.uptrain_kv
    curves: dict[str, dict[int, float]] = {}
    times: dict[str, float] = {}
    lr = base_cfg.train.lr * preset.uptrain_lr_ratio
    for init in preset.uptrain_inits:
        model = to_kv_heads(base, kv, init, seed=seed)  # type: ignore[arg-type]
        log: dict[int, float] = {0: evaluate(model)}
        if longest > 0:
            cfg = base_cfg.train.model_copy(update={
                "max_steps": longest, "lr": lr, "warmup_steps": 0, "min_lr_ratio": 1.0, "eval_every": 0,
                "save_every": 0, "log_every": longest, "seed": seed})
            batcher = StepBatcher(data.train, bs, cfg.grad_accum,
                                  partial(collate_padded, pad_id=data.tokenizer.pad_token_id), seed)
            trainer = Trainer(model, CausalLMObjective(), batcher, cfg, out_dir / f"uptrain-{init}", quiet=True,
                              callbacks=[_EvalAt(set(steps), evaluate, log)])
            times[init] = trainer.fit().train_time_s
            trainer.release_checkpoint()
        curves[init] = log
    # the same GQA shape from scratch, with the pre-training recipe over the longest uptraining budget
    scratch_loss, scratch_time = None, None
    if longest > 0:
        train = base_cfg.train.model_copy(update={
            "max_steps": longest, "warmup_steps": max(1, round(base_cfg.train.warmup_steps * longest / pre_steps)),
            "eval_every": 0, "save_every": 0, "log_every": longest, "seed": seed})
        cfg = base_cfg.model_copy(update={"model": base_cfg.model.model_copy(update={"n_kv_heads": kv}),
                                          "train": train})
        trainer, _ = pretraining_trainer(cfg, out_dir / "scratch", data, quiet=True)
        trainer.eval_fn = None
        scratch_time = trainer.fit().train_time_s
        trainer.release_checkpoint()
        scratch_loss = evaluate(trainer.model)
    return {"variant": variant_name(heads, kv), "base_variant": variant_name(heads, base.config.kv_heads),
            "kv_heads": kv, "base_kv_heads": base.config.kv_heads, "heads": heads, "pretrain_steps": pre_steps,
            "fractions": [s / pre_steps for s in steps], "steps": steps, "lr": lr,
            "curves": {init: [log[s] for s in steps] for init, log in curves.items()},
            "mha_val_loss": evaluate(base), "scratch_val_loss": scratch_loss, "scratch_steps": longest,
            "uptrain_time_s": times, "scratch_time_s": scratch_time}
