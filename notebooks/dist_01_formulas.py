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
# # Distributed · 01 — What a rank sends: the ring formulas, checked on the wire
#
# A ring all-reduce of `S` bytes over `p` ranks is a reduce-scatter then an all-gather: `2(p−1)` steps,
# each sending one chunk of `S/p`. So one rank sends `2(p−1)/p · S`. Seed 001 writes "2(p−1) × model
# size": that is what *all* ranks send together. `trainlab calc comm` prints both.

# %%
import os

import torch

from trainlab.distributed.comm import CommMeter, allreduce_bytes, comm_result, seed_allreduce_check
from trainlab.labs.distributed.runner import run_ranks
from trainlab.memory.estimate import zero_table

PRESET = os.environ.get("TRAINLAB_NOTEBOOK_PRESET", "quick")  # "tiny": the smoke test's setting

doc = comm_result(params="7e9", gpus=8, dtype="bf16", bandwidth=100.0)
for name, sent in doc["primitives_bytes_per_rank"].items():
    print(f"{name:15} {sent:>18,} bytes per rank  {doc['primitives_seconds'][name]:.3f} s at 100 GB/s")
for st in doc["strategies"]:
    print(f"{st['strategy']:6} {st['sent_bytes_per_rank']:>18,} bytes per rank per step")
print(seed_allreduce_check(7e9, 8)["verdict"])

# %% [markdown]
# ## ZeRO's memory table (Rajbhandari et al. 2020, Fig. 1): 7.5B parameters on 64 GPUs

# %%
for row in zero_table(7_500_000_000, 64):
    print(f"stage {row['stage']}: {row['gb_per_gpu']:6.1f} GB per GPU ({row['reduction']:.1f}x less than DDP)")

# %% [markdown]
# ## Counting a real all-reduce
#
# `CommMeter` sees every collective a process issues (DDP's C++ reducer included: all go through the
# `c10d` dispatcher ops) and the bytes the process wrote to its sockets around each one.

# %%
WIDTH = 64 if PRESET == "tiny" else 512


def ddp_step(rank: int, world: int) -> dict:
    from torch.nn.parallel import DistributedDataParallel

    torch.manual_seed(0)
    model = DistributedDataParallel(torch.nn.Linear(WIDTH, WIDTH, bias=False))
    x = torch.randn(8, WIDTH)
    model(x).sum().backward()  # the first step builds DDP's buckets
    with CommMeter(world) as meter:
        model(x).sum().backward()
    return meter.summary()


s = WIDTH * WIDTH * 4
for rank, summary in enumerate(run_ranks(ddp_step, 2)):
    ar = summary["all_reduce"]
    print(f"rank {rank}: all-reduce of {ar['size_bytes']:,} B, {ar['wire_bytes']:,} B written; "
          f"ring formula {allreduce_bytes(s, 2):,.0f} B, seed's 2(p-1) x S {2 * s:,} B")
