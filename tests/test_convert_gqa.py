"""`trainlab convert-gqa`: k/v heads pooled per group (Ainslie et al. 2023), checked against transformers.

The converted folder must load in transformers with the new ``num_key_value_heads``; keeping the
number of KV heads must keep the logits bit for bit; pooled weights must equal a hand computation.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests._hf_tiny import hf_model_dir
from trainlab.cli import run_cli
from trainlab.config import ModelConfig
from trainlab.errors import UserError
from trainlab.model.convert import convert_gqa, pool_kv_heads
from trainlab.model.decoder import Decoder

IDS = torch.tensor([[5, 17, 42, 8, 99, 3, 250, 61], [7, 7, 120, 300, 2, 11, 64, 31]])


def _hf_logits(path: Path) -> torch.Tensor:
    import transformers as tf

    model = tf.AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).eval()
    with torch.no_grad():
        return model(IDS).logits


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path / "model.safetensors"))


def _config(path: Path) -> dict:
    return json.loads((path / "config.json").read_text())


@pytest.fixture(scope="module")
def ours_mha(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Our decoder (4 heads of 8, MHA) saved in the HF Llama layout."""
    torch.manual_seed(0)
    model = Decoder(ModelConfig(vocab_size=320, dim=32, n_layers=2, n_heads=4, max_seq_len=64))
    with torch.no_grad():  # a non-trivial lm head and norms
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    out = tmp_path_factory.mktemp("ours") / "mha"
    model.save_pretrained(out)
    (out / "generation_config.json").write_text('{"max_new_tokens": 7}\n')
    return out


@pytest.fixture(scope="module")
def hf_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return hf_model_dir(tmp_path_factory.mktemp("hf") / "llama", "llama")  # 4 heads, 2 KV heads


def test_ours_same_heads_keeps_logits(ours_mha: Path, tmp_path: Path) -> None:
    for init in ("mean", "first"):
        out = tmp_path / init
        doc = convert_gqa(ours_mha, out, 4, init)  # type: ignore[arg-type]
        assert doc["kv_heads_before"] == 4 and doc["converted_tensors"] == 4
        assert torch.equal(_hf_logits(out), _hf_logits(ours_mha))
        assert _weights(out).keys() == _weights(ours_mha).keys()
    assert (out / "generation_config.json").read_text() == '{"max_new_tokens": 7}\n'


def test_ours_mean_pool_by_hand(ours_mha: Path, tmp_path: Path) -> None:
    out = tmp_path / "gqa2"
    convert_gqa(ours_mha, out, 2, "mean")
    before, after = _weights(ours_mha), _weights(out)
    d = 8
    for layer in range(2):
        for proj in ("k", "v"):
            name = f"model.layers.{layer}.self_attn.{proj}_proj.weight"
            w = before[name]
            heads = [w[h * d:(h + 1) * d] for h in range(4)]
            expected = torch.cat([(heads[0] + heads[1]) / 2, (heads[2] + heads[3]) / 2])
            assert after[name].shape == (2 * d, 32)
            torch.testing.assert_close(after[name], expected, rtol=0, atol=1e-7)
        q = f"model.layers.{layer}.self_attn.q_proj.weight"
        assert torch.equal(after[q], before[q])
    assert _config(out)["num_key_value_heads"] == 2
    # our loader and transformers read the same model: trainlab.json was updated with the config
    ours = Decoder.from_pretrained(out).eval()
    assert ours.config.n_kv_heads == 2
    with torch.no_grad():
        torch.testing.assert_close(ours(IDS), _hf_logits(out), rtol=1e-5, atol=1e-5)


def test_ours_to_mqa_first_and_random(ours_mha: Path, tmp_path: Path) -> None:
    before = _weights(ours_mha)
    convert_gqa(ours_mha, tmp_path / "first", 1, "first")
    first = _weights(tmp_path / "first")
    name = "model.layers.1.self_attn.v_proj.weight"
    assert torch.equal(first[name], before[name][:8])
    convert_gqa(ours_mha, tmp_path / "r1", 1, "random", seed=3)
    convert_gqa(ours_mha, tmp_path / "r2", 1, "random", seed=3)
    r1, r2 = _weights(tmp_path / "r1"), _weights(tmp_path / "r2")
    assert torch.equal(r1[name], r2[name]) and r1[name].shape == (8, 32)
    assert not torch.allclose(r1[name], before[name][:8])
    assert 0.01 < float(r1[name].std()) < 0.03  # Normal(0, initializer_range = 0.02)
    assert _hf_logits(tmp_path / "r1").shape == (2, 8, 320)


