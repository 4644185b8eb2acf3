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
# # Lab 1.5 · 05 — Where a training step spends its time, and packed batches
#
# 1. torch.profiler on one training step of the decoder: naive attention (matmuls over `N×N`, a
#    softmax over the materialized scores and its backward) against flash attention.
# 2. Packed variable-length batches (`cu_seqlens`, flash-attn's varlen layout) against a padded
#    batch with a key padding mask: the same outputs on the real tokens, and no work on padding.
# 3. The Triton kernel, when a CUDA GPU is present.
#
# A thin view over `trainlab.labs.lab15`.

# %%
import os

import torch

from trainlab.attention import available_backends, naive_attention
from trainlab.attention.flash_torch import default_blocks
from trainlab.labs import lab15

PRESET = os.environ.get("TRAINLAB_NOTEBOOK_PRESET", "tiny")
preset = lab15.get_preset(PRESET)
device = torch.device("cuda" if torch.cuda.is_available() else "cpu")

# %%
with default_blocks(preset.train_block):
    prof = lab15.profile_step(preset, device)
lab15.show(lab15.section_tables("profile", prof))

# %%
with default_blocks(preset.flash_block):
    varlen = lab15.packed_vs_padded(preset, device)
lab15.show(lab15.section_tables("packed_vs_padded", varlen))

# %%
if "triton" in available_backends() and device.type == "cuda":
    from trainlab.attention.flash_triton import flash_attention_triton

    q, k, v = (torch.randn(2, 8, 1000, 64, device=device, dtype=torch.bfloat16) for _ in range(3))
    err = (flash_attention_triton(q, k, v, causal=True).float()
           - naive_attention(q.float(), k.float(), v.float(), causal=True)).abs().max()
    print(f"Triton kernel, bf16, N=1000 (not a multiple of the block): max |error| vs fp32 naive = {float(err):.2e}")
else:
    print("The Triton kernel needs a CUDA GPU: not run here (tests/test_flash_triton.py checks it on CPU with "
          "TRITON_INTERPRET=1).")
