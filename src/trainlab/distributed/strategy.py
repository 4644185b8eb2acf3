"""Distribution strategies: how the one training step runs on many processes.

A strategy is built once per run for the process's `DistContext` and answers what the step
(`trainlab.train.step.optimizer_step`) and the loop (`trainlab.train.loop.Trainer`) ask:

==========================  =====================================================================
``wrap(model)``             the model the loop trains (DDP wrapper, FSDP2-sharded module, ...)
``unwrap(model)``           the user's module inside (attributes, ``generate``, saving)
``forward(model, fn)``      ``fn(inner_module)`` run as the wrapper's forward: DDP's and FSDP's
                            hooks fire although objectives call ``hidden_states`` and
                            ``output_embedding`` rather than ``forward``
``micro_step(model, last)`` context of one accumulation micro-step: gradient communication is
                            skipped unless ``last`` (DDP ``no_sync``; FSDP reduce-scatters every
                            micro-batch so that only gradient shards accumulate)
``accumulate``              runs every micro-batch at once (a pipeline schedule); None: the loop
``grad_scale``              factor on each rank's ``loss_sum / N``: the reducers *average* over
                            ``dp`` ranks, so ``dp_world`` makes the reduced gradient the *sum*
``clip_grad_norm(ps, c)``   the global L2 norm (all shards), clipping to ``c`` if > 0
``full_state_dict(model)``  collective: rank 0 receives the full CPU state dict
``final_model(model)``      collective: on rank 0 a plain module with the full weights (HF folder)
``model_state_dict`` ...    the distributed-checkpoint (DCP) state dicts, and their loaders
==========================  =====================================================================

Gradient equality with one process (the contract the equivalence tests check): with ``N`` the
step's count summed over all ranks (one all-reduce) and rank ``r`` holding the share ``S_r`` of
the step's examples, rank ``r`` backpropagates ``dp_world · Σ_{mb ⊂ S_r} loss_sum(mb) / N``; the
reducer averages over ranks, giving ``Σ_all loss_sum / N``: the single-process gradient.

Register one with `register_strategy` (D2 adds ``zero1``, ``tp``, ``pp``, and DeepSpeed's as
``deepspeed:zero1`` ... chosen with ``dist.engine=deepspeed``). The base
class `Strategy` is the single-process behaviour, so a subclass overrides only what differs.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import torch
from torch import Tensor, nn

from trainlab.config import DistConfig
from trainlab.errors import UserError

if TYPE_CHECKING:
    from trainlab.config import TrainConfig
    from trainlab.distributed.env import DistContext

T = TypeVar("T")

_REGISTRY: dict[str, Callable[[DistContext], Strategy]] = {}


class Strategy:
    """Single-process behaviour; distributed strategies subclass it (see the module docstring)."""

    name = "none"
    description = "one process"
    #: the strategy shards parameters (DTensor); its optimizer must be built after `wrap`
    shards_parameters = False

    def __init__(self, ctx: DistContext | None = None) -> None:
        self.ctx = ctx

    # -- set-up -----------------------------------------------------------------------------------

    def validate(self, cfg: TrainConfig) -> None:
        """Raise `UserError` for a training setting this strategy cannot run (before any work)."""
        del cfg

    def wrap(self, model: nn.Module) -> nn.Module:
        return model

    def unwrap(self, model: nn.Module) -> nn.Module:
        return model

    def build_optimizer(self, model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer | None:
        """The optimizer the loop must step when the engine owns it (DeepSpeed's ZeRO optimizer), given
        the wrapped model; None: the loop builds its own (`trainlab.optim.build_optimizer`) after `wrap`."""
        del model, cfg
        return None

    # -- the step ----------------------------------------------------------------------------------

    def forward(self, model: nn.Module, fn: Callable[[nn.Module], T]) -> T:
        return fn(model)

    def micro_step(self, model: nn.Module, last: bool) -> contextlib.AbstractContextManager[Any]:
        del model, last
        return contextlib.nullcontext()

    @property
    def grad_scale(self) -> float:
        return 1.0

    def backward(self, loss: Tensor) -> None:
        loss.backward()

    #: ``accumulate(model, objective, micro_batches, *, total, scale, device) -> (loss_sum, metric_sums,
    #: metric_weights)``: run every micro-batch at once (forward and backward, each loss scaled by
    #: ``scale / total``) instead of the step's per-micro-batch loop (a pipeline schedule); None: the loop
    accumulate: Callable[..., tuple[Tensor, dict[str, float], dict[str, float]]] | None = None

    def clip_grad_norm(self, params: Sequence[nn.Parameter], max_norm: float) -> Tensor:
        """Global L2 norm of the gradients before clipping; clip to ``max_norm`` if > 0."""
        from trainlab.train.step import grad_norm_

        return grad_norm_(params, max_norm)

    def all_reduce_sum(self, values: Sequence[float]) -> list[float]:
        """Σ over data-parallel ranks (identity for one process)."""
        if self.ctx is None:
            return [float(v) for v in values]
        return self.ctx.all_reduce_sum(values)

    def reduce_metrics(self, sums: dict[str, float], weights: dict[str, float]) -> tuple[dict[str, float],
                                                                                         dict[str, float]]:
        """Σ over data-parallel ranks of count-weighted metric sums and their weights (keys united)."""
        if self.ctx is None:
            return sums, weights
        gathered = self.ctx.all_gather_object((sums, weights))
        keys = sorted({k for s, _ in gathered for k in s})
        dp = self.ctx.dp_world
        # with tp/pp every dp replica appears world/dp times: average those copies
        copies = self.ctx.world // dp
        tot_s = {k: sum(s.get(k, 0.0) for s, _ in gathered) / copies for k in keys}
        tot_w = {k: sum(w.get(k, 0.0) for _, w in gathered) / copies for k in keys}
        return tot_s, tot_w

    # -- state --------------------------------------------------------------------------------------

    def full_state_dict(self, model: nn.Module) -> dict[str, Tensor]:
        """The full (unsharded) state dict on CPU on rank 0; ``{}`` on other ranks. Collective."""
        return {k: v.detach().cpu() for k, v in self.unwrap(model).state_dict().items()}

    def final_model(self, model: nn.Module) -> nn.Module | None:
        """A plain module holding the full trained weights on rank 0 (for ``save_pretrained``), None on
        other ranks. Collective (sharded strategies gather the parameters)."""
        return self.unwrap(model)

    def model_state_dict(self, model: nn.Module) -> dict[str, Any]:
        """The model's state for torch.distributed.checkpoint (sharded where the model is)."""
        from torch.distributed.checkpoint.state_dict import get_model_state_dict

        return get_model_state_dict(model)

    def load_model_state_dict(self, model: nn.Module, state: dict[str, Any]) -> None:
        from torch.distributed.checkpoint.state_dict import set_model_state_dict

        set_model_state_dict(model, state)

    def optimizer_state_dict(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        """The optimizer's state keyed by parameter names (DCP's layout: any world size can load it)."""
        from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

        return get_optimizer_state_dict(model, optimizer)

    def load_optimizer_state_dict(self, model: nn.Module, optimizer: torch.optim.Optimizer,
                                  state: dict[str, Any]) -> None:
        from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict

        set_optimizer_state_dict(model, optimizer, state)


LOCAL = Strategy()


# ------------------------------------------------------------------------------------------------
# Registry
# ------------------------------------------------------------------------------------------------

def register_strategy(name: str) -> Callable[[Callable[[DistContext], Strategy]], Callable[[DistContext], Strategy]]:
    """Decorator: ``@register_strategy("ddp") class DDPStrategy(Strategy): ...`` (or any factory of a
    `DistContext` returning a `Strategy`)."""

    def deco(factory: Callable[[DistContext], Strategy]) -> Callable[[DistContext], Strategy]:
        _REGISTRY[name] = factory
        return factory

    return deco


_MODULES = ("ddp", "fsdp", "tp", "pp", "deepspeed", "zero1")
# the module that registers a strategy (the others are not imported for it: DeepSpeed is heavy)
_MODULE_OF = {"ddp": "ddp", "fsdp": "fsdp", "zero2": "fsdp", "zero3": "fsdp", "tp": "tp", "pp": "pp",
              "zero1": "zero1"}


def _import(mod: str) -> None:
    import importlib

    try:
        importlib.import_module(f"trainlab.distributed.{mod}")
    except ModuleNotFoundError as exc:
        if exc.name != f"trainlab.distributed.{mod}":  # the module exists but lacks a dependency: say so
            raise


def _load_builtin(names: Sequence[str] = _MODULES) -> None:
    """Import the modules that register strategies (lazily: torch.distributed pieces are heavy)."""
    for mod in names:
        _import(mod)


def strategy_names() -> list[str]:
    _load_builtin()
    return sorted(_REGISTRY)


def resolve_strategy_name(cfg: DistConfig, world: int) -> str:
    """``dist.strategy``, with ``auto`` decided by the mesh sizes (tp, pp, dp_shard)."""
    name = cfg.strategy
    if name == "auto":
        if cfg.tp > 1:
            name = "tp"
        elif cfg.pp > 1:
            name = "pp"
        elif cfg.dp_shard not in (1, -1):
            name = "fsdp"
        else:
            name = "ddp"
    if name == "none" and world > 1:
        raise UserError(f"dist.strategy=none but {world} processes were started; choose ddp, fsdp, ... or run "
                        "one process", key="dist.strategy")
    return name


def build_strategy(ctx: DistContext | None) -> Strategy:
    """The strategy object of this run (`LOCAL` for one process)."""
    if ctx is None:
        return LOCAL
    engine = ctx.config.engine
    mod = "deepspeed" if engine == "deepspeed" else _MODULE_OF.get(ctx.strategy)
    _load_builtin([mod] if mod is not None else _MODULES)
    if (f"{engine}:{ctx.strategy}" if engine != "torch" else ctx.strategy) not in _REGISTRY:
        _load_builtin()
    factory = _REGISTRY.get(f"{engine}:{ctx.strategy}") if engine != "torch" else None
    factory = factory or (_REGISTRY.get(ctx.strategy) if engine == "torch" else None)
    if factory is None and engine != "torch":
        raise UserError(f"dist.engine={engine} has no strategy {ctx.strategy} (registered as "
                        f"'{engine}:{ctx.strategy}')", key="dist.engine")
    if factory is None:
        have = ", ".join(sorted(_REGISTRY))
        raise UserError(f"dist.strategy={ctx.strategy} is not available (have: {have})", key="dist.strategy")
    return factory(ctx)

