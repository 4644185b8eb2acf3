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
# # PEFT · 01 — Nine methods on one model, and Hugging Face PEFT reading our adapters
#
# Parameter-efficient fine-tuning freezes the pre-trained weights and trains something small beside them
# (seed 001's taxonomy): **reparameterization** (LoRA `W₀ + (α/r)BA`, AdaLoRA, QLoRA on an NF4 base),
# **additive** modules (bottleneck adapters, prefix tuning, prompt tuning, P-tuning) and **selective**
# training (BitFit: biases only; IA3: scaling vectors).
#
# Here each method is applied to the embedded base model (a Llama-style decoder): how many parameters
# train, and what each one adds. Then the adapters are saved and loaded back by `peft.PeftModel`.

# %%
import copy
import os
import tempfile
from pathlib import Path

import torch

from trainlab.errors import UserError
from trainlab.peft import PeftConfig, apply_peft, save_adapter
from trainlab.recipes.align_model import load_policy
from trainlab.recipes.base_model import embedded_base_model

PRESET = os.environ.get("TRAINLAB_NOTEBOOK_PRESET", "quick")  # "tiny": the smoke test's setting
OUT = Path(os.environ.get("TRAINLAB_NOTEBOOK_OUT", tempfile.mkdtemp()))
base_dir = embedded_base_model(PRESET)
base, tokenizer = load_policy(base_dir, "cpu")
print(f"base model: {base.num_parameters():,} parameters, {base.config.n_layers} layers, dim {base.config.dim}")

# %% [markdown]
# ## What each method trains

# %%
SETTINGS = {
    "lora": {"r": 8, "alpha": 16}, "dora": {"r": 8, "alpha": 16}, "qlora": {"r": 8, "alpha": 16},
    "adalora": {"r": 8, "adalora_init_r": 12}, "bottleneck": {"adapter_size": 16},
    "prefix": {"num_virtual_tokens": 8}, "prompt": {"num_virtual_tokens": 8}, "ptuning": {"num_virtual_tokens": 8},
    "ia3": {}, "bitfit": {},
}
models = {}
print(f"{'method':<11} {'trainable':>10} {'share':>8}  note")
for method, extra in SETTINGS.items():
    model = copy.deepcopy(base)
    try:
        info = apply_peft(model, PeftConfig(method=method, **extra))
    except UserError as exc:  # BitFit on a bias-free model says so instead of training something else
        print(f"{method:<11} {'refused':>10} {'':>8}  {exc}")
        continue
    models[method] = model
    print(f"{method:<11} {info.trainable:>10,} {info.trainable / info.total:>8.2%}  {'; '.join(info.notes)}")

# %% [markdown]
# ## Hugging Face PEFT loads what trainlab saves
#
# The adapter folder is PEFT's (`adapter_config.json` + `adapter_model.safetensors`, keys
# `base_model.model.<module>`). The base decoder exports as `LlamaForCausalLM`; `PeftModel.from_pretrained`
# on it must give our logits (for the virtual-token methods: on the real tokens).

# %%
try:
    import peft
    from transformers import LlamaForCausalLM
except ImportError:  # the interop check needs the peft package
    peft = None
if peft is not None:
    hf_base = LlamaForCausalLM.from_pretrained(base_dir).eval()
    ids = tokenizer(["12 < 7 ?", "sort: 3 1 2"], return_tensors="pt", padding=True)["input_ids"][:, :5]
    g = torch.Generator().manual_seed(0)
    for method in ("lora", "ia3", "prompt", "prefix", "ptuning"):
        model = models[method].eval()
        with torch.no_grad():  # "train" the adapter a little: random non-zero values
            for p in model.parameters():
                if p.requires_grad:
                    p.add_(torch.randn(p.shape, generator=g) * 0.05)
            ours = model(ids)
        folder = save_adapter(model, OUT / f"adapter-{method}")
        pm = peft.PeftModel.from_pretrained(copy.deepcopy(hf_base), folder).eval()
        with torch.no_grad():
            theirs = pm(input_ids=ids).logits[:, -ids.shape[1]:]
        print(f"{method:<8} max |logit diff| vs PeftModel: {(ours - theirs).abs().max().item():.2e}")
