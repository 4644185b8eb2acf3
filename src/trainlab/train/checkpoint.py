"""Checkpoints: one file, written atomically, holding everything a bit-exact resume needs.

Layout of a run folder::

    out_dir/checkpoint.pt                 the latest state (always complete: atomic rename)
    out_dir/checkpoint-step0000500.pt     optional snapshots (``keep_every``), hard links when possible

``checkpoint.pt`` is written to a temporary file in the same folder, fsynced and renamed over the
old one (`trainlab.utils.atomic_write`), so a crash at any instant — SIGKILL included — leaves
either the previous checkpoint or the new one. Keeping only the latest bounds disk use to one
copy of model + optimizer state (≈ 3× the fp32 weights for AdamW).

The file is a plain dict of tensors and Python scalars/containers (no pickled objects; numpy's
RNG state is converted), so it loads with ``torch.load(weights_only=True)``: loading a checkpoint
never executes code from it.

Guards that keep a user from losing or mixing up work (`check_run_dirs`, `identity_mismatches`):
``--resume`` needs a checkpoint (``--resume-or-start`` does not), a checkpoint resumes only the run
it came from (the recipe's ``identity``: fingerprints of the input model and the training data),
and ``--out`` may not contain the input model it would overwrite.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from trainlab.errors import UserError
from trainlab.paths import check_out_outside_inputs
from trainlab.utils import atomic_write

CHECKPOINT_NAME = "checkpoint.pt"
FORMAT_VERSION = 1


# ------------------------------------------------------------------------------------------
# RNG state
# ------------------------------------------------------------------------------------------

def rng_state() -> dict[str, Any]:
    """Python, numpy, torch CPU and (if initialised) CUDA generator states."""
    np_state = np.random.get_state(legacy=False)
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {
            "bit_generator": np_state["bit_generator"],
            # uint32 key → int64 tensor: weights_only loading accepts tensors, not ndarrays.
            "key": torch.from_numpy(np.asarray(np_state["state"]["key"]).astype(np.int64)),
            "pos": int(np_state["state"]["pos"]),
            "has_gauss": int(np_state["has_gauss"]),
            "gauss": float(np_state["gauss"]),
        },
        "torch": torch.get_rng_state(),
    }
    # Only if CUDA is already in use: querying it would otherwise initialise a context for nothing.
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Inverse of `rng_state`."""
    py = state["python"]
    # weights_only loading turns the inner tuple into a list; random.setstate wants tuples.
    random.setstate((py[0], tuple(py[1]), py[2]))
    npst = state["numpy"]
    np.random.set_state({
        "bit_generator": npst["bit_generator"],
        "state": {"key": npst["key"].numpy().astype(np.uint32), "pos": npst["pos"]},
        "has_gauss": npst["has_gauss"],
        "gauss": npst["gauss"],
    })
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        cuda_states = state["cuda"]
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda_states)
        else:  # a different GPU count: restore what lines up rather than fail the resume
            for i, s in enumerate(cuda_states[: torch.cuda.device_count()]):
                torch.cuda.set_rng_state(s, i)


# ------------------------------------------------------------------------------------------
# Files
# ------------------------------------------------------------------------------------------

