"""FSDP2 (``torch.distributed.fsdp.fully_shard``): ZeRO-3, and ZeRO-2 without resharding after forward.

Each of the ``p`` data-parallel ranks stores ``1/p`` of every parameter, of its gradient and of the
optimizer state (parameters are DTensors sharded on dim 0; the optimizer steps on the shards). A
block's full parameters exist only while it computes: all-gathered before its forward, and

* ``fsdp`` / ``zero3`` (``reshard_after_forward=True``): freed after the forward and all-gathered
  again for the backward: parameters + gradients + optimizer states all sharded (ZeRO stage 3,
  Rajbhandari et al. 2020), at ``3(p−1)/p · S`` bytes sent per rank per step;
* ``zero2`` (``reshard_after_forward=False``): kept until the backward is done, saving the second
  all-gather (``2(p−1)/p · S``, as DDP) at the price of holding the unsharded parameters between
  forward and backward.

Gradients are reduce-scattered (averaged) into the shards after each micro-batch's backward, so only
sharded gradients are ever accumulated. Wrapping follows torchtitan: ``fully_shard`` on every
transformer block (the largest ``nn.ModuleList`` of the model), then on the root, which keeps the
embedding, final norm and head.

Clipping: the gradient norm is computed over the local shards as a DTensor and completed with one
all-reduce (``full_tensor``), so ``‖g‖₂`` is the global norm, the same number one process computes.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import torch
from torch import Tensor, nn

from trainlab.distributed.ddp import call_as_forward
from trainlab.distributed.env import DistContext
from trainlab.distributed.strategy import Strategy, register_strategy
from trainlab.errors import UserError

T = TypeVar("T")


def block_list(model: nn.Module) -> nn.ModuleList | None:
    """The transformer blocks: the ``nn.ModuleList`` holding the most parameters (``layers`` of our
    decoder, ``model.layers`` / ``transformer.h`` of Hugging Face models)."""
    best, best_n = None, 0
    for module in model.modules():
        if isinstance(module, nn.ModuleList) and len(module) > 0:
            n = sum(p.numel() for p in module.parameters())
            if n > best_n:
                best, best_n = module, n
    return best


def meta_skeleton(model: nn.Module) -> nn.Module:
    """A copy of ``model`` whose parameters live on the meta device (no memory), buffers copied:
    the plain module the full weights are loaded into for saving (`final_model`)."""
    memo: dict[int, Any] = {}
    for p in model.parameters():
        memo[id(p)] = nn.Parameter(torch.empty_like(p, device="meta"), requires_grad=p.requires_grad)
    return copy.deepcopy(model, memo)


def load_into_skeleton(skeleton: nn.Module, state: dict[str, Tensor]) -> nn.Module:
    """Assign ``state``'s tensors as ``skeleton``'s parameters, restoring ties (one parameter
    reachable under several names, e.g. a tied embedding and head)."""
    aliases: dict[int, list[str]] = {}
    for name, p in skeleton.named_parameters(remove_duplicate=False):
        aliases.setdefault(id(p), []).append(name)
    skeleton.load_state_dict(state, strict=False, assign=True)
    for names in aliases.values():
        first = skeleton.get_parameter(names[0])
        for other in names[1:]:
            mod_name, _, attr = other.rpartition(".")
            setattr(skeleton.get_submodule(mod_name) if mod_name else skeleton, attr, first)
    missing = [n for n, p in skeleton.named_parameters() if p.is_meta]
    if missing:
        raise RuntimeError(f"full state dict lacks {len(missing)} parameters, e.g. {missing[0]}")
    return skeleton


class FSDPStrategy(Strategy):
    """FSDP2 over the ``dp`` ranks (see the module docstring)."""

    name = "fsdp"
    description = "FSDP2 fully_shard (ZeRO-3): parameters, gradients and optimizer states sharded"
    shards_parameters = True
    reshard_after_forward = True

    def __init__(self, ctx: DistContext) -> None:
        super().__init__(ctx)
        self._skeleton: nn.Module | None = None

    def validate(self, cfg: Any) -> None:
        if getattr(cfg, "precision", "fp32") == "fp16":
            raise UserError(f"dist.strategy={self.name} with train.precision=fp16: the loss scaler would see only "
                            "this rank's gradient shard; use bf16 (or ddp)", key="train.precision")

    def wrap(self, model: nn.Module) -> nn.Module:
        from torch.distributed.fsdp import fully_shard

        assert self.ctx is not None
        mesh = self.ctx.mesh["dp"] if self.ctx.mesh is not None else None
        if self.ctx.is_main:
            self._skeleton = meta_skeleton(model)
        blocks = block_list(model)
        for block in blocks if blocks is not None else []:
            fully_shard(block, mesh=mesh, reshard_after_forward=self.reshard_after_forward)
        fully_shard(model, mesh=mesh, reshard_after_forward=self.reshard_after_forward)
        return model

    def forward(self, model: nn.Module, fn: Callable[[nn.Module], T]) -> T:
        return call_as_forward(model, model, fn)

    @property
    def grad_scale(self) -> float:
        assert self.ctx is not None
        return float(self.ctx.dp_world)

    def clip_grad_norm(self, params: Sequence[nn.Parameter], max_norm: float) -> Tensor:
        from torch.distributed.tensor import DTensor

        grads = [p.grad for p in params if p.grad is not None]
        if not grads:
            return torch.zeros(())
        total = torch.nn.utils.get_total_norm(grads, norm_type=2.0, foreach=True)
        if isinstance(total, DTensor):
            total = total.full_tensor()
        if max_norm > 0:
            torch.nn.utils.clip_grads_with_norm_([p for p in params if p.grad is not None], max_norm, total,
                                                 foreach=True)
        return total

    def full_state_dict(self, model: nn.Module) -> dict[str, Tensor]:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
        return get_model_state_dict(model, options=opts)

    def final_model(self, model: nn.Module) -> nn.Module | None:
        state = self.full_state_dict(model)
        assert self.ctx is not None
        if not self.ctx.is_main:
            return None
        assert self._skeleton is not None
        skeleton, self._skeleton = self._skeleton, None
        return load_into_skeleton(skeleton, state)

    def micro_step(self, model: nn.Module, last: bool) -> contextlib.AbstractContextManager[Any]:
        # Reduce-scatter after every micro-batch: only sharded gradients are accumulated (ZeRO's
        # memory saving holds during accumulation too).
        del model, last
        return contextlib.nullcontext()


register_strategy("fsdp")(FSDPStrategy)
register_strategy("zero3")(FSDPStrategy)


@register_strategy("zero2")
class Zero2Strategy(FSDPStrategy):
    """FSDP2 with ``reshard_after_forward=False``: ZeRO-2's communication, parameters kept gathered
    from forward to backward."""

    name = "zero2"
    description = "FSDP2 without resharding after forward (ZeRO-2): gradients and optimizer states sharded"
    reshard_after_forward = False
