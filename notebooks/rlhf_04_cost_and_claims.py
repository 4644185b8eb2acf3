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
# # RLHF · 04 — DPO vs RLHF vs GRPO: accuracy, cost, and the seed's claims
#
# The whole lab (`trainlab run rlhf`): from one SFT model, DPO, GRPO with the oracle, RM → PPO and RM → GRPO
# with one sampling budget; then the claims "DPO is 50-70% cheaper than RLHF" and "2 vs 4 forward passes"
# with verdicts computed from what was measured here.

# %%
import os
import tempfile
from pathlib import Path

from trainlab.labs.common import show
from trainlab.labs.rlhf import context, part_accuracy, part_cost, part_curves, run_stages

PRESET = os.environ.get("TRAINLAB_NOTEBOOK_PRESET", "quick")
OUT = Path(os.environ.get("TRAINLAB_NOTEBOOK_OUT", tempfile.mkdtemp()))
ctx = context(PRESET, OUT / "suite")
stages = run_stages(ctx)

# %%
show(part_accuracy(ctx, stages))

# %%
show(part_curves(ctx, stages))

# %%
show(part_cost(ctx, stages))
