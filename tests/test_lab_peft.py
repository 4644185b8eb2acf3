"""The PEFT lab in the tiny preset (sections, figures, every method's row, BitFit refused on the bias-free
decoder), claim verdicts computed from the numbers, and the peft_0* notebooks in smoke mode."""

from __future__ import annotations

import runpy
from pathlib import Path

import pytest

from trainlab.labs import run_labs
from trainlab.labs.peft import peft_claims
from trainlab.labs.peft.runs import MethodRow
from trainlab.results import LabResult

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> tuple[LabResult, Path]:
    out = tmp_path_factory.mktemp("peft_suite")
    suite = run_labs(["peft"], out_dir=out, preset="tiny", device="cpu", quiet=True)
    return suite.labs[0], out


def test_lab_runs_every_method(lab: tuple[LabResult, Path]) -> None:
    result, out = lab
    assert result.status == "ok", result.error
    rows = {r["method"]: r for r in result.data["methods"]["rows"]}
    assert {"none", "lora", "qlora", "adalora", "bottleneck", "prefix", "prompt", "ptuning", "ia3", "bitfit",
            "dora"} == set(rows)
    assert rows["bitfit"]["status"] == "refused" and "no bias parameters" in rows["bitfit"]["note"]
    for m in ("none", "lora", "qlora", "adalora", "bottleneck", "prefix", "prompt", "ptuning", "ia3", "dora"):
        r = rows[m]
        assert r["status"] == "ok" and r["trainable"] > 0 and r["file_bytes"] > 0 and r["steps"] == 3, m
    full = rows["none"]
    assert all(rows[m]["trainable"] < full["trainable"] for m in ("lora", "prompt", "ia3", "prefix"))
    assert rows["qlora"]["weights_bytes"] < rows["lora"]["weights_bytes"]  # an NF4 base
    assert rows["prompt"]["trainable"] == 4 * 32  # virtual tokens x dim of the tiny base model
    titles = [t.title for t in result.tables]
    assert any("same SFT steps" in t for t in titles) and any("rank sweep" in t for t in titles)
    assert len(result.figures) == 3 and all((out / f.path).is_file() for f in result.figures)
    formula = next(c for c in result.claims if "r(d + k)" in c.claim)
    assert formula.verdict == "consistent"


def _row(method: str, trainable: int, mem: int, acc: float, loss: float, file_bytes: int) -> MethodRow:
    return MethodRow(label=method, method=method, trainable=trainable, total=1000, weights_bytes=mem,
                     memory={"parameters": mem, "total": 2 * mem}, accuracy=acc, heldout_loss=loss,
                     file_bytes=file_bytes)


def test_claim_verdicts_follow_the_numbers() -> None:
    bits = {"with_double_quant": 4.127, "without": 4.5, "numel": 16384.0}
    rows = [_row("none", 1000, 4000, 0.40, 1.0, 4000), _row("lora", 80, 1000, 0.41, 1.1, 80),
            _row("prompt", 8, 900, 0.10, 2.0, 8)]
    claims = {c.claim.split(" (")[0]: c.verdict for c in peft_claims(rows, bits, 80, "test")}
    assert claims["LoRA trains r(d + k) parameters per d×k matrix"] == "consistent"
    assert claims["LoRA cuts training memory about 3x"] == "consistent"  # 8000 / 2000 bytes
    assert claims["LoRA matches full fine-tuning at less memory"] == "consistent"
    assert claims["Prompt tuning lags far behind LoRA"] == "consistent"
    assert claims["Double quantization saves ~0.37 bits per parameter"] == "consistent"
    rows[2] = _row("prompt", 8, 900, 0.40, 1.11, 8)  # behind LoRA, but by less than 10 points: partly
    claims = {c.claim.split(" (")[0]: c.verdict for c in peft_claims(rows, bits, 80, "test")}
    assert claims["Prompt tuning lags far behind LoRA"] == "partly"
    rows[1] = _row("lora", 80, 3900, 0.10, 1.1, 80)  # worse and barely smaller: not reproduced / partly
    claims = {c.claim.split(" (")[0]: c.verdict for c in peft_claims(rows, bits, 81, "test")}
    assert claims["LoRA trains r(d + k) parameters per d×k matrix"] == "not reproduced"
    assert claims["LoRA matches full fine-tuning at less memory"] == "partly"
    assert claims["LoRA cuts training memory about 3x"] == "partly"


@pytest.mark.parametrize("name", ["peft_01_methods.py", "peft_02_method_table.py", "peft_03_lora_rank.py",
                                  "peft_04_qlora_and_claims.py"])
def test_notebook_smoke(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("TRAINLAB_NOTEBOOK_PRESET", "tiny")
    monkeypatch.setenv("TRAINLAB_NOTEBOOK_OUT", str(tmp_path / "out"))
    monkeypatch.chdir(tmp_path)
    runpy.run_path(str(NOTEBOOKS / name), run_name="__main__")
    out = capsys.readouterr().out
    if name.startswith("peft_01"):
        assert "refused" in out  # BitFit on the bias-free decoder
        diffs = [float(line.rsplit(" ", 1)[1]) for line in out.splitlines() if "vs PeftModel" in line]
        assert len(diffs) == 5 and max(diffs) < 1e-4
    elif name.startswith("peft_02"):
        assert "| BitFit | refused |" in out and "| LoRA r8 | ok |" in out
    elif name.startswith("peft_03"):
        assert "Σ r(d + k)" in out and "LoRA rank sweep" in out
    else:
        assert "bits/param" in out and "| claim |" in out


def test_every_peft_notebook_is_a_percent_script() -> None:
    names = sorted(p.name for p in NOTEBOOKS.glob("peft_0*.py"))
    assert [n[:7] for n in names] == ["peft_01", "peft_02", "peft_03", "peft_04"]
    for name in names:
        text = (NOTEBOOKS / name).read_text(encoding="utf-8")
        assert "format_name: percent" in text and "# %% [markdown]" in text, name
        compile(text, name, "exec")
