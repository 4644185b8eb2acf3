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
# # Distributed · 03 — Tensor parallel up close, then `trainlab plan`
#
# The tensor-parallel plan splits q/k/v and gate/up by output features (whole heads; GQA's key/value
# heads too) and o/down by input features, so each block needs one all-reduce after attention and one
# after the MLP, and two more for the input gradients in backward: 4 per layer and micro-batch.

# %%
import os

import torch

from trainlab.config import DistConfig, ModelConfig
from trainlab.distributed.comm import CommMeter
from trainlab.labs.distributed.runner import run_ranks
from trainlab.memory.advisor import plan
from trainlab.model.decoder import Decoder

PRESET = os.environ.get("TRAINLAB_NOTEBOOK_PRESET", "quick")  # "tiny": the smoke test's setting
DIM = 32 if PRESET == "tiny" else 128


def tp_forward_backward(rank: int, world: int) -> dict:
    from trainlab.distributed import build_strategy, env

    strategy = build_strategy(env.init(DistConfig(strategy="tp", tp=world)))
    torch.manual_seed(0)
    model = strategy.wrap(Decoder(ModelConfig(vocab_size=64, dim=DIM, n_layers=2, n_heads=4, n_kv_heads=2)))
    shapes = {n: tuple(p.to_local().shape) for n, p in model.layers[0].named_parameters() if hasattr(p, "to_local")}
    ids = torch.randint(0, 64, (2, 16))
    with CommMeter(world) as meter:
        model(ids).float().pow(2).mean().backward()
    return {"shapes": shapes, "all_reduces": meter.summary()["all_reduce"]}


res = run_ranks(tp_forward_backward, 2)[0]
for name, shape in res["shapes"].items():
    print(f"{name:22} local shard {shape}")
print(f"all-reduces in one forward+backward of 2 layers: {res['all_reduces']['calls']} "
      f"({res['all_reduces']['size_bytes']:,} B of activations)")

# %% [markdown]
# ## Which strategy for which model? `trainlab plan` vs seed 001's size rule

# %%
for params, gpus, mem in ((7e9, 8, 80.0), (30e9, 8, 80.0), (70e9, 8, 80.0)):
    doc = plan(int(params), mem, gpus=gpus)
    rec = doc["recommended"]
    pick = f"{rec['name']} ({rec['per_gpu_gb']:.1f} GB per GPU)" if rec else "nothing fits"
    print(f"{params / 1e9:.0f}B on {gpus} x {mem:g} GB: plan -> {pick}; seed -> {doc['seed_rule']}")
