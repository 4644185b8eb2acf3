"""``trainlab calc lora``: the known Llama-2-7B value, and agreement with the adapters trainlab actually builds."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from tests._hf_tiny import hf_model_dir
from trainlab.model.protocol import load_model
from trainlab.peft import PeftConfig, apply_peft
from trainlab.peft.calc import lora_calc_for_model

LLAMA2_7B = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 4096,
             "num_hidden_layers": 32, "intermediate_size": 11008, "num_attention_heads": 32,
             "num_key_value_heads": 32, "vocab_size": 32000, "tie_word_embeddings": False}


def _cli(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], *args: str) -> dict:  # type: ignore[type-arg]
    from trainlab import cli

    monkeypatch.setattr(sys, "argv", ["trainlab", *args])
    with pytest.raises(SystemExit) as exc:
        cli.main()
    captured = capsys.readouterr()
    assert (exc.value.code or 0) == 0, captured.err
    return json.loads(captured.out[captured.out.index("{"):])  # type: ignore[no-any-return]


def test_llama2_7b_r8_q_v_is_4194304(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "config.json"
    config.write_text(json.dumps(LLAMA2_7B), encoding="utf-8")
    doc = _cli(monkeypatch, capsys, "calc", "lora", "--model", str(config), "--r", "8", "--targets", "q_proj,v_proj",
               "--json")
    assert doc["trainable_params"] == 4_194_304  # 32 layers x 2 matrices x 8 x (4096 + 4096)
    assert doc["adapter_bytes"]["fp32"] == 4 * 4_194_304
    assert [m["compression"] for m in doc["matrices"]] == [8 * 8192 / 4096**2] * 2
    assert doc["base_params"] == 6_738_415_616  # Llama-2-7B's parameter count
    # weights + gradients + AdamW states, by hand: linear weights L = 32·(4·4096² + 3·4096·11008) = 6,476,005,376;
    # NF4 + double quantization = L·(4 + 8/64 + 32/16384)/8 = 3,340,771,328 bytes; the other 262,410,240 stay fp32
    assert doc["model_states_bytes"] == {"full_finetune": 16 * 6_738_415_616,
                                         "lora": 4 * 6_738_415_616 + 16 * 4_194_304,
                                         "qlora": 4 * 262_410_240 + 3_340_771_328 + 16 * 4_194_304}
    # the same from the shape flags; all-linear: PEFT's print_trainable_parameters says 19,988,480 for Llama-2-7B
    flags = ("calc", "lora", "--layers", "32", "--hidden", "4096", "--intermediate", "11008", "--heads", "32", "--r",
             "8", "--json")
    assert _cli(monkeypatch, capsys, *flags, "--targets", "q_proj,v_proj")["trainable_params"] == 4_194_304
    assert _cli(monkeypatch, capsys, *flags, "--targets", "all-linear")["trainable_params"] == 19_988_480


@pytest.mark.parametrize(("arch", "targets", "dora"), [("llama", "all-linear", False), ("qwen2", "q_proj,k_proj", True),
                                                       ("gpt2", "c_attn,c_proj", False), ("gpt2", "all-linear", True)])
def test_calc_agrees_with_the_built_adapters(arch: str, targets: str, dora: bool, tmp_path: Path) -> None:
    folder = hf_model_dir(tmp_path / arch, arch, positions=64)
    doc = lora_calc_for_model(folder, r=4, targets=targets, dora=dora)
    model = load_model(folder)
    info = apply_peft(model, PeftConfig(method="dora" if dora else "lora", r=4, targets=targets))
    assert info is not None and info.trainable == doc["trainable_params"]


def test_calc_lora_usage_errors(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from trainlab import cli

    for args in (["calc", "lora", "--r", "8"], ["calc", "lora", "--layers", "2", "--hidden", "64", "--intermediate",
                                                "128", "--heads", "4", "--targets", "qproj"]):
        monkeypatch.setattr(sys, "argv", ["trainlab", *args])
        with pytest.raises(SystemExit) as exc:
            cli.main()
        assert exc.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: "), err
