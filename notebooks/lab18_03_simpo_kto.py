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
# # Lab 1.8 · 03 — SimPO (reference-free) and KTO (unpaired)
#
# SimPO: $-\log\sigma(\beta(\bar p_w - \bar p_l) - \gamma)$ on mean log-probs, no reference.
# KTO: one completion at a time, desirable or not, against a reference point $z_0$ = KL(π‖π_ref)
# estimated on mismatched pairs. Both start from the SFT model here.

# %%
import os
from pathlib import Path

from trainlab.recipes.align import run_alignment, stage_config
from trainlab.recipes.base_model import embedded_base_model

PRESET = os.environ.get("TRAINLAB_NOTEBOOK_PRESET", "quick")
OUT = Path(os.environ.get("TRAINLAB_NOTEBOOK_OUT", "runs/notebooks/lab18-simpo-kto"))
sft = run_alignment("sft", stage_config("sft", PRESET), embedded_base_model(PRESET), OUT / "sft", quiet=True)
for method in ("simpo", "kto"):
    run = run_alignment(method, stage_config(method, PRESET), sft.summary["model_dir"], OUT / method, quiet=True,
                        save=False)
    s = run.summary
    print(f"{method}: accuracy {s['accuracy']['overall']:.1%} (SFT {sft.summary['accuracy']['overall']:.1%}), "
          f"final loss {s['final_loss']:.3f}, reference memory {s['memory']['reference']} bytes")
    print("   last logged:", {k: round(v, 3) for k, v in s["history"][-1].items()
                              if k.startswith(("rewards/", "kl", "logps/"))})
