"""`trainlab calc attention`: the formulas, spot-checked by hand, and the CLI around them."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from trainlab.attention.calc import attention_cost, attention_flops, attention_tables, format_bytes
from trainlab.cli import app
from trainlab.errors import UserError


def test_flops_follow_the_papers_convention():
    c = attention_cost(2, 8, 1024, 64)
    assert c.flops_forward == 4 * 2 * 8 * 1024**2 * 64
    assert c.flops_backward == 2.5 * c.flops_forward
    assert c.flops_total == 3.5 * c.flops_forward
    causal = attention_cost(2, 8, 1024, 64, causal=True)
    assert causal.flops_forward == c.flops_forward / 2
    assert attention_flops(2, 8, 1024, 1024, 64, causal=True, mode="fwd_bwd") == causal.flops_total
    # bottom-right causal with Tq < Tk: query i sees i + 1 + (Tk - Tq) keys
    assert attention_flops(1, 1, 2, 4, 1, causal=True) == 4 * (3 + 4)


def test_score_matrix_bytes_and_the_seed_example():
    # Seed 003: "8192² × 4 bytes = 268 GB"; the product is 268 MB per head and sequence.
    c = attention_cost(1, 1, 8192, 128, dtype="fp32")
    assert c.score_matrix_bytes_per_head == 8192**2 * 4 == 268_435_456
    assert attention_cost(4, 32, 8192, 128, dtype="bf16").score_matrix_bytes == 4 * 32 * 8192**2 * 2


def test_bytes_moved_naive_vs_tiled():
    n, d = 4096, 64
    c = attention_cost(1, 1, n, d, dtype="fp16", block=128)
    assert c.bytes_naive_forward == (4 * n * d + 4 * n * n) * 2
    blocks = math.ceil(n / 128)
    assert c.bytes_tiled_forward == (2 * n * d + 2 * d * blocks * n) * 2 + 4 * n
    assert c.io_reduction == pytest.approx(c.bytes_naive_forward / c.bytes_tiled_forward)
    assert c.intensity_naive == pytest.approx(c.flops_forward / c.bytes_naive_forward)
    # Causal tiling visits the blocks on and below the diagonal only: ~half the K/V traffic.
    cc = attention_cost(1, 1, n, d, dtype="fp16", block=128, causal=True)
    kv_full = c.bytes_tiled_forward - (2 * n * d * 2 + 4 * n)
    kv_causal = cc.bytes_tiled_forward - (2 * n * d * 2 + 4 * n)
    assert kv_causal == kv_full * (blocks + 1) / (2 * blocks)
    # The N² term is what tiling removes: the advantage grows with N at fixed D and block.
    long, short = attention_cost(1, 1, 16384, d, block=128), attention_cost(1, 1, 1024, d, block=128)
    assert long.io_reduction > short.io_reduction


def test_bad_input_is_a_user_error():
    with pytest.raises(UserError, match="seq must be a positive integer"):
        attention_cost(1, 1, 0, 64)
    with pytest.raises(UserError, match="kv_heads must divide"):
        attention_cost(1, 8, 128, 64, kv_heads=3)
    with pytest.raises(UserError, match="unknown dtype"):
        attention_cost(1, 8, 128, 64, dtype="fp12")


def test_tables_and_format_bytes():
    titles = [t[0] for t in attention_tables(attention_cost(1, 2, 256, 32, causal=True))]
    assert titles[0].startswith("Attention FLOPs") and len(titles) == 3
    assert format_bytes(512) == "512 B" and format_bytes(268_435_456) == "256.0 MiB"


def test_cli_json_and_errors():
    runner = CliRunner()
    res = runner.invoke(app, ["calc", "attention", "--batch", "2", "--heads", "4", "--seq", "512", "--head-dim", "64",
                              "--causal", "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["flops_forward"] == 4 * 2 * 4 * 512**2 * 64 / 2 and doc["causal"] is True
    res = runner.invoke(app, ["calc", "attention", "--seq", "512"])
    assert res.exit_code == 0 and "Arithmetic intensity" in res.stdout


def test_cli_bad_input_is_one_line_and_exit_2(tmp_path: Path):
    env = dict(os.environ, TRAINLAB_HOME=str(tmp_path), PYTHONWARNINGS="ignore")
    env.pop("TRAINLAB_DEBUG", None)
    proc = subprocess.run([sys.executable, "-m", "trainlab.cli", "calc", "attention", "--seq", "-3", "--json"],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert lines == ["error: seq must be a positive integer, got -3"]
    assert proc.stdout == ""
