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
# # Lab 1.6 · 02 — Decode speed: MHA vs GQA vs MQA, and our decoder vs transformers
#
# Every decode step reads all cached keys and values once: fewer KV heads, fewer bytes to read. The seeds
# claim MQA decodes 1.5-2x (seed 000) or 10-20% (seed 003) faster, GQA 1.3-1.5x. We time prefill, the
# per-token step and tokens/s over batch size and context for the base model (MHA) and its GQA/MQA
# conversions, with our dynamic cache, our static cache (`generate(..., cache="static")`) and transformers'
# `generate` on the same exported weights; the greedy tokens must be the same.

# %%
import os
from pathlib import Path

from trainlab.labs import lab16

PRESET = os.environ.get("TRAINLAB_NOTEBOOK_PRESET", "tiny")
OUT = Path(os.environ.get("TRAINLAB_NOTEBOOK_OUT", "runs/notebooks/lab16"))
preset = lab16.get_preset(PRESET)
base, _ = lab16.load_base(preset)

# %%
part = lab16.decode_part(preset, base, OUT, str, "this machine")
lab16.show(part)
for f in part.figures:
    print("plot:", f.path)
assert all(p["same_tokens"] for p in part.data["points"])
