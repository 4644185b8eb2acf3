"""The process's place in a distributed run: `DistContext`, set up once from torchrun's environment.

torchrun (``torch.distributed.run``; ``trainlab <command> --nproc N`` starts it itself, see `launch`)
starts ``N`` copies of the command and gives each ``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``,
``MASTER_ADDR``/``MASTER_PORT`` in its environment. `init` reads them, joins the default process group
(gloo on CPU, nccl on CUDA: ``dist.backend``), pins the device (``cuda:LOCAL_RANK``), builds the
device mesh (`trainlab.distributed.mesh`) and records the context; `current` returns it (None in a
single-process run: everything then runs exactly as without this package).

Data parallelism splits every optimizer step's examples over the ``dp`` ranks of the mesh
(``dp_rank`` of ``dp_world``); tensor/pipeline ranks of one data-parallel replica see the same data.
Only rank 0 (`DistContext.is_main`) logs, shows progress and writes files.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from trainlab.config import DistConfig
from trainlab.errors import UserError

log = logging.getLogger("trainlab.distributed")

_CURRENT: DistContext | None = None


@dataclass
class DistContext:
    """Where this process sits: global ``rank`` of ``world``, ``local_rank`` on its node, its
    ``device``, the named device ``mesh`` (dims ``pp``, ``dp_replicate``, ``dp_shard``, ``tp``; see
    `trainlab.distributed.mesh`), the run's ``config`` (the ``dist`` section) and ``backend``."""

    rank: int
    world: int
    local_rank: int
    device: torch.device
    mesh: Any = None  # torch.distributed.device_mesh.DeviceMesh
    config: DistConfig = field(default_factory=DistConfig)
    backend: str = "gloo"
    strategy: str = "ddp"  # the resolved strategy name (never "auto")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def _dp_mesh(self) -> Any:
        if self.mesh is None:
            return None
        names = self.mesh.mesh_dim_names or ()
        if "dp" in names:
            return self.mesh["dp"]
        return None

    @property
    def dp_world(self) -> int:
        """Data-parallel replicas: how many ways each step's examples are split."""
        sub = self._dp_mesh()
        return sub.size() if sub is not None else self.world

    @property
    def dp_rank(self) -> int:
        """This process's share of each step's examples (0 .. dp_world-1)."""
        sub = self._dp_mesh()
        return sub.get_local_rank() if sub is not None else self.rank

    @property
    def dp_group(self) -> Any:
        """The process group over which data-parallel sums (counts, metrics) are taken."""
        sub = self._dp_mesh()
        return sub.get_group() if sub is not None else dist.group.WORLD

    # -- small collectives the loop needs --------------------------------------------------------

    def all_reduce_sum(self, values: Sequence[float], *, group: Any = None) -> list[float]:
        """Σ over the data-parallel ranks of each value (float64 on the communication device)."""
        if not values:
            return []
        t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=self.comm_device)
        dist.all_reduce(t, op=dist.ReduceOp.SUM, group=group if group is not None else self.dp_group)
        return t.tolist()

    def all_gather_object(self, obj: Any) -> list[Any]:
        out: list[Any] = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def broadcast_object(self, obj: Any, src: int = 0) -> Any:
        box = [obj]
        dist.broadcast_object_list(box, src=src)
        return box[0]

    def any_true(self, flag: bool) -> bool:
        """True on every rank if ``flag`` is True on any (e.g. a stop request seen by one rank)."""
        t = torch.tensor([1.0 if flag else 0.0], device=self.comm_device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item() > 0)

    def barrier(self) -> None:
        if self.backend == "nccl":
            dist.barrier(device_ids=[self.device.index or 0])
        else:
            dist.barrier()

    @property
    def comm_device(self) -> torch.device:
        """Where small tensors for collectives live: the GPU for nccl, the CPU for gloo."""
        return self.device if self.backend == "nccl" else torch.device("cpu")


def launched() -> bool:
    """True when this process was started by torchrun (its environment variables are set)."""
    return all(k in os.environ for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))


