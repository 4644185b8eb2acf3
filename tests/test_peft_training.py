"""PEFT in training runs: the CLI writes an adapter PEFT loads, only adapters train, the DPO reference is the
same model with adapters off (no copy), merge writes a plain folder with the same logits, resume continues."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from tests._hf_tiny import hf_model_dir
from trainlab.align.config import align_config
from trainlab.model.protocol import load_model
from trainlab.peft import load_adapter
from trainlab.recipes.align import run_alignment
from trainlab.train.callbacks import Callback

peft = pytest.importorskip("peft")

PAIRS = [("2+3=", " 5", " 6"), ("Reverse abc:", " cba", " abc"), ("Sort 3 1 2:", " 1 2 3", " 3 2 1"),
         ("Hello, how are you?", " I am fine.", " No."), ("Count:", " one two three", " three")]


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return hf_model_dir(tmp_path_factory.mktemp("gpt2") / "model", "gpt2", positions=64)


@pytest.fixture(scope="module")
def pairs_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("data") / "pairs.jsonl"
    rows = [{"prompt": f"{i}. {p}", "chosen": c, "rejected": r} for i, (p, c, r) in
            enumerate(PAIRS * 2)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _cfg(method: str, model: Path, data: Path, *extra: str):  # type: ignore[no-untyped-def]
    return align_config(method, preset="tiny", model=model,
                        overrides=["train.device=cpu", "train.max_steps=2", "train.batch_size=4", "train.lr=1e-2",
                                   "train.eval_every=0", "train.log_every=1", "train.warmup_steps=0",
                                   f"align_data.source={data}", *extra])


def _ids() -> torch.Tensor:
    return torch.randint(0, 200, (2, 8), generator=torch.Generator().manual_seed(0))


def test_cli_sft_lora_writes_an_adapter_peft_loads(gpt2_dir: Path, pairs_file: Path, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    from transformers import AutoModelForCausalLM

    from trainlab import cli

    out = tmp_path / "D"
    argv = ["trainlab", "sft", "--model", str(gpt2_dir), "--data", str(pairs_file), "peft.method=lora", "peft.r=4",
            "--max-steps", "2", "--preset", "tiny", "--device", "cpu", "--out", str(out), "--json",
            "train.lr=1e-2", "train.warmup_steps=0"]
    monkeypatch.setattr(sys, "argv", argv)
    monkeypatch.delenv("TRAINLAB_DEBUG", raising=False)
    with pytest.raises(SystemExit) as exc:
        cli.main()
    captured = capsys.readouterr()
    assert (exc.value.code or 0) == 0, captured.err
    result = json.loads(captured.out[captured.out.index("{"):])  # another component may log a line first
    adapter = out / "adapter"
    assert (adapter / "adapter_config.json").is_file() and (adapter / "adapter_model.safetensors").is_file()
    assert not (out / "model").exists() and result["model_dir"] is None
    # all-linear on GPT-2 (2 layers, 32 wide): c_attn 32->96, attn c_proj 32->32, c_fc 32->128, mlp c_proj 128->32
    per_layer = 4 * ((32 + 96) + (32 + 32) + (32 + 128) + (128 + 32))
    assert result["peft"]["trainable_params"] == 2 * per_layer
    assert result["peft"]["adapter_bytes"] == 4 * 2 * per_layer
    # PEFT loads it onto the transformers model; trainlab loads it onto its own: the same logits, and trained
    base = AutoModelForCausalLM.from_pretrained(gpt2_dir)
    with torch.no_grad():
        base_logits = base(input_ids=_ids()).logits
    hf = peft.PeftModel.from_pretrained(base, str(adapter)).eval()
    ours = load_model(gpt2_dir)
    load_adapter(ours, adapter)
    ours.eval()
    with torch.no_grad():
        theirs, mine = hf(input_ids=_ids()).logits, ours(_ids())
    torch.testing.assert_close(mine, theirs, atol=1e-5, rtol=1e-5)
    assert (theirs - base_logits).abs().max() > 1e-4  # two steps moved the adapter (B is 0 at init)


@pytest.mark.parametrize("mode", ["frozen", "cached"])
def test_dpo_lora_reference_is_the_base_without_a_copy(gpt2_dir: Path, pairs_file: Path, tmp_path: Path,
                                                       mode: str) -> None:
    cfg = _cfg("dpo", gpt2_dir, pairs_file, "peft.method=lora", "peft.r=4", "peft.targets=c_attn",
               f"align.reference={mode}", "peft.merge=true")
    run = run_alignment("dpo", cfg, gpt2_dir, tmp_path / "dpo", quiet=True, evaluate_oracle=False)
    s = run.summary
    assert s["memory"]["reference"] == 0  # no frozen copy of the weights
    trainable = s["peft"]["trainable_params"]
    assert trainable == 2 * 4 * (32 + 96)
    assert s["memory"]["gradients"] == 4 * trainable and s["memory"]["optimizer"] == 2 * 4 * trainable
    # step 1: the policy is the reference, so DPO's loss is log 2 (cached from the base or scored with adapters off)
    assert s["history"][0]["loss"] == pytest.approx(0.693147, abs=1e-4)
    # the base weights never moved; only the adapters did
    fresh = load_model(gpt2_dir)
    policy = run.model
    for name, p in fresh.named_parameters():
        key = name.replace("attn.c_attn.", "attn.c_attn.base_layer.")
        torch.testing.assert_close(policy.get_parameter(key), p, atol=0, rtol=0)
    # peft.merge: out/model is a plain folder with the adapted model's logits
    merged = load_model(tmp_path / "dpo" / "model")
    policy.eval()
    with torch.no_grad():
        torch.testing.assert_close(merged(_ids()), policy(_ids()), atol=1e-5, rtol=1e-5)
        assert (merged(_ids()) - fresh(_ids())).abs().max() > 1e-5


class _StopAt(Callback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, trainer, step, metrics) -> None:  # type: ignore[no-untyped-def]
        if step == self.step:
            trainer.request_stop("test")


def test_peft_resume_continues_bit_exactly(gpt2_dir: Path, pairs_file: Path, tmp_path: Path) -> None:
    extra = ("peft.method=dora", "peft.r=2", "peft.targets=c_attn", "train.save_every=1")
    straight = run_alignment("sft", _cfg("sft", gpt2_dir, pairs_file, *extra, "train.max_steps=3"), gpt2_dir,
                             tmp_path / "a", quiet=True, evaluate_oracle=False)
    out = tmp_path / "b"
    run_alignment("sft", _cfg("sft", gpt2_dir, pairs_file, *extra, "train.max_steps=3", "train.keep_checkpoint=true"),
                  gpt2_dir, out, quiet=True, evaluate_oracle=False, callbacks=[_StopAt(2)])
    # the checkpoint holds what trains (adapters), not the frozen base: that is read from --model again
    saved = torch.load(out / "checkpoint.pt", weights_only=False)["model"]
    trained = {n for n, p in straight.model.named_parameters() if p.requires_grad}
    assert trained and trained <= saved.keys()
    assert not any(n in saved for n, p in straight.model.named_parameters() if not p.requires_grad)
    resumed = run_alignment("sft", _cfg("sft", gpt2_dir, pairs_file, *extra, "train.max_steps=3"), gpt2_dir, out,
                            resume=True, quiet=True, evaluate_oracle=False)
    assert resumed.summary["resumed_from"] == 2
    a = straight.model.state_dict()
    b = resumed.model.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(b[k], a[k], atol=0, rtol=0)
    # another PEFT config does not resume this checkpoint
    from trainlab.errors import UserError

    run_alignment("sft", _cfg("sft", gpt2_dir, pairs_file, *extra, "train.max_steps=3", "train.keep_checkpoint=true"),
                  gpt2_dir, tmp_path / "c", quiet=True, evaluate_oracle=False, callbacks=[_StopAt(1)])
    with pytest.raises(UserError, match="peft"):
        run_alignment("sft", _cfg("sft", gpt2_dir, pairs_file, "peft.method=lora", "peft.r=2", "peft.targets=c_attn",
                                  "train.max_steps=3"), gpt2_dir, tmp_path / "c", resume=True, quiet=True,
                      evaluate_oracle=False)



@pytest.mark.parametrize("method", ["orpo", "simpo", "kto"])
def test_every_alignment_method_trains_only_the_adapter(method: str, gpt2_dir: Path, pairs_file: Path,
                                                        tmp_path: Path) -> None:
    extra = ["align.reference=frozen"] if method == "kto" else []
    cfg = _cfg(method, gpt2_dir, pairs_file, "peft.method=lora", "peft.r=2", "peft.targets=c_attn,c_fc", *extra)
    run = run_alignment(method, cfg, gpt2_dir, tmp_path / method, quiet=True, evaluate_oracle=False)
    assert run.summary["peft"]["trainable_params"] == 2 * 2 * ((32 + 96) + (32 + 128))
    assert run.summary["memory"]["reference"] == 0
    fresh = load_model(gpt2_dir)
    moved = []
    for name, p in run.model.named_parameters():
        if "lora_" in name:
            if "lora_B" in name and p.abs().max() > 0:
                moved.append(name)
            continue
        torch.testing.assert_close(p, fresh.get_parameter(name.replace(".base_layer", "")), atol=0, rtol=0)
    assert len(moved) == 4  # every B moved away from its zero init: the adapters trained
    assert (tmp_path / method / "adapter" / "adapter_model.safetensors").is_file()


def test_run_or_reuse_reloads_a_peft_run_with_its_adapter(gpt2_dir: Path, pairs_file: Path, tmp_path: Path) -> None:
    from trainlab.peft import peft_state
    from trainlab.recipes.align import run_or_reuse

    cfg = _cfg("sft", gpt2_dir, pairs_file, "peft.method=lora", "peft.r=2", "peft.targets=c_attn")
    first = run_or_reuse("sft", cfg, gpt2_dir, tmp_path / "stage")
    again = run_or_reuse("sft", cfg, gpt2_dir, tmp_path / "stage")
    assert again.summary.get("reused") and peft_state(again.model) is not None
    with torch.no_grad():
        torch.testing.assert_close(again.model.eval()(_ids()), first.model.eval()(_ids()), atol=1e-6, rtol=1e-6)


def test_merge_of_a_method_that_cannot_merge_is_refused_before_training(gpt2_dir: Path, pairs_file: Path,
                                                                        tmp_path: Path) -> None:
    """peft.merge=true with prompt tuning failed only after the run had trained."""
    from trainlab.errors import UserError

    cfg = _cfg("sft", gpt2_dir, pairs_file, "peft.method=prompt", "peft.merge=true")
    with pytest.raises(UserError, match=r"peft\.merge=true: peft\.method=prompt adapters cannot be merged"):
        run_alignment("sft", cfg, gpt2_dir, tmp_path / "out", quiet=True, evaluate_oracle=False)
    assert not (tmp_path / "out").exists()  # nothing written
