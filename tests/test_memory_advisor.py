"""The technique advisor: decisions, the seed's rule, and LoRA counts checked against PEFT."""

from __future__ import annotations

import json
import sys
from unittest.mock import patch

import pytest

from trainlab.cli import main
from trainlab.errors import UserError
from trainlab.memory.advisor import lora_params, plan, seed_rule
from trainlab.memory.estimate import ModelShape, zero_bytes_per_gpu


def names(doc: dict) -> str:
    return doc["recommended"]["name"] if doc["recommended"] else "none"


def test_decisions_follow_memory() -> None:
    assert names(plan(125_000_000, 80)).startswith("full fine-tune (1 GPU)")
    assert names(plan(7_000_000_000, 24)).startswith("LoRA")
    assert names(plan(13_000_000_000, 24)).startswith("QLoRA")
    doc = plan(13_000_000_000, 80, gpus=4)
    assert names(doc) == "full fine-tune, ZeRO-3 (4 GPUs)"
    z3 = doc["recommended"]["breakdown"]["model_states"]
    assert z3 == zero_bytes_per_gpu(13_000_000_000, 4, 3)
    rejected = [o for o in doc["options"] if not o["fits"]]
    assert [o["name"] for o in rejected][:3] == ["full fine-tune (DDP, 4 GPUs)", "full fine-tune, ZeRO-1 (4 GPUs)",
                                                 "full fine-tune, ZeRO-2 (4 GPUs)"]
    assert all(o["per_gpu_gb"] > 0.9 * 80 for o in rejected)


def test_nothing_fits_says_so() -> None:
    doc = plan(1_000_000_000_000, 8)
    assert doc["recommended"] is None and doc["verdict"].startswith("nothing fits")
    assert doc["agrees_with_seed"] is False


def test_seed_rule_buckets() -> None:
    assert seed_rule(6_999_999_999) == "LoRA on one GPU"
    assert seed_rule(7_000_000_000) == "QLoRA + DDP"
    assert seed_rule(30_000_000_000) == "DeepSpeed ZeRO-3"
    assert seed_rule(70_000_000_000) == "Megatron + pipeline parallel"
    assert plan(13_000_000_000, 24)["agrees_with_seed"] is True


def test_lora_count_matches_peft_on_a_small_llama() -> None:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    hf = LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=160, num_hidden_layers=2,
                     num_attention_heads=4, num_key_value_heads=2)
    torch.manual_seed(0)
    model = get_peft_model(LlamaForCausalLM(hf), LoraConfig(r=4, target_modules=[
        "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]))
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    shape = ModelShape.from_hf_config(hf.to_dict())
    assert lora_params(shape, 4) == trainable
    # Llama-2-7B with r=16 on every linear layer: PEFT prints 39,976,960 trainable parameters.
    llama7 = ModelShape(vocab_size=32000, dim=4096, n_layers=32, n_heads=32, n_kv_heads=32, ffn_dim=11008,
                        head_dim=128, tie_embeddings=False)
    assert lora_params(llama7, 16) == 39_976_960


def test_bad_input() -> None:
    with pytest.raises(UserError):
        plan(1_000_000, 0)
    with pytest.raises(UserError):
        plan(1_000_000, 8, gpus=0)


def test_plan_cli_json(capsys: pytest.CaptureFixture[str]) -> None:
    with patch.object(sys, "argv", ["trainlab", "plan", "--params", "7B", "--gpu-mem", "24", "--seq", "1024",
                                    "--json"]):
        try:
            main()
        except SystemExit as exc:  # the console entry point exits with the command's code
            assert exc.code in (0, None)
    doc = json.loads(capsys.readouterr().out)
    assert doc["inputs"]["seq"] == 1024 and doc["recommended"]["name"].startswith("LoRA")
    assert doc["seed_rule"] == "QLoRA + DDP" and {o["name"] for o in doc["options"]} >= {
        "full fine-tune (1 GPU)", "QLoRA r=16 (NF4 base)"}