def test_hf_llama_gqa_to_mqa(hf_llama: Path, tmp_path: Path) -> None:
    assert _config(hf_llama)["num_key_value_heads"] == 2
    out = tmp_path / "same"
    convert_gqa(hf_llama, out, 2, "mean")
    assert torch.equal(_hf_logits(out), _hf_logits(hf_llama))
    assert (out / "tokenizer.json").is_file()
    mqa = tmp_path / "mqa"
    convert_gqa(hf_llama, mqa, 1, "mean")
    before, after = _weights(hf_llama), _weights(mqa)
    w = before["model.layers.0.self_attn.k_proj.weight"]
    torch.testing.assert_close(after["model.layers.0.self_attn.k_proj.weight"], (w[:8] + w[8:]) / 2,
                               rtol=0, atol=1e-7)
    import transformers as tf

    loaded = tf.AutoModelForCausalLM.from_pretrained(str(mqa))
    assert loaded.config.num_key_value_heads == 1
    assert loaded.model.layers[0].self_attn.k_proj.weight.shape == (8, 32)


@pytest.mark.parametrize("arch", ["qwen2", "mistral", "qwen3"])
def test_other_llama_family(arch: str, tmp_path: Path) -> None:
    src = hf_model_dir(tmp_path / arch, arch)
    same = tmp_path / "same"
    convert_gqa(src, same, 2)
    assert torch.equal(_hf_logits(same), _hf_logits(src))
    mqa = tmp_path / "mqa"
    convert_gqa(src, mqa, 1)
    before, after = _weights(src), _weights(mqa)
    if arch == "qwen2":  # k/v biases pooled like the weights
        b = before["model.layers.1.self_attn.v_proj.bias"]
        torch.testing.assert_close(after["model.layers.1.self_attn.v_proj.bias"], (b[:8] + b[8:]) / 2,
                                   rtol=0, atol=1e-7)
    assert _config(mqa)["num_key_value_heads"] == 1
    logits, reference = _hf_logits(mqa), _hf_logits(src)
    assert logits.shape == reference.shape and torch.isfinite(logits).all()
    assert not torch.equal(logits, reference)  # two heads pooled into one change the function


def test_pool_bf16_in_float32() -> None:
    w = torch.tensor([[1.0], [1.0 + 2**-7], [3.0], [3.0 + 2**-7]], dtype=torch.bfloat16)
    out = pool_kv_heads(w, 4, 2)  # head_dim 1: pairs averaged in float32, then rounded once
    assert out.dtype == torch.bfloat16
    assert torch.equal(out, ((w[0::2].float() + w[1::2].float()) / 2).to(torch.bfloat16))


def test_refusals(ours_mha: Path, hf_llama: Path, tmp_path: Path) -> None:
    with pytest.raises(UserError, match="does not divide the 4 attention heads"):
        convert_gqa(ours_mha, tmp_path / "x", 3)
    with pytest.raises(UserError, match="current 2 KV heads"):
        convert_gqa(hf_llama, tmp_path / "x", 4)
    with pytest.raises(UserError, match="is the --model folder"):
        convert_gqa(ours_mha, ours_mha, 2)
    with pytest.raises(UserError, match="contains the --model folder"):
        convert_gqa(ours_mha, ours_mha.parent, 2)
    with pytest.raises(UserError, match="inside the --model folder"):
        convert_gqa(ours_mha, ours_mha / "sub", 2)
    with pytest.raises(UserError, match="unknown --init"):
        convert_gqa(ours_mha, tmp_path / "x", 2, "median")  # type: ignore[arg-type]
    gpt2 = hf_model_dir(tmp_path / "gpt2", "gpt2")
    with pytest.raises(UserError, match=r"GPT2LMHeadModel.*supported architectures.*llama, mistral, qwen2"):
        convert_gqa(gpt2, tmp_path / "x", 2)
    assert not (tmp_path / "x").exists()
    assert (ours_mha / "model.safetensors").is_file()  # the input is untouched


def test_cli(ours_mha: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cli"
    assert run_cli(["convert-gqa", "--model", str(ours_mha), "--kv-heads", "2", "--out", str(out), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["kv_heads"] == 2 and doc["init"] == "mean" and doc["kv_cache_reduction"] == 2.0
    assert "generation_config.json" in doc["copied_files"]
    assert run_cli(["convert-gqa", "--model", str(ours_mha), "--kv-heads", "1", "--out", str(out)]) == 0
    assert "4 -> 1" in capsys.readouterr().out
    for bad in (["--kv-heads", "3"], ["--kv-heads", "0"], ["--kv-heads", "2", "--init", "zero"]):
        assert run_cli(["convert-gqa", "--model", str(ours_mha), "--out", str(tmp_path / "bad"), *bad]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error:") and "\n" not in err
    assert run_cli(["convert-gqa", "--model", str(ours_mha), "--kv-heads", "2", "--out", str(ours_mha)]) == 2
