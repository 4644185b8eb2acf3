"""`trainlab calc kv-cache` against published configs (Llama-2-7B/70B, Mistral-7B) and hand arithmetic."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from trainlab.cli import run_cli
from trainlab.errors import UserError
from trainlab.memory.kv import kv_cache_bytes, kv_cache_result, spec_from_hf_config

KiB, GiB = 1024, 1024**3

# the published config.json values (huggingface.co/meta-llama/Llama-2-70b-hf, mistralai/Mistral-7B-v0.1, ...)
LLAMA2_70B = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 8192,
              "intermediate_size": 28672, "num_hidden_layers": 80, "num_attention_heads": 64,
              "num_key_value_heads": 8, "vocab_size": 32000, "max_position_embeddings": 4096,
              "torch_dtype": "float16", "tie_word_embeddings": False}
LLAMA2_7B = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 4096,
             "intermediate_size": 11008, "num_hidden_layers": 32, "num_attention_heads": 32,
             "num_key_value_heads": 32, "vocab_size": 32000, "max_position_embeddings": 4096,
             "torch_dtype": "float16", "tie_word_embeddings": False}
MISTRAL_7B = {"architectures": ["MistralForCausalLM"], "model_type": "mistral", "hidden_size": 4096,
              "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32,
              "num_key_value_heads": 8, "vocab_size": 32000, "max_position_embeddings": 32768,
              "sliding_window": 4096, "torch_dtype": "bfloat16", "tie_word_embeddings": False}


def _cli_json(args: list[str], capsys: pytest.CaptureFixture[str]) -> dict:
    assert run_cli(["calc", "kv-cache", *args, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_must_show_llama2_70b_flags(capsys: pytest.CaptureFixture[str]) -> None:
    doc = _cli_json(["--layers", "80", "--kv-heads", "8", "--head-dim", "128", "--seq", "4096", "--batch", "1",
                     "--dtype", "fp16", "--heads", "64"], capsys)
    assert doc["total_bytes"] == 1_342_177_280 == int(1.25 * GiB)
    assert doc["mha_total_bytes"] == 10_737_418_240 == 10 * GiB
    assert doc["per_token_bytes"] == 320 * KiB
    assert doc["ratio_mha_over_this"] == 8.0 and doc["attention"] == "GQA"


@pytest.mark.parametrize(("config", "per_token"), [(LLAMA2_70B, 320 * KiB), (LLAMA2_7B, 512 * KiB),
                                                   (MISTRAL_7B, 128 * KiB)])
def test_known_configs_from_config_json(tmp_path: Path, config: dict, per_token: int,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "config.json").write_text(json.dumps(config))
    doc = _cli_json(["--model", str(tmp_path), "--seq", "4096"], capsys)  # a folder
    assert doc["per_token_bytes"] == per_token
    assert doc["per_sequence_bytes"] == 4096 * per_token
    heads, kv = config["num_attention_heads"], config["num_key_value_heads"]
    assert doc["mha_total_bytes"] == 4096 * per_token * heads // kv
    assert doc["inputs"]["head_dim"] == 128


def test_mistral_window_caps_cached_tokens(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps(MISTRAL_7B))
    doc = kv_cache_result(model=tmp_path / "config.json", seq=32768, batch=2)
    assert doc["cached_tokens"] == {"full_layers": 32768, "sliding_layers": 4096}
    assert doc["per_sequence_bytes"] == 4096 * 128 * KiB == 512 * 1024**2
    assert doc["total_bytes"] == 2 * 512 * 1024**2
    # Qwen2 writes sliding_window but turns it off with use_sliding_window: false
    spec = spec_from_hf_config({**MISTRAL_7B, "use_sliding_window": False})
    assert spec.sliding_layers == 0 and spec.bytes_for(8192) == 8192 * 128 * KiB
    # layer_types: only the sliding layers are capped (Gemma-2 style alternation)
    mixed = spec_from_hf_config({**MISTRAL_7B, "layer_types": ["sliding_attention", "full_attention"] * 16})
    assert mixed.sliding_layers == 16
    assert mixed.bytes_for(8192) == kv_cache_bytes(16, 8, 128, 8192, 1, 2) + kv_cache_bytes(16, 8, 128, 4096, 1, 2)


def test_mqa_and_dtypes() -> None:
    doc = kv_cache_result(layers=32, kv_heads=1, head_dim=128, heads=32, seq=1000, batch=3, dtype="fp32")
    assert doc["total_bytes"] == 2 * 32 * 1 * 128 * 4 * 1000 * 3
    assert doc["ratio_mha_over_this"] == 32.0 and doc["attention"] == "MQA"
    int4 = kv_cache_result(layers=2, kv_heads=2, head_dim=4, seq=3, dtype="int4")
    assert int4["total_bytes"] == 2 * 2 * 2 * 4 * 3 // 2


def test_fit_beside_the_weights() -> None:
    # Llama-2-7B in fp16 on an 80 GB GPU: 7e9 params = 14 GB of weights, 66 GB for the cache
    doc = kv_cache_result(layers=32, kv_heads=32, head_dim=128, heads=32, seq=4096, batch=1, dtype="fp16",
                          gpu_mem=80, params="7B")
    fit, free = doc["fit"], 80e9 - 14e9
    assert fit["weights_bytes"] == 14_000_000_000
    assert fit["max_context"] == int(free // (512 * KiB))
    assert fit["max_batch"] == int(free // (4096 * 512 * KiB))
    # the weights alone overflow the GPU: nothing fits
    doc = kv_cache_result(layers=80, kv_heads=8, head_dim=128, heads=64, seq=4096, gpu_mem=40,
                          params="70B")
    assert doc["fit"]["max_batch"] == 0 and doc["fit"]["max_context"] == 0


def test_fit_from_model_and_window(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps(MISTRAL_7B))
    doc = kv_cache_result(model=tmp_path, seq=4096, gpu_mem=24)
    assert 7.0e9 < doc["fit"]["params"] < 7.5e9  # Mistral-7B has 7.24B parameters
    assert doc["fit"]["max_context"] is None  # every layer windowed: the cache stops at 4,096 tokens
    free = 24e9 - doc["fit"]["weights_bytes"]
    assert doc["fit"]["max_batch"] == int(free // (4096 * 128 * KiB))


def test_trainlab_yaml(tmp_path: Path) -> None:
    cfg = tmp_path / "m.yaml"
    cfg.write_text("model: {dim: 64, n_layers: 3, n_heads: 8, n_kv_heads: 2}\ndata: {seq_len: 100}\n")
    doc = kv_cache_result(model=cfg)
    assert doc["inputs"]["seq"] == 100 and doc["inputs"]["dtype"] == "fp32"
    assert doc["total_bytes"] == 2 * 3 * 2 * 8 * 4 * 100


@pytest.mark.parametrize("args", [
    ["--layers", "0", "--kv-heads", "8", "--head-dim", "128", "--seq", "10"],
    ["--layers", "2", "--kv-heads", "-1", "--head-dim", "128", "--seq", "10"],
    ["--layers", "2", "--kv-heads", "3", "--head-dim", "128", "--seq", "10", "--heads", "8"],
    ["--layers", "2", "--kv-heads", "8", "--head-dim", "128", "--seq", "10", "--dtype", "fp12"],
    ["--layers", "2", "--kv-heads", "8", "--head-dim", "128", "--seq", "0"],
    ["--layers", "2", "--kv-heads", "8", "--head-dim", "128"],  # no --seq
    ["--layers", "2", "--kv-heads", "8", "--head-dim", "128", "--seq", "10", "--gpu-mem", "80"],  # no weights
    ["--kv-heads", "8", "--head-dim", "128", "--seq", "10"],  # no --layers
])
def test_bad_input_exit_2(args: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli(["calc", "kv-cache", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "\n" not in err


def test_folder_without_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli(["calc", "kv-cache", "--model", str(tmp_path), "--seq", "8"]) == 2
    assert "no config.json" in capsys.readouterr().err
    with pytest.raises(UserError):
        kv_cache_result(model=tmp_path / "missing.json", seq=8)


def test_plain_output(capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli(["calc", "kv-cache", "--layers", "80", "--kv-heads", "8", "--head-dim", "128", "--seq", "4096",
                    "--heads", "64"]) == 0
    out = capsys.readouterr().out
    assert "320.00 KiB" in out and "1.25 GiB" in out and "10.00 GiB" in out
