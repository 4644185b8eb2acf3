"""The RLHF lab's stages, each from lab 1.7's SFT model, with one sampling budget for the RL runs.

* SFT and DPO: lab 1.7's stages (`trainlab.recipes.align.shared_stage`: trained once per suite run and
  reused by every lab that needs them; DPO is lab 1.7's pure DPO with the cached reference);
* GRPO with the oracle reward (`trainlab.rl.recipe.run_grpo`);
* a Bradley-Terry reward model from the SFT model on the same preference pairs DPO sees
  (`trainlab.recipes.rlhf.run_reward_model`), then PPO with it (`run_ppo`: value model, GAE, KL
  penalty), and GRPO with it (the same RM as the reward instead of the oracle).

The RL runs share one sampling budget (`Budget`): the same number of rollouts, prompts per rollout and
completions per prompt, so GRPO, GRPO with the learned reward and PPO sample the same number of
completions; PPO then makes its ``ppo_epochs × mini_batches`` updates per rollout (its method), GRPO one.
Every run tracks KL(π‖π_SFT) on its own samples (GRPO: a frozen SFT copy scores them: one extra forward
pass per step, counted separately from what the method needs).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from trainlab.labs.common import resolve_preset


@dataclass(frozen=True)
class Budget:
    """Sampling budget of every RL run of a preset."""

    rollouts: int
    prompts: int
    group: int
    max_new_tokens: int
    ppo_epochs: int
    ppo_mini_batches: int

    @property
    def completions(self) -> int:
        return self.rollouts * self.prompts * self.group

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"completions": self.completions}


# quick: GRPO (lr 2e-4, T 0.5, the rl defaults) from lab 1.7's SFT model (46.3%), oracle accuracy after 24 rollouts
# 53.0% (seed 0) / 50.3% (seed 1), after 30: 54.0 / 54.0 / 49.3% (seeds 0-2); 24 keeps the lab's RL runs ~20% shorter
BUDGETS: dict[str, Budget] = {
    "tiny": Budget(rollouts=2, prompts=4, group=4, max_new_tokens=8, ppo_epochs=1, ppo_mini_batches=2),
    "quick": Budget(rollouts=24, prompts=16, group=8, max_new_tokens=12, ppo_epochs=1, ppo_mini_batches=2),
    "full": Budget(rollouts=200, prompts=32, group=8, max_new_tokens=16, ppo_epochs=2, ppo_mini_batches=2),
}


def budget(preset: str) -> Budget:
    return resolve_preset(BUDGETS, preset, lab="rlhf")


def _common(ctx: Any) -> list[str]:
    return [f"train.device={ctx.device}", f"train.seed={ctx.seed}", *ctx.overrides]


def grpo_overrides(b: Budget) -> list[str]:
    return [f"train.max_steps={b.rollouts}", f"rl.prompts_per_step={b.prompts}", f"rl.group_size={b.group}",
            f"rl.max_new_tokens={b.max_new_tokens}", f"train.batch_size={b.prompts * b.group}"]


def ppo_overrides(b: Budget) -> list[str]:
    per_rollout = b.ppo_epochs * b.ppo_mini_batches
    return [f"train.max_steps={b.rollouts * per_rollout}", f"rl.prompts_per_step={b.prompts}",
            f"rl.group_size={b.group}", f"rl.max_new_tokens={b.max_new_tokens}", f"rl.ppo_epochs={b.ppo_epochs}",
            f"rl.mini_batches={b.ppo_mini_batches}",
            f"train.batch_size={max(1, b.prompts * b.group // b.ppo_mini_batches)}"]


def run_sft_dpo(ctx: Any) -> tuple[Any, Any, Path]:
    """Lab 1.7's SFT and DPO stages (reused within the suite) and the base model folder."""
    from trainlab.labs.align_common import dpo_stage_config
    from trainlab.recipes.align import shared_stage, stage_config
    from trainlab.recipes.base_model import embedded_base_model

    base_dir = embedded_base_model(ctx.preset, quiet=True)
    cfg_sft = stage_config("sft", ctx.preset, seed=ctx.seed, device=ctx.device, overrides=ctx.overrides)
    sft = shared_stage("sft", "sft", cfg_sft, base_dir, ctx.suite_dir)
    dpo = shared_stage("dpo", "dpo", dpo_stage_config(ctx), sft.summary["model_dir"], ctx.suite_dir)
    return sft, dpo, base_dir


def run_grpo_stage(ctx: Any, sft_dir: str | Path, b: Budget, name: str, extra: list[str] | None = None,
                   reward_fn: Any = None) -> dict[str, Any]:
    from trainlab.rl.config import rl_config
    from trainlab.rl.recipe import run_grpo

    cfg = rl_config(preset=ctx.preset, overrides=[*grpo_overrides(b), *_common(ctx), *(extra or [])])
    return run_grpo(cfg, sft_dir, Path(ctx.out_dir) / name, quiet=True, save=False, track_kl=True,
                    reward_fn=reward_fn)


def run_rm_stage(ctx: Any, sft_dir: str | Path) -> dict[str, Any]:
    from trainlab.recipes.rlhf import rm_config, run_reward_model

    cfg = rm_config(preset=ctx.preset, overrides=_common(ctx))
    return run_reward_model(cfg, sft_dir, Path(ctx.out_dir) / "rm", quiet=True)


def run_ppo_stage(ctx: Any, sft_dir: str | Path, rm_dir: str | Path, b: Budget) -> dict[str, Any]:
    from trainlab.recipes.rlhf import ppo_config, run_ppo

    cfg = ppo_config(preset=ctx.preset, overrides=[*ppo_overrides(b), "rl.reward=model",
                                                   f"rl.reward_model={rm_dir}", *_common(ctx)])
    return run_ppo(cfg, sft_dir, Path(ctx.out_dir) / "ppo", quiet=True, save=False)
