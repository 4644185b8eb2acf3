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
# # Lab 1.5 · 01 — The tiled algorithm, and how exact it is
#
# Standard attention computes `softmax(QKᵀ/√d)·V` by writing the whole `N×N` score matrix to
# memory. FlashAttention (Dao et al., 2022) walks over blocks of keys and keeps, per query row, a
# running maximum `m`, a running normalizer `ℓ` and an unnormalized output — the *online softmax*.
# This notebook first replays that update by hand on one row, then measures every backend against a
# float64 reference in fp32, fp16 and bf16 (flash-attn's criterion: at most 2× the naive error).
#
# A thin view over `trainlab.labs.lab15` (`trainlab run lab15` runs the same code). The `tiny`
# preset runs in seconds on a CPU; set `TRAINLAB_NOTEBOOK_PRESET=quick`, or `full` on a GPU.

# %%
import math
import os

import torch

from trainlab.attention import flash_attention_torch, naive_attention
from trainlab.attention.flash_torch import default_blocks
from trainlab.labs import lab15

PRESET = os.environ.get("TRAINLAB_NOTEBOOK_PRESET", "tiny")
preset = lab15.get_preset(PRESET)
device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
print(f"preset {PRESET}, device {device}")

# %% [markdown]
# ## The online softmax on one row, block by block
#
# Scores of one query against 12 keys, processed in 3 blocks of 4. After each block:
# `m' = max(m, max(s_j))`, `ℓ' = e^(m−m')·ℓ + Σ e^(s_j−m')`, `õ' = e^(m−m')·õ + e^(s_j−m')·V_j`.

# %%
torch.manual_seed(0)
scores = torch.randn(12, dtype=torch.float64) * 3
values = torch.randn(12, 4, dtype=torch.float64)
m, ell, acc = -math.inf, 0.0, torch.zeros(4, dtype=torch.float64)
for j in range(0, 12, 4):
    s_j, v_j = scores[j:j + 4], values[j:j + 4]
    m_new = max(m, float(s_j.max()))
    alpha = math.exp(m - m_new) if m != -math.inf else 0.0
    p = torch.exp(s_j - m_new)
    ell = alpha * ell + float(p.sum())
    acc = alpha * acc + p @ v_j
    m = m_new
    print(f"after block {j // 4}: m = {m:.3f}, ℓ = {ell:.4f}")
online = acc / ell
exact = torch.softmax(scores, dim=0) @ values
print("online softmax == softmax:", torch.allclose(online, exact),
      f"(max diff {float((online - exact).abs().max()):.1e})")

# %% [markdown]
# ## The same in the library, forward and backward, with tiny tiles
#
# `flash_attention_torch` runs that loop over 8×8 tiles of a causal, grouped-query attention and
# its backward recomputes the probabilities from the saved log-sum-exp.

# %%
q = torch.randn(1, 4, 37, 16, dtype=torch.float64, requires_grad=True)
k = torch.randn(1, 2, 37, 16, dtype=torch.float64, requires_grad=True)
v = torch.randn(1, 2, 37, 16, dtype=torch.float64, requires_grad=True)
with default_blocks(8):
    out = flash_attention_torch(q, k, v, causal=True)
ref = naive_attention(q, k, v, causal=True)
grads = torch.autograd.grad(out.sum(), (q, k, v))
ref_grads = torch.autograd.grad(ref.sum(), (q, k, v))
print("max |ΔO| =", float((out - ref).detach().abs().max()))
print("max |Δgrad| =", max(float((a - b).abs().max()) for a, b in zip(grads, ref_grads, strict=True)))

# %% [markdown]
# ## Every backend against float64
#
# The Triton kernel and flash-attn are measured here only on a CUDA GPU (the test suite checks the
# Triton kernels on CPU through Triton's interpreter).

# %%
exact_result = lab15.exactness(preset, device)
lab15.show(lab15.section_tables("exactness", exact_result))
