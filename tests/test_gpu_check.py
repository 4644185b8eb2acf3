"""scripts/gpu_check.sh without a GPU: its dry run (every step on tiny shapes on the CPU, Triton's interpreter)
produces every step's numbers, a failed or slow step is recorded and the run goes on, and scripts/gpu_results.py
turns the summary into BENCHMARKS.md rows (refusing a dry run's numbers unless told)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
pytest.importorskip("triton")


def _load(path: Path):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_check")
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_check.sh"), "--dry-run", "--out", str(out),
                           "--no-pack"], capture_output=True, text=True, timeout=300,
                          env={**__import__("os").environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"})
    summary = json.loads((out / "summary.json").read_text())
    return proc, summary, out


@pytest.mark.slow  # the whole dry run: ~40 s of CPU (7 subprocesses), <= 60 s on a quiet machine
def test_dry_run_runs_every_step_and_records_its_numbers(dry_run):
    proc, summary, out = dry_run
    steps = {s["name"]: s for s in summary["steps"]}
    assert list(steps) == ["env", "attention_tests", "bench_attention", "attention_check", "tile_sweep", "labs",
                           "bench_align"]
    assert all(s["status"] == "ok" for s in steps.values()), (proc.stderr[-3000:], steps)
    assert proc.returncode == 0 and summary["dry_run"] is True
    assert all(s["wall_s"] > 0 and (out / s["log"]).is_file() for s in steps.values())
    res = summary["results"]
    assert res["env"]["device"] == "cpu" and res["env"]["cuda_available"] is False
    assert res["attention_tests"]["passed"] >= 1 and res["attention_tests"]["failures"] == 0
    check = res["attention_check"]
    assert check["passed"] == check["total"] > 0
    assert {r["dtype"] for r in check["rows"]} == {"float32", "float16"}
    rows = res["bench_attention"]["rows"]
    triton = [r for r in rows if r["backend"] == "triton"]
    assert triton and all("fwd_tflops" in r and "fwd_bwd_tflops" in r and "interpreter" in r["note"] for r in triton)
    assert all(r["skipped"] == "needs CUDA" for r in rows if r["backend"] == "flash_attn")
    sweep = res["tile_sweep"]["shapes"][0]
    assert {r["kind"] for r in sweep["rows"] if r.get("default") and "tflops" in r} == {"fwd", "fwd_bwd"}
    assert all(r["max_abs_diff_vs_default"] < 1e-4 for r in sweep["rows"] if "tflops" in r)
    assert [(r["lab"], r["status"]) for r in res["labs"]] == [("lab14", "ok"), ("lab15", "ok")]
    assert [r["case"] for r in res["bench_align"]["runs"]] == ["trainlab-dpo"]  # TRL's import is the slow part


@pytest.mark.slow
def test_results_generator_renders_rows_and_refuses_dry_run_numbers(dry_run, tmp_path):
    _, _, out = dry_run
    script = ROOT / "scripts" / "gpu_results.py"
    md = tmp_path / "B.md"
    md.write_text("# B\n\n<!-- gpu_check:begin -->\nold\n<!-- gpu_check:end -->\n\n## after\n")
    refused = subprocess.run([sys.executable, str(script), str(out / "summary.json"), "--write", str(md)],
                             capture_output=True, text=True)
    assert refused.returncode == 2 and "dry run" in refused.stderr and "old" in md.read_text()
    for _ in range(2):  # idempotent: the block is replaced, not appended
        ok = subprocess.run([sys.executable, str(script), str(out / "summary.json"), "--write", str(md),
                             "--allow-dry-run", "--results-dir", str(tmp_path / "res")], capture_output=True, text=True)
        assert ok.returncode == 0, ok.stderr
    text = md.read_text()
    assert text.count("gpu_check:begin") == 1 and "old" not in text and text.endswith("## after\n")
    assert "### cpu (`scripts/gpu_check.sh`" in text and "dry run" in text
    assert "| bench_align | ok |" in text and "float32 3/3" in text
    assert (tmp_path / "res" / "gpu_check_cpu.json").is_file()


def test_headline_compares_triton_with_sdpa_flash_and_says_whether_the_goal_is_met():
    gen = _load(ROOT / "scripts" / "gpu_results.py")
    base = dict(dtype="bfloat16", head_dim=128, causal=True, seq=8192, heads=16, kv_heads=16, batch=2)
    rows = [dict(base, backend="triton", fwd_tflops=420.0, fwd_bwd_tflops=300.0),
            dict(base, backend="sdpa:flash", fwd_tflops=400.0, fwd_bwd_tflops=350.0)]
    text = "\n".join(gen.headline(rows))
    assert "| trainlab Triton | 420 | 300 | 1.05x | 0.857x |" in text
    assert "forward met, forward+backward not met" in text
    rows[0]["fwd_bwd_tflops"] = 320.0  # 0.914x
    assert "forward met, forward+backward met" in "\n".join(gen.headline(rows))
    assert "not in this run" in gen.headline(rows[:1])[0]


def test_a_failed_or_slow_step_is_recorded_and_the_run_goes_on(tmp_path, monkeypatch):
    drv = _load(ROOT / "benchmarks" / "gpu_check.py")
    py = sys.executable
    plan = [drv.Step("env", [py, "-c", "raise SystemExit(3)"], 30),
            drv.Step("attention_tests", [py, "-c", "import time; time.sleep(60)"], 1.5),
            drv.Step("labs", [py, "-c", "print('fine')"], 30)]
    monkeypatch.setattr(drv, "steps", lambda *_: plan)
    rc = drv.main(["--dry-run", "--out", str(tmp_path), "--no-pack"])
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert rc == 1
    assert [(s["name"], s["status"]) for s in summary["steps"]] == [
        ("env", "failed"), ("attention_tests", "timeout"), ("labs", "ok")]
    assert summary["steps"][1]["wall_s"] < 10
    assert "fine" in (tmp_path / "logs" / "labs.log").read_text()
    # --pack: --out keeps only the summary and one archive of everything (the device tool returns <= 8 files)
    packed = tmp_path / "packed"
    drv.main(["--dry-run", "--out", str(packed), "--pack"])
    assert sorted(p.name for p in packed.iterdir()) == ["gpu_check.tar.gz", "summary.json", "summary.md"]
