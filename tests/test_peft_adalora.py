"""AdaLoRA against HF PEFT: the same budget schedule, importance scores and pruned triplets step by step from the
same weights and gradients, the same orthogonality regularizer, adapters in both directions (pruned, with
rank_pattern), merged = unmerged, and a training run whose final budget is r per matrix."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from tests._hf_tiny import hf_model_dir, make_model, make_tokenizer
from trainlab.model.hf import HFCausalLM
from trainlab.peft import load_adapter, merge, save_adapter
from trainlab.peft.adalora import RankAllocator, orth_regularizer, svd_modules

peft = pytest.importorskip("peft")

SCHEDULE = {"init_r": 4, "target_r": 2, "tinit": 1, "tfinal": 2, "deltaT": 1, "total_step": 7}


def _peft_model():  # type: ignore[no-untyped-def]
    hf = make_model("llama", make_tokenizer("llama"), seed=0)
    cfg = peft.AdaLoraConfig(target_modules=["q_proj", "v_proj", "down_proj"], lora_alpha=8, task_type="CAUSAL_LM",
                             **SCHEDULE)
    model = peft.get_peft_model(copy.deepcopy(hf), cfg)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_E" in n:
                p.copy_(torch.randn(p.shape, generator=g))
    return hf, model


def _loss(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))


def _params(model: torch.nn.Module, prefix: str) -> dict[str, torch.Tensor]:
    """The adapter tensors under the transformers model's paths (``prefix``: the wrapper's)."""
    return {n.replace(".default", "").removeprefix(prefix): p for n, p in model.named_parameters()
            if any(k in n for k in ("lora_A", "lora_E", "lora_B"))}


def test_allocator_regularizer_and_interop_match_peft(tmp_path: Path) -> None:
    hf, theirs = _peft_model()
    theirs.save_pretrained(str(tmp_path / "init"))
    ours = HFCausalLM(copy.deepcopy(hf))
    load_adapter(ours, tmp_path / "init")
    vocab = hf.config.vocab_size
    ids = torch.randint(0, vocab, (2, 10), generator=torch.Generator().manual_seed(1))
    theirs.eval(), ours.eval()
    with torch.no_grad():
        torch.testing.assert_close(ours(ids), theirs(input_ids=ids).logits, atol=1e-5, rtol=1e-5)

    # the same regularizer: PEFT adds orth_reg_weight · R to the loss it returns with labels
    out = theirs(input_ids=ids, labels=ids)
    reg = (out.loss - _loss(out.logits, ids)).detach()
    modules = [m for _, m in svd_modules(ours)]
    torch.testing.assert_close(0.5 * orth_regularizer(modules).detach(), reg, atol=1e-5, rtol=1e-5)

    # the same schedule, importance and pruning, step by step, from the same weights and gradients
    allocator = RankAllocator(ours, ours.trainlab_peft.config)
    their_alloc = theirs.base_model.rankallocator
    for step in range(SCHEDULE["total_step"] + 1):
        assert allocator.budget(step) == their_alloc.budget_schedule(step), step
    opt_ours = torch.optim.SGD([p for p in ours.parameters() if p.requires_grad], lr=0.5)
    opt_theirs = torch.optim.SGD([p for p in theirs.parameters() if p.requires_grad], lr=0.5)
    for step in range(SCHEDULE["total_step"]):
        _loss(ours(ids), ids).backward()
        _loss(theirs(input_ids=ids).logits, ids).backward()
        opt_ours.step(), opt_theirs.step()
        allocator.step(step)
        theirs.base_model.update_and_allocate(step)
        opt_ours.zero_grad(), opt_theirs.zero_grad()
        mine, peft_params = _params(ours, "model."), _params(theirs, "base_model.model.")
        for name, p in peft_params.items():
            torch.testing.assert_close(mine[name], p, atol=1e-5, rtol=1e-4, msg=f"step {step}: {name}")
    kept = {n: int(m.rank_mask.sum()) for n, m in svd_modules(ours)}
    assert sum(kept.values()) == SCHEDULE["target_r"] * len(kept) and len(set(kept.values())) > 1  # uneven ranks
    pattern = theirs.peft_config["default"].rank_pattern
    assert sorted(sum(v) for v in pattern.values()) == sorted(kept.values())

    # adapters both ways, pruned (rank_pattern, kept triplets only)
    with torch.no_grad():
        want = theirs(input_ids=ids).logits
        torch.testing.assert_close(ours(ids), want, atol=1e-5, rtol=1e-4)
    save_adapter(ours, tmp_path / "ours")
    config = json.loads((tmp_path / "ours" / "adapter_config.json").read_text())
    assert config["peft_type"] == "ADALORA" and config["rank_pattern"]
    loaded = peft.PeftModel.from_pretrained(copy.deepcopy(hf), str(tmp_path / "ours")).eval()
    theirs.save_pretrained(str(tmp_path / "theirs"))
    fresh = HFCausalLM(copy.deepcopy(hf))
    load_adapter(fresh, tmp_path / "theirs")
    fresh.eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=ids).logits, want, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(fresh(ids), want, atol=1e-5, rtol=1e-4)
        merge(ours)
        torch.testing.assert_close(ours(ids), want, atol=1e-5, rtol=1e-4)


def test_adalora_sft_run_prunes_to_the_target_budget(tmp_path: Path) -> None:
    from trainlab.align.config import align_config
    from trainlab.recipes.align import run_alignment

    gpt2 = hf_model_dir(tmp_path / "gpt2", "gpt2", positions=64)
    data = tmp_path / "sft.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"{i} * 2 =", "completion": f" {2 * i}"}) + "\n"
                            for i in range(8)), encoding="utf-8")
    cfg = align_config("sft", preset="tiny", model=gpt2, overrides=[
        "train.device=cpu", "train.max_steps=4", "train.batch_size=4", "train.eval_every=0", "train.lr=1e-2",
        f"align_data.source={data}", "peft.method=adalora", "peft.r=2", "peft.adalora_init_r=4",
        "peft.adalora_tfinal=1", "peft.targets=c_attn,c_fc"])
    run = run_alignment("sft", cfg, gpt2, tmp_path / "run", quiet=True, evaluate_oracle=False)
    assert all("orth_reg" in h for h in run.summary["history"])
    kept = [int(m.rank_mask.sum()) for _, m in svd_modules(run.model)]
    assert sum(kept) == 2 * len(kept) == 8
    adapter = tmp_path / "run" / "adapter"
    assert json.loads((adapter / "adapter_config.json").read_text())["total_step"] == 4
    from transformers import AutoModelForCausalLM

    hf = peft.PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(gpt2), str(adapter)).eval()
    ids = torch.randint(0, 200, (2, 8), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(run.model.eval()(ids), hf(input_ids=ids).logits, atol=1e-5, rtol=1e-4)


def test_adalora_resume_is_bit_exact(tmp_path: Path) -> None:
    """The importance EMAs and kept-triplet masks are module buffers: a resumed run allocates as an unbroken one."""
    from trainlab.align.config import align_config
    from trainlab.recipes.align import run_alignment
    from trainlab.train.callbacks import Callback

    class StopAt(Callback):
        def on_step_end(self, trainer, step, metrics) -> None:  # type: ignore[no-untyped-def]
            if step == 3:
                trainer.request_stop("test")

    gpt2 = hf_model_dir(tmp_path / "gpt2", "gpt2", positions=64)
    data = tmp_path / "sft.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"{i} - 1 =", "completion": f" {i - 1}"}) + "\n"
                            for i in range(8)), encoding="utf-8")

    def cfg(*extra: str):  # type: ignore[no-untyped-def]
        return align_config("sft", preset="tiny", model=gpt2, overrides=[
            "train.device=cpu", "train.max_steps=6", "train.batch_size=4", "train.eval_every=0", "train.lr=1e-2",
            "train.save_every=1", f"align_data.source={data}", "peft.method=adalora", "peft.r=1",
            "peft.adalora_init_r=3", "peft.adalora_tinit=1", "peft.adalora_tfinal=1", "peft.targets=c_attn,c_fc",
            *extra])

    straight = run_alignment("sft", cfg(), gpt2, tmp_path / "a", quiet=True, evaluate_oracle=False)
    run_alignment("sft", cfg("train.keep_checkpoint=true"), gpt2, tmp_path / "b", quiet=True, evaluate_oracle=False,
                  callbacks=[StopAt()])
    resumed = run_alignment("sft", cfg(), gpt2, tmp_path / "b", resume=True, quiet=True, evaluate_oracle=False)
    assert resumed.summary["resumed_from"] == 3
    a, b = straight.model.state_dict(), resumed.model.state_dict()
    for k in a:
        torch.testing.assert_close(b[k], a[k], atol=0, rtol=0, msg=k)
    assert sum(int(m.rank_mask.sum()) for _, m in svd_modules(resumed.model)) == 4
