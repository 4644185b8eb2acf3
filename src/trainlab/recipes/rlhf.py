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

``run_ppo(cfg, model_dir, out_dir)`` (`trainlab.rl.ppo`):

1. the policy (the SFT model: our decoder or any transformers causal LM), dropout off; π_ref its frozen
   copy; the reward: the embedded tasks' oracle, or a reward model (``rl.reward=model``,
   ``rl.reward_model``); the critic (``rl.value_model``): a separate value model initialised from the
   reward model (else from the policy's folder, head at zero), or a zero head on the policy;
2. `trainlab.train.Trainer` trains `PolicyValue` (policy + critic) with `PPOObjective` on the mini-batches
   `PPOBatcher` cuts from each rollout; oracle accuracy on held-out task prompts every
   ``train.eval_every`` steps and at the end;
3. ``out_dir/model`` (the policy, HF format), ``out_dir/value`` (a separate critic, sequence
   classification layout) and ``out_dir/summary.json``: times (generation vs update), peak memory,
   reward and KL curves per rollout, β, forward passes counted per step and per rollout, the models held.

Defaults (`rm_config`, `ppo_config`): our decoder gets settings tuned on the embedded tasks; a
transformers folder TRL 1.16 ``RewardConfig``'s (lr 1e-4, batch 8, ``max_length`` 1024, dropout off, no
hold-out), and for PPO the last TRL ``PPOConfig``'s (kl_coef 0.05 with k1, 4 PPO epochs, 1 mini-batch,
vf_coef 0.1, cliprange 0.2, cliprange_value 0.2, γ 1, λ 0.95, temperature 0.7, lr 3e-6).
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

__all__ = ["ppo_config", "rm_config", "run_ppo", "run_reward_model"]

