"""The one optimizer step: accumulate K micro-batches, unscale, clip, update.

One optimizer step (see `trainlab.train.loop` for everything around it)::

    N     = Σ_mb objective.count(mb)                  # before any forward pass
    for mb in micro_batches:
        out = objective(model, mb)                    # under autocast (bf16/fp16)
        backward(scale · out.loss_sum / N)            # scale = 1 unless fp16
    unscale_(grads); clip ‖g‖₂ to grad_clip           # clip on true (unscaled) gradients
    optimizer.step()                                  # skipped if fp16 grads overflowed
    scaler.update(); zero_grad(set_to_none=True)

Dividing by the step's total count ``N`` (not by the number of micro-batches) makes K micro-batches
give the gradient of one batch of the same examples, whatever the padding (see `objectives`).

Distributed (``dist``: a `trainlab.distributed.strategy.Strategy`): each rank holds its share of the
step's examples; ``N`` is summed over the data-parallel ranks (one all-reduce) before any forward,
each rank backpropagates ``grad_scale · loss_sum / N`` (``grad_scale`` = ``dp_world`` undoes the
reducers' averaging), micro-steps before the last skip gradient communication where the strategy
allows (DDP ``no_sync``), the norm is the global one, and the loss, token counts and metrics are
summed over ranks: every rank returns the numbers one process would.
Every training run and every measurement of a training step calls `optimizer_step`; measurements
observe it through `StepHooks`.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from trainlab.config import Precision
from trainlab.train.amp import LossScaler, autocast_context
from trainlab.train.objectives import Batch, Objective

if TYPE_CHECKING:
    from trainlab.distributed.strategy import Strategy


@dataclass
class StepStats:
    """Gradient accumulation over one step's micro-batches (before the optimizer update)."""

    loss_sum: Tensor  # fp32 scalar, detached: Σ loss_sum over micro-batches
    count: float
    tokens: int
    metrics: dict[str, float] = field(default_factory=dict)  # count-weighted means


def to_device(batch: Batch, device: torch.device) -> Batch:
    return {k: v.to(device) if isinstance(v, Tensor) else v for k, v in batch.items()}


def count_tokens(batch: Batch) -> int:
    """Input tokens in ``batch``: Σ attention masks if present (any ``*attention_mask`` key, so
    preference batches count both sides), else the size of the ``*input_ids`` tensors."""
    masks = [v for k, v in batch.items() if k.endswith("attention_mask") and isinstance(v, Tensor)]
    if masks:
        return int(sum(int(m.sum().item()) for m in masks))
    return int(sum(v.numel() for k, v in batch.items() if k.endswith("input_ids") and isinstance(v, Tensor)))


class StepHooks:
    """Observe one optimizer step from outside: ``phase(name, index)`` wraps each phase.

    Phases, in order: ``("forward", i)`` and ``("backward", i)`` for every micro-batch ``i``, then
    ``("optimizer", 0)`` (unscale, clip, update). Measurements (memory meters, the profiler's
    ``record_function``, saved-tensor hooks) subclass this instead of re-writing the step.
    ``forward_output(i, out)`` sees each micro-batch's `ObjectiveOutput` before it is released.
    """

    def phase(self, name: str, index: int) -> contextlib.AbstractContextManager[Any]:
        del name, index
        return contextlib.nullcontext()

    def forward_output(self, index: int, out: Any) -> None:
        del index, out


_NO_HOOKS = StepHooks()


