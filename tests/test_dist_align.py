"""DPO (`run_alignment`) under DDP on 2 gloo processes ends with the single-process weights.

Each rank takes its half of every step's preference pairs; the reference log-probs (cached, computed
once per rank over the whole training set from the same starting weights) travel with the pairs, so
the DPO loss of the global batch and its gradient are the single-process ones. Rank 0 alone saves
the model and writes the summary, which every rank returns.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from _dist import rel_diff, spawn
from _hf_tiny import hf_model_dir
from safetensors.torch import load_file

from trainlab.align.config import align_config
from trainlab.recipes.align import run_alignment

PAIRS = [("What is 2+3? The answer is", " 5.", " 6."), ("Sort the list: 3 1 2 ->", " 1 2 3", " 3 2 1"),
         ("Reverse the word: abc ->", " cba", " abc"), ("The quick brown fox", " jumps.", " sleeps.")]


def _cfg(model: Path, data: Path, *extra: str):  # type: ignore[no-untyped-def]
    return align_config("dpo", preset="tiny", model=model, overrides=[
        "train.device=cpu", "train.max_steps=3", "train.batch_size=4", "train.grad_accum=2", "train.eval_every=0",
        "train.log_every=1", "train.lr=1e-3", "align.reference=cached", "align_data.n_eval_pairs=4",
        f"align_data.source={data}", *extra])


def _worker(rank: int, model: Path, data: Path, out: Path) -> None:
    run = run_alignment("dpo", _cfg(model, data, "dist.strategy=ddp"), model, out, quiet=True, evaluate_oracle=False)
    torch.save({"final_loss": run.summary["final_loss"], "steps": run.summary["steps"]}, out.parent / f"r{rank}.pt")


def test_dpo_under_ddp_equals_one_process(tmp_path: Path) -> None:
    model = hf_model_dir(tmp_path / "llama", "llama", positions=64)
    data = tmp_path / "pairs.jsonl"
    rows = [{"prompt": f"{i}. {p}", "chosen": c, "rejected": r} for i, (p, c, r) in
            ((i, PAIRS[i % len(PAIRS)]) for i in range(20))]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    one = run_alignment("dpo", _cfg(model, data), model, tmp_path / "one", quiet=True, evaluate_oracle=False)
    spawn(_worker, 2, model, data, tmp_path / "two")
    ranks = [torch.load(tmp_path / f"r{r}.pt", weights_only=True) for r in (0, 1)]
    assert ranks[0] == ranks[1]  # every rank returns rank 0's summary
    assert ranks[0]["steps"] == 3
    assert abs(ranks[0]["final_loss"] - one.summary["final_loss"]) <= 1e-5 * abs(one.summary["final_loss"])
    a = load_file(tmp_path / "one" / "model" / "model.safetensors")
    b = load_file(tmp_path / "two" / "model" / "model.safetensors")
    assert rel_diff(b, a) < 1e-5
    assert rel_diff(a, load_file(model / "model.safetensors")) > 1e-4  # DPO moved the weights
