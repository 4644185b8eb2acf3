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
# # Lab 1.5 · 02 — Time and memory over sequence length
#
# The seeds claim FlashAttention is 2-4x (seed 003) or 2-8x (seed 000) faster, saves 40-60% of
# memory, and brings attention memory from O(n²) to O(n). First the arithmetic
# (`trainlab calc attention`): FLOPs, the size of the score matrix, the bytes each algorithm moves.
# Then the measurement: one causal attention call per backend and length, forward and
# forward+backward, median time and peak bytes allocated.
#
# A thin view over `trainlab.labs.lab15`; `TRAINLAB_NOTEBOOK_PRESET=quick` for the demo sizes.

# %%
import os
from pathlib import Path

import torch

from trainlab.attention.calc import attention_cost, attention_tables
from trainlab.attention.flash_torch import default_blocks
from trainlab.labs import lab15
from trainlab.report.plots import line_plot

PRESET = os.environ.get("TRAINLAB_NOTEBOOK_PRESET", "tiny")
OUT = Path(os.environ.get("TRAINLAB_NOTEBOOK_OUT", "runs/notebooks/lab15"))
preset = lab15.get_preset(PRESET)
device = torch.device("cuda" if torch.cuda.is_available() else "cpu")

# %% [markdown]
# ## The arithmetic
#
# The seed's example, `N = 8192` in fp32: the score matrix of one head is 8192² × 4 bytes = 268 MB
# (the seed writes 268 GB). Multiply by batch × heads and by the several such matrices a training
# step keeps, and the memory wall is clear.

# %%
for title, _columns, rows in attention_tables(attention_cost(1, 32, 8192, 128, dtype="fp32", causal=True)):
    print(title)
    for row in rows:
        print("  " + " | ".join(row))

# %% [markdown]
# ## The measurement

# %%
with default_blocks(preset.flash_block):
    sweep = lab15.sweep(preset, device)
lab15.show(lab15.section_tables("sweep", sweep))

# %%
pts = sweep["points"]
series = {}
for name in ("naive", "sdpa", "flash_torch", "triton", "flash_attn"):
    xs = [p["seq"] for p in pts if p["backend"] == name and "peak_fwd_bwd_bytes" in p]
    if xs:
        series[name] = (xs, [p["peak_fwd_bwd_bytes"] / 2**20 for p in pts
                             if p["backend"] == name and "peak_fwd_bwd_bytes" in p])
path = line_plot(OUT / "lab15_memory_vs_seq.png", series, title="Peak memory, attention forward+backward",
                 xlabel="N", ylabel="MiB", logx=True, logy=True)
print("plot:", path)
for name, (xs, ys) in series.items():
    print(f"{name}: log-log slope {lab15.loglog_slope(xs, ys):.2f}")
