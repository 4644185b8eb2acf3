# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     name: python3
# ---

# %% [markdown]
# # Distributed · 02 — The strategies side by side
#
# Each strategy trains the same decoder on 2 gloo processes for a few steps (accumulation 2, clipping)
# and is compared with one process on the same global batches: are the weights the same, how much
# memory does each rank hold (measured vs the ZeRO formulas), how many bytes did each rank send
# (measured vs the ring formulas), how long did a step take.

# %%
import os

from trainlab.labs.common import show
from trainlab.labs.distributed import PRESETS, formula_error, strategy_table
from trainlab.labs.distributed.measure import measure_strategies
from trainlab.labs.distributed.worker import RunSpec

PRESET = os.environ.get("TRAINLAB_NOTEBOOK_PRESET", "quick")  # "tiny": the smoke test's setting
preset = PRESETS[PRESET]
strategies = ["ddp", "fsdp"] if PRESET == "tiny" else list(preset.strategies)
spec = RunSpec("none", model=dict(preset.model), steps=preset.steps, batch=preset.batch,
               grad_accum=preset.grad_accum, seq=preset.seq)
data = measure_strategies(strategies, spec, world=2)
show([strategy_table(data)])

# %% [markdown]
# ## Formula vs measured, component by component

# %%
for row in data["rows"]:
    for key, f in row["memory_formula"].items():
        print(f"{row['strategy']:6} {key:17} measured {row['memory'][key]:>10,} B   formula {f:>12,.0f} B")
print(f"largest relative gap: {formula_error(data):.2%}")
