"""Lab 1.5 end to end with the tiny preset, its helpers, and its notebooks in smoke mode."""

from __future__ import annotations

import os
import runpy
from pathlib import Path

import pytest

from trainlab.errors import UserError
from trainlab.labs import LABS, LabContext, run_labs
from trainlab.labs.lab15 import (
    PRESETS,
    crossover,
    factor_shares,
    get_preset,
    loglog_slope,
    long_sequence_claim,
    memory_saving_claim,
)
from trainlab.labs.lab15.claims import range_verdict

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((REPO / "notebooks").glob("lab15_0*.py"))


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("lab15")
    suite = run_labs(["lab15"], out_dir=out, preset="tiny", device="cpu", quiet=True)
    return out, suite.labs[0]


def test_lab15_is_registered():
    assert LABS["lab15"].module == "trainlab.labs.lab15"
    assert set(PRESETS) == {"tiny", "quick", "full"}


def test_tiny_run_writes_every_section(lab):
    out, result = lab
    assert result.status == "ok", result.error
    titles = " | ".join(t.title for t in result.tables)
    for section in ("1. Exactness", "2. Time and peak memory", "3. FlashAttention-1 vs -2", "4. Long-sequence",
                    "5. Profile", "6. Packed"):
        assert section in titles
    report = (out / "report.md").read_text(encoding="utf-8")
    assert "Lab 1.5" in report
    # The memory claim states the numbers this run measured, and its verdict follows from them.
    claim = next(c for c in result.claims if c.claim == "FlashAttention saves 40-60% of memory")
    shares = result.data["long_sequence_training"]["shares"]
    step = shares["saving"]["flash"]
    assert f"{step:.0%} less" in claim.measured and f"at {shares['common_seq']} tokens" in claim.measured
    assert claim.verdict == range_verdict(step, 0.4, 0.6, direction_ok=step > 0.05)
    assert claim.verdict in report.split("FlashAttention saves 40-60% of memory", 1)[1].split("\n", 1)[0]
    for fig in result.figures:
        assert (out / fig.path).is_file(), fig.path


def test_measurements_show_what_the_lab_claims(lab):
    _, result = lab
    data = result.data
    # exactness: every flash implementation meets flash-attn's criterion in every dtype
    rows = [r for r in data["exactness"]["rows"] if r["backend"].startswith("flash")]
    assert rows and all(r["passes"] for r in rows), rows
    # memory: linear for the tiled algorithm, quadratic for naive, measured
    pts = data["sweep"]["points"]

    def series(name):
        xs = [p["seq"] for p in pts if p["backend"] == name]
        return xs, [p["peak_fwd_bwd_bytes"] for p in pts if p["backend"] == name]

    assert loglog_slope(*series("naive")) > 1.6
    assert loglog_slope(*series("flash_torch")) < 1.3
    n = max(series("naive")[0])
    peak = {p["backend"]: p["peak_fwd_bwd_bytes"] for p in pts if p["seq"] == n}
    assert peak["flash_torch"] < 0.25 * peak["naive"]
    # long sequences: naive attention hits the cap (recorded), flash + checkpointing does not; every
    # factor is measured on its own, and the claim credits flash attention with what it alone did
    long = data["long_sequence_training"]
    train = long["rows"]
    longest = max(r["seq"] for r in train)
    assert {"naive", "naive+ckpt", "flash", "flash+ckpt"} <= {r["key"] for r in train}
    assert "oom" in next(r for r in train if r["key"] == "naive" and r["seq"] == longest)
    assert "oom" not in next(r for r in train if r["key"] == "flash+ckpt" and r["seq"] == longest)
    assert long["shares"] == factor_shares(long)
    claim = next(c for c in result.claims if c.claim == "FlashAttention enables long-sequence training")
    assert claim == long_sequence_claim(long)
    assert all(long["setups"][k] in claim.measured for k in ("flash", "naive+ckpt", "flash+ckpt"))
    # FA2 moves fewer bytes and exposes more parallel work than FA1
    fa1, fa2 = data["loop_orders"]["rows"]
    assert fa1["bytes_moved"] > fa2["bytes_moved"] and fa2["parallel_work_items"] > fa1["parallel_work_items"]
    # packed = padded on real tokens
    assert all(r["max_abs_diff_out"] < 1e-5 for r in data["packed_vs_padded"]["rows"])
    # on CPU, the GPU-only parts say so instead of inventing numbers
    verdicts = {c.claim: c.verdict for c in result.claims}
    assert any(v == "not measurable here" for v in verdicts.values())
    assert ("triton", "needs CUDA") in [tuple(s) for s in data["exactness"]["skipped"]]


