"""Memory formulas: published values (ZeRO, Korthikanti, Llama-2-7B), and estimates vs exact measurement."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from unittest.mock import patch

import pytest
import torch

from trainlab.cli import main
from trainlab.config import ModelConfig, TrainConfig
from trainlab.errors import UserError
from trainlab.memory.estimate import (
    ModelShape,
    estimate_memory,
    korthikanti_layer_bytes,
    load_shape,
    parse_count,
    zero_bytes_per_gpu,
)
from trainlab.memory.measure import measure_training_step
from trainlab.model.decoder import Decoder
from trainlab.optim import build_optimizer
from trainlab.precision.scaler import DynamicLossScaler
from trainlab.train.amp import NoLossScaler
from trainlab.train.objectives import CausalLMObjective

LLAMA2_7B = {"architectures": ["LlamaForCausalLM"], "hidden_size": 4096, "intermediate_size": 11008,
             "num_attention_heads": 32, "num_hidden_layers": 32, "num_key_value_heads": 32, "vocab_size": 32000,
             "tie_word_embeddings": False, "rms_norm_eps": 1e-5}


def cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    with patch.object(sys, "argv", ["trainlab", *args]):
        try:
            main()
            code = 0
        except SystemExit as exc:
            code = int(exc.code or 0)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_zero_matches_the_papers_example() -> None:
    # Rajbhandari et al. 2020, Fig. 1: Ψ = 7.5B, N_d = 64, K = 12 -> 120, 31.4, 16.6, 1.9 GB.
    got = [round(zero_bytes_per_gpu(7_500_000_000, 64, s) / 1e9, 1) for s in range(4)]
    assert got == [120.0, 31.4, 16.6, 1.9]
    # The seed's 4x / 8x / Nx are the limits for many GPUs.
    n = 10**6
    assert zero_bytes_per_gpu(1, 1, 0) / zero_bytes_per_gpu(1, n, 1) == pytest.approx(4, rel=1e-4)
    assert zero_bytes_per_gpu(1, 1, 0) / zero_bytes_per_gpu(1, n, 2) == pytest.approx(8, rel=1e-4)
    assert zero_bytes_per_gpu(1, 1, 0) / zero_bytes_per_gpu(1, 64, 3) == 64


def test_korthikanti_formula() -> None:
    # GPT-3 175B layer: s = 2048, b = 1, h = 12288, a = 96: sbh·(34 + 5·a·s/h) = sbh·114.
    sbh = 2048 * 12288
    assert korthikanti_layer_bytes(2048, 1, 12288, 96) == sbh * 114
    assert korthikanti_layer_bytes(2048, 1, 12288, 96, "selective") == sbh * 34
    assert korthikanti_layer_bytes(2048, 1, 12288, 96, "full") == sbh * 2


def test_llama2_7b_parameter_count_from_its_config(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps(LLAMA2_7B))
    shape = load_shape(tmp_path)
    assert shape.params == 6_738_415_616  # what Hugging Face reports for Llama-2-7b
    est = estimate_memory(shape, batch=1, seq=4096, precision="bf16", checkpointing="full")
    assert est.parameters == 4 * shape.params and est.optimizer_states == 8 * shape.params


def test_guessed_shape_for_7b_is_llama_like() -> None:
    shape = ModelShape.guess(7_000_000_000)
    assert (shape.dim, shape.n_layers, shape.ffn_dim) == (4096, 32, 11008)


def test_parse_count() -> None:
    assert parse_count("7B") == 7_000_000_000
    assert parse_count("1.3b") == 1_300_000_000
    assert parse_count("125M") == 125_000_000
    assert parse_count("7e9") == 7_000_000_000
    with pytest.raises(UserError):
        parse_count("seven")
    with pytest.raises(UserError):
        parse_count("-1")


CONFIGS = [
    ("fp32", "adamw", "none", None),
    ("fp32", "adamw", "full", None),
    ("fp32", "lion", "every_n", None),
    ("fp32", "sgd", "selective", None),
    ("bf16", "adamw", "none", 2),
    ("bf16", "adamw", "selective", None),
    ("fp16", "adamw", "full", 1),
    ("fp16", "lion", "every_n", 2),
]


@pytest.mark.parametrize(("precision", "optim", "policy", "kv"), CONFIGS)
def test_estimate_vs_exact_measurement(precision: str, optim: str, policy: str, kv: int | None) -> None:
    cfg = ModelConfig(vocab_size=64, dim=32, n_layers=3, n_heads=4, n_kv_heads=kv, max_seq_len=16,
                      attention="sdpa", checkpointing=policy)  # type: ignore[arg-type]
    tcfg = TrainConfig(optim=optim, precision=precision)  # type: ignore[arg-type]
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 64, (3, 16), generator=gen)
    batch = {"input_ids": ids, "labels": ids.clone(), "attention_mask": torch.ones_like(ids)}
    torch.manual_seed(0)
    mem = measure_training_step(lambda: Decoder(cfg), CausalLMObjective(), [batch],
                                optimizer=lambda m: build_optimizer(m, tcfg), precision=precision,
                                scaler=DynamicLossScaler() if precision == "fp16" else NoLossScaler(), steps=2)
    est = estimate_memory(ModelShape.from_model_config(cfg), batch=3, seq=16, precision=precision, optim=optim,
                          checkpointing=policy)
    assert not mem.oom
    assert mem.parameters == est.parameters and mem.gradients == est.gradients
    # AdamW keeps a 4-byte step counter per tensor: the only difference from 8 B/param.
    for name, e in est.components().items():
        m = mem.components()[name]
        assert abs(m - e) <= 0.10 * e, (name, m, e)
    assert abs(mem.peak - est.peak) <= 0.10 * est.peak, (mem.peak, est.peak)


def test_calc_zero_cli_prints_the_papers_numbers(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = cli(["calc", "zero", "--params", "7.5B", "--gpus", "64", "--json"], capsys)
    assert code == 0
    doc = json.loads(out)
    assert [round(r["gb_per_gpu"], 1) for r in doc["stages"]] == [120.0, 31.4, 16.6, 1.9]


def test_calc_memory_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "config.json").write_text(json.dumps(LLAMA2_7B))
    code, out, _ = cli(["calc", "memory", "--model", str(tmp_path), "--batch", "1", "--seq", "2048",
                        "--precision", "bf16", "--optim", "adamw", "--checkpointing", "full", "--json"], capsys)
    assert code == 0
    doc = json.loads(out)
    p = 6_738_415_616
    assert doc["bytes"]["parameters"] == 4 * p and doc["bytes"]["gradients"] == 4 * p
    assert doc["bytes"]["optimizer_states"] == 8 * p
    # Full checkpointing keeps one fp32 block input per layer: 32 layers x 2048 x 4096 x 4 B, plus
    # input ids, the cos/sin tables and the final norm.
    assert doc["activations_detail"]["per_layer"] == [2048 * 4096 * 4] * 32
    assert doc["korthikanti"]["per_layer"] == 2 * 2048 * 4096
    code, out, _ = cli(["calc", "memory", "--params", "7B", "--optim", "lion", "--json"], capsys)
    assert code == 0 and json.loads(out)["bytes"]["optimizer_states"] == 4 * 7_000_000_000
    code, out, _ = cli(["calc", "memory", "--params", "125M"], capsys)  # the table
    assert code == 0 and "optimizer states" in out


@pytest.mark.parametrize("args", [["calc", "memory"], ["calc", "memory", "--params", "7B", "--precision", "fp8"],
                                  ["calc", "memory", "--params", "7B", "--checkpointing", "some"],
                                  ["calc", "zero", "--params", "lots"], ["calc", "memory", "--model", "nope.yaml"]])
def test_calc_bad_input_is_one_line_exit_2(args: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = cli(args, capsys)
    assert code == 2
    assert err.strip().startswith("error: ") and len(err.strip().splitlines()) == 1


def test_calc_memory_takes_settings_from_a_trainlab_config(capsys: pytest.CaptureFixture[str]) -> None:
    root = Path(__file__).resolve().parents[1]
    code, out, _ = cli(["calc", "memory", "--model", str(root / "configs" / "optimized.yaml"), "--json"], capsys)
    assert code == 0
    cfg = json.loads(out)["config"]
    assert (cfg["precision"], cfg["checkpointing"], cfg["batch"], cfg["grad_accum"]) == ("bf16", "full", 4, 4)


def test_calc_formats_cli(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = cli(["calc", "formats", "--json"], capsys)
    assert code == 0
    rows = {r["name"]: r for r in json.loads(out)}
    assert rows["fp16"]["max"] == 65504.0 and rows["bf16"]["min_normal"] == torch.finfo(torch.bfloat16).tiny
