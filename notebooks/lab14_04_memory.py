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
# # Lab 1.4 · 04 — Memory: estimate, measure, profile, plan
#
# Where the memory of a training step goes: parameters, gradients, optimizer states, activations
# and logits, estimated from formulas (`trainlab.memory.estimate`) and measured
# (`trainlab.memory.measure`: exact accounting of every live tensor on a CPU, the allocator's
# statistics on CUDA). Then the step's memory timeline, a batch-size sweep under a memory cap that
# records out-of-memory points, the combined "optimized" configuration (bf16 + checkpointing +
# accumulation) against fp32 (the seed claims 65-80% saved), profiler tables, and the advisor
# (`trainlab plan`) that picks a technique for a model and a GPU.
#
# Thin over `trainlab.labs.lab14` (`tiny` preset by default; `TRAINLAB_NOTEBOOK_PRESET=quick`).

# %%
import os

from trainlab.labs import lab14
from trainlab.memory.calc import memory_result, zero_result

PRESET = os.environ.get("TRAINLAB_NOTEBOOK_PRESET", "tiny")
OUT = os.environ.get("TRAINLAB_NOTEBOOK_OUT", "runs/notebooks/lab14")
lab = lab14.make_env(PRESET, out_dir=OUT)

# %% [markdown]
# ## The calculators: a 7B model, and ZeRO (the paper's 7.5B / 64 GPU example)

# %%
est = memory_result(params="7B", model=None, batch=1, seq=2048, precision="bf16", checkpointing="full")
print({k: f"{v / 2**30:.1f} GiB" for k, v in est["bytes"].items()})
for row in zero_result(params="7.5B", gpus=64)["stages"]:
    print(f"ZeRO stage {row['stage']}: {row['gb_per_gpu']:.1f} GB per GPU ({row['reduction']:.1f}x)")

# %% [markdown]
# ## Estimated vs measured, the timeline, the sweep, the optimized configuration, the profiler

# %%
part = lab14.run_part("memory", lab)
lab14.show(part)

# %% [markdown]
# ## The advisor

# %%
advisor = lab14.run_part("advisor", lab)
lab14.show(advisor)
