"""Lab 1.6 in the tiny preset end to end, its claims' verdicts from numbers, its helpers, its notebooks (smoke)."""

from __future__ import annotations

import runpy
from pathlib import Path

import pytest
import torch
from _tiny import tiny_decoder

from trainlab.labs import run_labs
from trainlab.labs.lab16 import claims, kv_bytes, presets
from trainlab.model import load_model, save_pretrained
from trainlab.model.convert import convert_gqa

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((REPO / "notebooks").glob("lab16_0*.py"))
VERDICTS = {"consistent", "not reproduced", "partly", "reproduced from the formula", "not measurable here", "n/a"}


def test_lab16_tiny_runs_and_reports(tmp_path: Path) -> None:
    suite = run_labs(["lab16"], out_dir=tmp_path, preset="tiny", quiet=True)
    lab = suite.labs[0]
    assert lab.status == "ok", lab.error
    data = lab.data
    assert all(r["equal"] for r in data["kv_bytes"]["measured"])
    assert {r["cache"] for r in data["kv_bytes"]["measured"]} == {"dynamic", "static"}
    pts = data["decode"]["points"]
    assert {p["impl"] for p in pts} == {"ours-dynamic", "ours-static", "transformers"}
    assert all(p["same_tokens"] for p in pts) and all(p["per_token_s"] > 0 and p["prefill_s"] > 0 for p in pts)
    up = data["uptraining"]
    assert set(up["curves"]) == {"mean", "first", "random"}
    assert all(len(v) == len(up["steps"]) for v in up["curves"].values())
    assert len(data["quality"]["rows"]) == len(presets.get_preset("tiny").quality_kv)
    for fig in lab.figures:
        assert (tmp_path / fig.path).is_file()
    assert {c.verdict for c in lab.claims} <= VERDICTS and len(lab.claims) >= 7
    report = (tmp_path / "report.md").read_text(encoding="utf-8")
    assert "Lab 1.6" in report and "Ours / transformers' generate" in report
    # the benchmark's BENCHMARKS.md section renders from the same measurement
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_decode", REPO / "benchmarks" / "bench_decode.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    md = bench.summary_markdown(data["decode"] | {"date": "today", "device": "cpu", "torch": "x", "dtype": "fp32",
                                                 "label": "under load"})
    assert "| ours-static | MQA |" in md and "(under load)" in md and md.count("\n| GQA-2 |") == 4


def test_published_shapes_match_the_issue() -> None:
    rows = {(r["model"], r["attention"]): r for r in kv_bytes.analytic_rows()}
    l70 = rows[("Llama-2-70B", "as published (GQA-8)")]
    assert l70["bytes_per_token"] == 320 * 1024 and l70["bytes_per_sequence"] == 1_342_177_280
    assert rows[("Llama-2-70B", "MHA")]["bytes_per_sequence"] == 10_737_418_240
    assert rows[("Mistral-7B", "as published (GQA-8)")]["bytes_per_token"] == 128 * 1024
    assert rows[("Llama-2-7B", "as published (MHA)")]["bytes_per_token"] == 512 * 1024
    assert rows[("Llama-2-7B", "MQA")]["reduction_vs_mha"] == 32


@pytest.mark.parametrize("init", ["mean", "first", "random"])
def test_in_memory_conversion_equals_convert_gqa(tmp_path: Path, init: str) -> None:
    torch.manual_seed(0)
    from trainlab.config import ModelConfig
    from trainlab.model import Decoder

    model = Decoder(ModelConfig(vocab_size=48, dim=32, n_layers=2, n_heads=4, max_seq_len=64)).eval()
    save_pretrained(model, tmp_path / "mha")
    convert_gqa(tmp_path / "mha", tmp_path / "gqa", 2, init, seed=3)
    ref = load_model(tmp_path / "gqa")
    ours = presets.to_kv_heads(model, 2, init, seed=3)
    ids = torch.randint(0, 48, (2, 9))
    with torch.no_grad():
        torch.testing.assert_close(ours(ids), ref(ids), rtol=0, atol=0)


