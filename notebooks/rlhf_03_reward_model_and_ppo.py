# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     name: python3
# ---

# %% [markdown]
# # RLHF · 03 — A learned reward: Bradley-Terry reward model, PPO, and GRPO against it
#
# Classic RLHF (seed 001) learns the reward first: a scalar head on the SFT model, trained so that the
# preferred answer scores higher (`−log σ(r_c − r_r)`), on the same preference pairs DPO uses. PPO then
# maximises it with a value model, GAE and a KL penalty to the SFT model. The same reward model can also
# drive GRPO. Where the reward model is wrong, the policy can exploit it: the oracle says what was really
# gained.
#
# Command line: `trainlab rm --model <sft>`, then `trainlab ppo --model <sft> --reward-model runs/rm/model`.

# %%
import os
import tempfile
from pathlib import Path

from trainlab.labs.rlhf import context, kl_curve
from trainlab.labs.rlhf.stages import budget, run_grpo_stage, run_ppo_stage, run_rm_stage, run_sft_dpo

PRESET = os.environ.get("TRAINLAB_NOTEBOOK_PRESET", "quick")
OUT = Path(os.environ.get("TRAINLAB_NOTEBOOK_OUT", tempfile.mkdtemp()))
ctx = context(PRESET, OUT / "suite")
sft, _, _ = run_sft_dpo(ctx)
b = budget(PRESET)

# %%
rm = run_rm_stage(ctx, sft.summary["model_dir"])
print("reward model: held-out pair accuracy", rm["accuracy"], "train time", round(rm["train_time_s"], 2), "s")

# %%
ppo = run_ppo_stage(ctx, sft.summary["model_dir"], rm["model_dir"], b)
print("PPO oracle accuracy", ppo["accuracy"]["overall"], "(SFT", sft.summary["accuracy"]["overall"], ")")
print("networks forwarded:", ppo.get("models_forwarded"), ppo.get("forward_passes_per_step"))
print("reward per rollout", [round(h["reward"], 3) for h in ppo["rollouts"]])
print("KL per rollout    ", [round(x, 4) for x in kl_curve(ppo)])

# %%
grm = run_grpo_stage(ctx, sft.summary["model_dir"], b, "grpo-rm",
                     extra=["rl.reward=model", f"rl.reward_model={rm['model_dir']}"])
print("RM -> GRPO oracle accuracy", grm["accuracy"]["overall"])
for h in grm["rollouts"]:
    print(f"rollout {h['rollout']}: learned reward {h['reward']:.3f}, oracle on the same samples "
          f"{h['oracle_reward']:.1%}")
