# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Lab 1.4 · 02 — Gradient accumulation
#
# Micro-batch 2 with K = 1, 4, 8, 16 accumulation steps. trainlab's loop sums the loss over every
# micro-batch of a step and divides by the step's total token count, so K micro-batches give the
# gradient of one batch of 2K sequences. We measure that difference, the time and peak memory of a
# step for the same samples, and the loss curves for the same number of samples (the seed's
# claims: effective batch = micro-batch x steps, 0% extra memory, about 5% slower).
#
# Thin over `trainlab.labs.lab14` (`tiny` preset by default; `TRAINLAB_NOTEBOOK_PRESET=quick`).

# %%
import os

from trainlab.labs import lab14

PRESET = os.environ.get("TRAINLAB_NOTEBOOK_PRESET", "tiny")
OUT = os.environ.get("TRAINLAB_NOTEBOOK_OUT", "runs/notebooks/lab14")
lab = lab14.make_env(PRESET, out_dir=OUT)
print(f"preset {PRESET}, device {lab.device}, micro-batch {lab.s.accum_micro}, K in {lab.s.accum_steps}")

# %%
part = lab14.run_part("accumulation", lab)
lab14.show(part)

# %% [markdown]
# The gradient difference is float rounding (the order of the additions), not an approximation.
# The peak memory of accumulation stays near the micro-batch's (plus the gradients it holds
# between micro-batches), while one real batch of 2K sequences needs activations for all of them.
