"""RLHF recipes: train a reward model (``trainlab rm``) and a policy with PPO (``trainlab ppo``).

``run_reward_model(cfg, model_dir, out_dir)``:

1. the reward model: a saved one (a sequence classification folder) continues training; a causal LM
   folder (our decoder or any transformers model: the SFT model) gets a fresh ``score`` head
   (`trainlab.rl.reward_model.load_reward_model`); dropout off unless ``align.disable_dropout=false``;
2. the preference pairs exactly as DPO reads them (`trainlab.recipes.align_data.build_alignment_data`:
   the embedded task pairs, correct over plausible wrong answers, or the user's records in any TRL
   format), with held-out pairs for evaluation;
3. the Bradley-Terry objective (`RewardObjective`, ``rl.rm_margin``, ``rl.center_rewards_coefficient``)
   through `trainlab.train.Trainer`; held-out accuracy every ``train.eval_every`` steps and at the end;
4. ``out_dir/model``: ``*ForSequenceClassification`` (``AutoModelForSequenceClassification`` loads it) with
   the tokenizer; ``out_dir/summary.json``.

``run_ppo`` is in `trainlab.recipes.ppo` (re-exported here).

Defaults (`rm_config`): our decoder gets settings tuned on the embedded tasks; a transformers folder
TRL 1.16 ``RewardConfig``'s (lr 1e-4, batch 8, ``max_length`` 1024, dropout off, no hold-out).
"""

from __future__ import annotations

import copy
import time
from functools import partial
from pathlib import Path
from typing import Any

from trainlab.align.config import defaults_profile, trl_defaults
from trainlab.align.datasets import PreferenceDataset, collate_preference
from trainlab.config import deep_merge, dump_config, load_config
from trainlab.errors import UserError
from trainlab.memory.measure import PeakMemory, training_memory
from trainlab.model.protocol import disable_dropout
from trainlab.recipes.align_data import build_alignment_data
from trainlab.rl.config import RLRunConfig, rl_defaults
from trainlab.rl.reward_model import (
    RewardModel,
    RewardObjective,
    load_reward_model,
    reward_metrics,
    save_reward_model,
)
from trainlab.train.amp import autocast_context
from trainlab.train.checkpoint import ResumeMode, folder_fingerprint
from trainlab.train.data import StepBatcher
from trainlab.train.device import resolve_device
from trainlab.train.loop import Trainer
from trainlab.utils import seed_everything, write_json

__all__ = ["rm_config", "run_reward_model"]

# preset -> (max_steps, batch_size pairs, eval_every, embedded training pairs)
_RM_SCHEDULE: dict[str, tuple[int, int, int, int]] = {
    "tiny": (6, 8, 3, 64),
    "quick": (60, 16, 20, 1000),
    "full": (500, 32, 100, 13000),
}
_RM_COMMON: dict[str, Any] = {"train": {"lr": 3e-4, "warmup_steps": 5, "weight_decay": 0.0, "grad_clip": 1.0,
                                        "min_lr_ratio": 0.1, "log_every": 5, "grad_accum": 1},
                              "align": {"disable_dropout": True}}
# TRL 1.16 RewardConfig (trl/trainer/reward_config.py) in trainlab's keys
_TRL_RM: dict[str, Any] = {"train": {"lr": 1e-4}, "rl": {"center_rewards_coefficient": None}}


def rm_config(*, preset: str = "quick", config_file: str | Path | None = None, overrides: list[str] | None = None,
              extra: dict[str, Any] | None = None, model: str | Path | None = None) -> RLRunConfig:
    """preset < reward-model defaults (TRL's RewardConfig for a transformers folder) < ``extra`` < file <
    ``overrides``."""
    base = rl_defaults(preset)
    steps, batch, eval_every, n_train = _RM_SCHEDULE[preset]
    base = deep_merge(base, _RM_COMMON)
    base = deep_merge(base, {"train": {"max_steps": steps, "batch_size": batch, "eval_every": eval_every},
                             "align_data": {"n_train": n_train}})
    if defaults_profile(model) == "trl":
        base = deep_merge(base, trl_defaults("dpo", model))  # TrainingArguments' optimizer, batch 8, lengths
        base = deep_merge(base, copy.deepcopy(_TRL_RM))
    if extra:
        base = deep_merge(base, copy.deepcopy(extra))
    cfg: RLRunConfig = load_config(config_file, preset=preset, overrides=overrides, model=RLRunConfig, base=base)
    return cfg


def check_reward_vocab(rm: RewardModel, dataset: PreferenceDataset) -> None:
    top = dataset.max_token_id()
    if top >= rm.vocab_size:
        raise UserError(f"the tokenizer produces id {top}, but the model's vocabulary has {rm.vocab_size} entries: "
                        "use the tokenizer saved with the model")


