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
# # RLHF · 02 — GRPO with the oracle as reward, from the SFT model
#
# The SFT model was taught plausible wrong answers for a share of its training problems, so greedy decoding
# is often wrong. GRPO samples G completions per prompt, rewards the correct ones (the task's oracle) and
# pushes up the log-probability of completions better than their group's mean, with the clipped ratio of
# PPO. The update runs through trainlab's one training loop (`GRPOObjective`, `RolloutBatcher`).
#
# Command line: `trainlab grpo --model <sft folder>`; `rl.loss_agg=dapo` for DAPO's token-mean loss,
# `rl.estimator=dr_grpo` for Dr. GRPO.

# %%
import os
import tempfile
from pathlib import Path

from trainlab.labs.common import show
from trainlab.labs.rlhf import context, kl_curve
from trainlab.labs.rlhf.stages import budget, run_grpo_stage, run_sft_dpo
from trainlab.results import Table

PRESET = os.environ.get("TRAINLAB_NOTEBOOK_PRESET", "quick")
OUT = Path(os.environ.get("TRAINLAB_NOTEBOOK_OUT", tempfile.mkdtemp()))
ctx = context(PRESET, OUT / "suite")
sft, _, _ = run_sft_dpo(ctx)
b = budget(PRESET)
print(b.to_dict())

# %%
grpo = run_grpo_stage(ctx, sft.summary["model_dir"], b, "grpo")
print("SFT accuracy ", sft.summary["accuracy"]["overall"])
print("GRPO accuracy", grpo["accuracy"]["overall"], grpo["accuracy"]["per_task"])
print("time: generation", round(grpo["generate_time_s"], 2), "s, update", round(grpo["update_time_s"], 2), "s")

# %% [markdown]
# Reward, KL to the SFT model and the share of groups whose rewards were all equal (no signal), per rollout:

# %%
kl = kl_curve(grpo)
show([Table(title="GRPO rollouts", columns=["rollout", "reward", "KL to SFT", "equal-reward groups",
                                            "completion tokens"],
            rows=[[i + 1, h["reward"], kl[i] if i < len(kl) else None, h["groups_equal"], h["completion_length"]]
                  for i, h in enumerate(grpo["rollouts"])])])

# %% [markdown]
# The same budget with DAPO's token-mean aggregation and clip-higher (ε_high = 0.28):

# %%
dapo = run_grpo_stage(ctx, sft.summary["model_dir"], b, "dapo", extra=["rl.loss_agg=dapo", "rl.eps_high=0.28"])
print("DAPO-style accuracy", dapo["accuracy"]["overall"])
