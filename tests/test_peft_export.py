"""``trainlab export --model RUN --merge``: a PEFT run's adapter merged into its base, a plain transformers folder
with PEFT's merged logits; a PEFT run folder given as a model names the fix."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from tests._hf_tiny import hf_model_dir
from trainlab.align.config import align_config
from trainlab.errors import UserError
from trainlab.model.protocol import load_model
from trainlab.recipes.align import run_alignment

peft = pytest.importorskip("peft")


@pytest.mark.parametrize("arch", ["llama", "gpt2"])  # llama: trained as our decoder, saved under HF Llama names
def test_export_merge_of_a_lora_run(arch: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    from transformers import AutoModelForCausalLM

    from trainlab import cli

    base = hf_model_dir(tmp_path / "base", arch, positions=64)
    data = tmp_path / "sft.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"{i} + 2 =", "completion": f" {i + 2}"}) + "\n"
                            for i in range(8)), encoding="utf-8")
    cfg = align_config("sft", preset="tiny", model=base, overrides=[
        "train.device=cpu", "train.max_steps=2", "train.batch_size=4", "train.eval_every=0", "train.lr=5e-2",
        "train.warmup_steps=0", f"align_data.source={data}", "peft.method=dora", "peft.r=4"])
    run_alignment("sft", cfg, base, tmp_path / "run", quiet=True, evaluate_oracle=False)
    with pytest.raises(UserError, match="--merge"):
        load_model(tmp_path / "run")

    monkeypatch.setattr(sys, "argv", ["trainlab", "export", "--model", str(tmp_path / "run"), "--merge", "--out",
                                      str(tmp_path / "merged"), "--json"])
    with pytest.raises(SystemExit) as exc:
        cli.main()
    captured = capsys.readouterr()
    assert (exc.value.code or 0) == 0, captured.err
    # (from the first '{': a library imported by another component may log a line to stdout first)
    summary = json.loads(captured.out[captured.out.index("{"):])
    assert summary["merged"] == {"base": str(base), "adapter": str(tmp_path / "run" / "adapter")}

    ids = torch.randint(0, 200, (2, 8), generator=torch.Generator().manual_seed(0))
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()
    reference = peft.PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base),
                                               str(tmp_path / "run" / "adapter")).eval()
    plain = AutoModelForCausalLM.from_pretrained(base).eval()
    with torch.no_grad():
        want = reference(input_ids=ids).logits
        torch.testing.assert_close(merged(input_ids=ids).logits, want, atol=1e-5, rtol=1e-5)
        assert (want - plain(input_ids=ids).logits).abs().max() > 1e-4  # the adapter changed something
