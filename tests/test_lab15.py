"""Lab 1.5 end to end with the tiny preset, its helpers, and its notebooks in smoke mode."""

from __future__ import annotations

import os
import runpy
from pathlib import Path

import pytest

from trainlab.labs import LABS, run_labs
from trainlab.labs.lab15 import PRESETS, crossover, loglog_slope

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
    assert "Lab 1.5" in report and "40-60%" in report
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
    # long sequences: naive attention hits the cap (recorded), flash + checkpointing does not
    train = data["long_sequence_training"]["rows"]
    longest = max(r["seq"] for r in train)
    assert "oom" in next(r for r in train if r["setup"].startswith("naive") and r["seq"] == longest)
    assert "oom" not in next(r for r in train if r["setup"].startswith("flash") and r["seq"] == longest)
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
