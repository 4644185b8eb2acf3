"""Bottleneck adapters and BitFit: trainlab's own adapter format (HF PEFT has neither).

Checked against hand-written references: the Houlsby/Pfeiffer adapter formula added by forward hooks on the
base model's sublayer outputs, and BitFit's biases added to the base model's own; the parameter counts
against the closed forms; save -> load gives the same logits; merged = unmerged (BitFit); a bias-free model
refuses BitFit with a message naming the alternatives; PEFT refuses our folder (no peft_type).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from tests._hf_tiny import make_model, make_tokenizer
from tests._tiny import tiny_decoder
from trainlab.errors import UserError
from trainlab.model.hf import HFCausalLM
from trainlab.peft import PeftConfig, adapters_disabled, apply_peft, load_adapter, merge, save_adapter


def _perturb(model: torch.nn.Module, seed: int = 3) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=g) * 0.2)


def _ids(vocab: int) -> torch.Tensor:
    return torch.randint(0, vocab, (2, 8), generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize(("arch", "placement", "act"), [("decoder", "houlsby", "relu"), ("gpt2", "pfeiffer", "gelu"),
                                                        ("qwen2", "houlsby", "silu")])
def test_bottleneck_formula_count_and_roundtrip(arch: str, placement: str, act: str, tmp_path: Path) -> None:
    base = tiny_decoder(0) if arch == "decoder" else HFCausalLM(make_model(arch, make_tokenizer(
        "gpt2" if arch == "gpt2" else "qwen"), seed=0))
    base.eval()
    ours = copy.deepcopy(base)
    ids = _ids(base.output_embedding().shape[0])
    with torch.no_grad():
        ref0 = base(ids)
    info = apply_peft(ours, PeftConfig(method="bottleneck", adapter_size=4, adapter_placement=placement,
                                       adapter_act=act))
    with torch.no_grad():
        torch.testing.assert_close(ours(ids), ref0)  # up-projection at zero: the base model
    d = 32
    per_block = 2 if placement == "houlsby" else 1
    assert info.trainable == 2 * per_block * (2 * d * 4 + 4 + d)  # 2 layers
    _perturb(ours)
    # reference: the formula on the base model's sublayer outputs, through forward hooks
    adapters = {p: m for p, m in ours.named_modules() if type(m).__name__ == "BottleneckAdapter"}
    act_fn = {"relu": F.relu, "gelu": F.gelu, "silu": F.silu}[act]
    hooks = []
    for path, a in adapters.items():
        def hook(_m, _inp, y, a=a):
            return y + F.linear(act_fn(F.linear(y, a.adapter_down.weight, a.adapter_down.bias)),
                                a.adapter_up.weight, a.adapter_up.bias)
        hooks.append(base.get_submodule(path).register_forward_hook(hook))
    with torch.no_grad():
        want = base(ids)
        got = ours(ids)
        with adapters_disabled(ours):
            torch.testing.assert_close(ours(ids), ref0)
    for h in hooks:
        h.remove()
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    folder = save_adapter(ours, tmp_path / "ad")
    cfg = json.loads((folder / "adapter_config.json").read_text())
    assert cfg["trainlab_method"] == "bottleneck" and "peft_type" not in cfg
    fresh = copy.deepcopy(base)
    load_adapter(fresh, folder)
    with torch.no_grad():
        torch.testing.assert_close(fresh(ids), got)
    if arch == "gpt2":
        peft = pytest.importorskip("peft")
        with pytest.raises(Exception):  # noqa: B017 - PEFT has no format for it and says so its own way
            peft.PeftModel.from_pretrained(copy.deepcopy(base.model), folder)


def test_bitfit_gpt2_trains_exactly_the_biases(tmp_path: Path) -> None:
    hf = make_model("gpt2", make_tokenizer("gpt2"), seed=0).eval()
    base = HFCausalLM(hf).eval()
    ours = copy.deepcopy(base)
    n_bias = sum(p.numel() for n, p in hf.named_parameters() if n.endswith(".bias"))
    info = apply_peft(ours, PeftConfig(method="bitfit"))
    assert info.trainable == n_bias > 0
    _perturb(ours)
    ids = _ids(hf.config.vocab_size)
    # reference: the base model with every bias replaced by the tuned one
    ref = copy.deepcopy(base)
    tuned = {p: m for p, m in ours.named_modules() if type(m).__name__ == "BiasDelta"}
    with torch.no_grad():
        for path, m in tuned.items():
            ref.get_submodule(path).bias.copy_(m.tuned_bias())
        got, want = ours(ids), ref(ids)
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
        with adapters_disabled(ours):
            torch.testing.assert_close(ours(ids), base(ids))
    ours.train()
    ours(ids).sum().backward()
    assert {n.rsplit(".", 1)[-1] for n, p in ours.named_parameters() if p.grad is not None} == {"bias_delta"}
    ours.eval()
    folder = save_adapter(ours, tmp_path / "ad")
    fresh = copy.deepcopy(base)
    load_adapter(fresh, folder)
    with torch.no_grad():
        torch.testing.assert_close(fresh(ids), got)
        merge(ours)
        assert not any("bias_delta" in k for k in ours.state_dict())
        torch.testing.assert_close(ours(ids), got, atol=1e-5, rtol=1e-5)


def test_bitfit_refuses_bias_free_models_and_counts_qwen2() -> None:
    with pytest.raises(UserError, match=r"no bias parameters.*0 parameters.*ia3"):
        apply_peft(tiny_decoder(0), PeftConfig(method="bitfit"))
    hf = make_model("qwen2", make_tokenizer("qwen"), seed=0)
    info = apply_peft(HFCausalLM(hf), PeftConfig(method="bitfit"))
    assert info.trainable == 2 * (32 + 16 + 16)  # q, k, v biases of 2 layers (4 heads, 2 kv heads of 8)