def test_slope_and_crossover_helpers():
    assert loglog_slope([1, 2, 4], [3, 12, 48]) == pytest.approx(2.0)
    assert loglog_slope([1, 2, 4], [5, 10, 20]) == pytest.approx(1.0)
    assert loglog_slope([8], [1.0]) is None
    pts = [{"backend": b, "seq": n, "t": t} for b, n, t in
           [("a", 1, 5.0), ("b", 1, 1.0), ("a", 2, 1.0), ("b", 2, 2.0), ("a", 4, 1.0), ("b", 4, 8.0)]]
    assert crossover(pts, "a", "b", "t") == 2
    assert crossover(pts, "b", "a", "t") is None


@pytest.mark.skipif(len(NOTEBOOKS) != 5, reason="the five lab15 notebooks")
def test_notebooks_run_in_smoke_mode(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRAINLAB_NOTEBOOK_PRESET", "tiny")
    monkeypatch.setenv("TRAINLAB_NOTEBOOK_OUT", str(tmp_path))
    for nb in NOTEBOOKS:
        runpy.run_path(str(nb), run_name="__main__")
    assert os.listdir(tmp_path)


def _train(rows: list[tuple[str, int, int | None]], cap: int = 1000) -> dict:
    """Fake long-sequence results: (setup key, length, peak bytes or None for out of memory)."""
    out = {"cap_bytes": cap, "setups": {k: f"setup {k}" for k in dict.fromkeys(k for k, _, _ in rows)},
           "rows": [{"key": k, "setup": f"setup {k}", "seq": n, **({"peak_bytes": p} if p else {"oom": "cap"})}
                    for k, n, p in rows]}
    out["shares"] = factor_shares(out)
    return out


def test_factor_shares_credit_each_technique_with_its_own_effect():
    # Flash alone does not get past naive's limit here; checkpointing alone does not either; both do.
    train = _train([("naive", 1, 800), ("naive", 2, None), ("naive+ckpt", 1, 700), ("naive+ckpt", 2, None),
                    ("flash", 1, 600), ("flash", 2, None), ("flash+ckpt", 1, 200), ("flash+ckpt", 2, 400)])
    sh = train["shares"]
    assert sh["max_seq"] == {"naive": 1, "naive+ckpt": 1, "flash": 1, "flash+ckpt": 2}
    assert sh["common_seq"] == 1
    assert sh["saving"] == pytest.approx({"naive": 0.0, "naive+ckpt": 0.125, "flash": 0.25, "flash+ckpt": 0.75})
    assert sh["gain"] == {"naive": 1.0, "naive+ckpt": 1.0, "flash": 1.0, "flash+ckpt": 2.0}
    claim = long_sequence_claim(train)
    assert claim.verdict == "partly" and "only with the others" in claim.why
    assert "setup flash 25%" in claim.measured and "setup flash+ckpt 75%" in claim.measured
    # Flash alone trains longer than naive: the claim holds for FlashAttention itself.
    train = _train([("naive", 1, 800), ("naive", 2, None), ("flash", 1, 300), ("flash", 2, 500)])
    assert long_sequence_claim(train).verdict == "consistent"
    # Nothing with flash gets further than naive.
    train = _train([("naive", 1, 800), ("flash", 1, 700), ("flash+ckpt", 1, 600)])
    assert long_sequence_claim(train).verdict == "not reproduced"


@pytest.mark.parametrize(("flash_alone_peak", "verdict"), [(500, "consistent"), (100, "partly"),
                                                           (990, "not reproduced")])
def test_memory_claim_is_judged_on_the_measured_step(flash_alone_peak, verdict):
    train = _train([("naive", 4, 1000), ("flash", 4, flash_alone_peak)])
    claim = memory_saving_claim(4096, 1.0, 100.0, train)  # attention alone: 99% less
    assert claim.verdict == verdict
    assert "attention alone at N=4096: 99.0% less" in claim.measured
    assert f"{1 - flash_alone_peak / 1000:.0%} less" in claim.measured
    # Without a whole-step measurement the attention call is judged.
    no_step = {"shares": {"saving": {}, "common_seq": None}}
    assert memory_saving_claim(4096, 50.0, 100.0, no_step).verdict == "consistent"
    assert memory_saving_claim(4096, 1.0, 100.0, no_step).verdict == "partly"


def test_unknown_preset_is_an_error(tmp_path: Path):
    with pytest.raises(UserError, match="unknown preset 'quik' for lab15"):
        get_preset("quik")
    from trainlab.env import detect_env
    from trainlab.labs.lab15 import run

    ctx = LabContext(out_dir=tmp_path, suite_dir=tmp_path, preset="quik", device="cpu", seed=0, env=detect_env())
    with pytest.raises(UserError):
        run(ctx)
