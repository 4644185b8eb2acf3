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
# # Lab 1.4 · 01 — Mixed precision: fp32 vs fp16 (loss scaling) vs bf16
#
# The same decoder, data and number of samples, trained three times by trainlab's training loop:
# in fp32, in fp16 autocast with dynamic loss scaling (`trainlab.precision.DynamicLossScaler`),
# and in bf16 autocast. We compare loss curves, final loss, tokens/s and peak memory with the
# seed's claim (2-3x faster, ~50% less memory), watch the loss scale react to injected overflow
# (beside `torch.amp.GradScaler` on the same run), and measure how much of a real gradient fp16
# flushes to zero and how loss scaling rescues it.
#
# This notebook is a thin view over `trainlab.labs.lab14`; `trainlab run lab14` runs the same code.
# It uses the `tiny` preset by default (seconds on a CPU). Set `TRAINLAB_NOTEBOOK_PRESET=quick` for
# the demo sizes, or `full` on a GPU.

# %%
import os

from trainlab.labs import lab14
from trainlab.memory.calc import formats_tables
from trainlab.precision.formats import format_table

PRESET = os.environ.get("TRAINLAB_NOTEBOOK_PRESET", "tiny")
OUT = os.environ.get("TRAINLAB_NOTEBOOK_OUT", "runs/notebooks/lab14")
lab = lab14.make_env(PRESET, out_dir=OUT)
print(f"preset {PRESET}, device {lab.device}, {lab.env.short()}")

# %% [markdown]
# ## The formats, from their bit layout
#
# fp16 has 5 exponent bits: its smallest *normal* number is 2^-14 ≈ 6.1e-5, its smallest
# subnormal 2^-24 ≈ 6e-8. bf16 keeps fp32's 8-bit exponent and gives up mantissa bits instead.
# (`trainlab calc formats` prints the same table.)

# %%
for title, columns, rows in formats_tables(format_table()):
    print(title)
    print(" | ".join(columns))
    for row in rows:
        print(" | ".join(row))

# %% [markdown]
# ## Three runs, a loss-scale trace and a gradient cast to fp16

# %%
part = lab14.run_part("precision", lab)
lab14.show(part)

# %% [markdown]
# What to look for: the three loss curves should lie on top of each other (16-bit autocast with
# fp32 master weights does not change what is learned). Whether 16-bit is faster depends on the
# device *and* the matrix size: the matmul table times bf16 and fp16 against fp32 at a small and a
# large size, and the speed claim's "why" explains the runs from those numbers (on CPUs with
# AVX512-BF16/AMX, large bf16 matmuls are fast while the lab's width-64 ones are slower than fp32).
# The memory saving is only the activations' share of the peak.
# The loss scale halves at every injected overflow, the step is skipped, and the trace is identical
# to `torch.amp.GradScaler`'s.
