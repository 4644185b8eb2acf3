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
# # Lab 1.7 · 04 — Variants (pure sigmoid, IPO, hinge, robust; RPO labelled as such), the β sweep, the whole lab
#
# The lab itself: `trainlab run lab17` writes the report section with every table and plot.
# Here it runs in-process and its tables are printed.

# %%
import os
from pathlib import Path

from trainlab.labs import run_labs

PRESET = os.environ.get("TRAINLAB_NOTEBOOK_PRESET", "quick")
OUT = Path(os.environ.get("TRAINLAB_NOTEBOOK_OUT", "runs/notebooks/lab17-suite"))
suite = run_labs(["lab17"], out_dir=OUT, preset=PRESET, quiet=True)
lab = suite.labs[0]
print(lab.status, lab.error or "")

# %%
for claim in lab.claims:
    print(f"- {claim.claim}\n  measured: {claim.measured}\n  verdict: {claim.verdict}")
for table in lab.tables[:4]:
    print(f"\n{table.title}\n{table.columns}")
    for row in table.rows:
        print(row)
print("report:", OUT / "report.html")
