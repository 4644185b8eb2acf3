"""``trainlab pretrain --nproc 2``: torchrun under the command line, same weights as one process, one-line errors.

The must-show of issue 14: ``trainlab pretrain --preset tiny --max-steps 4 --nproc 2 dist.strategy=ddp``
and the same with ``--nproc 1`` end with final weights equal within 1e-5 (relative, per tensor).
The 2-rank run is a real subprocess (the launcher re-runs ``python -m trainlab`` on 2 ranks); the
1-process run is the same command line in this process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from _dist import rel_diff
from safetensors.torch import load_file

from trainlab.cli import run_cli

ARGS = ["pretrain", "--preset", "tiny", "--max-steps", "4", "dist.strategy=ddp", "train.eval_batches=1"]


def _trainlab(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1")
    env.pop("TRAINLAB_DEBUG", None)
    return subprocess.run([sys.executable, "-m", "trainlab", *args], capture_output=True, text=True, env=env,
                          cwd=cwd, timeout=600)


def test_nproc_2_ddp_equals_nproc_1_and_rank_0_alone_writes(tmp_path: Path) -> None:
    assert run_cli([*ARGS, "--nproc", "1", "--out", str(tmp_path / "one"), "--json"]) == 0
    proc = _trainlab(*ARGS, "--nproc", "2", "--out", str(tmp_path / "two"), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stderr.count("saved model to") == 1  # rank 0 alone reports (and logs)
    one = load_file(tmp_path / "one" / "model" / "model.safetensors")
    two = load_file(tmp_path / "two" / "model" / "model.safetensors")
    assert rel_diff(two, one) < 1e-5
    summary = json.loads((tmp_path / "two" / "summary.json").read_text())
    assert summary["dist"] == {"world": 2, "strategy": "ddp", "backend": "gloo"}
    records = [json.loads(line) for line in (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()]
    ref = [json.loads(line) for line in (tmp_path / "one" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [r["step"] for r in ref]  # one writer: no duplicate lines
    for a, b in zip(records, ref, strict=True):
        if a["kind"] == "train":  # the loss of the whole global batch, as one process computes it
            assert abs(a["loss"] - b["loss"]) <= 1e-5 * abs(b["loss"])
            assert a["tokens_seen"] == b["tokens_seen"]
    assert not (tmp_path / "two" / "checkpoint.dcp").exists()  # released after the model was saved


def test_an_error_on_the_ranks_is_one_line_naming_the_rank(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    # a missing --data file is found by the ranks (the launcher checks the config, not the data)
    proc = _trainlab(*ARGS, "--nproc", "2", "--data", str(tmp_path / "missing.txt"), "--out", str(tmp_path / "bad"),
                     cwd=tmp_path)
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: rank ") and "missing.txt" in lines[0], lines[0]
    # what every rank would refuse is refused before any rank starts (no rank named)
    for bad, needle in (("dist.strategy=none", "dist.strategy=none"), ("train.batch_size=3", "train.batch_size=3")):
        capsys.readouterr()
        assert run_cli([*ARGS, "--nproc", "2", bad, "--out", str(tmp_path / "bad2")]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and needle in err and "rank" not in err, err
        assert not (tmp_path / "bad2").exists()


def test_nproc_is_taken_out_of_the_command_line_and_errors_name_the_rank(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import pytest

    from trainlab.distributed.launch import name_rank, strip_nproc
    from trainlab.errors import UserError

    assert strip_nproc(["pretrain", "--nproc", "2", "--out", "A"]) == (2, ["pretrain", "--out", "A"])
    assert strip_nproc(["dpo", "--nproc=4", "train.lr=1e-5"]) == (4, ["dpo", "train.lr=1e-5"])
    assert strip_nproc(["sft"]) == (None, ["sft"])
    with pytest.raises(UserError, match="--nproc 'two'"):
        strip_nproc(["pretrain", "--nproc", "two"])
    assert name_rank("error: bad") == "error: bad"  # one process: unchanged
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert name_rank("error: bad") == "error: rank 1: bad"
    assert name_rank("saved model") == "saved model"
