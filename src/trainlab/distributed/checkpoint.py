"""Distributed checkpoints: torch.distributed.checkpoint (DCP) for model + optimizer, written atomically.

Layout (the distributed twin of ``checkpoint.pt``)::

    out_dir/checkpoint.dcp/            the latest state
        .metadata, __<rank>_0.distcp     DCP: every rank writes its shards (a replicated tensor once)
        trainer_state.pt                 rank 0: step, schedule, loss scale, data position, RNG of
                                         every rank, metrics, config, identity (``weights_only``)
    out_dir/checkpoint-step0000500.dcp/  optional snapshots (``keep_every``; hard links)

Atomic: all ranks write into ``.checkpoint.dcp.tmp``; once DCP has finished (its metadata is the
last file, written after every rank's data) rank 0 adds ``trainer_state.pt``, fsyncs, moves the old
``checkpoint.dcp`` aside to ``.checkpoint.dcp.prev``, renames the new one into place and deletes the
old. A crash at any instant leaves a complete ``checkpoint.dcp`` or a complete ``.checkpoint.dcp.prev``
(`latest` falls back to it).

Any world size resumes it: DCP stores every tensor with its global shape and each shard's offsets
(parameters of an FSDP run are DTensors sharded on dim 0), and the loader reads the pieces its own
layout needs — 2 FSDP ranks save, 1 process (plain tensors) or 2 DDP/FSDP ranks load. The
optimizer state is keyed by parameter names (`get_optimizer_state_dict`), not by position.
"""

from __future__ import annotations

import os
import shutil
import warnings
from pathlib import Path
from typing import Any

import torch

from trainlab.utils import atomic_write

DCP_NAME = "checkpoint.dcp"
STATE_NAME = "trainer_state.pt"
FORMAT_VERSION = 1


def is_complete(path: Path) -> bool:
    """A DCP checkpoint folder with its metadata and the trainer state."""
    return path.is_dir() and (path / ".metadata").is_file() and (path / STATE_NAME).is_file()


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class DCPCheckpointManager:
    """``out_dir/checkpoint.dcp`` (latest) plus every ``keep_every``-th step (see the module docstring).

    ``save`` and ``load`` are collective in a distributed run (every rank calls them); ``ctx`` None is
    one process (loading a checkpoint written by many)."""

    def __init__(self, out_dir: str | Path, keep_every: int = 0, ctx: Any = None) -> None:
        self.out_dir = Path(out_dir)
        self.keep_every = keep_every
        self.ctx = ctx

    @property
    def path(self) -> Path:
        return self.out_dir / DCP_NAME

    @property
    def _tmp(self) -> Path:
        return self.out_dir / f".{DCP_NAME}.tmp"

    @property
    def _prev(self) -> Path:
        return self.out_dir / f".{DCP_NAME}.prev"

    def snapshot_path(self, step: int) -> Path:
        return self.out_dir / f"checkpoint-step{step:07d}.dcp"

    def latest(self) -> Path | None:
        for p in (self.path, self._prev):
            if is_complete(p):
                return p
        return None

    def _main(self) -> bool:
        return self.ctx is None or self.ctx.is_main

    def _barrier(self) -> None:
        if self.ctx is not None:
            self.ctx.barrier()

    def save(self, tensors: dict[str, Any], state: dict[str, Any], step: int) -> Path:
        """Write ``tensors`` (``{"model": ..., "optimizer": ...}`` DCP state dicts) with every rank and
        ``state`` (plain values, rank 0's) into ``checkpoint.dcp``, atomically."""
        import torch.distributed.checkpoint as dcp

        tmp = self._tmp
        if self._main():
            if tmp.exists():
                shutil.rmtree(tmp)
            tmp.mkdir(parents=True)
        self._barrier()
        dcp.save(tensors, checkpoint_id=str(tmp))
        if self._main():
            payload = {"format": FORMAT_VERSION, **state}
            atomic_write(tmp / STATE_NAME, lambda p: torch.save(payload, p))
            _fsync_dir(tmp)
            if self._prev.exists():
                shutil.rmtree(self._prev)
            if self.path.exists():
                os.replace(self.path, self._prev)
            os.replace(tmp, self.path)
            _fsync_dir(self.out_dir)
            if self._prev.exists():
                shutil.rmtree(self._prev)
            if self.keep_every and step % self.keep_every == 0:
                self._snapshot(step)
        self._barrier()
        return self.path

    def _snapshot(self, step: int) -> None:
        snap = self.snapshot_path(step)
        if snap.exists():
            shutil.rmtree(snap)
        snap.mkdir()
        for f in self.path.iterdir():
            try:
                os.link(f, snap / f.name)
            except OSError:
                shutil.copy2(f, snap / f.name)

    def read_state(self, path: Path | None = None) -> dict[str, Any] | None:
        """The trainer state (no tensors of the model) of the latest checkpoint, or None."""
        path = path or self.latest()
        if path is None:
            return None
        state = torch.load(path / STATE_NAME, map_location="cpu", weights_only=True)
        if state.get("format") != FORMAT_VERSION:
            raise ValueError(f"{path}: checkpoint format {state.get('format')!r}, expected {FORMAT_VERSION}")
        return state

    def load_tensors(self, tensors: dict[str, Any], path: Path | None = None) -> None:
        """Fill ``tensors`` (state dicts laid out for this run) in place from the latest checkpoint."""
        import torch.distributed.checkpoint as dcp

        path = path or self.latest()
        assert path is not None
        with warnings.catch_warnings():  # one process reading a distributed checkpoint is intended here
            warnings.filterwarnings("ignore", message=".*assuming the intent is to load in a single process")
            dcp.load(tensors, checkpoint_id=str(path))

    def remove(self) -> bool:
        """Delete ``checkpoint.dcp`` (rank 0; snapshots stay); True if there was one."""
        removed = False
        if self._main():
            for p in (self.path, self._prev, self._tmp):
                if p.exists():
                    shutil.rmtree(p)
                    removed = True
        self._barrier()
        return removed


def read_dcp_meta(path: str | Path) -> dict[str, Any]:
    """``step``, ``max_steps``, ``identity``, ``config`` of a DCP checkpoint folder (as
    `trainlab.train.checkpoint.read_checkpoint_meta` for a file)."""
    state = torch.load(Path(path) / STATE_NAME, map_location="cpu", weights_only=True)
    train = state.get("train_config") or {}
    return {"step": state.get("step"), "max_steps": train.get("max_steps"), "identity": state.get("identity") or {},
            "config": state.get("config")}
