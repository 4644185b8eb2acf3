"""The distributed checkpoint folder: atomic replacement, the crash fallback, and the run-folder guards.

(Resuming across world sizes — 2 ranks save, 1 and 2 resume — is in test_dist_strategies.py.)
Here one process writes `DCPCheckpointManager` folders (DCP runs without a process group) and the
states a crash can leave are built by hand.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import pytest
import torch

from trainlab.distributed.checkpoint import DCP_NAME, STATE_NAME, DCPCheckpointManager, is_complete
from trainlab.errors import UserError
from trainlab.train.checkpoint import check_run_dirs


def _save(mgr: DCPCheckpointManager, value: float, step: int) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # DCP without a process group says it saves from one process
        return mgr.save({"model": {"w": torch.full((3,), value)}}, {"step": step, "train_config": {"max_steps": 10},
                                                                     "identity": {}}, step)


def _load(mgr: DCPCheckpointManager, path: Path | None = None) -> float:
    tensors = {"model": {"w": torch.zeros(3)}}
    mgr.load_tensors(tensors, path)
    return float(tensors["model"]["w"][0])


def test_save_replaces_the_latest_atomically_and_a_torn_one_falls_back(tmp_path: Path) -> None:
    mgr = DCPCheckpointManager(tmp_path, keep_every=2)
    _save(mgr, 1.0, 1)
    _save(mgr, 2.0, 2)
    assert mgr.latest() == tmp_path / DCP_NAME and _load(mgr) == 2.0
    assert mgr.read_state()["step"] == 2  # type: ignore[index]
    assert is_complete(mgr.snapshot_path(2)) and not mgr.snapshot_path(1).exists()  # keep_every=2
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([DCP_NAME, "checkpoint-step0000002.dcp"])  # no temp
    # a crash between "old moved aside" and "new in place": only the previous one is complete
    os.replace(tmp_path / DCP_NAME, tmp_path / f".{DCP_NAME}.prev")
    (tmp_path / DCP_NAME).mkdir()
    (tmp_path / DCP_NAME / ".metadata").write_bytes(b"torn")  # no trainer state: incomplete
    assert mgr.latest() == tmp_path / f".{DCP_NAME}.prev" and _load(mgr) == 2.0
    (tmp_path / f".{DCP_NAME}.prev" / STATE_NAME).unlink()
    assert mgr.latest() is None
    assert mgr.remove() and not (tmp_path / DCP_NAME).exists()


def test_run_folder_guards_see_a_distributed_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="no checkpoint"):
        check_run_dirs(tmp_path, True)
    _save(DCPCheckpointManager(tmp_path), 1.0, 3)  # step 3 of 10: an unfinished run
    check_run_dirs(tmp_path, True)  # --resume finds it
    with pytest.raises(UserError, match="unfinished run \\(step 3 of 10\\)"):
        check_run_dirs(tmp_path, False)
    check_run_dirs(tmp_path, False, force=True)
