"""Shared test setup.

- One intra-op thread: the tests use toy-sized tensors, for which OpenMP threads only add
  start-up and spin-waiting (10-50x slower on a busy 2-core machine). Subprocesses started by
  tests (the CLI, the kill-and-resume run) get OMP_NUM_THREADS=1 for the same reason.
- Without CUDA, TRITON_INTERPRET=1 (set before triton is imported) runs the Triton kernels on CPU.
- TRAINLAB_HOME points at a per-session temporary folder, so tests never read or write the
  user's cache (the embedded tokenizer and base model are built there once per session).
"""

from __future__ import annotations

import os

import pytest
import torch

torch.set_num_threads(1)
os.environ.setdefault("OMP_NUM_THREADS", "1")
# Without a GPU the Triton kernels are tested in Triton's interpreter, which has to be chosen before
# anything imports triton (triton.language's own helpers are JIT-decorated at import time).
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(scope="session", autouse=True)
def _trainlab_home(tmp_path_factory: pytest.TempPathFactory):
    old = os.environ.get("TRAINLAB_HOME")
    os.environ["TRAINLAB_HOME"] = str(tmp_path_factory.mktemp("trainlab_home"))
    yield
    if old is None:
        os.environ.pop("TRAINLAB_HOME", None)
    else:
        os.environ["TRAINLAB_HOME"] = old
