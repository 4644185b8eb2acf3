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
# # Lab 1.6 · 04 — Converting MHA to GQA, and uptraining
#
# Ainslie et al. (2023) turn an MHA checkpoint into GQA by mean-pooling the key/value heads of each group
# (`trainlab convert-gqa`), then train it further for a fraction of the pre-training steps (5% in the
# paper); mean-pooling beats keeping the first head, which beats random init. Here: the cached base model,
# converted with each init, validation loss right after conversion and after 1, 5 and 10% of its
# pre-training steps, beside the MHA model and a GQA model trained from scratch for the same steps.

# %%
import os
from pathlib import Path

from trainlab.data.embedded import build_pretraining_data
from trainlab.labs import lab16

PRESET = os.environ.get("TRAINLAB_NOTEBOOK_PRESET", "tiny")
OUT = Path(os.environ.get("TRAINLAB_NOTEBOOK_OUT", "runs/notebooks/lab16"))
preset = lab16.get_preset(PRESET)
base, base_cfg = lab16.load_base(preset)
data = build_pretraining_data(base_cfg.data)

# %% [markdown]
# ## Right after conversion: the same model with fewer KV heads

# %%
for init in preset.uptrain_inits:
    converted = lab16.to_kv_heads(base, preset.uptrain_kv, init)
    print(init, converted.config.kv_heads, "KV heads,", converted.num_parameters(), "parameters")

# %% [markdown]
# ## Uptraining curves

# %%
part = lab16.uptraining_part(preset, base_cfg, base, data, OUT, str)
lab16.show(part)
