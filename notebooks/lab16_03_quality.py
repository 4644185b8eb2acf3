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
# # Lab 1.6 · 03 — What fewer KV heads cost in quality
#
# MHA, GQA and MQA decoders of one width, depth and number of query heads, trained from scratch alike on
# the embedded corpus: same steps, batch, learning rate and data order. Validation loss, oracle accuracy on
# held-out task problems, parameter counts. Seed 003: MQA with "minimal quality loss"; the GQA paper: GQA
# close to MHA.

# %%
import os
from pathlib import Path

from trainlab.data.embedded import build_pretraining_data
from trainlab.labs import lab16

PRESET = os.environ.get("TRAINLAB_NOTEBOOK_PRESET", "tiny")
OUT = Path(os.environ.get("TRAINLAB_NOTEBOOK_OUT", "runs/notebooks/lab16"))
preset = lab16.get_preset(PRESET)
_, base_cfg = lab16.load_base(preset)
data = build_pretraining_data(base_cfg.data)

# %%
part = lab16.quality_part(preset, base_cfg, data, OUT, str)
lab16.show(part)
