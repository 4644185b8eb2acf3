"""``trainlab <command> --nproc N``: the command re-run under torchrun, one process per rank.

`launch` does what ``torchrun --standalone --nproc-per-node N -m trainlab <command> ...`` does
(torch.distributed.run's own argument parser and `elastic_launch`: a local rendezvous on a free port,
``N`` workers ``python -m trainlab <command> ...`` with ``RANK``/``LOCAL_RANK``/``WORLD_SIZE`` set),
and turns a failure into one line:

* a worker that fails records its one-line error (``error: rank R: ...``) in a folder the launcher
  gave it (``TRAINLAB_ERROR_DIR``) instead of printing it; torchrun then ends the other ranks, and
  the launcher prints the *first* recorded error (the cause: ranks that fail because a peer vanished
  record theirs later) and exits with that rank's code (2 for a `UserError`);
* ranks other than 0 print nothing (rank 0 shows progress and results, `worker_quiet`);
* Ctrl-C reaches every rank (torchrun starts each in its own session, so the launcher forwards the
  SIGINT to them instead of ending them): they finish the step, agree to stop, save the checkpoint
  and exit 130.

Multi-node runs use torchrun itself on every node (``torchrun --nnodes 2 --node-rank K
--nproc-per-node G --rdzv-backend c10d --rdzv-endpoint HOST:PORT -m trainlab pretrain ...``); the
same error and output rules apply (ranks name themselves in their error lines).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import sys
import tempfile
import traceback
import uuid
from pathlib import Path
from typing import Any

from trainlab.errors import UserError

ERROR_DIR_ENV = "TRAINLAB_ERROR_DIR"


def worker_rank() -> int | None:
    """This process's rank when it is one of several torchrun workers, else None."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and "RANK" in os.environ and "LOCAL_RANK" in os.environ:
        return int(os.environ["RANK"])
    return None


def worker_quiet() -> bool:
    """True on ranks other than 0 of a distributed run: they print nothing but errors."""
    rank = worker_rank()
    return rank is not None and rank != 0


def record_error(line: str) -> bool:
    """In a worker started by `launch`: save the one-line error for the launcher (True: not to be
    printed here). Elsewhere False. ``line`` gets the rank named: ``error: rank R: ...``."""
    rank = worker_rank()
    folder = os.environ.get(ERROR_DIR_ENV)
    if rank is None or not folder:
        return False
    path = Path(folder) / f"rank{rank}.txt"
    try:
        tmp = path.with_suffix(".tmp")
        tmp.write_text(line, encoding="utf-8")
        os.replace(tmp, path)
    except OSError:
        return False
    return True


def name_rank(line: str) -> str:
    """``error: X`` -> ``error: rank R: X`` in a distributed worker."""
    rank = worker_rank()
    if rank is None or not line.startswith("error: ") or line.startswith("error: rank "):
        return line
    return f"error: rank {rank}: {line[len('error: '):]}"


def strip_nproc(argv: list[str]) -> tuple[int | None, list[str]]:
    """``--nproc N`` / ``--nproc=N`` out of ``argv``: (N or None, the rest)."""
    out: list[str] = []
    nproc: int | None = None
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--nproc" and i + 1 < len(argv):
            value, i = argv[i + 1], i + 2
        elif arg.startswith("--nproc="):
            value, i = arg.split("=", 1)[1], i + 1
        else:
            out.append(arg)
            i += 1
            continue
        try:
            nproc = int(value)
        except ValueError:
            raise UserError(f"--nproc {value!r}: expected a number of processes") from None
    return nproc, out


def check_launch(cfg: Any, nproc: int) -> None:
    """Before starting ranks: what the run's config says about ``nproc`` processes that would fail in
    every rank (the strategy name, the mesh, the split of the micro-batch), as one `UserError` here."""
    from trainlab.distributed.mesh import mesh_shape
    from trainlab.distributed.strategy import resolve_strategy_name
    from trainlab.train.data import StepBatcher

    resolve_strategy_name(cfg.dist, nproc)
    StepBatcher.check_shard(cfg.train.batch_size, mesh_shape(cfg.dist, nproc).dp)


