"""The device mesh: the world's ranks arranged as ``pp × dp × tp`` (torchtitan's parallel dims).

``world = pp · dp · tp``. Ranks that differ only in ``tp`` hold the same layers and see the same data
(tensor parallel splits each layer); ranks that differ only in ``pp`` hold different layers (pipeline
stages); ``dp`` ranks are data-parallel replicas (DDP) or shards (FSDP: ``dist.dp_shard``), and each
takes its share of every step's examples. Rank order is row-major over ``(pp, dp, tp)`` as
`torch.distributed.device_mesh.init_device_mesh` lays it out, so ``tp`` neighbours are adjacent
ranks (on one node, where tensor parallelism's frequent all-reduces are cheapest).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from trainlab.config import DistConfig
from trainlab.errors import UserError

MESH_DIMS = ("pp", "dp", "tp")


@dataclass(frozen=True)
class MeshShape:
    pp: int
    dp: int
    tp: int

    @property
    def sizes(self) -> tuple[int, int, int]:
        return (self.pp, self.dp, self.tp)


def mesh_shape(cfg: DistConfig, world: int) -> MeshShape:
    """``pp``, ``dp``, ``tp`` for ``world`` ranks; ``dp`` is what ``tp · pp`` leaves."""
    if world % (cfg.tp * cfg.pp):
        raise UserError(f"dist.tp={cfg.tp} × dist.pp={cfg.pp} = {cfg.tp * cfg.pp} does not divide the {world} "
                        "processes", key="dist.tp")
    dp = world // (cfg.tp * cfg.pp)
    if cfg.dp_shard not in (-1, 1) and cfg.dp_shard != dp:
        raise UserError(f"dist.dp_shard={cfg.dp_shard}: with {world} processes, tp={cfg.tp} and pp={cfg.pp} there "
                        f"are {dp} data-parallel ranks; shard over all of them (-1 or {dp}) or none (1)",
                        key="dist.dp_shard")
    return MeshShape(pp=cfg.pp, dp=dp, tp=cfg.tp)


def build_mesh(cfg: DistConfig, world: int, device_type: str, strategy: str | None = None) -> Any:
    """`init_device_mesh` over ``(pp, dp, tp)`` (the default process group must exist)."""
    from torch.distributed.device_mesh import init_device_mesh

    del strategy
    shape = mesh_shape(cfg, world)
    return init_device_mesh(device_type, shape.sizes, mesh_dim_names=MESH_DIMS)
