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
# # Lab 1.6 · 01 — How many bytes the KV cache holds
#
# Decoding keeps the keys and values of every past token: `2 · layers · kv_heads · head_dim · bytes ·
# tokens · batch`. MHA has one key/value head per query head, GQA one per group, MQA one in all. The seeds
# claim MQA cuts the cache 32x and GQA 4-8x (seed 000), MQA removes (h-1)/h of it (seed 003). First the
# formula for published shapes (`trainlab calc kv-cache`), then our caches measured during generation.
#
# A thin view over `trainlab.labs.lab16`; `TRAINLAB_NOTEBOOK_PRESET=quick` for the demo sizes.

# %%
import os

from trainlab.labs import lab16
from trainlab.memory.kv import kv_cache_result

PRESET = os.environ.get("TRAINLAB_NOTEBOOK_PRESET", "tiny")
preset = lab16.get_preset(PRESET)

# %% [markdown]
# ## The formula: Llama-2-70B (80 layers, 8 KV heads of 128, fp16) as `trainlab calc kv-cache --json` gives it

# %%
doc = kv_cache_result(layers=80, kv_heads=8, head_dim=128, seq=4096, batch=1, dtype="fp16", heads=64)
print({k: doc[k] for k in doc if "bytes" in k or "ratio" in k})

# %% [markdown]
# ## Published shapes and our caches, measured while generating

# %%
base, _ = lab16.load_base(preset)
part = lab16.kv_bytes_part(preset, base)
lab16.show(part)
assert all(r["equal"] for r in part.data["measured"])