# preset -> (max_steps, batch_size pairs, eval_every, embedded training pairs)
_RM_SCHEDULE: dict[str, tuple[int, int, int, int]] = {
    "tiny": (6, 8, 3, 64),
    "quick": (60, 16, 20, 1000),
    "full": (500, 32, 100, 13000),
}
# lr from lab 1.7's quick SFT model (oracle accuracy 46.3%), quick preset, held-out pair accuracy after 60 steps
# (under load, seed 0): 3e-4 76.7%, 1e-3 79.2% (seed 1: 78.3%), 3e-3 73.3%; 120 steps on 2000 pairs 79.2/80.8%
_RM_COMMON: dict[str, Any] = {"train": {"lr": 1e-3, "warmup_steps": 5, "weight_decay": 0.0, "grad_clip": 1.0,
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
    from trainlab.distributed import env as dist_env

    ctx = dist_env.init(cfg.dist, cfg.train.device)  # under torchrun (--nproc N): each rank trains its share
    t_start = time.perf_counter()
    out = Path(out_dir)
    device = ctx.device if ctx is not None else resolve_device(cfg.train.device)
    seed_everything(cfg.train.seed)
    rm, tokenizer = load_reward_model(model_dir, device)
    if cfg.align.disable_dropout:
        disable_dropout(rm)
    peft_info = None
    if cfg.peft.enabled:
        from trainlab.peft.run import apply_run_peft

        # adapters in the body only: the new score head trains in full (PEFT's modules_to_save=["score"], what
        # TRL's reward-modelling docs pair with LoRA)
        peft_info = apply_run_peft(rm.body, cfg)
    if data is None:
        data = build_alignment_data("dpo", cfg, tokenizer, max_positions=_max_positions(rm))
    data.method = "rm"
    check_reward_vocab(rm, data.train)
    pad = int(rm.pad_token_id if rm.pad_token_id is not None else data.pad_id)
    r = cfg.rl
    objective = RewardObjective(margin=r.rm_margin, center_rewards_coefficient=r.center_rewards_coefficient,
                                share_prefix=cfg.align.share_prefix)
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
        identity = {"method": "rm", "model": folder_fingerprint(model_dir), "data": data.train.fingerprint(),
                    **({"peft": cfg.peft.model_dump(mode="json")} if peft_info is not None else {})}
        trainer = Trainer(rm, objective, batcher, cfg.train, out, eval_fn=eval_fn, run_config=run_config,
                          quiet=quiet, callbacks=callbacks, identity=identity)
        result = trainer.fit(resume=resume, force=force)
    final = trainer.final_model()  # distributed: rank 0 alone saves and writes; every rank returns its summary
    if final is None:
        trainer.release_checkpoint()
        assert ctx is not None
        return dict(ctx.broadcast_object(None))
    rm = final  # type: ignore[assignment]
    saved = None
    if save:
        # a reward model is used as a whole (AutoModelForSequenceClassification, PPO): adapters are merged
        to_save = rm
        if peft_info is not None:
            from trainlab.peft.api import merge

            to_save = copy.deepcopy(rm)
            merge(to_save.body)
        saved = save_reward_model(to_save, out / "model", tokenizer, save_dtype=cfg.align.save_dtype)
    trainer.release_checkpoint()
    final = result.eval_history[-1] if result.eval_history else {}
    peak = mem.result()
    summary: dict[str, Any] = {
        "method": "rm",
        "model_in": str(model_dir),
        "model_dir": str(saved) if saved is not None else None,
        "kind": rm.kind,
        "peft": peft_info.to_dict() | {"merged": saved is not None} if peft_info is not None else None,
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
    if ctx is not None:
        ctx.broadcast_object(summary)
    return summary


# ------------------------------------------------------------------------------------------
# PPO
# ------------------------------------------------------------------------------------------

# Quick preset from lab 1.7's SFT model (oracle accuracy 46.3%), task oracle reward, under load: the defaults
# (lr 5e-5, temperature 1, group 2) give 48.0 / 48.3 / 50.7% (seeds 0/1/2) in 8-13 s of training; lr 1e-4-2e-4 or
# temperature 0.7 raise the sampled reward faster but the greedy accuracy scatters (37-49%); 4 completions per
# prompt (twice the update cost) 45-49%. With a learned reward model (79% pair accuracy) 47.3%.
# preset -> (rollouts, prompts per rollout, ppo_epochs, mini_batches, max_new_tokens)
_PPO_SCHEDULE: dict[str, tuple[int, int, int, int, int]] = {
    "tiny": (2, 4, 2, 2, 8),
    "quick": (12, 16, 2, 2, 12),
    "full": (100, 32, 4, 2, 16),
}
_PPO_COMMON: dict[str, Any] = {"train": {"lr": 5e-5, "warmup_steps": 0, "weight_decay": 0.0, "grad_clip": 1.0,
                                         "min_lr_ratio": 1.0, "log_every": 1, "grad_accum": 1, "eval_every": 0},
                               "rl": {"beta": 0.05, "kl_estimator": "k1", "eps": 0.2, "group_size": 2,
                                      "temperature": 1.0, "vf_coef": 0.1, "cliprange_value": 0.2, "gamma": 1.0,
                                      "lam": 0.95}}
# the last TRL PPOConfig (trl 0.x, trl/trainer/ppo_config.py; removed from TRL in 2026) in trainlab's keys
_TRL_PPO: dict[str, Any] = {"train": {"lr": 3e-6, "warmup_steps": 0, "min_lr_ratio": 0.0},
                            "rl": {"beta": 0.05, "kl_estimator": "k1", "ppo_epochs": 4, "mini_batches": 1,
                                   "vf_coef": 0.1, "eps": 0.2, "cliprange_value": 0.2, "gamma": 1.0, "lam": 0.95,
                                   "temperature": 0.7, "max_new_tokens": 53, "whiten_rewards": False}}


def ppo_config(*, preset: str = "quick", config_file: str | Path | None = None, overrides: list[str] | None = None,
               extra: dict[str, Any] | None = None, model: str | Path | None = None) -> RLRunConfig:
    """preset < PPO defaults (TRL's last PPOConfig for a transformers folder) < ``extra`` < file < ``overrides``.

    ``train.max_steps`` is ``rollouts × ppo_epochs × mini_batches``; ``train.batch_size`` the completions per
    micro-batch (a whole mini-batch by default).
    """
    base = rl_defaults(preset)
    rollouts, prompts, epochs, minis, new = _PPO_SCHEDULE[preset]
    base = deep_merge(base, _PPO_COMMON)
    if defaults_profile(model) == "trl":
        base = deep_merge(base, copy.deepcopy(_TRL_PPO))
        epochs, minis, new = 4, 1, 53
    group = int(base["rl"]["group_size"])
    base = deep_merge(base, {"train": {"max_steps": rollouts * epochs * minis,
                                       "batch_size": max(1, prompts * group // minis)},
                             "rl": {"prompts_per_step": prompts, "ppo_epochs": epochs, "mini_batches": minis,
                                    "max_new_tokens": new}})
    if extra:
        base = deep_merge(base, copy.deepcopy(extra))
    cfg: RLRunConfig = load_config(config_file, preset=preset, overrides=overrides, model=RLRunConfig, base=base)
    return cfg


def _param_bytes(model: Any) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


def run_ppo(cfg: RLRunConfig, model_dir: str | Path, out_dir: str | Path, *, resume: ResumeMode = False,
            force: bool = False, quiet: bool = True, save: bool = True, evaluate_oracle: bool = True,
            callbacks: list[Any] | None = None) -> dict[str, Any]:
    """PPO from the policy in ``model_dir`` into ``out_dir`` (module docstring); returns the summary.

    Summary keys: ``model_dir`` (the saved policy), ``value_dir``, ``accuracy`` (oracle accuracy on held-out
    task prompts, ``overall`` and ``per_task``), ``rollouts`` (per rollout: ``reward``, ``kl`` (k3 per token, as GRPO),
    ``kl_seq`` (the controller's sequence KL, ``rl.kl_estimator``), ``kl_coef``,
    ``completion_length``, ``passes``...), ``reward_curve``, ``kl_curve``, ``history`` (per logged step:
    loss, pg_loss, vf_loss, clip ratios, reward, kl), forward passes counted per network (sampling counted
    as one ``generate``): ``forward_passes_per_rollout`` (mean per rollout), ``forward_passes_per_update`` (mean
    per optimizer step) and ``forward_passes_per_step`` (the GRPO recipe's keys: ``generate``, ``policy_old``,
    ``reference``, ``reward_model``, ``value`` once per rollout, ``policy_train`` and ``value_train`` per
    optimizer step; a rollout serves ``steps_per_rollout`` steps), ``models_forwarded`` (the networks run
    for every sample), ``models`` (the networks held and their parameter bytes), ``wall_time_s``, ``train_time_s``,
    ``generate_time_s``, ``update_time_s``, ``peak_memory`` / ``peak_mem_bytes``.
    """
    from trainlab.align.evaluate import oracle_accuracy
    from trainlab.recipes.align_model import check_same_tokenizer, load_policy, save_policy
    from trainlab.rl.grpo import frozen_reference, prompt_items
    from trainlab.rl.ppo import PassCounter, PPOBatcher, PPOObjective
    from trainlab.rl.reward_model import load_reward_scorer
    from trainlab.rl.rewards import build_reward
    from trainlab.rl.value import PolicyValue, shared_value_head, zero_head_

    t_start = time.perf_counter()
    rl = cfg.rl
    out = Path(out_dir)
    device = resolve_device(cfg.train.device)
    seed_everything(cfg.train.seed)
    policy, tokenizer = load_policy(model_dir, device)
    dropouts = disable_dropout(policy) if cfg.align.disable_dropout else {}
    peft_info = None
    if cfg.peft.enabled:
        from trainlab.peft.run import apply_run_peft

        peft_info = apply_run_peft(policy, cfg)  # only the adapters train; π_ref = the base, adapters off
    items, eval_records = prompt_items(cfg)
    scorer = None
    if rl.reward == "model":
        if not rl.reward_model:
            raise UserError("rl.reward=model needs rl.reward_model (--reward-model DIR)", key="rl.reward_model")
        scorer = load_reward_scorer(rl.reward_model, device)
        check_same_tokenizer(scorer.tokenizer, tokenizer, rl.reward_model, "--reward-model")
    reward_fn = build_reward(rl.reward, reward_model=rl.reward_model, device=device, scorer=scorer)
    with PeakMemory(device, interval_s=0.02) as mem:
        if peft_info is not None:
            from trainlab.peft.api import ReferenceView

            reference: Any = ReferenceView(policy)  # no copy: the policy with its adapters off
        else:
            reference = frozen_reference(policy)
        if rl.value_model == "shared":
            critic = PolicyValue(policy, head=shared_value_head(policy))
        else:
            value_from = rl.reward_model if rl.reward == "model" else model_dir
            value_model, _ = load_reward_model(value_from, device)
            if rl.reward != "model":
                zero_head_(value_model)
            if cfg.align.disable_dropout:
                disable_dropout(value_model)
            critic = PolicyValue(policy, value_model=value_model)
        counter = PassCounter()
        counter.watch("policy", policy)
        if peft_info is None:
            counter.watch("reference", reference)
        if critic.value_model is not None:
            counter.watch("value", critic.value_model)
        if scorer is not None:
            counter.watch("reward_model", scorer.model)
        batcher = PPOBatcher(critic, tokenizer, items, rl, reward_fn, reference, micro_batch=cfg.train.batch_size,
                             seed=cfg.train.seed, autocast=lambda: autocast_context(device, cfg.train.precision),
                             chunk_size=cfg.align.chunk_size, counter=counter)
        _check_positions(policy, batcher.ids, rl.max_new_tokens)
        out.mkdir(parents=True, exist_ok=True)  # inputs known good: bad input writes nothing
        objective = PPOObjective(rl, chunk_size=cfg.align.chunk_size)
        eval_fn = None
        if evaluate_oracle and eval_records and cfg.train.eval_every:
            def eval_fn(m: Any) -> dict[str, float]:
                with counter.paused():  # evaluation is not part of a training step
                    acc = oracle_accuracy(m.policy, tokenizer, eval_records)
                return {"oracle_accuracy": acc.overall, **{f"oracle/{t}": v for t, v in acc.per_task.items()}}
        identity = {"method": "ppo", "model": folder_fingerprint(model_dir), "reward": rl.reward,
                    **({"peft": cfg.peft.model_dump(mode="json")} if peft_info is not None else {}),
                    **({"reward_model": folder_fingerprint(rl.reward_model)} if rl.reward_model and scorer else {})}
        run_config = dump_config(cfg) | {"method": "ppo", "model_in": str(model_dir)}
        step_passes: list[dict[str, int]] = []

        class _CountSteps:
            def on_fit_start(self, trainer: Any) -> None:
                counter.take()  # the memory probe and setup are not a step

            def on_step_end(self, trainer: Any, step: int, metrics: Any) -> None:
                step_passes.append(counter.take())

            def on_eval(self, *args: Any) -> None: ...

            def on_checkpoint(self, *args: Any) -> None: ...

            def on_fit_end(self, *args: Any) -> None: ...

        trainer = Trainer(critic, objective, batcher, cfg.train, out, eval_fn=eval_fn, run_config=run_config,
                          quiet=quiet, callbacks=[_CountSteps(), *(callbacks or [])], identity=identity)
        result = trainer.fit(resume=resume, force=force)
        counter.close()
    value_path = None
    model_path, peft_summary = save_policy(policy, cfg, out, tokenizer, method="ppo", model_in=model_dir,
                                           peft_info=peft_info, save=save)
    if save and critic.value_model is not None:
        value_path = save_reward_model(critic.value_model, out / "value", tokenizer)
    trainer.release_checkpoint()
    wall = time.perf_counter() - t_start
    accuracy = oracle_accuracy(policy, tokenizer, eval_records).to_dict() if evaluate_oracle and eval_records \
        else None
    rollouts = batcher.history
    gen_s = sum(h["generate_s"] for h in rollouts)
    reward_s = sum(h["reward_s"] for h in rollouts)
    per_step = _mean_counts(step_passes)
    per_rollout = _mean_counts([h["passes"] for h in rollouts])
    models = {"policy": _param_bytes(policy), "reference": _param_bytes(reference)}
    if critic.value_model is not None:
        models["value"] = _param_bytes(critic.value_model)
    elif critic.head is not None:
        models["value_head"] = _param_bytes(critic.head)
    if scorer is not None:
        models["reward_model"] = _param_bytes(scorer.model)
    peak = mem.result()
    summary: dict[str, Any] = {
        "method": "ppo", "reward": rl.reward, "reward_model": rl.reward_model, "value_model": rl.value_model,
        "kl_ctl": rl.kl_ctl, "model_in": str(model_dir), "model_dir": str(model_path) if model_path else None,
        "value_dir": str(value_path) if value_path else None, "dropout_disabled": dropouts,
        "peft": peft_summary if peft_summary is not None else (peft_info.to_dict() if peft_info else None),
        "steps": result.steps, "resumed_from": result.resumed_from, "final_loss": result.final_loss,
        "steps_per_rollout": rl.ppo_epochs * rl.mini_batches,
        "train_time_s": result.train_time_s, "wall_time_s": wall, "generate_time_s": gen_s,
        "reward_time_s": reward_s, "update_time_s": max(result.train_time_s - gen_s - reward_s, 0.0),
        "cost_s": result.train_time_s,
        "completions": sum(h["completions"] for h in rollouts),
        "forward_passes_per_step": {**{"policy_old" if k == "policy" else k: v for k, v in per_rollout.items()},
                                    **{f"{k}_train": v for k, v in per_step.items()}},
        "forward_passes_per_rollout": per_rollout, "forward_passes_per_update": per_step,
        "models_forwarded": sorted(k for k in {**per_rollout, **per_step} if k != "generate"),
        "models": models, "peak_memory": peak, "peak_mem_bytes": int(peak["peak_bytes"]), "device": str(device),
        "rollouts": rollouts, "reward_curve": [h["reward"] for h in rollouts],
        "kl_curve": [h["kl"] for h in rollouts], "kl_seq_curve": [h["kl_seq"] for h in rollouts],
        "kl_coef_curve": [h["kl_coef"] for h in rollouts],
        "history": result.history, "eval_history": result.eval_history, "accuracy": accuracy,
        "samples": batcher.samples, "n_prompts": len(items), "config": dump_config(cfg),
        "metrics_path": str(result.metrics_path), "stopped_reason": result.stopped_reason,
    }
    write_json(out / "summary.json", summary)
    return summary


def _check_positions(policy: Any, prompts: list[list[int]], max_new_tokens: int) -> None:
    """The longest prompt plus ``rl.max_new_tokens`` must fit the model's positions (GPT-2's learned position
    table would index past its end)."""
    from trainlab.recipes.align_model import max_positions

    limit = max_positions(policy)
    longest = max((len(p) for p in prompts), default=0)
    if limit is not None and longest + max_new_tokens > limit:
        raise UserError(f"the longest prompt ({longest} tokens) plus rl.max_new_tokens={max_new_tokens} exceeds the "
                        f"model's {limit} positions: lower rl.max_new_tokens (at most {max(limit - longest, 0)}) or "
                        "use shorter prompts", key="rl.max_new_tokens")


def _mean_counts(rows: list[dict[str, int]]) -> dict[str, float]:
    """Per key, the mean count over ``rows`` (a key missing from a row counts 0 there)."""
    if not rows:
        return {}
    keys = sorted({k for r in rows for k in r})
    return {k: sum(r.get(k, 0) for r in rows) / len(rows) for k in keys}
