"""RL recipe: a model folder + prompts -> GRPO / Dr. GRPO / DAPO / RLOO / REINFORCE++ -> a Hugging Face folder.

``run_grpo(cfg, model_path, out_dir)`` is what ``trainlab grpo`` and the RLHF lab run:

1. load the policy and tokenizer (`load_policy`: our decoder or any transformers causal LM), dropout
   off (``align.disable_dropout``; sampling and the update must see the same network), PEFT adapters
   when ``peft.method`` is set;
2. the prompts (`trainlab.rl.grpo.prompt_items`: the embedded tasks or a JSONL file) and the reward
   (`trainlab.rl.rewards.build_reward`); a frozen reference copy when ``rl.beta > 0`` or
   ``track_kl`` (KL to the starting policy as a metric);
3. `trainlab.train.Trainer` with `GRPOObjective` and `RolloutBatcher` (the one loop: checkpoints,
   exact resume, metrics.jsonl); oracle accuracy on held-out task prompts every ``train.eval_every``
   steps and at the end;
4. save ``out_dir/model`` and ``out_dir/summary.json`` (times split into generation and update, peak
   memory, reward and KL curves, forward passes per step, oracle accuracy).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from torch import nn

from trainlab.align.evaluate import oracle_accuracy, task_completions
from trainlab.config import dump_config
from trainlab.evaluation import score_completions
from trainlab.memory.measure import PeakMemory
from trainlab.model.protocol import disable_dropout
from trainlab.recipes.align_model import load_policy, save_policy
from trainlab.rl.config import RLRunConfig
from trainlab.rl.grpo import GRPOObjective, RolloutBatcher, frozen_reference, prompt_items
from trainlab.rl.rewards import RewardFn, build_reward
from trainlab.train.amp import autocast_context
from trainlab.train.callbacks import Callback
from trainlab.train.checkpoint import ResumeMode, folder_fingerprint
from trainlab.train.device import resolve_device
from trainlab.train.loop import Trainer
from trainlab.utils import seed_everything, write_json


def accuracy_of(records: list[Any], completions: list[str], n_samples: int = 3) -> dict[str, Any]:
    """`oracle_accuracy(...).to_dict()` from completions already decoded (the same greedy decoding)."""
    return score_completions(records, completions, n_samples=n_samples).to_dict()


def _eval_fn(tokenizer: Any, records: list[Any]) -> Any:
    def evaluate(model: nn.Module) -> dict[str, float]:
        acc = oracle_accuracy(model, tokenizer, records)
        return {"oracle_accuracy": acc.overall, **{f"oracle/{t}": v for t, v in acc.per_task.items()}}
    return evaluate


class _StepTimes(Callback):
    """Every optimizer step's wall time (sampling included), logged or not."""

    def __init__(self) -> None:
        self.times: list[float] = []

    def on_step_end(self, trainer: Any, step: int, metrics: dict[str, Any]) -> None:
        self.times.append(float(metrics["step_time_s"]))


