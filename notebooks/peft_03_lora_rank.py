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
# # PEFT · 03 — LoRA's rank
#
# LoRA adds `ΔW = (α/r) B A` with `B ∈ R^{d×r}`, `A ∈ R^{r×k}`: `r(d + k)` parameters instead of `d·k`
# (seed 001 §3.1), a compression of `r(d + k)/(d·k)` per matrix. The count is checked on the live model,
# then the same SFT run is repeated at several ranks.

# %%
import os
import tempfile
from pathlib import Path

from trainlab.labs.common import show
from trainlab.labs.peft import lora_formula_count
from trainlab.labs.peft.runs import MethodSpec, run_method, settings, shared_data
from trainlab.peft.targets import find_targets, linear_shape
from trainlab.recipes.align_model import load_policy
from trainlab.recipes.base_model import embedded_base_model
from trainlab.results import Table

PRESET = os.environ.get("TRAINLAB_NOTEBOOK_PRESET", "quick")  # "tiny": the smoke test's setting
OUT = Path(os.environ.get("TRAINLAB_NOTEBOOK_OUT", tempfile.mkdtemp()))
s = settings(PRESET)
base_dir = embedded_base_model(PRESET)
base, _ = load_policy(base_dir, "cpu")

# %%
r = 8
for path, layer in find_targets(base, "all-linear")[:7]:
    k, d = linear_shape(layer)
    print(f"{path:<24} d×k = {d}×{k}: LoRA {r * (d + k):>6,} of {d * k:>7,} ({r * (d + k) / (d * k):.1%})")
print(f"Σ r(d + k) over all {len(find_targets(base, 'all-linear'))} linear layers: {lora_formula_count(base_dir, r):,}")

# %%
data, heldout = shared_data(base_dir, s, seed=0, device="cpu")
rows = []
for rank in sorted({*s.ranks, 8}):
    row = run_method(MethodSpec(f"LoRA r{rank}", "lora", 1e-2, (f"peft.r={rank}", f"peft.alpha={2 * rank}")),
                     base_dir=base_dir, out_dir=OUT, s=s, seed=0, device="cpu", data=data, heldout=heldout)
    rows.append([rank, row.trainable, round(row.file_bytes / 1024, 1), round(row.heldout_loss, 4),
                 round(row.final_loss, 4)])
show([Table(title="LoRA rank sweep", columns=["r", "trainable", "adapter KiB", "held-out loss", "train loss"],
            rows=rows)])
