"""The command line as a user meets it: exit codes, one-line errors, --json output."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def trainlab(*args: str, tmp_path: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, TRAINLAB_HOME=str(tmp_path / "home"), PYTHONWARNINGS="ignore")
    env.pop("TRAINLAB_DEBUG", None)
    return subprocess.run([sys.executable, "-m", "trainlab.cli", *args], capture_output=True, text=True,
                          env=env, cwd=tmp_path, timeout=timeout)


def assert_one_line_error(proc: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert lines[0].startswith("error: ")
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


def test_missing_config_file(tmp_path: Path) -> None:
    proc = trainlab("pretrain", "--config", "does-not-exist.yaml", tmp_path=tmp_path)
    assert_one_line_error(proc, "does-not-exist.yaml", "not found")


def test_unknown_override_key(tmp_path: Path) -> None:
    proc = trainlab("pretrain", "train.lr_rate=1e-3", tmp_path=tmp_path)
    assert_one_line_error(proc, "train.lr_rate", "unknown key", "train.lr")


def test_bad_value_in_config_file_names_line(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("model:\n  dim: 64\ntrain:\n  batch_size: -3\n")
    proc = trainlab("pretrain", "--config", str(cfg), tmp_path=tmp_path)
    assert_one_line_error(proc, f"{cfg}:4", "train.batch_size", "-3", "greater than 0")


def test_missing_data_file(tmp_path: Path) -> None:
    proc = trainlab("pretrain", "--preset", "tiny", "--data", "nope.jsonl", tmp_path=tmp_path)
    assert_one_line_error(proc, "nope.jsonl")


def test_malformed_data_line(tmp_path: Path) -> None:
    data = tmp_path / "texts.jsonl"
    data.write_text('{"text": "a fine line of text"}\n{"text": 5}\n')
    proc = trainlab("pretrain", "--preset", "tiny", "--data", str(data), tmp_path=tmp_path)
    assert_one_line_error(proc, f"{data}:2", "text")


def test_cuda_requested_without_gpu(tmp_path: Path) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    proc = trainlab("pretrain", "--preset", "tiny", "--device", "cuda", tmp_path=tmp_path)
    assert_one_line_error(proc, "cuda")


def test_unknown_lab(tmp_path: Path) -> None:
    proc = trainlab("run", "nosuchlab", tmp_path=tmp_path)
    assert_one_line_error(proc, "nosuchlab", "base")


def test_env_json_has_the_documented_keys(tmp_path: Path) -> None:
    proc = trainlab("env", "--json", tmp_path=tmp_path)
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    for key in ("torch_version", "device", "cuda_available", "gpu_name", "compute_capability", "bf16_supported",
                "fp16_supported", "triton_available", "flash_attn_available", "cpu_count", "memory_bytes"):
        assert key in info
    assert info["cpu_count"] >= 1 and info["memory_bytes"] > 0


def test_labs_json_lists_base(tmp_path: Path) -> None:
    proc = trainlab("labs", "--json", tmp_path=tmp_path)
    assert proc.returncode == 0, proc.stderr
    names = [lab["name"] for lab in json.loads(proc.stdout)]
    assert "base" in names


def test_pretrain_then_generate(tmp_path: Path) -> None:
    out = tmp_path / "run"
    proc = trainlab("pretrain", "--preset", "tiny", "--out", str(out), "--max-steps", "6", "--json",
                    tmp_path=tmp_path)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["steps"] == 6 and (out / "model" / "config.json").is_file()
    assert (out / "model" / "tokenizer.json").is_file() and (out / "metrics.jsonl").is_file()
    proc = trainlab("generate", "--model", str(out / "model"), "--prompt", "12+3=", "--prompt", "The cat",
                    "--max-new-tokens", "5", "--json", tmp_path=tmp_path)
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)
    assert [r["prompt"] for r in rows] == ["12+3=", "The cat"]
    assert all(isinstance(r["completion"], str) for r in rows)


def test_pretrain_on_user_text(tmp_path: Path) -> None:
    """User text with no tokenizer: a BPE is trained on it and saved with the model."""
    from trainlab.data.corpus import generate_corpus

    data = tmp_path / "texts.txt"
    data.write_text("\n\n".join(generate_corpus(300, seed=5)) + "\n")
    out = tmp_path / "mine"
    proc = trainlab("pretrain", "--preset", "tiny", "--data", str(data), "--out", str(out), "--max-steps", "3",
                    "--json", tmp_path=tmp_path)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["steps"] == 3 and str(data) in summary["data"]["tokenizer"]
    assert (out / "model" / "tokenizer.json").is_file()