def launch(nproc: int, argv: list[str]) -> int:
    """Run ``python -m trainlab <argv>`` on ``nproc`` local ranks under torchrun; return the exit code."""
    from torch.distributed.elastic.multiprocessing import DefaultLogsSpecs, Std
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import elastic_launch
    from torch.distributed.run import config_from_args, parse_args

    if nproc < 1:
        raise UserError(f"--nproc {nproc}: expected at least 1 process")
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # torchrun's default, without its banner
    for name in ("torch.distributed.elastic", "torch.distributed.run", "torch.distributed.launcher"):
        logging.getLogger(name).setLevel(logging.CRITICAL)
    # torchrun --standalone: a c10d rendezvous on a free local port
    args = parse_args(["--rdzv-backend=c10d", "--rdzv-endpoint=localhost:0", f"--rdzv-id={uuid.uuid4()}",
                       f"--nproc-per-node={nproc}", "--monitor-interval=0.1", "-m", "trainlab", *argv])
    config, cmd, cmd_args = config_from_args(args)
    config.signals_to_handle = "SIGTERM,SIGHUP,SIGQUIT"  # SIGINT goes to the ranks: they save and stop
    # ranks other than 0 write their console output (library warnings, a crash's traceback) to files
    logs = Path(tempfile.mkdtemp(prefix="trainlab-ranks-"))
    config.logs_specs = DefaultLogsSpecs(log_dir=str(logs), redirects={r: Std.ALL for r in range(1, nproc)})
    errors = Path(tempfile.mkdtemp(prefix="trainlab-errors-"))
    os.environ[ERROR_DIR_ENV] = str(errors)
    previous = signal.signal(signal.SIGINT, _forward_sigint)
    keep_logs = False
    try:
        elastic_launch(config, cmd)(*cmd_args)
        return 0
    except ChildFailedError as exc:
        code, keep_logs = _report(exc, errors, logs)
        return code
    finally:
        signal.signal(signal.SIGINT, previous)
        os.environ.pop(ERROR_DIR_ENV, None)
        shutil.rmtree(errors, ignore_errors=True)
        if not keep_logs:
            shutil.rmtree(logs, ignore_errors=True)


def _children() -> list[int]:
    """Process ids whose parent is this process (Linux ``/proc``; elsewhere none)."""
    me, out = os.getpid(), []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == me:
            out.append(int(stat.parent.name))
    return out


def _forward_sigint(signum: int, frame: object) -> None:
    """The launcher's Ctrl-C: pass it to the ranks (they save and stop); the launcher waits for them."""
    del frame
    for pid in _children():
        with contextlib.suppress(OSError):
            os.kill(pid, signum)


def _report(exc: object, errors: Path, logs: Path) -> tuple[int, bool]:
    """Print the first rank's recorded error line; return its exit code and whether to keep the ranks'
    output files (a rank that ended without a message: they are all there is)."""
    failures = getattr(exc, "failures", {}) or {}
    codes = {int(getattr(f, "rank", r)): int(getattr(f, "exitcode", 1)) for r, f in failures.items()}
    recorded = sorted(errors.glob("rank*.txt"), key=lambda p: p.stat().st_mtime_ns)
    # a rank killed by a signal (not the agent's SIGTERM) had no chance to say why, and its peers' errors
    # ("connection reset by peer") are consequences: it is the cause
    killed = {r: c for r, c in codes.items() if c < 0 and -c not in (signal.SIGTERM, signal.SIGINT)
              and not (errors / f"rank{r}.txt").exists()}
    if killed:
        rank, code = min(killed.items())
        sys.stderr.write(f"error: rank {rank} was killed by {_signal_name(-code)} (no message; the other ranks' "
                         f"output: {logs})\n")
        return 1, True
    if recorded:
        first = recorded[0]
        rank = int(first.stem.removeprefix("rank"))
        sys.stderr.write(first.read_text(encoding="utf-8").rstrip("\n") + "\n")
        # the exit code the rank chose (it writes it on its way out; torchrun may have ended it first, or
        # reported only the first rank it saw fail)
        chosen = {int(f.stem.removeprefix("rank")): int(f.read_text() or 1) for f in errors.glob("rank*.code")}
        code = chosen.get(rank) or next(iter(chosen.values()), 0) or codes.get(rank, 0) or \
            next((c for c in codes.values() if c > 0), 1)
        return (code if code > 0 else 1), False
    interrupted = [c for c in codes.values() if c == 130]
    if interrupted:
        return 130, False
    rank, code = min(codes.items()) if codes else (0, 1)
    how = _signal_name(-code) if code < 0 else f"exit code {code}"
    sys.stderr.write(f"error: rank {rank} ended with {how} without a message (the other ranks' output: {logs})\n")
    return 1, True


def _record_code(code: object) -> None:
    """Next to a recorded error line: the exit code this rank ends with (for the launcher)."""
    rank, folder = worker_rank(), os.environ.get(ERROR_DIR_ENV)
    if rank is None or not folder or not (Path(folder) / f"rank{rank}.txt").exists():
        return
    with contextlib.suppress(OSError):
        (Path(folder) / f"rank{rank}.code").write_text(str(int(code or 0)))


def _signal_name(num: int) -> str:
    try:
        return signal.Signals(num).name
    except ValueError:
        return f"signal {num}"


def worker_main(run: object) -> int:
    """``python -m trainlab``: run the CLI (``run`` = `trainlab.cli.run_cli`); in a distributed worker
    an unexpected exception is one recorded line too (its traceback on stderr only when run by hand),
    and the process group is left at the end."""
    try:
        code = run()  # type: ignore[operator]
        _record_code(code)
    except BaseException as exc:
        if worker_rank() is None or isinstance(exc, SystemExit):
            raise
        text = str(exc).strip()
        line = f"error: rank {worker_rank()}: {type(exc).__name__}: {text.splitlines()[0] if text else ''}"
        if not record_error(line):
            traceback.print_exc()
        code = 1
        _record_code(code)
    finally:
        from trainlab.distributed import env

        env.shutdown()
    return int(code or 0)
