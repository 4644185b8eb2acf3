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
# # Lab 1.5 · 03 — FlashAttention-1 vs FlashAttention-2: the loop order
#
# * **FA1** (Dao et al., 2022, Algorithm 1): outer loop over K/V blocks, inner loop over Q blocks.
#   For every block pair it reads the partial output `O_i` and the statistics `ℓ_i, m_i` from HBM,
#   rescales, and writes them back. Its outer loop carries that state, so a GPU kernel can only
#   parallelize over batch × heads.
# * **FA2** (Dao, 2023): outer loop over Q blocks. `O_i, ℓ_i, m_i` stay in registers for the whole
#   inner loop, the division by `ℓ` happens once at the end, and Q blocks are independent: batch ×
#   heads × Q blocks work items, enough to fill an H100's 132 SMs even at batch 1.
#
# The readable implementation counts the bytes it moves between its "HBM" (full tensors) and its
# "SRAM" (block locals) as it runs.

# %%
import os

import torch

from trainlab.attention.calc import format_bytes
from trainlab.labs import lab15

PRESET = os.environ.get("TRAINLAB_NOTEBOOK_PRESET", "tiny")
preset = lab15.get_preset(PRESET)
device = torch.device("cuda" if torch.cuda.is_available() else "cpu")

# %%
orders = lab15.loop_orders(preset, device)
lab15.show(lab15.section_tables("loop_orders", orders))
fa1, fa2 = orders["rows"]
print(f"\nFA1 moves {format_bytes(fa1['bytes_moved'])}, FA2 {format_bytes(fa2['bytes_moved'])}; "
      f"FA2 does {fa1['rescale_flops'] / fa2['rescale_flops']:.1f}x fewer rescaling FLOPs; "
      f"outputs agree to {orders['max_abs_diff_fa1_fa2']:.1e}")

# %% [markdown]
# How the work items grow with sequence length (batch 1, 16 heads, 128-row blocks):

# %%
for n in (1024, 4096, 16384):
    print(f"N={n:>6}: FA1 {16:>5} work items, FA2 {16 * (n // 128):>5}")