def save_checkpoint(path: str | Path, state: dict[str, Any]) -> Path:
    """Write ``state`` to ``path`` atomically (temp file in the same folder, fsync, rename)."""
    path = Path(path)
    payload = {"format": FORMAT_VERSION, **state}
    atomic_write(path, lambda tmp: torch.save(payload, tmp))
    return path


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by `save_checkpoint` (``weights_only``: no code runs on load)."""
    state = torch.load(Path(path), map_location=map_location, weights_only=True)
    fmt = state.get("format")
    if fmt != FORMAT_VERSION:
        raise ValueError(f"{path}: checkpoint format {fmt!r}, expected {FORMAT_VERSION}")
    return state


def load_optimizer_state(optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """Load moments and step counts, but keep the optimizer's *current* hyperparameters.

    ``Optimizer.load_state_dict`` would also restore each group's lr, betas, weight decay, ...
    from the checkpoint, silently overriding a changed config on resume (e.g. a lower lr after a
    divergence). For an unchanged config both are identical, so a resume stays bit-exact.
    """
    current = [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups]
    optimizer.load_state_dict(state)
    if len(current) != len(optimizer.param_groups):
        return  # load_state_dict itself rejects mismatched groups; this is unreachable in practice
    for group, hyper in zip(optimizer.param_groups, current, strict=True):
        group.update(hyper)


class CheckpointManager:
    """Saves ``checkpoint.pt`` in ``out_dir`` (latest only) plus every ``keep_every``-th step."""

    def __init__(self, out_dir: str | Path, keep_every: int = 0) -> None:
        self.out_dir = Path(out_dir)
        self.keep_every = keep_every

    @property
    def path(self) -> Path:
        return self.out_dir / CHECKPOINT_NAME

    def snapshot_path(self, step: int) -> Path:
        return self.out_dir / f"checkpoint-step{step:07d}.pt"

    def latest(self) -> Path | None:
        return self.path if self.path.is_file() else None

    def save(self, state: dict[str, Any], step: int) -> Path:
        path = save_checkpoint(self.path, state)
        if self.keep_every and step % self.keep_every == 0:
            snap = self.snapshot_path(step)
            if snap.exists():
                snap.unlink()
            # A hard link costs no space and stays valid when checkpoint.pt is later replaced
            # (rename gives checkpoint.pt a new inode; the link keeps the old one).
            try:
                os.link(path, snap)
            except OSError:
                shutil.copy2(path, snap)
        return path

    def load(self, map_location: str | torch.device = "cpu") -> dict[str, Any] | None:
        latest = self.latest()
        return None if latest is None else load_checkpoint(latest, map_location)

    def remove(self) -> bool:
        """Delete ``checkpoint.pt`` (snapshots stay); True if there was one."""
        if self.path.is_file():
            self.path.unlink()
            return True
        return False


# ------------------------------------------------------------------------------------------
# Guards: resume only what exists and matches; never write over the input
# ------------------------------------------------------------------------------------------

ResumeMode = bool | Literal["or_start"]


def read_checkpoint_meta(path: str | Path) -> dict[str, Any]:
    """``step``, ``identity`` and ``config`` of a checkpoint without reading its tensors (mmap)."""
    state = torch.load(Path(path), map_location="cpu", weights_only=True, mmap=True)
    train = state.get("train_config") or {}
    return {"step": state.get("step"), "max_steps": train.get("max_steps"), "identity": state.get("identity") or {},
            "config": state.get("config")}


def check_run_dirs(out_dir: str | Path, resume: ResumeMode = False, inputs: dict[str, str | Path | None] | None = None,
                   *, force: bool = False) -> None:
    """Before any work: ``out_dir`` must be a folder or creatable as one (no file in the way); ``--resume`` needs
    ``out_dir/checkpoint.pt``; ``out_dir`` must not be, contain or lie inside an input (`check_out_outside_inputs`);
    a fresh start (no ``--resume``) does not overwrite the checkpoint of an unfinished run unless ``force``.

    ``inputs`` maps an option name (``"--model"``) to the folder it reads. Raises `UserError`.
    """
    out = Path(out_dir).expanduser().resolve()
    existing = next((p for p in (out, *out.parents) if p.exists()), None)
    if existing is not None and not existing.is_dir():
        raise UserError(f"--out {out_dir}: {existing} is not a folder (a file is in the way); choose another --out")
    check_out_outside_inputs(out_dir, inputs or {}, action="training")
    from trainlab.distributed.checkpoint import DCPCheckpointManager, read_dcp_meta

    ckpt: Path | None = out / CHECKPOINT_NAME
    dcp_path = DCPCheckpointManager(out).latest()  # a distributed run's checkpoint folder
    if dcp_path is not None:
        ckpt = dcp_path
    elif not (out / CHECKPOINT_NAME).is_file():
        ckpt = None
    if resume is True and ckpt is None:
        raise UserError(f"--resume: no checkpoint in {out_dir} ({CHECKPOINT_NAME}); run without --resume to start, "
                        "or with --resume-or-start to continue if there is one")
    if resume is False and not force and ckpt is not None:
        try:
            meta = read_dcp_meta(ckpt) if ckpt.is_dir() else read_checkpoint_meta(ckpt)
        except Exception:  # unreadable (torn, another format): there is no run to lose
            return
        step, total = meta.get("step"), meta.get("max_steps")
        if isinstance(step, int) and isinstance(total, int) and step < total:
            raise UserError(f"--out {out_dir} holds the checkpoint of an unfinished run (step {step} of {total}): "
                            "--resume to continue it, or --force to start over")


def identity_mismatches(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """The keys both identities have whose values differ."""
    return sorted(k for k in current if k in saved and saved[k] != current[k])


def fingerprint_tensor(t: torch.Tensor) -> str:
    """A short hash of a tensor's dtype, shape and bytes (e.g. a tokenized training set)."""
    h = hashlib.sha256(f"{t.dtype}{tuple(t.shape)}".encode())
    h.update(t.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()[:16]


def fingerprint_json(obj: Any) -> str:
    """A short hash of a JSON-serialisable value (keys sorted)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def folder_fingerprint(path: str | Path, sample_bytes: int = 1 << 20) -> str:
    """A cheap identity of a model folder: its JSON files in full, and for each weight file its name,
    size and first and last ``sample_bytes`` (a changed checkpoint changes its header or its tail;
    hashing gigabytes of weights to resume a run would not be cheap)."""
    h = hashlib.sha256()
    root = Path(path)
    files = sorted(f for f in root.iterdir() if f.is_file()) if root.is_dir() else [root]
    for f in files:
        if f.suffix == ".json":
            h.update(f.name.encode())
            h.update(f.read_bytes())
        elif f.suffix in (".safetensors", ".bin", ".pt", ".pth"):
            size = f.stat().st_size
            h.update(f"{f.name}:{size}".encode())
            with f.open("rb") as fh:
                h.update(fh.read(sample_bytes))
                if size > 2 * sample_bytes:
                    fh.seek(size - sample_bytes)
                    h.update(fh.read(sample_bytes))
    return h.hexdigest()[:16]
