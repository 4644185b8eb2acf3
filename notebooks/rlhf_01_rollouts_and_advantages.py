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
# # RLHF · 01 — Rollouts, verifiable rewards and advantages
#
# RL on a language model samples completions from the policy itself. GRPO (DeepSeekMath) samples a *group*
# of G completions per prompt, scores each (here: the embedded task's oracle, an exact check), and uses the
# group as its own baseline: `A_i = (r_i − mean) / std`. Dr. GRPO drops the std, RLOO uses the mean of the
# *other* G−1 rewards, REINFORCE++ whitens over the whole batch. A group whose rewards are all equal has no
# signal at all.
#
# From the command line: `trainlab grpo rl.estimator=rloo rl.group_size=8`.

# %%
import os
import tempfile
from pathlib import Path

import torch

from trainlab.labs.rlhf import context
from trainlab.labs.rlhf.stages import run_sft_dpo
from trainlab.model.generate import SamplingParams
from trainlab.model.text import pad_id, stop_token_ids
from trainlab.rl.advantages import compute_advantages, group_stats
from trainlab.rl.config import rl_config
from trainlab.rl.grpo import prompt_items
from trainlab.rl.kl import kl_estimate
from trainlab.rl.rewards import oracle_reward
from trainlab.rl.rollout import rollout

PRESET = os.environ.get("TRAINLAB_NOTEBOOK_PRESET", "quick")  # "tiny": the smoke test's setting
OUT = Path(os.environ.get("TRAINLAB_NOTEBOOK_OUT", tempfile.mkdtemp()))
ctx = context(PRESET, OUT / "suite")
sft, _, _ = run_sft_dpo(ctx)  # lab 1.7's SFT model (trained once, then reused)
policy, tok = sft.model, sft.tokenizer
print("SFT oracle accuracy:", sft.summary["accuracy"]["overall"])

# %% [markdown]
# ## One rollout: 4 prompts × G = 8 completions, sampled on the KV cache

# %%
cfg = rl_config(preset=PRESET)
items, _ = prompt_items(cfg)
items = items[:4]
G = 8
params = SamplingParams(max_new_tokens=cfg.rl.max_new_tokens, temperature=cfg.rl.temperature,
                        eos_token_id=stop_token_ids(policy, tok), pad_token_id=pad_id(tok))
ids = [tok(it.prompt)["input_ids"] for it in items]
r = rollout(policy, ids, params, G, generator=torch.Generator().manual_seed(0))
texts = []
for row, n in zip(r.completion_ids.tolist(), r.lengths.tolist(), strict=True):
    texts.append(tok.decode(row[:n], skip_special_tokens=True))
group_items = [it for it in items for _ in range(G)]
rewards = oracle_reward([], texts, group_items)
for p, it in enumerate(items):
    print(repr(it.prompt), "answer", repr(it.record.answer if it.record else None))
    print("   ", [t.strip() for t in texts[p * G:(p + 1) * G]], rewards[p * G:(p + 1) * G].tolist())

# %% [markdown]
# ## The estimators on these rewards

# %%
for est in ("grpo", "dr_grpo", "rloo"):
    adv = compute_advantages(est, rewards, G)
    print(f"{est:8s}", [round(a, 2) for a in adv.view(-1, G)[0].tolist()], "...")
adv_pp = compute_advantages("reinforce_pp", rewards, G, mask=r.completion_mask)
print("reinforce_pp (per token, first row):", [round(a, 2) for a in adv_pp[0].tolist()])
print(group_stats(rewards, G))

# %% [markdown]
# ## KL estimators (Schulman 2020) on the sampled tokens
#
# With `log r = log π_ref − log π`: k1 = −log r, k2 = ½ (log r)², k3 = r − 1 − log r. Against itself
# every estimate is 0; against the base model they measure how far SFT moved.

# %%
from trainlab.recipes.align_model import load_policy  # noqa: E402
from trainlab.recipes.base_model import embedded_base_model  # noqa: E402
from trainlab.rl.rollout import completion_logps  # noqa: E402

base, _ = load_policy(embedded_base_model(PRESET))
with torch.no_grad():
    ref = completion_logps(base, r.prompt_ids, r.prompt_mask, r.completion_ids, r.completion_mask)
m = r.completion_mask.bool()
for est in ("k1", "k2", "k3"):
    print(est, float(kl_estimate(r.old_logps[m], ref[m], est).mean()))