def _max_positions(rm: RewardModel) -> int | None:
    from trainlab.recipes.align_model import max_positions

    return max_positions(rm.body if rm.kind == "trainlab" else rm.seqcls)


def run_reward_model(cfg: RLRunConfig, model_dir: str | Path, out_dir: str | Path, *, resume: ResumeMode = False,
                     quiet: bool = True, force: bool = False, save: bool = True, callbacks: list[Any] | None = None,
                     data: Any = None) -> dict[str, Any]:
    """Train a reward model from ``model_dir`` into ``out_dir`` (module docstring); returns the summary.

    Summary keys: ``model_dir`` (the saved reward model), ``final_eval`` (held-out ``accuracy``,
    ``margin``, ``loss``, mean rewards), ``accuracy`` (held-out pair accuracy), ``history`` /
    ``eval_history``, ``wall_time_s``, ``train_time_s``, ``peak_memory`` (`trainlab.memory.measure`),
    ``peak_mem_bytes``, ``memory`` (exact bytes of one step), ``forward_passes_per_step`` (1: chosen and
    rejected rows share one forward), ``data``.
    """
    t_start = time.perf_counter()
    out = Path(out_dir)
    device = resolve_device(cfg.train.device)
    seed_everything(cfg.train.seed)
    rm, tokenizer = load_reward_model(model_dir, device)
    if cfg.align.disable_dropout:
        disable_dropout(rm)
    if data is None:
        data = build_alignment_data("dpo", cfg, tokenizer, max_positions=_max_positions(rm))
    data.method = "rm"
    check_reward_vocab(rm, data.train)
    pad = int(rm.pad_token_id if rm.pad_token_id is not None else data.pad_id)
    r = cfg.rl
    objective = RewardObjective(margin=r.rm_margin, center_rewards_coefficient=r.center_rewards_coefficient)
    collate = partial(collate_preference, pad_id=pad)

    def eval_fn(m: Any) -> dict[str, float]:
        if data.eval_pairs is None:
            return {}
        return reward_metrics(m, data.eval_pairs, pad_id=pad, margin=r.rm_margin,
                              center_rewards_coefficient=r.center_rewards_coefficient)

    with PeakMemory(device, interval_s=0.02) as mem:
        out.mkdir(parents=True, exist_ok=True)
        batcher = StepBatcher(data.train, cfg.train.batch_size, cfg.train.grad_accum, collate, cfg.train.seed)
        first = collate([data.train[i] for i in range(min(len(data.train), cfg.train.batch_size))])
        first = {k: v.to(device) for k, v in first.items()}
        rm.train()
        with autocast_context(device, cfg.train.precision):
            memory = training_memory(rm, lambda: objective(rm, first))
        run_config = dump_config(cfg) | {"method": "rm", "model_in": str(model_dir), "data_info": data.info}
        identity = {"method": "rm", "model": folder_fingerprint(model_dir), "data": data.train.fingerprint()}
        trainer = Trainer(rm, objective, batcher, cfg.train, out, eval_fn=eval_fn, run_config=run_config,
                          quiet=quiet, callbacks=callbacks, identity=identity)
        result = trainer.fit(resume=resume, force=force)
    saved = save_reward_model(rm, out / "model", tokenizer, save_dtype=cfg.align.save_dtype) if save else None
    trainer.release_checkpoint()
    final = result.eval_history[-1] if result.eval_history else {}
    peak = mem.result()
    summary: dict[str, Any] = {
        "method": "rm",
        "model_in": str(model_dir),
        "model_dir": str(saved) if saved is not None else None,
        "kind": rm.kind,
        "pad_token_id": pad,
        "steps": result.steps,
        "resumed_from": result.resumed_from,
        "units_seen": result.count,
        "unit": "pairs",
        "final_loss": result.final_loss,
        "train_time_s": result.train_time_s,
        "wall_time_s": time.perf_counter() - t_start,
        "cost_s": result.train_time_s,
        "peak_memory": peak,
        "peak_mem_bytes": int(peak["peak_bytes"]),
        "memory": memory,
        "forward_passes_per_step": {"reward_model": 1},
        "device": str(device),
        "history": result.history,
        "eval_history": result.eval_history,
        "final_eval": final,
        "accuracy": final.get("accuracy"),
        "data": data.info,
        "config": dump_config(cfg),
        "metrics_path": str(result.metrics_path),
        "stopped_reason": result.stopped_reason,
    }
    write_json(out / "summary.json", summary)
    return summary