def env_world() -> int:
    return int(os.environ.get("WORLD_SIZE", "1")) if launched() else 1


def env_rank() -> int:
    return int(os.environ.get("RANK", "0")) if launched() else 0


def current() -> DistContext | None:
    """The context of this distributed run, or None (a single process)."""
    return _CURRENT


def is_main() -> bool:
    """Rank 0, or a single process."""
    return _CURRENT is None or _CURRENT.is_main


def _resolve_backend(cfg: DistConfig, device: torch.device) -> str:
    if cfg.backend == "auto":
        return "nccl" if device.type == "cuda" else "gloo"
    if cfg.backend == "nccl" and device.type != "cuda":
        raise UserError("dist.backend=nccl needs CUDA devices; use gloo (or auto) on CPU", key="dist.backend")
    return cfg.backend


def _device(device_spec: str, local_rank: int) -> torch.device:
    spec = device_spec.strip().lower()
    if spec in ("auto", "cuda") and torch.cuda.is_available():
        if local_rank >= torch.cuda.device_count():
            raise UserError(f"local rank {local_rank} has no GPU: only {torch.cuda.device_count()} CUDA device(s) "
                            "on this node; use fewer processes per node", key="train.device")
        return torch.device("cuda", local_rank)
    if spec in ("auto", "cpu"):
        return torch.device("cpu")
    if spec == "cuda":
        raise UserError("train.device=cuda but CUDA is not available", key="train.device")
    raise UserError(f"train.device={device_spec} in a distributed run: use auto, cpu or cuda (each process takes "
                    "cuda:LOCAL_RANK)", key="train.device")


def init(cfg: DistConfig | None = None, device_spec: str = "auto") -> DistContext | None:
    """Join the process group torchrun set up and record the `DistContext`; None when this is a
    single process (no torchrun, or a world of 1). Idempotent: a second call returns the context.

    Ranks other than 0 log only errors (``trainlab`` loggers), so the console shows one run.
    """
    global _CURRENT
    if _CURRENT is not None:
        return _CURRENT
    cfg = cfg or DistConfig()
    world = env_world()
    if world <= 1:
        return None
    from trainlab.distributed.mesh import build_mesh
    from trainlab.distributed.strategy import resolve_strategy_name

    rank, local_rank = env_rank(), int(os.environ["LOCAL_RANK"])
    device = _device(device_spec, local_rank)
    backend = _resolve_backend(cfg, device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    name = resolve_strategy_name(cfg, world)
    if not dist.is_initialized():
        kwargs: dict[str, Any] = {"backend": backend, "timeout": timedelta(minutes=cfg.timeout_minutes)}
        if device.type == "cuda":
            kwargs["device_id"] = device
        dist.init_process_group(**kwargs)
    mesh = build_mesh(cfg, world, device.type, name)
    _CURRENT = DistContext(rank=rank, world=world, local_rank=local_rank, device=device, mesh=mesh, config=cfg,
                           backend=backend, strategy=name)
    if rank != 0:
        logging.getLogger("trainlab").setLevel(logging.ERROR)
    return _CURRENT


def shutdown() -> None:
    """Leave the process group (end of a distributed command)."""
    global _CURRENT
    _CURRENT = None
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def use_context(ctx: DistContext | None) -> None:
    """Set the current context by hand (tests that spawn processes and build the group themselves)."""
    global _CURRENT
    _CURRENT = ctx


def dp_mean(value: torch.Tensor) -> torch.Tensor:
    """The mean of a detached batch statistic over the data-parallel ranks (identity for one process):
    e.g. KTO's reference point z₀, which TRL gathers over processes (``gather_for_metrics(kl).mean()``).
    Every rank must call it at the same point (it is an all-reduce)."""
    ctx = _CURRENT
    if ctx is None:
        return value
    t = value.detach().to(ctx.comm_device, torch.float32).clone()
    dist.all_reduce(t, op=dist.ReduceOp.SUM, group=ctx.dp_group)
    return (t / ctx.dp_world).to(value.device, value.dtype)
