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
# # Lab 1.5 · 04 — Training at long sequence lengths
#
# The decoder trained one step at a time at growing lengths: with naive attention (it keeps the
# `N×N` probabilities of every head for the backward), naive attention + activation checkpointing,
# flash attention alone, flash attention + checkpointing, and (where the device has native bf16)
# flash + checkpointing + bf16. All run under the same memory cap; a step that passes it raises
# out-of-memory, which is recorded (on CPU by exact accounting of tensor storages, on CUDA by the
# allocator), and longer lengths are not attempted. Table 4b says what each factor bought on its
# own: the longest length it trained, and its peak-memory saving over naive attention.
#
# A thin view over `trainlab.labs.lab15`; `TRAINLAB_NOTEBOOK_PRESET=quick` for 1K-8K tokens.

# %%
import os

import torch

from trainlab.attention.calc import format_bytes
from trainlab.attention.flash_torch import default_blocks
from trainlab.env import detect_env
from trainlab.labs import lab15

PRESET = os.environ.get("TRAINLAB_NOTEBOOK_PRESET", "tiny")
preset = lab15.get_preset(PRESET)
device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
print("setups:", [s.name for s in lab15.train_setups(device, detect_env().bf16_native)])
print("memory cap:", format_bytes(preset.memory_cap_bytes))

# %%
with default_blocks(preset.train_block):
    train = lab15.long_sequence_training(preset, device, bf16_native=detect_env().bf16_native)
lab15.show(lab15.section_tables("long_sequence_training", train))