def run_grpo(cfg: RLRunConfig, model_path: str | Path, out_dir: str | Path, *, resume: ResumeMode = False,
             force: bool = False, quiet: bool = False, save: bool = True, evaluate_oracle: bool = True,
             track_kl: bool = False, reward_fn: RewardFn | None = None, callbacks: list[Any] | None = None
             ) -> dict[str, Any]:
    """Train from ``model_path`` into ``out_dir`` (module docstring); returns the summary (also summary.json).

    ``reward_fn``: a reward function already built (the lab passes a loaded reward model's scorer);
    None: ``rl.reward``. The summary has the model in ``summary["_model"]`` (not written to JSON).
    """
    t_start = time.perf_counter()
    rl = cfg.rl
    out = Path(out_dir)
    device = resolve_device(cfg.train.device)
    seed_everything(cfg.train.seed)
    model, tokenizer = load_policy(model_path, device)
    dropouts = disable_dropout(model) if cfg.align.disable_dropout else {}
    peft_info = None
    peft_cfg = getattr(cfg, "peft", None)
    if peft_cfg is not None and peft_cfg.enabled:
        from trainlab.peft.run import apply_run_peft

        peft_info = apply_run_peft(model, cfg)
    items, eval_records = prompt_items(cfg)
    reward = reward_fn if reward_fn is not None else build_reward(rl.reward, reward_model=rl.reward_model,
                                                                  device=device)
    keep_ref = rl.beta > 0 or track_kl
    with PeakMemory(device, interval_s=0.02) as mem:
        reference = frozen_reference(model) if keep_ref else None
        out.mkdir(parents=True, exist_ok=True)
        batcher = RolloutBatcher(model, tokenizer, items, rl, reward, micro_batch=cfg.train.batch_size,
                                 seed=cfg.train.seed, reference=reference,
                                 autocast=lambda: autocast_context(device, cfg.train.precision),
                                 chunk_size=cfg.align.chunk_size, track_kl=track_kl,
                                 share_prefix=cfg.align.share_prefix,
                                 reward_passes=int(rl.reward == "model"))
        objective = GRPOObjective(rl, chunk_size=cfg.align.chunk_size, share_prefix=cfg.align.share_prefix)
        eval_fn = _eval_fn(tokenizer, eval_records) if (evaluate_oracle and eval_records and cfg.train.eval_every) \
            else None
        identity = {"method": f"rl-{rl.estimator}", "model": folder_fingerprint(model_path),
                    "reward": rl.reward}
        run_config = dump_config(cfg) | {"method": "grpo", "model_in": str(model_path)}
        times = _StepTimes()
        trainer = Trainer(model, objective, batcher, cfg.train, out, eval_fn=eval_fn, run_config=run_config,
                          quiet=quiet, callbacks=[times, *(callbacks or [])], identity=identity)
        result = trainer.fit(resume=resume, force=force)
    policy = trainer.model
    model_dir, peft_summary = save_policy(policy, cfg, out, tokenizer, method="grpo", model_in=model_path,
                                          peft_info=peft_info, save=save)
    if peft_summary is None and peft_info is not None:
        peft_summary = peft_info.to_dict()
    trainer.release_checkpoint()
    wall = time.perf_counter() - t_start
    accuracy, eval_completions = None, None
    if evaluate_oracle and eval_records:
        # the greedy completions oracle_accuracy judges, kept for the caller (win rates without decoding twice)
        eval_completions = task_completions(policy, tokenizer, eval_records)
        accuracy = accuracy_of(eval_records, eval_completions)
    gen_s = sum(h["generate_s"] for h in batcher.history)
    reward_s = sum(h["reward_s"] for h in batcher.history)
    completions = sum(h["completions"] for h in batcher.history)
    summary: dict[str, Any] = {
        "method": "grpo", "estimator": rl.estimator, "loss_agg": rl.agg, "reward": rl.reward,
        "model_in": str(model_path), "model_dir": str(model_dir) if model_dir else None,
        "dropout_disabled": dropouts, "peft": peft_summary,
        "steps": result.steps, "resumed_from": result.resumed_from, "final_loss": result.final_loss,
        "train_time_s": result.train_time_s, "wall_time_s": wall,
        "generate_time_s": gen_s, "reward_time_s": reward_s,
        "update_time_s": max(result.train_time_s - gen_s - reward_s, 0.0),
        "completions": completions, "completions_per_s": completions / result.train_time_s
        if result.train_time_s > 0 else 0.0,
        "forward_passes_per_step": dict(batcher.passes), "step_times_s": times.times,
        "peak_memory": mem.result(), "device": str(device),
        "rollouts": batcher.history, "history": result.history, "eval_history": result.eval_history,
        "accuracy": accuracy, "samples": batcher.samples, "n_prompts": len(items),
        "config": dump_config(cfg), "metrics_path": str(result.metrics_path),
        "stopped_reason": result.stopped_reason,
    }
    write_json(out / "summary.json", summary)
    summary["_model"] = policy
    summary["_eval_completions"] = eval_completions
    summary["_tokenizer"] = tokenizer
    return summary

