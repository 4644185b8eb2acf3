"""Lab 1.4 end to end (tiny preset), its notebooks in smoke mode, and its configs."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from trainlab.config import load_config
from trainlab.env import detect_env
from trainlab.labs import LABS, run_labs
from trainlab.labs.lab14.hardware import why_hardware
from trainlab.labs.lab14.precision import underflow_verdict
from trainlab.precision.formats import get_format

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((REPO / "notebooks").glob("lab14_0*.py"))


def test_lab14_tiny_writes_all_five_parts(tmp_path: Path) -> None:
    assert "lab14" in LABS
    suite = run_labs(["lab14"], out_dir=tmp_path, preset="tiny", device="cpu", quiet=True)
    (res,) = suite.labs
    assert res.status == "ok", res.error
    assert list(res.data) == ["precision", "accumulation", "checkpointing", "memory", "advisor"]
    for i, key in enumerate(res.data, start=1):
        assert any(t.title.startswith(f"{i}.") for t in res.tables), key
    assert len(res.figures) >= 10
    for fig in res.figures:
        assert (tmp_path / fig.path).is_file(), fig.path
    assert len(res.claims) >= 14 and all(c.measured and c.verdict for c in res.claims)
    sources = " ".join(c.source for c in res.claims)
    assert all(f"seed {n}" in sources for n in ("000", "001", "002", "003"))

    d = res.data
    # Part 1: the scaler made the same decisions as GradScaler and skipped every injected overflow.
    trace = d["precision"]["scale_trace"]
    assert trace["same_scale"] and trace["same_skips"] and trace["weight_diff"] == 0.0
    assert {int(k) for k in trace["injected"]} <= {r["step"] for r in trace["ours"] if r["skipped"]}
    # Part 2: accumulation is the large batch, up to float rounding.
    assert all(v["grad_rel_diff"] < 1e-4 for v in d["accumulation"]["per_k"].values())
    # Part 3: checkpointing changes memory, not gradients.
    for per_policy in d["checkpointing"]["results"].values():
        assert per_policy["full"]["activations"] < per_policy["none"]["activations"]
        assert all(r["grad_rel_diff"] < 1e-5 for r in per_policy.values())
    # Part 4: estimates within 10% of the exact measurement; OOM recorded in the sweep.
    assert d["memory"]["worst_component_error"] <= 0.10
    assert any(r["oom"] for r in d["memory"]["sweep"]) and any(not r["oom"] for r in d["memory"]["sweep"])
    assert d["memory"]["snapshot"].startswith("needs CUDA")
    # Part 5: the advisor ran on every scenario.
    assert len(d["advisor"]["plans"]) >= 5
    # Every verdict is computed; the ZeRO numbers come from the paper's formula and say so.
    zero = next(c for c in res.claims if c.claim.startswith("ZeRO-1 saves"))
    assert zero.verdict == "reproduced from the formula"
    fp16_claim = next(c for c in res.claims if c.claim.startswith("FP16's smallest positive"))
    under = d["precision"]["underflow"]
    assert fp16_claim.verdict == underflow_verdict(
        get_format("fp16").min_subnormal,
        under["params"][0]["flushed_to_zero"] + under["activations"][0]["flushed_to_zero"],
        under["params"][4]["flushed_to_zero"] + under["activations"][4]["flushed_to_zero"])
    # The precision explanation follows the matmul speeds measured in this run.
    speeds = d["precision"]["matmul_speeds"]
    assert set(speeds["speedup"]) == {"bf16", "fp16"} and all(v > 0 for s in speeds["speedup"].values()
                                                               for v in s.values())
    speed_claim = next(c for c in res.claims if c.claim.startswith("Mixed precision trains"))
    assert speed_claim.why == d["precision"]["why"] and "matmul runs" in speed_claim.why

    report = (tmp_path / "report.md").read_text(encoding="utf-8")
    assert "Lab 1.4" in report and "loss_scale_trace.png" in report and "not measurable here" in report


@pytest.mark.skipif(len(NOTEBOOKS) != 4, reason="the four lab14 notebooks")
def test_notebooks_run_in_smoke_mode(tmp_path: Path) -> None:
    """Each notebook script runs top to bottom under ``python`` with the tiny preset.

    One interpreter runs the four scripts in turn (``runpy``), which saves three start-ups of torch
    and transformers on a small machine; each script still runs as ``__main__`` from its own file.
    """
    code = ("import runpy, sys\n"
            "for path in sys.argv[1:]:\n"
            "    print('### running', path, flush=True)\n"
            "    runpy.run_path(path, run_name='__main__')\n")
    env = dict(os.environ, TRAINLAB_NOTEBOOK_PRESET="tiny", TRAINLAB_NOTEBOOK_OUT=str(tmp_path / "out"),
               OMP_NUM_THREADS="1", MPLBACKEND="Agg", PYTHONWARNINGS="ignore")
    proc = subprocess.run([sys.executable, "-c", code, *map(str, NOTEBOOKS)], capture_output=True, text=True,
                          env=env, cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("### running") == 4
    for heading in ("1. Precision", "2. Gradient accumulation", "3. Activation checkpointing", "4. Memory",
                    "5. Advisor", "ZeRO stage 3"):
        assert heading in proc.stdout, heading
    assert (tmp_path / "out" / "loss_scale_trace.png").is_file()


@pytest.mark.parametrize(("name", "precision", "policy", "batch", "accum"), [
    ("fp32", "fp32", "none", 16, 1), ("fp16", "fp16", "none", 16, 1), ("bf16", "bf16", "none", 16, 1),
    ("optimized", "bf16", "full", 4, 4)])
def test_configs_load(name: str, precision: str, policy: str, batch: int, accum: int) -> None:
    cfg = load_config(REPO / "configs" / f"{name}.yaml", preset="quick")
    assert cfg.train.precision == precision and cfg.model.checkpointing == policy
    assert (cfg.train.batch_size, cfg.train.grad_accum) == (batch, accum)
    # Every config trains the same number of sequences per optimizer step.
    assert cfg.train.batch_size * cfg.train.grad_accum == 16


def test_optimized_config_trains_with_pretrain(tmp_path: Path) -> None:
    from trainlab.recipes.pretrain import run_pretrain

    cfg = load_config(REPO / "configs" / "optimized.yaml", preset="tiny",
                      overrides=["train.max_steps=2", "model.dim=32", "model.n_layers=2", "data.seq_len=32",
                                 "train.device=cpu", "train.eval_batches=1"])
    summary = run_pretrain(cfg, tmp_path / "run", quiet=True)
    assert summary["steps"] == 2
    # Finite (inf and NaN fail), and what two steps from random weights give: near ln(vocabulary).
    vocab = summary["data"]["vocab_size"]
    for key in ("final_val_loss", "final_train_loss"):
        assert math.isfinite(summary[key]), (key, summary[key])
        assert 0.5 * math.log(vocab) < summary[key] < 1.5 * math.log(vocab), (key, summary[key], vocab)


def _speeds(bf16: tuple[float, float], fp16: tuple[float, float], sizes: tuple[int, int] = (64, 1024)) -> dict:
    return {"sizes": list(sizes), "speedup": {"bf16": dict(zip(sizes, bf16, strict=True)),
                                              "fp16": dict(zip(sizes, fp16, strict=True))}}


def test_why_hardware_follows_the_measured_speeds() -> None:
    env = detect_env()
    # A CPU with fast large bf16 matmuls but slow small ones, and no fast fp16: small models are the reason.
    text = why_hardware(env, _speeds(bf16=(0.25, 7.5), fp16=(0.1, 0.05)), width=64)
    assert "a 1024² bf16 matmul runs 7.5x faster than fp32, a 64² one 4.0x slower" in text
    assert "a 1024² fp16 matmul runs 20.0x slower than fp32" in text
    assert "bf16 is faster only on large matrices, so the lab's small models, not the hardware" in text
    assert "fp16 is slower at every size measured" in text
    assert "emulated" not in text
    # The other way round: 16-bit faster at the lab's size; nothing blames the hardware or the model size.
    text = why_hardware(env, _speeds(bf16=(1.6, 7.5), fp16=(1.3, 6.0)), width=64)
    assert "where bf16 and fp16 are faster than fp32" in text
    assert "slower" not in text and "not the hardware" not in text
    # The width decides which measured size the lab resembles (keys may be strings after JSON).
    wide = {"sizes": [64, 1024], "speedup": {"bf16": {"64": 0.25, "1024": 7.5}, "fp16": {"64": 0.25, "1024": 7.5}}}
    assert "where bf16 and fp16 are faster than fp32" in why_hardware(env, wide, width=768)
    # fp16 and bf16 each have their own native-support fact.
    assert "native bf16" in text and "native fp16" in text


def test_env_reports_fp16_facts_of_its_own() -> None:
    env = detect_env()
    assert isinstance(env.fp16_native, bool)
    if env.device == "cpu":
        assert {"mkldnn_bf16", "mkldnn_fp16", "amx_fp16", "avx512_fp16"} <= set(env.precision_facts)


@pytest.mark.parametrize(("smallest", "unscaled", "scaled", "verdict"), [
    (6.1e-5, 0.02, 0.0, "consistent"), (6e-8, 0.02, 0.0, "partly"), (6.1e-5, 0.0, 0.0, "partly"),
    (6e-8, 0.02, 0.02, "not reproduced"), (6e-8, 0.0, 0.0, "not reproduced")])
def test_fp16_underflow_verdict_is_computed(smallest: float, unscaled: float, scaled: float, verdict: str) -> None:
    assert underflow_verdict(smallest, unscaled, scaled) == verdict


def test_zero_verdict_compares_the_formula_with_the_paper() -> None:
    from trainlab.labs.lab14.advisor import zero_verdict
    from trainlab.memory.estimate import parse_count, zero_table

    table = zero_table(parse_count("7.5B"), 64)
    assert zero_verdict(table, 64) == "reproduced from the formula"
    wrong = [dict(r) for r in table]
    wrong[1]["gb_per_gpu"] *= 1.5  # a formula that no longer gives the paper's 31.4 GB
    assert zero_verdict(wrong, 64) == "not reproduced"
