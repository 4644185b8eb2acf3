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
# # Lab 1.4 · 03 — Activation checkpointing
#
# The decoder's checkpointing policies (`model.checkpointing`): `none`; `every_n` (every 2nd
# block); `full` (every block keeps only its input and is recomputed in backward); `selective`
# (matmul and attention outputs are kept, norms/RoPE/SiLU are recomputed). On two model sizes we
# measure the activation memory kept for backward and the step's peak (exactly, on a CPU), the step
# time, and check that the gradients equal those without checkpointing. The seed claims 30-50%
# memory saved for 20-30% more time.
#
# Thin over `trainlab.labs.lab14` (`tiny` preset by default; `TRAINLAB_NOTEBOOK_PRESET=quick`).

# %%
import os

from trainlab.labs import lab14

PRESET = os.environ.get("TRAINLAB_NOTEBOOK_PRESET", "tiny")
OUT = os.environ.get("TRAINLAB_NOTEBOOK_OUT", "runs/notebooks/lab14")
lab = lab14.make_env(PRESET, out_dir=OUT)
print(f"preset {PRESET}, device {lab.device}, model sizes {lab.s.ckpt_models}")

# %%
part = lab14.run_part("checkpointing", lab)
lab14.show(part)

# %% [markdown]
# Full checkpointing removes nearly all activations, but the *peak* also holds the fp32 weights,
# gradients and AdamW states (16 bytes per parameter), which checkpointing does not touch: the
# saving on the peak is the activations' share of it, larger for longer sequences and bigger
# batches.