def test_variant_names_and_reachable_heads() -> None:
    assert presets.kv_variants(8) == [8, 4, 2, 1]
    assert [presets.variant_name(8, k) for k in (8, 4, 1)] == ["MHA", "GQA-4", "MQA"]
    assert presets.reachable_kv(tiny_decoder()) == [2, 1]


def _point(variant: str, impl: str, b: int, t: int, per_token: float, sweep: str = "batch") -> dict:
    return {"variant": variant, "impl": impl, "batch": b, "context": t, "sweep": sweep, "per_token_s": per_token,
            "decode_tokens_per_s": b / per_token, "tokens_per_s": b / per_token, "prefill_s": 0.01}


def test_speed_verdicts_follow_from_the_numbers() -> None:
    pts = [_point("MHA", "ours-static", 8, 128, 1.0), _point("MQA", "ours-static", 8, 128, 1 / 1.7),
           _point("GQA-2", "ours-static", 8, 128, 1 / 1.4),
           _point("MHA", "ours-static", 1, 128, 1.0), _point("MQA", "ours-static", 1, 128, 1 / 0.9),
           _point("GQA-2", "ours-static", 1, 128, 1.0)]
    got = {c.claim: c.verdict for c in claims.speed_claims({"points": pts, "layers": 2, "dim": 32}, "cpu")}
    # judged at the largest KV cache (B=8): 1.7x and 1.4x
    assert got["MQA decodes 1.5-2x faster than MHA"] == "consistent"
    assert got["MQA decodes 10-20% faster than MHA"] == "partly"  # faster, by more than claimed
    assert got["GQA decodes 1.3-1.5x faster than MHA"] == "consistent"
    assert got["inference cost falls 50-70%"] == "partly"  # 1 - 1/1.7 = 41%
    slower = [dict(p, per_token_s=2.0, decode_tokens_per_s=4.0) if p["variant"] == "MQA" else p for p in pts]
    got = {c.claim: c.verdict for c in claims.speed_claims({"points": slower, "layers": 2, "dim": 32}, "cpu")}
    assert got["MQA decodes 1.5-2x faster than MHA"] == "not reproduced"


def test_quality_and_uptraining_verdicts_follow_from_the_numbers() -> None:
    q = {"steps": 10, "rows": [{"variant": "MHA", "val_loss": 3.00}, {"variant": "GQA-2", "val_loss": 3.03},
                               {"variant": "MQA", "val_loss": 3.10}]}
    got = {c.claim: c.verdict for c in claims.quality_claims(q)}
    assert got == {"MQA: minimal quality loss": "not reproduced", "GQA quality close to MHA": "consistent"}
    up = {"steps": [0, 3, 15], "fractions": [0.0, 0.01, 0.05], "pretrain_steps": 300, "variant": "GQA-2",
          "mha_val_loss": 2.0, "curves": {"mean": [2.5, 2.2, 2.03], "first": [2.6, 2.3, 2.1],
                                          "random": [4.0, 3.0, 2.05]}}
    got = {c.claim: c.verdict for c in claims.uptraining_claims(up)}
    assert got["uptraining with 5% of the pre-training steps recovers MHA quality"] == "consistent"
    assert got["mean-pooling beats keeping the first head, which beats random init"] == "partly"  # not at 15 steps


@pytest.mark.skipif(len(NOTEBOOKS) != 4, reason="the four lab16 notebooks")
def test_notebooks_run_in_smoke_mode(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("TRAINLAB_NOTEBOOK_PRESET", "tiny")
    monkeypatch.setenv("TRAINLAB_NOTEBOOK_OUT", str(tmp_path / "out"))
    monkeypatch.chdir(tmp_path)
    for nb in NOTEBOOKS:
        text = nb.read_text(encoding="utf-8")
        assert "format_name: percent" in text and "# %% [markdown]" in text, nb.name
        runpy.run_path(str(nb), run_name="__main__")
    out = capsys.readouterr().out
    assert "1342177280" in out and "Decode speed" in out and "Quality with one budget" in out
    assert "uptraining steps" in out
