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
# # Lab 1.7 · 03 — Base → SFT → DPO, judged by the oracle
#
# SFT trains on task data in which a share of the answers are plausible but wrong; DPO then
# (pure DPO, no NLL term) prefers the correct answer over a wrong one, with the SFT model as the
# (cached) reference.
# Every stage is scored by exact-match oracle accuracy on held-out prompts.
# The same runs from the command line: `trainlab sft` then `trainlab dpo --model runs/sft/model`.

# %%
import os
from pathlib import Path

from trainlab.align.evaluate import oracle_accuracy, win_rate
from trainlab.recipes.align import build_alignment_data, load_policy, run_alignment, stage_config
from trainlab.recipes.base_model import embedded_base_model

PRESET = os.environ.get("TRAINLAB_NOTEBOOK_PRESET", "quick")
OUT = Path(os.environ.get("TRAINLAB_NOTEBOOK_OUT", "runs/notebooks/lab17"))
base_dir = embedded_base_model(PRESET)

# %%
sft = run_alignment("sft", stage_config("sft", PRESET), base_dir, OUT / "sft", quiet=True)
# pure DPO (no NLL term: align.rpo_alpha=0, written out); RPO would be align.rpo_alpha=1
dpo = run_alignment("dpo", stage_config("dpo", PRESET, overrides=["align.rpo_alpha=0"]), sft.summary["model_dir"],
                    OUT / "dpo", quiet=True)

# %%
base, tok = load_policy(base_dir)
records = build_alignment_data("sft", stage_config("sft", PRESET), tok).eval_records
print("base", oracle_accuracy(base, tok, records).overall)
for name, run in (("SFT", sft), ("DPO", dpo)):
    print(name, run.summary["accuracy"]["overall"], run.summary["accuracy"]["per_task"])
print("DPO vs SFT:", win_rate(dpo.model, sft.model, tok, records).to_dict())

# %% [markdown]
# DPO's curves, with TRL's metric names:

# %%
for h in dpo.summary["history"]:
    print(h["step"], {k: round(h[k], 3) for k in ("loss", "rewards/accuracies", "rewards/margins", "logps/chosen")})
for e in dpo.summary["eval_history"]:
    print("held-out", e)
