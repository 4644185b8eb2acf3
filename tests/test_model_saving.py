"""A model is saved as its folder defined it (dtype), and dropout turns off as TRL's `disable_dropout` does.

* bf16 tiny Llama (loaded as our decoder) and Qwen2 (a transformers model) in -> one training step
  (`trainlab.train.optimizer_step`) -> `save_model` writes bf16 weights and `"dtype": "bfloat16"`,
  half the bytes of fp32, and transformers loads the folder with the trained weights;
  `save_dtype` overrides.
* GPT-2 (dropout 0.1): two forward passes in train mode differ, and are identical after
  `disable_dropout`; the saved config keeps the user's dropout values.
"""

from __future__ import annotations

import json

import pytest
import torch
import transformers
from _hf_tiny import hf_model_dir, make_tokenizer
from safetensors import safe_open

from trainlab.config import ModelConfig
from trainlab.errors import UserError
from trainlab.model import Decoder, HFCausalLM, disable_dropout, load_model, resolve_save_dtype, save_model
from trainlab.train import CausalLMObjective, NoLossScaler
from trainlab.train.step import optimizer_step


def _train_one_step(model) -> None:
    ids = torch.randint(5, 300, (2, 12))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    before = [p.detach().clone() for p in model.parameters()]
    out = optimizer_step(model, CausalLMObjective(), [batch], opt, NoLossScaler(), device=torch.device("cpu"))
    assert out.stepped
    assert any(not torch.equal(a, p) for a, p in zip(before, model.parameters(), strict=True))


def _stored_dtypes(folder) -> set[torch.dtype]:
    with safe_open(str(folder / "model.safetensors"), framework="pt") as f:
        return {f.get_slice(k).get_dtype() for k in f.keys()}  # noqa: SIM118


@pytest.mark.parametrize("arch,kind", [("llama", Decoder), ("qwen2", HFCausalLM)])
def test_bf16_model_is_saved_bf16(tmp_path, arch, kind):
    from transformers import AutoModelForCausalLM

    src = hf_model_dir(tmp_path / "in", arch, dtype=torch.bfloat16)
    model = load_model(src)
    assert isinstance(model, kind)
    assert model.source.dtype == torch.bfloat16
    assert all(p.dtype == torch.float32 for p in model.parameters())  # fp32 master weights for training
    _train_one_step(model)
    tok = make_tokenizer("llama" if arch == "llama" else "qwen")

    out = save_model(model, tmp_path / "out", tok)
    assert _stored_dtypes(out) == {"BF16"}
    saved = json.loads((out / "config.json").read_text())
    assert saved["dtype"] == "bfloat16"
    # as save_pretrained writes it (our decoder's own writer included); rope in transformers 5's layout
    assert saved["transformers_version"] == transformers.__version__
    assert saved["rope_parameters"]["rope_theta"] == json.loads((src / "config.json").read_text()).get(
        "rope_parameters", {}).get("rope_theta", saved["rope_parameters"]["rope_theta"])
    assert all(p.dtype == torch.float32 for p in model.parameters())  # the model itself was not cast
    fp32 = save_model(model, tmp_path / "fp32", tok, save_dtype="float32")
    assert _stored_dtypes(fp32) == {"F32"}
    size = (out / "model.safetensors").stat().st_size
    assert size < 0.55 * (fp32 / "model.safetensors").stat().st_size

    hf = AutoModelForCausalLM.from_pretrained(out, dtype="auto")
    assert hf.dtype == torch.bfloat16
    trained = model.model if isinstance(model, HFCausalLM) else None
    ids = torch.randint(5, 300, (1, 10))
    with torch.no_grad():
        ours = model.eval()(ids)
        theirs = hf.float().eval()(ids).logits
    # the saved weights are the trained ones rounded to bf16
    torch.testing.assert_close(theirs, ours, atol=0.05, rtol=0.05)
    if trained is not None:
        for (name, p), q in zip(trained.named_parameters(), hf.parameters(), strict=True):
            torch.testing.assert_close(q, p.to(torch.bfloat16).float(), atol=0, rtol=0, msg=name)
    back = load_model(out)
    assert back.source.dtype == torch.bfloat16


def test_save_dtype_names():
    dec = Decoder(ModelConfig(vocab_size=16, dim=8, n_layers=1, n_heads=2, max_seq_len=8))
    assert resolve_save_dtype(dec) == torch.float32  # built in memory: the parameters' dtype
    assert resolve_save_dtype(dec, "bf16") == torch.bfloat16
    assert resolve_save_dtype(dec, torch.float16) == torch.float16
    with pytest.raises(UserError, match="unknown save dtype"):
        resolve_save_dtype(dec, "float8")


def test_disable_dropout_gpt2(tmp_path):
    from transformers import AutoConfig

    folder = hf_model_dir(tmp_path / "gpt2", "gpt2")
    model = load_model(folder)
    assert model.config.resid_pdrop == 0.1
    ids = torch.randint(5, 300, (2, 16))
    model.train()
    with torch.no_grad():
        assert not torch.equal(model(ids), model(ids))  # dropout on: two passes differ
        changed = disable_dropout(model)
        first, second = model(ids), model(ids)
        evaluated = model.eval()(ids)
    assert torch.equal(first, second)
    torch.testing.assert_close(first, evaluated, atol=1e-6, rtol=1e-6)
    assert changed["resid_pdrop"] == 0.1 and changed["attn_pdrop"] == 0.1 and changed["embd_pdrop"] == 0.1
    assert model.config.resid_pdrop == 0.0
    assert all(m.p == 0.0 for m in model.modules() if isinstance(m, torch.nn.Dropout))
    # the saved folder keeps the user's dropout config
    out = save_model(model, tmp_path / "out", model.tokenizer)
    saved = AutoConfig.from_pretrained(out)
    assert (saved.resid_pdrop, saved.attn_pdrop, saved.embd_pdrop) == (0.1, 0.1, 0.1)
    assert model.config.resid_pdrop == 0.0


def test_disable_dropout_zeroes_float_attention_dropout(tmp_path):
    """Llama-family attention reads a float `attention_dropout`, not an nn.Dropout."""
    folder = hf_model_dir(tmp_path / "q", "qwen3")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps(config | {"attention_dropout": 0.5}))
    model = load_model(folder)
    attn = [m for m in model.modules() if hasattr(m, "attention_dropout")]
    assert attn and all(m.attention_dropout == 0.5 for m in attn)
    ids = torch.randint(5, 300, (2, 16))
    model.train()
    with torch.no_grad():
        assert not torch.equal(model(ids), model(ids))
        disable_dropout(model)
        assert torch.equal(model(ids), model(ids))
    assert all(m.attention_dropout == 0.0 for m in attn)
