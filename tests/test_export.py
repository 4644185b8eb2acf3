"""`trainlab export`: a clean Hugging Face folder that transformers loads with the same logits and stops where
trainlab stops (generation_config.json's eos ids include the chat template's end-of-turn token).

References: `AutoModelForCausalLM.from_pretrained` / `AutoTokenizer.from_pretrained` /
`GenerationConfig.from_pretrained` on the exported folder, against the source folder loaded by transformers
(or our decoder in memory).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from _hf_tiny import hf_model_dir, make_tokenizer

from trainlab.cli import run_cli
from trainlab.config import ModelConfig
from trainlab.errors import UserError
from trainlab.model import Decoder, save_pretrained
from trainlab.recipes.export import export_model

IDS = torch.tensor([[5, 17, 42, 8, 99, 3, 61]])


def _hf_logits(folder: Path, **kwargs) -> torch.Tensor:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder, **kwargs).eval()
    with torch.no_grad():
        return model(IDS).logits.float()


def _decoder_folder(path: Path) -> tuple[Decoder, Path]:
    tok = make_tokenizer("qwen")
    torch.manual_seed(0)
    model = Decoder(ModelConfig(vocab_size=len(tok), dim=32, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=64,
                                max_seq_len=128, init_std=0.3, tie_embeddings=False))
    save_pretrained(model, path, tokenizer=tok)
    return model.eval(), path


def _eos_is_endoftext(folder: Path) -> None:
    """A ChatML model whose config still says eos = <|endoftext|> (id 0): the SFT bug export fixes."""
    for name in ("config.json", "generation_config.json"):
        data = json.loads((folder / name).read_text())
        data["eos_token_id"] = 0
        (folder / name).write_text(json.dumps(data))


def test_decoder_export_loads_in_transformers_with_the_same_logits(tmp_path):
    from transformers import AutoTokenizer, GenerationConfig

    model, src = _decoder_folder(tmp_path / "dec")
    summary = export_model(src, tmp_path / "out", dtype="fp32")
    out = tmp_path / "out"
    with torch.no_grad():
        ours = model(IDS)
    torch.testing.assert_close(_hf_logits(out), ours, rtol=1e-5, atol=1e-5)
    tok = AutoTokenizer.from_pretrained(out)
    assert tok.chat_template == make_tokenizer("qwen").chat_template
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    eos = GenerationConfig.from_pretrained(out).eos_token_id
    assert im_end in ([eos] if isinstance(eos, int) else eos)
    assert summary["end_of_turn"] == "<|im_end|>" and summary["dtype"] == "float32"
    assert "checkpoint.pt" not in summary["files"] and "generation_config.json" in summary["files"]


def test_hf_export_adds_the_end_of_turn_token_to_eos(tmp_path):
    from transformers import AutoModelForCausalLM, GenerationConfig

    src = hf_model_dir(tmp_path / "qwen", "qwen2")
    _eos_is_endoftext(src)
    assert GenerationConfig.from_pretrained(src).eos_token_id == 0
    export_model(src, tmp_path / "out")
    assert GenerationConfig.from_pretrained(tmp_path / "out").eos_token_id == [0, 2]
    # what transformers' generate uses after loading (not rebuilt from config.json's single eos)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    assert loaded.generation_config.eos_token_id == [0, 2]
    assert torch.equal(_hf_logits(tmp_path / "out"), _hf_logits(src))


def test_dtype_bf16_and_the_folder_dtype_kept(tmp_path):
    src = hf_model_dir(tmp_path / "llama", "llama", dtype=torch.bfloat16)
    kept = export_model(src, tmp_path / "kept")
    assert kept["dtype"] == "bfloat16"
    assert json.loads((tmp_path / "kept" / "config.json").read_text())["dtype"] == "bfloat16"
    assert torch.equal(_hf_logits(tmp_path / "kept", dtype=torch.bfloat16), _hf_logits(src, dtype=torch.bfloat16))
    wide = export_model(src, tmp_path / "wide", dtype="fp32")
    assert wide["dtype"] == "float32"
    from safetensors import safe_open

    with safe_open(str(tmp_path / "wide" / "model.safetensors"), "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.float32}  # noqa: SIM118
    # bf16 -> fp32 is exact: the same logits in fp32
    torch.testing.assert_close(_hf_logits(tmp_path / "wide"), _hf_logits(src, dtype=torch.float32))


def test_refuses_out_that_is_or_contains_or_lies_inside_the_model(tmp_path):
    src = hf_model_dir(tmp_path / "runs" / "m", "gpt2")
    before = sorted(p.name for p in src.iterdir())
    for out, word in ((src, "is"), (tmp_path / "runs", "contains"), (src / "export", "inside")):
        with pytest.raises(UserError, match=word):
            export_model(src, out)
    assert sorted(p.name for p in src.iterdir()) == before
    with pytest.raises(UserError, match="--dtype"):
        export_model(src, tmp_path / "x", dtype="int8")


def test_cli_export_of_a_run_folder(tmp_path, capsys):
    run = tmp_path / "run"
    _decoder_folder(run / "model")
    (run / "checkpoint.pt").write_bytes(b"optimizer state")
    (run / "config.json").write_text(json.dumps({"train": {"lr": 1e-3}}))  # the run config, not a model
    assert run_cli(["export", "--model", str(run), "--out", str(tmp_path / "out"), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["model"] == str(run / "model") and summary["architecture"] == "LlamaForCausalLM"
    assert not (tmp_path / "out" / "checkpoint.pt").exists()
    assert run_cli(["export", "--model", str(run), "--out", str(run)]) == 2
    assert "contains the --model folder" in capsys.readouterr().err
