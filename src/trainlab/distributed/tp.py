"""Tensor parallelism for the decoder with DTensor (Megatron-LM's split, Shoeybi et al. 2019).

Each block's two matmul pairs are split so that one all-reduce finishes each pair::

    attention:  q, k, v = x·W_qᵀ, x·W_kᵀ, x·W_vᵀ     ColwiseParallel  (W sharded by output rows: heads)
                out     = attn(q, k, v)·W_oᵀ          RowwiseParallel  (W_o sharded by input columns)
    MLP:        h       = SiLU(x·W_gᵀ) ⊙ (x·W_uᵀ)     ColwiseParallel  (gate, up)
                out     = h·W_dᵀ                      RowwiseParallel  (down)

A column-parallel layer takes the replicated input and leaves each rank its slice of the output
features, with no communication; the row-parallel layer multiplies that slice by its slice of the
weight and all-reduces the partial sums (forward: 2 all-reduces per block; backward: the column
layers' input gradients, 2 more: q/k/v share one replicated input, as do gate/up).

Per rank the attention sees ``n_heads / tp`` query heads and ``n_kv_heads / tp`` key/value heads:
with grouped-query attention (group ``g = n_heads / n_kv_heads``) rank ``r`` holds query heads
``r·H/tp ... (r+1)·H/tp − 1``, whose key/value heads
``(r·H/tp)/g ... `` are exactly the contiguous ``r``-th slice of the kv heads, so the split is exact when
both head counts divide by ``tp`` (otherwise `parallelize_decoder` refuses: replicating kv heads is
not implemented). Embeddings, norms and the LM head stay replicated (plain tensors): every rank
computes them identically, as the data is the same on every tensor-parallel rank.

The plan is torch's ``parallelize_module`` (``torch.distributed.tensor.parallel``); this is the same
plan torchtitan applies to Llama, without sequence parallelism or the sharded embedding/head.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from trainlab.errors import UserError


def check_tp_degree(n_heads: int, n_kv_heads: int, hidden_dim: int, tp: int) -> None:
    """Raise `UserError` unless query heads, key/value heads and the MLP width divide by ``tp``."""
    problems = []
    if n_heads % tp:
        problems.append(f"model.n_heads={n_heads}")
    if n_kv_heads % tp:
        problems.append(f"key/value heads={n_kv_heads} (model.n_kv_heads)")
    if hidden_dim % tp:
        problems.append(f"MLP width={hidden_dim}")
    if problems:
        raise UserError(f"tensor parallel degree {tp} must divide {', '.join(problems)}: each rank holds a whole "
                        "number of heads (GQA: kv heads too) and MLP columns", key="dist.tp")


def tp_plan() -> dict[str, Any]:
    """The per-block plan: module path inside a `Block` -> parallel style."""
    from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel

    return {"attn.q_proj": ColwiseParallel(), "attn.k_proj": ColwiseParallel(), "attn.v_proj": ColwiseParallel(),
            "attn.o_proj": RowwiseParallel(), "mlp.gate_proj": ColwiseParallel(), "mlp.up_proj": ColwiseParallel(),
            "mlp.down_proj": RowwiseParallel()}


def _replicated_input(mesh: Any) -> Any:
    """A pre-hook making the first input a replicated DTensor, so that q/k/v (gate/up) share it.

    Their input gradients then add up as one partial sum and are all-reduced once, at this boundary
    (Megatron's ``f`` operator), instead of once per column-parallel layer (3 + 2 all-reduces).
    """
    from torch.distributed.tensor import DTensor, Replicate

    def hook(module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
        del module
        x = args[0]
        if isinstance(x, DTensor):
            return args
        return (DTensor.from_local(x, mesh, [Replicate()], run_check=False), *args[1:])

    return hook


def parallelize_decoder(model: nn.Module, mesh: Any) -> nn.Module:
    """Apply the tensor-parallel plan to every block of a `trainlab.model.decoder.Decoder` in place.

    ``mesh``: a 1-D ``DeviceMesh`` of the tensor-parallel ranks. The model must be identical on every
    rank (same seed or the same checkpoint): each rank keeps its shard of the full weights.
    """
    from torch.distributed.tensor.parallel import parallelize_module

    tp = mesh.size()
    layers = getattr(model, "layers", None)
    if layers is None or not len(layers):
        raise UserError("tensor parallel needs trainlab's Decoder (blocks with attn.q_proj ... mlp.down_proj); "
                        f"got {type(model).__name__}", key="dist.strategy")
    attn0 = layers[0].attn
    check_tp_degree(attn0.n_heads, attn0.n_kv_heads, layers[0].mlp.gate_proj.out_features, tp)
    for block in layers:
        parallelize_module(block, mesh, tp_plan())
        for sub in (block.attn, block.mlp):
            sub.register_forward_pre_hook(_replicated_input(mesh))
        block.attn.n_heads //= tp  # the attention reshapes with the local head counts
        block.attn.n_kv_heads //= tp
    model._tp_degree = tp  # type: ignore[attr-defined]
    return model


def grad_norm_(params: Any, max_norm: float) -> Any:
    """Global L2 gradient norm of a tensor-parallel model; clip to ``max_norm`` if it is > 0.

    Sharded gradients (DTensors) contribute the squares of their local shard, summed over the
    tensor-parallel group (one all-reduce); replicated ones (plain tensors, identical on every rank)
    count once. The result is the norm of the full, unsharded gradient: what one process computes.
    """
    import torch
    import torch.distributed as dist
    from torch.distributed.tensor import DTensor

    sharded = torch.zeros((), dtype=torch.float64)
    replicated = torch.zeros((), dtype=torch.float64)
    group = None
    grads = [p.grad for p in params if p.grad is not None]
    for g in grads:
        if isinstance(g, DTensor):
            group = group or g.device_mesh.get_group()
            sharded += g.to_local().double().pow(2).sum().cpu()
        else:
            replicated += g.double().pow(2).sum().cpu()
    if group is not None:
        dist.all_reduce(sharded, group=group)
    norm = (sharded + replicated).sqrt().float()
    if max_norm > 0:
        coef = torch.clamp(max_norm / (norm + 1e-6), max=1.0)
        for g in grads:
            (g.to_local() if isinstance(g, DTensor) else g).mul_(coef.to(g.dtype))
    return norm


def full_state_dict(model: nn.Module) -> dict[str, Any]:
    """Every parameter as a full (unsharded) tensor, on every rank (a collective: call on all ranks)."""
    from torch.distributed.tensor import DTensor

    out = {}
    for name, p in model.state_dict().items():
        out[name] = (p.full_tensor() if isinstance(p, DTensor) else p).detach().clone()
    return out


def _register() -> None:
    from torch import Tensor

    from trainlab.distributed.fsdp import load_into_skeleton, meta_skeleton
    from trainlab.distributed.strategy import Strategy, register_strategy

    @register_strategy("tp")
    class TPStrategy(Strategy):
        """``dist.strategy=tp`` (``dist.tp=N``): the decoder's blocks split over the ``tp`` ranks of the mesh;
        every rank sees the same batches (no data parallelism in this strategy: ``dp`` must be 1)."""

        name = "tp"
        description = "tensor parallel (DTensor): q/k/v, gate/up column-wise; o, down row-wise"
        shards_parameters = True

        def __init__(self, ctx: Any) -> None:
            super().__init__(ctx)
            self._skeleton: nn.Module | None = None
            mesh = ctx.mesh
            self.mesh = mesh["tp"] if mesh is not None else None
            if self.mesh is None or self.mesh.size() != ctx.world:
                tp = self.mesh.size() if self.mesh is not None else 1
                raise UserError(f"dist.strategy=tp runs tensor parallel over all {ctx.world} processes: set "
                                f"dist.tp={ctx.world} (got dist.tp={tp}; tp combined with data or pipeline "
                                "parallelism is not implemented)", key="dist.tp")

        def validate(self, cfg: Any) -> None:
            if getattr(cfg, "fused", None):
                raise UserError("dist.strategy=tp with train.fused=true: the fused AdamW kernel needs all "
                                "parameters sharded alike (norms and embeddings stay replicated); leave "
                                "train.fused unset", key="train.fused")

        def wrap(self, model: nn.Module) -> nn.Module:
            if self.ctx.is_main:
                self._skeleton = meta_skeleton(model)
            return parallelize_decoder(model, self.mesh)

        def clip_grad_norm(self, params: Any, max_norm: float) -> Tensor:
            return grad_norm_(params, max_norm)

        def all_reduce_sum(self, values: Any) -> list[float]:
            return [float(v) for v in values]  # every tp rank holds the whole batch: nothing to add

        def reduce_metrics(self, sums: dict[str, float], weights: dict[str, float]) -> tuple[dict[str, float],
                                                                                             dict[str, float]]:
            return sums, weights

        def full_state_dict(self, model: nn.Module) -> dict[str, Tensor]:
            state = {k: v.cpu() for k, v in full_state_dict(model).items()}
            return state if self.ctx.is_main else {}

        def final_model(self, model: nn.Module) -> nn.Module | None:
            state = self.full_state_dict(model)
            if not self.ctx.is_main:
                return None
            assert self._skeleton is not None
            skeleton, self._skeleton = self._skeleton, None
            return load_into_skeleton(skeleton, state)


_register()

__all__ = ["check_tp_degree", "full_state_dict", "grad_norm_", "parallelize_decoder", "tp_plan"]
