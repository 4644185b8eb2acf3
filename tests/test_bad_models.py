"""Bad model folders: one line on stderr, exit 2, no traceback, nothing written (issue 9, item 8).

Each kind goes through the command line in a subprocess, as a user meets it: a truncated or corrupt
safetensors file, a tokenizer larger than the embedding, a folder that is not a causal LM (BERT), a
model and tokenizer that do not match, weights missing from the checkpoint. The checks run at load
time in `trainlab.model.load_model`, so `generate`, `sft` and `dpo` refuse the same way. Loading a
good folder prints nothing from transformers (no load report, no progress bar, no warning).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from _hf_tiny import hf_model_dir, make_model, make_tokenizer

from trainlab.errors import UserError
from trainlab.model import load_model


def trainlab(*args: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, TRAINLAB_HOME=str(tmp_path / "home"), OMP_NUM_THREADS="1")
    env.pop("TRAINLAB_DEBUG", None)
    env.pop("PYTHONWARNINGS", None)  # warnings from our calls into transformers must not appear either
    return subprocess.run([sys.executable, "-m", "trainlab.cli", *args], capture_output=True, text=True, env=env,
                          cwd=tmp_path, timeout=300)


def _truncated(folder: Path) -> Path:
    hf_model_dir(folder, "gpt2")
    weights = folder / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    return folder


def _corrupt(folder: Path) -> Path:
    hf_model_dir(folder, "qwen2")
    (folder / "model.safetensors").write_bytes(bytes(range(256)) * 40)
    return folder


def _big_tokenizer(folder: Path) -> Path:
    hf_model_dir(folder, "qwen2")
    tok = make_tokenizer("qwen")
    tok.add_tokens([f"<extra_{i}>" for i in range(12)])
    tok.save_pretrained(folder)
    return folder


def _bert(folder: Path) -> Path:
    from transformers import BertConfig, BertModel

    tok = make_tokenizer("llama")
    cfg = BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=64, max_position_embeddings=64)
    BertModel(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def _mismatched_tokenizer(folder: Path) -> Path:
    # a Llama-style model (eos 2 = "</s>") saved with a GPT-2-style tokenizer of the same size
    model = make_model("mistral", make_tokenizer("llama"))
    model.save_pretrained(folder)
    make_tokenizer("gpt2").save_pretrained(folder)
    return folder


def _missing_weights(folder: Path) -> Path:
    from safetensors.torch import load_file, save_file

    hf_model_dir(folder, "qwen3")
    weights = folder / "model.safetensors"
    state = load_file(weights)
    del state["model.layers.1.mlp.down_proj.weight"]
    save_file(state, weights, metadata={"format": "pt"})
    return folder


KINDS = {
    "truncated": (_truncated, "corrupt or truncated safetensors"),
    "corrupt": (_corrupt, "corrupt or truncated safetensors"),
    "tokenizer_too_big": (_big_tokenizer, "tokens but the model's embedding has"),
    "bert": (_bert, "not a causal language model: BertModel"),
    "mismatched_tokenizer": (_mismatched_tokenizer, "model and tokenizer do not match"),
    "missing_weights": (_missing_weights, "missing from the checkpoint"),
}


def assert_refused(proc: subprocess.CompletedProcess[str], needle: str) -> None:
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert needle in lines[0], lines[0]
    assert proc.stdout.strip() in ("", "[]"), proc.stdout


@pytest.mark.parametrize("kind", list(KINDS))
def test_generate_refuses(tmp_path, kind):
    build, needle = KINDS[kind]
    folder = build(tmp_path / kind)
    assert_refused(trainlab("generate", "--model", str(folder), "--prompt", "hello", tmp_path=tmp_path), needle)
    with pytest.raises(UserError, match=needle.split(":")[0]):  # the library says the same
        load_model(folder)


@pytest.mark.parametrize("command,kind", [("sft", "bert"), ("dpo", "truncated"), ("dpo", "mismatched_tokenizer")])
def test_training_commands_refuse_and_write_nothing(tmp_path, command, kind):
    build, needle = KINDS[kind]
    folder = build(tmp_path / kind)
    out = tmp_path / "run"
    proc = trainlab(command, "--model", str(folder), "--out", str(out), "--max-steps", "1", tmp_path=tmp_path)
    assert_refused(proc, needle)
    assert not out.exists()


def test_good_folder_loads_quietly(tmp_path):
    """No load report, progress bar or warning from transformers while loading a good folder."""
    folder = hf_model_dir(tmp_path / "gpt2", "gpt2")
    proc = trainlab("generate", "--model", str(folder), "--prompt", "hello", "--max-new-tokens", "3", "--json",
                    tmp_path=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.strip() == "", proc.stderr
    assert len(json.loads(proc.stdout)) == 1


def test_config_special_ids_must_exist(tmp_path):
    folder = hf_model_dir(tmp_path / "m", "llama")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps(config | {"eos_token_id": 999}))
    with pytest.raises(UserError, match="outside the embedding"):
        load_model(folder)
