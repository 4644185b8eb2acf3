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
# # Lab 1.8 · 04 — Export the aligned model and serve it with transformers
#
# Every alignment run saves `model/` in the Hugging Face format (`config.json`,
# `model.safetensors`, the tokenizer). `transformers` loads it as `LlamaForCausalLM` and computes the
# same logits; `generate` then answers the task prompts.

# %%
import os
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from trainlab.recipes.align import run_alignment, stage_config
from trainlab.recipes.base_model import embedded_base_model

PRESET = os.environ.get("TRAINLAB_NOTEBOOK_PRESET", "quick")
OUT = Path(os.environ.get("TRAINLAB_NOTEBOOK_OUT", "runs/notebooks/lab18-export"))
orpo = run_alignment("orpo", stage_config("orpo", PRESET), embedded_base_model(PRESET), OUT / "orpo", quiet=True,
                     evaluate_oracle=False)
folder = orpo.summary["model_dir"]
print(sorted(p.name for p in Path(folder).iterdir()))

# %%
hf = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True).eval()
tok = AutoTokenizer.from_pretrained(folder, local_files_only=True)
prompts = ["max 47 52=", "sort 5 2 9 1=", "reverse c a t="]
with torch.no_grad():
    for prompt in prompts:
        ids = torch.tensor([[tok.bos_token_id, *tok.encode(prompt, add_special_tokens=False)]])
        ours = orpo.model.eval()(ids)
        theirs = hf(ids).logits
        out = hf.generate(ids, max_new_tokens=8, do_sample=False, eos_token_id=tok.eos_token_id,
                          pad_token_id=tok.pad_token_id)
        answer = tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
        print(f"{prompt!r:18} -> {answer!r:14} max |logit diff| {float((ours - theirs).abs().max()):.2e}")
