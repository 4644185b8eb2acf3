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
# # PEFT · 02 — Every method, same data, same steps
#
# Each method fine-tunes the embedded base model on the embedded SFT tasks for the same number of steps
# and batch; only the learning rate differs (adapters learn at a higher rate than full fine-tuning).
# Measured: trainable parameters, weights held, exact training memory of a step, step time, oracle
# accuracy on held-out prompts, the held-out loss of the correct answers, and the adapter file.

# %%
import os
import tempfile
from pathlib import Path

from trainlab.labs.common import show
from trainlab.labs.peft import method_table
from trainlab.labs.peft.runs import methods, run_method, settings, shared_data
from trainlab.recipes.base_model import embedded_base_model

PRESET = os.environ.get("TRAINLAB_NOTEBOOK_PRESET", "quick")  # "tiny": the smoke test's setting
OUT = Path(os.environ.get("TRAINLAB_NOTEBOOK_OUT", tempfile.mkdtemp()))
s = settings(PRESET)
base_dir = embedded_base_model(PRESET)
data, heldout = shared_data(base_dir, s, seed=0, device="cpu")

# %%
rows = [run_method(spec, base_dir=base_dir, out_dir=OUT, s=s, seed=0, device="cpu", data=data, heldout=heldout)
        for spec in methods(s.virtual)]
show([method_table(rows)])

# %% [markdown]
# BitFit is refused on this model: a Llama-style decoder has no bias at all, so "train only the biases"
# trains nothing. On GPT-2 (biases everywhere) or Qwen2 (q/k/v biases) it trains the biases that exist.
