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
# # Lab 1.8 · 02 — ORPO from the base model vs SFT then DPO
#
# One stage (ORPO) against two (SFT, then DPO with the SFT model as reference): oracle accuracy,
# training time of all stages and training memory (exact accounting). From the command line:
# `trainlab orpo` vs `trainlab sft` + `trainlab dpo --model runs/sft/model`.

# %%
import os
from pathlib import Path

from trainlab.recipes.align import run_alignment, stage_config
from trainlab.recipes.base_model import embedded_base_model

PRESET = os.environ.get("TRAINLAB_NOTEBOOK_PRESET", "quick")
OUT = Path(os.environ.get("TRAINLAB_NOTEBOOK_OUT", "runs/notebooks/lab18"))
base_dir = embedded_base_model(PRESET)
sft = run_alignment("sft", stage_config("sft", PRESET), base_dir, OUT / "sft", quiet=True)
# pure DPO (align.rpo_alpha=0): ORPO is compared with DPO itself, not DPO plus an NLL term (RPO)
dpo = run_alignment("dpo", stage_config("dpo", PRESET, overrides=["align.rpo_alpha=0"]), sft.summary["model_dir"],
                    OUT / "dpo", quiet=True)
orpo = run_alignment("orpo", stage_config("orpo", PRESET), base_dir, OUT / "orpo", quiet=True)

# %%
for name, stages in (("SFT -> DPO", (sft, dpo)), ("ORPO", (orpo,))):
    last = stages[-1].summary
    cost = sum(r.summary["cost_s"] for r in stages)
    mem = max(r.summary["memory"]["total"] for r in stages) / 2**20
    print(f"{name:10} accuracy {last['accuracy']['overall']:.1%}  training time {cost:.1f} s  memory {mem:.1f} MiB")

# %%
for h in orpo.summary["history"][-3:]:
    print({k: round(v, 3) for k, v in h.items() if k in ("step", "loss", "nll_loss", "log_odds_ratio",
                                                          "rewards/accuracies")})
