"""Run a function on ``world`` local processes joined in a gloo process group (lab and tests).

``run_ranks(fn, world, **kwargs)`` forks ``world`` processes (spawn where fork is unavailable), each
calls ``init_process_group("gloo", file://...)``, runs ``fn(rank, world, **kwargs)`` and hands its
return value back (pickled through a file); an exception on any rank is raised here with the rank
named. The training commands use ``torchrun`` (`trainlab.distributed.launch`); this in-process form
exists so a lab or a test can run a few strategies without paying a Python start per process.
"""

from __future__ import annotations

import datetime
import os
import pickle
import tempfile
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any


def _entry(rank: int, fn: Callable[..., Any], world: int, folder: str, kwargs: dict[str, Any]) -> None:
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    os.environ.update({"RANK": str(rank), "WORLD_SIZE": str(world), "LOCAL_RANK": str(rank),
                       "LOCAL_WORLD_SIZE": str(world)})
    out = Path(folder) / f"rank{rank}.pkl"
    try:
        dist.init_process_group("gloo", init_method=f"file://{folder}/rendezvous", rank=rank, world_size=world,
                                timeout=datetime.timedelta(seconds=120))
        try:
            value = fn(rank, world, **kwargs)
        finally:
            dist.destroy_process_group()
        out.write_bytes(pickle.dumps(("ok", value)))
    except BaseException as exc:
        out.write_bytes(pickle.dumps(("error", f"rank {rank}: {type(exc).__name__}: {exc}\n"
                                               f"{traceback.format_exc()}")))
        raise


def run_ranks(fn: Callable[..., Any], world: int = 2, *, start_method: str = "fork", preload: tuple[str, ...] = (),
              **kwargs: Any) -> list[Any]:
    """``[fn(0, world, **kwargs), ..., fn(world-1, ...)]``, each computed in its own process.

    ``preload``: modules imported here first, so forked ranks inherit them instead of each importing them
    (``torch._dynamo``, which torch's optimizers import, takes seconds)."""
    import importlib

    import torch.multiprocessing as mp

    for name in ("torch._dynamo", *preload):
        importlib.import_module(name)

    with tempfile.TemporaryDirectory(prefix="trainlab-ranks-") as folder:
        ctx = mp.start_processes(_entry, args=(fn, world, folder, kwargs), nprocs=world, join=False,
                                 start_method=start_method if start_method in mp.get_all_start_methods() else "spawn")
        failure = None
        try:
            while not ctx.join():
                pass
        except Exception as exc:
            failure = exc
        results: list[Any] = []
        errors: list[str] = []
        for rank in range(world):
            path = Path(folder) / f"rank{rank}.pkl"
            if not path.exists():
                errors.append(f"rank {rank}: exited without a result")
                continue
            status, value = pickle.loads(path.read_bytes())
            (results if status == "ok" else errors).append(value)
        if errors or failure is not None:
            raise RuntimeError("distributed run failed: " + "\n".join(errors or [str(failure)]))
        return results


__all__ = ["run_ranks"]
