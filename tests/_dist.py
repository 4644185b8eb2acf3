"""Multi-process test helpers: run a function on 2 CPU ranks (gloo) the way torchrun would.

`spawn(fn, world, *args)` starts ``world`` processes with torchrun's environment (``RANK``,
``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``/``MASTER_PORT`` on a free port, one thread each) and
calls ``fn(rank, *args)`` in each; `trainlab.distributed.env.init` then joins the group exactly as
under ``trainlab --nproc``. Workers report through files (``torch.save``) in a folder the test owns.
"""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.multiprocessing as mp

from trainlab.train import CausalLMObjective, StepBatcher, Trainer, TrainResult


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _entry(rank: int, world: int, port: int, fn: Callable[..., None], args: tuple[Any, ...]) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port), OMP_NUM_THREADS="1")
    torch.set_num_threads(1)
    from trainlab.distributed import env

    try:
        fn(rank, *args)
    except BaseException:
        env.shutdown()
        raise
    env.shutdown()
    # a finished worker skips interpreter teardown: rank 0 once aborted there ("terminate called without an active
    # exception", SIGABRT) after its work and reports were done (1 of ~6 runs; see the session 4 notes)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def spawn(fn: Callable[..., None], world: int, *args: Any) -> None:
    """``fn(rank, *args)`` on ``world`` fresh processes (an exception in any fails the call)."""
    mp.spawn(_entry, args=(world, free_port(), fn, args), nprocs=world, join=True)


# ----------------------------------------------------------------------------------------------
# A short training run, the same in one process and in many
# ----------------------------------------------------------------------------------------------

STEPS = 4


def examples() -> list[dict[str, torch.Tensor]]:
    from _tiny import variable_examples

    return variable_examples(24, seed=3)  # unequal lengths and prompt masks: unequal counts per rank


def trainer(out: Path, *, grad_accum: int = 2, stop_at: int | None = None, **cfg: Any) -> Trainer:
    """Tiny decoder, batch 4 x accumulation 2, clipping that bites (0.05), AdamW with decay."""
    from _tiny import pad_collate, tiny_decoder, train_config

    from trainlab.train.callbacks import Callback

    class StopAt(Callback):
        def on_step_end(self, trainer: Trainer, step: int, metrics: dict[str, Any]) -> None:
            if stop_at is not None and step >= stop_at:
                trainer.request_stop("test")

    tcfg = train_config(max_steps=STEPS, batch_size=4, grad_accum=grad_accum, grad_clip=0.05, lr=1e-2,
                        weight_decay=0.1, **cfg)
    model = tiny_decoder(seed=7)
    batcher = StepBatcher(examples(), tcfg.batch_size, tcfg.grad_accum, pad_collate, seed=1)
    return Trainer(model, CausalLMObjective(), batcher, tcfg, out, quiet=True, callbacks=[StopAt()])


def outcome(tr: Trainer, result: TrainResult) -> dict[str, Any]:
    """Losses, grad norms and the full final weights (rank 0; None elsewhere)."""
    model = tr.final_model()
    if model is None:
        return {}
    return {"loss": [r["loss"] for r in result.history], "grad_norm": [r["grad_norm"] for r in result.history],
            "weights": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}}


def rel_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """Largest ‖a_k − b_k‖ / ‖b_k‖ over tensors (keys must match)."""
    assert a.keys() == b.keys(), sorted(set(a) ^ set(b))
    return max(float((a[k].float() - b[k].float()).norm() / b[k].float().norm().clamp_min(1e-12)) for k in b)
