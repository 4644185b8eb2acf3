"""LoRA-family (LoRA, rsLoRA, DoRA, AdaLoRA) interop with Hugging Face PEFT, one case table (methods x
architectures) through shared checks.

For each case: our adapter saved -> ``peft.PeftModel.from_pretrained`` gives our logits; an adapter made with
``peft.get_peft_model`` (B random, non-zero) loads into ours with PEFT's logits; merged = unmerged logits;
``adapters_disabled`` gives the base model's logits. Architectures: our decoder (against ``LlamaForCausalLM``
loaded from its exported folder), and transformers GPT-2 (Conv1D, fan_in_fan_out), Llama and Qwen2 wrapped
as `HFCausalLM`.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from tests._hf_tiny import make_model, make_tokenizer
from tests._tiny import tiny_decoder
from trainlab.model.hf import HFCausalLM
from trainlab.peft import (
    PeftConfig,
    adapter_nbytes,
    adapters_disabled,
    apply_peft,
    load_adapter,
    merge,
    save_adapter,
)

peft = pytest.importorskip("peft")

ARCH_TOK = {"gpt2": "gpt2", "llama": "llama", "qwen2": "qwen"}


@dataclass(frozen=True)
class Case:
    method: str
    arch: str  # "decoder" or a transformers architecture
    targets: Any = "all-linear"
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def id(self) -> str:
        extra = "-".join([f"{k}" for k in self.extra] + (["regex"] if str(self.targets).startswith("re:") else []))
        return f"{self.method}-{self.arch}" + (f"-{extra}" if extra else "")


CASES = [
    Case("lora", "decoder", ["q_proj", "v_proj"]),
    Case("lora", "decoder", "all-linear", {"rslora": True}),
    Case("lora", "gpt2"),
    Case("lora", "llama", ["q_proj", "v_proj", "down_proj"]),
    Case("lora", "qwen2"),
    Case("dora", "decoder", ["q_proj", "o_proj", "up_proj"]),
    Case("dora", "gpt2"),
    Case("dora", "qwen2", ["k_proj", "gate_proj"]),
    Case("lora", "decoder", r"re:model\.layers\.1\..*_proj"),  # a pattern over HF Llama paths: layer 1 only
    Case("dora", "gpt2", r"re:.*\.mlp\.c_proj"),
    Case("adalora", "decoder", ["q_proj", "down_proj"]),
    Case("adalora", "gpt2"),
    Case("adalora", "llama", ["v_proj", "up_proj"]),
]


def _pair(arch: str, tmp: Path) -> tuple[nn.Module, Any]:
    """(our model, a transformers model with the same weights)."""
    from transformers import LlamaForCausalLM

    if arch == "decoder":
        ours = tiny_decoder(0, n_layers=2)
        folder = ours.save_pretrained(tmp / "base")
        return ours, LlamaForCausalLM.from_pretrained(folder)
    hf = make_model(arch, make_tokenizer(ARCH_TOK[arch]), seed=0)
    return HFCausalLM(copy.deepcopy(hf)), hf


def _ids(model: nn.Module) -> torch.Tensor:
    vocab = model.output_embedding().shape[0]
    return torch.randint(0, vocab, (2, 9), generator=torch.Generator().manual_seed(1))


def _hf_logits(hf: Any, ids: torch.Tensor) -> torch.Tensor:
    hf.eval()
    with torch.no_grad():
        return hf(input_ids=ids).logits


def _logits(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(ids)


def _perturb(model: nn.Module, seed: int = 3) -> None:
    """Random non-zero B (and magnitudes, AdaLoRA's singular values): a trained-looking adapter."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if any(k in name for k in ("lora_B", "lora_E", "lora_magnitude_vector")):
                p.add_(torch.randn(p.shape, generator=g) * 0.1)


def _cfg(case: Case) -> PeftConfig:
    if case.method == "adalora":  # target rank 2 of 4 initial triplets per matrix
        return PeftConfig(method="adalora", r=2, adalora_init_r=4, alpha=8, targets=case.targets, init_seed=0,
                          adalora_total_step=10)
    return PeftConfig(method=case.method, r=4, alpha=8, targets=case.targets, init_seed=0, **case.extra)


def _peft_config(case: Case) -> Any:
    """The same adapter as `_cfg`, in HF PEFT's terms (a string target is PEFT's full-match pattern)."""
    targets = case.targets.removeprefix("re:") if isinstance(case.targets, str) else case.targets
    if case.method == "adalora":
        return peft.AdaLoraConfig(init_r=4, target_r=2, total_step=10, lora_alpha=8, target_modules=targets,
                                  task_type="CAUSAL_LM")
    return peft.LoraConfig(r=4, lora_alpha=8, target_modules=targets, use_dora=case.method == "dora",
                           use_rslora=case.extra.get("rslora", False), task_type="CAUSAL_LM")


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_lora_family_interop(case: Case, tmp_path: Path) -> None:
    ours, hf = _pair(case.arch, tmp_path)
    ids = _ids(ours)
    base_logits = _logits(ours, ids)
    torch.testing.assert_close(base_logits, _hf_logits(hf, ids), atol=1e-5, rtol=1e-5)

    # ours -> PEFT
    cfg = _cfg(case)
    info = apply_peft(ours, cfg)
    assert info is not None and info.trainable == sum(p.numel() for p in ours.parameters() if p.requires_grad)
    assert all(("lora_" in n) for n, p in ours.named_parameters() if p.requires_grad)
    torch.testing.assert_close(_logits(ours, ids), base_logits, atol=1e-5, rtol=1e-5)  # B = 0 at init
    _perturb(ours)
    logits = _logits(ours, ids)
    assert (logits - base_logits).abs().max() > 1e-3
    save_adapter(ours, tmp_path / "adapter")
    assert adapter_nbytes(ours) == sum(p.numel() * 4 for p in ours.parameters() if p.requires_grad)
    loaded = peft.PeftModel.from_pretrained(copy.deepcopy(hf), str(tmp_path / "adapter"))
    torch.testing.assert_close(_hf_logits(loaded, ids), logits, atol=1e-5, rtol=1e-5)

    # adapters off = the base model
    with adapters_disabled(ours):
        torch.testing.assert_close(_logits(ours, ids), base_logits, atol=1e-6, rtol=1e-6)

    # merged = unmerged
    merge(ours)
    assert not any("lora" in n for n, _ in ours.named_parameters())
    torch.testing.assert_close(_logits(ours, ids), logits, atol=1e-5, rtol=1e-5)

    # PEFT -> ours
    trained = peft.get_peft_model(copy.deepcopy(hf), _peft_config(case))
    _perturb(trained, seed=5)
    trained.save_pretrained(str(tmp_path / "from_peft"))
    fresh, _ = _pair(case.arch, tmp_path / "again")
    load_adapter(fresh, tmp_path / "from_peft")
    torch.testing.assert_close(_logits(fresh, ids), _hf_logits(trained, ids), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("method", ["lora", "dora"])
def test_adapter_dropout_is_where_peft_puts_it(method: str, tmp_path: Path) -> None:
    """In training mode, with the same random stream, our dropout on the adapter's input (DoRA: the direction term
    sees the dropped-out input too) gives PEFT's outputs."""
    ours, hf = _pair("llama", tmp_path)
    cfg = PeftConfig(method=method, r=4, alpha=8, dropout=0.3, targets=["q_proj", "down_proj"], init_seed=0)
    apply_peft(ours, cfg)
    _perturb(ours)
    save_adapter(ours, tmp_path / "adapter")
    theirs = peft.PeftModel.from_pretrained(copy.deepcopy(hf), str(tmp_path / "adapter"), is_trainable=True)
    ids = _ids(ours)
    ours.train(), theirs.train()
    torch.manual_seed(7)
    mine = ours(ids)
    torch.manual_seed(7)
    want = theirs(input_ids=ids).logits
    torch.testing.assert_close(mine, want, atol=1e-5, rtol=1e-5)
    torch.manual_seed(8)
    assert (ours(ids) - mine).abs().max() > 1e-4  # dropout is on: another stream, other outputs