def accumulate_gradients(model: nn.Module, objective: Objective, micro_batches: Sequence[Batch], *,
                         device: torch.device, precision: Precision = "fp32",
                         scaler: LossScaler | None = None, hooks: StepHooks | None = None,
                         dist: Strategy | None = None) -> StepStats:
    """Forward + backward of every micro-batch, each scaled by ``1 / N`` (``N``: the step's count).

    Gradients accumulate into ``.grad`` (call ``zero_grad`` before). With ``N = 0`` (nothing
    supervised in the whole step) nothing is run and the returned count is 0. With ``dist``, ``N``,
    the loss, tokens and metrics are sums over the data-parallel ranks (see the module docstring).
    """
    hooks = hooks or _NO_HOOKS
    total = sum(objective.count(mb) for mb in micro_batches)
    tokens = sum(count_tokens(mb) for mb in micro_batches)
    if dist is not None:
        total_f, tokens_f = dist.all_reduce_sum([total, tokens])
        total = int(total_f) if float(total_f).is_integer() else total_f
        tokens = int(tokens_f)
    loss_sum = torch.zeros((), device=device, dtype=torch.float32)
    if total == 0:
        return StepStats(loss_sum=loss_sum, count=0, tokens=tokens)
    metric_sums: dict[str, float] = {}
    metric_weights: dict[str, float] = {}
    scale = dist.grad_scale if dist is not None else 1.0
    last = len(micro_batches) - 1
    run_all = dist.accumulate if dist is not None else None
    if run_all is not None:  # an engine that runs every micro-batch at once (a pipeline schedule)
        with hooks.phase("forward", 0):
            loss_sum, metric_sums, metric_weights = run_all(model, objective, micro_batches, total=total,
                                                            scale=scale, device=device)
        micro_batches = []
    for i, mb in enumerate(micro_batches):
        mb = to_device(mb, device)
        with contextlib.ExitStack() as sync:
            if dist is not None:
                sync.enter_context(dist.micro_step(model, i == last))
            with hooks.phase("forward", i):
                with autocast_context(device, precision):
                    out = (objective(model, mb) if dist is None
                           else dist.forward(model, lambda m, mb=mb: objective(m, mb)))
                loss = out.loss_sum / total if scale == 1.0 else out.loss_sum * scale / total
            hooks.forward_output(i, out)
            loss_sum += out.loss_sum.detach().float()
            for k, v in out.metrics.items():
                metric_sums[k] = metric_sums.get(k, 0.0) + float(v) * float(out.count)
                metric_weights[k] = metric_weights.get(k, 0.0) + float(out.count)
            del out
            with hooks.phase("backward", i):
                scaled = scaler.scale(loss) if scaler is not None else loss
                if dist is not None:
                    dist.backward(scaled)
                else:
                    scaled.backward()
                del loss, scaled
    if dist is not None:
        loss_sum = torch.tensor(dist.all_reduce_sum([loss_sum.item()])[0], device=device, dtype=torch.float32)
        metric_sums, metric_weights = dist.reduce_metrics(metric_sums, metric_weights)
    metrics = {k: metric_sums[k] / metric_weights[k] for k in metric_sums if metric_weights[k] > 0}
    return StepStats(loss_sum=loss_sum, count=total, tokens=tokens, metrics=metrics)


@dataclass
class StepOutcome:
    """What one optimizer step did: its accumulated stats, loss, gradient norm, whether it updated."""

    stats: StepStats
    loss: float  # loss_sum / count of the step (nan when nothing was supervised)
    grad_norm: float  # global L2 norm before clipping (unscaled)
    stepped: bool  # the update was applied (False: fp16 overflow, empty step, or non-finite)
    finite: bool  # loss and gradient norm finite (always True for fp16, whose overflow the scaler handles)


def optimizer_step(model: nn.Module, objective: Objective, micro_batches: Sequence[Batch],
                   optimizer: torch.optim.Optimizer, scaler: LossScaler, *, device: torch.device,
                   precision: Precision = "fp32", grad_clip: float = 0.0,
                   params: Sequence[nn.Parameter] | None = None, hooks: StepHooks | None = None,
                   dist: Strategy | None = None) -> StepOutcome:
    """THE optimizer step (see the module docstring): accumulate, unscale, clip, update, zero grads.

    Every training run and every measurement of a training step calls this function; what a
    measurement needs to see it gets through ``hooks``. In fp32/bf16 a non-finite loss or gradient
    norm skips the update and returns ``finite=False`` (the `Trainer` turns that into
    `TrainingDiverged`); in fp16 the loss scaler skips overflowing steps itself. ``dist``: the run's
    distribution strategy (None: one process), see the module docstring.
    """
    hooks = hooks or _NO_HOOKS
    stats = accumulate_gradients(model, objective, micro_batches, device=device, precision=precision,
                                 scaler=scaler, hooks=hooks, dist=dist)
    if stats.count == 0:
        optimizer.zero_grad(set_to_none=True)
        return StepOutcome(stats, math.nan, 0.0, stepped=False, finite=True)
    if params is None:
        params = [p for g in optimizer.param_groups for p in g["params"]]
    with hooks.phase("optimizer", 0):
        scaler.unscale_(optimizer)
        norm = grad_norm_(params, grad_clip) if dist is None else dist.clip_grad_norm(params, grad_clip)
        # One host sync per step, for both values; needed anyway to detect divergence.
        pair = torch.stack([stats.loss_sum / stats.count, norm.float().to(stats.loss_sum.device)])
        loss, gnorm = pair.tolist()
        finite = precision == "fp16" or (math.isfinite(loss) and math.isfinite(gnorm))
        stepped = False
        if finite:
            stepped = scaler.step(optimizer)  # an engine that owns the update gives it as the optimizer
            scaler.update()
    optimizer.zero_grad(set_to_none=True)
    return StepOutcome(stats, loss, gnorm, stepped=stepped, finite=finite)


def grad_norm_(params: Sequence[nn.Parameter], max_norm: float) -> Tensor:
    """Global L2 norm of the gradients (before clipping); clip to ``max_norm`` if it is > 0.

    Clipping by global norm (Pascanu et al., "On the difficulty of training recurrent neural
    networks", 2013) rescales all gradients by ``min(1, max_norm / ‖g‖)``, keeping the direction.
    """
    if max_norm > 0:
        return torch.nn.utils.clip_grad_norm_(params, max_norm, foreach=True)
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.zeros(())
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.float()) for g in grads]))
