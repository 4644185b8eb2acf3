"""(IA)³, prompt tuning, P-tuning and prefix tuning against Hugging Face PEFT 0.21 (the reference).

Per case (method x architecture): our adapter (trained values made non-trivial by random perturbation)
saved with `save_adapter` -> ``peft.PeftModel.from_pretrained`` on the same base gives our logits on the
real-token positions; an adapter made with ``peft.get_peft_model`` (perturbed, saved by PEFT) loads into
ours with PEFT's logits; `adapters_disabled` gives the base logits; (IA)³: merged = unmerged. Architectures:
our decoder (against ``LlamaForCausalLM`` loaded from its exported folder; GQA), transformers GPT-2 (fused
Conv1D c_attn, biases) and Qwen2 (GQA, biases on q/k/v) wrapped as `HFCausalLM`.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from tests._hf_tiny import make_model, make_tokenizer
from tests._tiny import tiny_decoder
from trainlab.config import ModelConfig
from trainlab.model.decoder import Decoder
from trainlab.model.hf import HFCausalLM
from trainlab.peft import PeftConfig, adapters_disabled, apply_peft, load_adapter, merge, save_adapter

peft = pytest.importorskip("peft")

ARCH_TOK = {"gpt2": "gpt2", "qwen2": "qwen", "llama": "llama"}


def _pair(arch: str, tmp: Path) -> tuple[nn.Module, Any]:
    """(our model, a transformers model with the same weights)."""
    from transformers import LlamaForCausalLM

    if arch == "decoder":  # GQA: 4 query heads, 2 key/value heads
        torch.manual_seed(0)
        ours = Decoder(ModelConfig(vocab_size=48, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=64))
        folder = ours.save_pretrained(tmp / "base")
        return ours, LlamaForCausalLM.from_pretrained(folder).eval()
    hf = make_model(arch, make_tokenizer(ARCH_TOK[arch]), seed=0).eval()
    return HFCausalLM(copy.deepcopy(hf)).eval(), hf


def _ids(model: nn.Module, b: int = 2, t: int = 7) -> torch.Tensor:
    vocab = model.output_embedding().shape[0]
    return torch.randint(0, vocab, (b, t), generator=torch.Generator().manual_seed(1))


def _perturb(params: list[torch.nn.Parameter], seed: int = 3, scale: float = 0.3) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in params:
            p.add_(torch.randn(p.shape, generator=g) * scale)


def _peft_config(method: str, extra: dict[str, Any]) -> Any:
    if method == "ia3":
        return peft.IA3Config(task_type="CAUSAL_LM", **extra)
    if method == "prompt":
        return peft.PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=extra.get("n", 3))
    if method == "ptuning":
        return peft.PromptEncoderConfig(task_type="CAUSAL_LM", num_virtual_tokens=extra.get("n", 3),
                                        encoder_hidden_size=16)
    return peft.PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=extra.get("n", 3),
                                   prefix_projection=extra.get("projection", False))


CASES = [
    ("ia3", "decoder", {}), ("ia3", "gpt2", {}), ("ia3", "qwen2", {}),
    ("prompt", "decoder", {"num_virtual_tokens": 3}), ("prompt", "gpt2", {"num_virtual_tokens": 3}),
    ("ptuning", "decoder", {"num_virtual_tokens": 3, "encoder_hidden": 16}),
    ("ptuning", "qwen2", {"num_virtual_tokens": 3, "ptuning_encoder": "lstm", "encoder_hidden": 8}),
    ("prefix", "decoder", {"num_virtual_tokens": 3}), ("prefix", "gpt2", {"num_virtual_tokens": 3}),
    ("prefix", "qwen2", {"num_virtual_tokens": 3, "prefix_projection": False}),
]


@pytest.mark.parametrize(("method", "arch", "extra"), CASES, ids=[f"{m}-{a}" for m, a, _ in CASES])
def test_ours_to_peft_and_back(method: str, arch: str, extra: dict[str, Any], tmp_path: Path) -> None:
    ours, hf = _pair(arch, tmp_path)
    ids = _ids(ours)
    mask = torch.ones_like(ids)
    with torch.no_grad():
        base = ours(ids, mask)
    info = apply_peft(ours, PeftConfig(method=method, **extra))
    assert info is not None and 0 < info.trainable < info.total
    trainable = [p for p in ours.parameters() if p.requires_grad]
    assert sum(p.numel() for p in trainable) == info.trainable
    _perturb(trainable)
    ours.eval()
    with torch.no_grad():
        got = ours(ids, mask)
        with adapters_disabled(ours):
            torch.testing.assert_close(ours(ids, mask), base)
    assert got.shape == base.shape and not torch.allclose(got, base)
    folder = save_adapter(ours, tmp_path / "adapter")
    n = extra.get("num_virtual_tokens", 0) if method in ("prompt", "ptuning") else 0  # prefix adds no positions
    pm = peft.PeftModel.from_pretrained(copy.deepcopy(hf), folder).eval()
    with torch.no_grad():
        ref = pm(input_ids=ids, attention_mask=mask).logits[:, n:]
    torch.testing.assert_close(got, ref, atol=2e-5, rtol=1e-4)
    # and back into a fresh copy of the base model (the plain form for prompt methods)
    fresh, _ = _pair(arch, tmp_path / "again")
    load_adapter(fresh, folder)
    with torch.no_grad():
        torch.testing.assert_close(fresh.eval()(ids, mask), got, atol=2e-5, rtol=1e-4)
    if method == "ia3":
        merge(ours)
        assert not any("ia3" in k for k in ours.state_dict())
        with torch.no_grad():
            torch.testing.assert_close(ours(ids, mask), got, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize(("method", "arch", "extra"), [
    ("ia3", "llama", {}), ("ia3", "gpt2", {}), ("prompt", "llama", {}), ("ptuning", "gpt2", {}),
    ("prefix", "llama", {"projection": True}), ("prefix", "qwen2", {})], ids=lambda v: str(v))
def test_peft_made_adapter_loads_into_ours(method: str, arch: str, extra: dict[str, Any], tmp_path: Path) -> None:
    hf = make_model(arch, make_tokenizer(ARCH_TOK[arch]), seed=0).eval()
    ours = HFCausalLM(copy.deepcopy(hf)).eval()
    pm = peft.get_peft_model(hf, _peft_config(method, extra))
    _perturb([p for p in pm.parameters() if p.requires_grad], seed=5)
    pm.save_pretrained(tmp_path / "peft")
    pm.eval()
    ids = _ids(ours)
    mask = torch.ones_like(ids)
    n = 3 if method in ("prompt", "ptuning") else 0
    with torch.no_grad():
        ref = pm(input_ids=ids, attention_mask=mask).logits[:, n:]
    load_adapter(ours, tmp_path / "peft")
    with torch.no_grad():
        torch.testing.assert_close(ours(ids, mask), ref, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("method", ["prompt", "prefix", "ptuning"])
@pytest.mark.parametrize("arch", ["decoder", "gpt2"])
def test_virtual_tokens_with_padding_cache_and_gradients(method: str, arch: str, tmp_path: Path) -> None:
    """Right padding leaves real tokens alone; greedy decoding with the KV cache equals decoding without
    it; hidden_states/output_embedding give the logits; only the encoder gets gradients."""
    ours, _ = _pair(arch, tmp_path)
    apply_peft(ours, PeftConfig(method=method, num_virtual_tokens=2, encoder_hidden=8))
    _perturb([p for p in ours.parameters() if p.requires_grad], scale=0.1)
    ours.eval()
    ids = _ids(ours, 2, 6)
    mask = torch.ones_like(ids)
    mask[1, 4:] = 0
    with torch.no_grad():
        full = ours(ids, mask)
        alone = ours(ids[1:, :4], mask[1:, :4])
        torch.testing.assert_close(full[1:, :4], alone, atol=2e-5, rtol=1e-4)
        h = ours.hidden_states(ids, mask)
        torch.testing.assert_close(h @ ours.output_embedding().T, full, atol=2e-5, rtol=1e-4)
        prompt = ids[:, :3]
        cached = ours.generate(prompt, max_new_tokens=4, use_cache=True)
        plain = ours.generate(prompt, max_new_tokens=4, use_cache=False)
    assert torch.equal(cached, plain)
    ours.train()
    loss = ours(ids, mask).logsumexp(-1).mean()
    loss.backward()
    grads = {n for n, p in ours.named_parameters() if p.grad is not None}
    assert grads and all(n.startswith("prompt_encoder.") for n in grads)


def test_prompt_text_init_and_ia3_errors(tmp_path: Path) -> None:
    from trainlab.errors import UserError

    hf = make_model("llama", make_tokenizer("llama"), seed=0)
    tok = make_tokenizer("llama")
    ours = HFCausalLM(hf, tok)
    apply_peft(ours, PeftConfig(method="prompt", num_virtual_tokens=5, prompt_init="text",
                                prompt_init_text="the answer"))
    ids = tok("the answer")["input_ids"]
    want = hf.get_input_embeddings().weight[torch.tensor((ids * 5)[:5])]
    torch.testing.assert_close(ours.prompt_encoder.embedding.weight, want)
    with pytest.raises(UserError, match="no layer named"):
        apply_peft(tiny_decoder(0), PeftConfig(method="ia3", targets=["nope"]))
    with pytest.raises(UserError, match="feed-forward"):
        apply_peft(tiny_decoder(0), PeftConfig(method="ia3", targets=["k_proj"], ia3_feedforward="down_proj"))


def test_prefix_turns_activation_checkpointing_off(tmp_path: Path) -> None:
    """transformers drops past_key_values in checkpointed layers: the prefix would be silently unseen (or the mask
    and keys disagree); applying prefix tuning turns checkpointing off and says so."""
    from trainlab.model.protocol import apply_checkpointing, hf_checkpointing

    ours, _ = _pair("gpt2", tmp_path)
    apply_checkpointing(ours, "full")
    info = apply_peft(ours, PeftConfig(method="prefix", num_virtual_tokens=2))
    assert not hf_checkpointing(ours.model) and "checkpointing turned off" in info.notes[0]
    ours.train()
    ids = _ids(ours)
    ours(ids, torch.ones_like(ids)).sum().backward()
    assert ours.prompt_encoder.embedding.weight.grad is not None


@pytest.mark.parametrize(("method", "extra"), [("ia3", []), ("prefix", ["peft.num_virtual_tokens=3"]),
                                               ("prompt", ["peft.num_virtual_tokens=3", "peft.prompt_init=text",
                                                           "peft.prompt_init_text=2 * 2"])])
def test_sft_run_writes_an_adapter_peft_loads(method: str, extra: list[str], tmp_path: Path) -> None:
    """`trainlab sft --model <gpt2 folder> peft.method=...` (the recipe): out/adapter loads in PEFT with the
    trained model's logits; only the adapter trained."""
    import json

    from transformers import AutoModelForCausalLM

    from tests._hf_tiny import hf_model_dir
    from trainlab.align.config import align_config
    from trainlab.recipes.align import run_alignment

    gpt2 = hf_model_dir(tmp_path / "gpt2", "gpt2", positions=64)
    data = tmp_path / "sft.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"{i} * 2 =", "completion": f" {2 * i}"}) + "\n"
                            for i in range(8)), encoding="utf-8")
    cfg = align_config("sft", preset="tiny", model=gpt2, overrides=[
        "train.device=cpu", "train.max_steps=3", "train.batch_size=4", "train.eval_every=0", "train.lr=3e-2",
        f"align_data.source={data}", f"peft.method={method}", *extra])
    run = run_alignment("sft", cfg, gpt2, tmp_path / "run", quiet=True, evaluate_oracle=False)
    base = AutoModelForCausalLM.from_pretrained(gpt2).eval()
    n = 3 if method == "prompt" else 0
    hf = peft.PeftModel.from_pretrained(copy.deepcopy(base), str(tmp_path / "run" / "adapter")).eval()
    ids = torch.randint(0, 200, (2, 8), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        got = run.model.eval()(ids)
        torch.testing.assert_close(got, hf(input_ids=ids).logits[:, n:], atol=1e-5, rtol=1e-4)
        assert not torch.allclose(got, base(input_ids=ids).logits, atol=1e-4)  # it trained


@pytest.mark.parametrize("method", ["ia3", "prefix"])
def test_dpo_with_adapters_on_the_embedded_data(method: str, tmp_path: Path) -> None:
    """DPO's reference is the policy with its adapters off (`ReferenceView`, no weights of its own): scoring the
    evaluation pairs with it ran into StopIteration (`next(model.parameters())`); its logps are the base model's."""
    from trainlab.align.config import align_config
    from trainlab.align.evaluate import pair_logps
    from trainlab.recipes.align import build_alignment_data, load_policy, run_alignment
    from trainlab.recipes.base_model import embedded_base_model

    base_dir = embedded_base_model("tiny")
    cfg = align_config("dpo", preset="tiny", overrides=["train.device=cpu", "train.max_steps=2",
                                                        f"peft.method={method}", "peft.num_virtual_tokens=2"])
    run = run_alignment("dpo", cfg, base_dir, tmp_path / "run", quiet=True, evaluate_oracle=False)
    assert run.summary["steps"] == 2 and run.summary["peft"]["trainable_params"] > 0
    base, tok = load_policy(base_dir)
    data = build_alignment_data("dpo", cfg, tok)
    from trainlab.peft import ReferenceView

    want = pair_logps(base, data.eval_pairs, pad_id=data.pad_id)[0]
    got = pair_logps(ReferenceView(run.model), data.eval_pairs, pad_id=data.pad_id)[0]
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-5)
