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
# # PEFT · 04 — QLoRA's memory, and the claims
#
# QLoRA stores the frozen base in 4-bit NormalFloat: blocks of 64 weights share an absmax, and double
# quantization stores those absmax values in 8 bits (blocks of 256). Bits per parameter:
# `4 + 32/64 = 4.5` without, `4 + 8/64 + 32/(64·256) ≈ 4.127` with double quantization (QLoRA: "0.37 bits
# saved"). Then the full fine-tune, LoRA and QLoRA are trained the same way and their memory compared, and
# the claims of seed 001 and the papers are set beside the numbers.

# %%
import os
import tempfile
from pathlib import Path

from trainlab.env import detect_env
from trainlab.labs.common import claims_markdown, show
from trainlab.labs.peft import lora_formula_count, nf4_bits, part_qlora, peft_claims
from trainlab.labs.peft.runs import methods, run_method, settings, shared_data
from trainlab.recipes.base_model import embedded_base_model

PRESET = os.environ.get("TRAINLAB_NOTEBOOK_PRESET", "quick")  # "tiny": the smoke test's setting
OUT = Path(os.environ.get("TRAINLAB_NOTEBOOK_OUT", tempfile.mkdtemp()))
s = settings(PRESET)
base_dir = embedded_base_model(PRESET)
bits = nf4_bits(base_dir)
print(f"NF4: {bits['without']:.3f} bits/param, with double quantization {bits['with_double_quant']:.3f}")

# %%
data, heldout = shared_data(base_dir, s, seed=0, device="cpu")
pick = [m for m in methods(s.virtual) if m.method in ("none", "lora", "qlora", "prompt")]
rows = [run_method(m, base_dir=base_dir, out_dir=OUT, s=s, seed=0, device="cpu", data=data, heldout=heldout)
        for m in pick]
show(part_qlora(rows, bits))

# %%
claims = peft_claims(rows, bits, lora_formula_count(base_dir), detect_env().short())
print("\n".join(claims_markdown(claims)))
