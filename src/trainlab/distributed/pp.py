"""Pipeline parallelism for the decoder with ``torch.distributed.pipelining`` (GPipe and 1F1B).

The decoder is cut into ``pp`` stages of consecutive blocks (stage 0 also holds the embedding, the
last stage the final norm and the LM head); each rank keeps one stage (`PipelineStageModule`, whose
parameter names are the decoder's, so state dicts merge back into one model). The step's ``K``
accumulation micro-batches are the pipeline's micro-batches: one ``schedule.step`` runs them all,

* GPipe (Huang et al. 2019): every micro-batch's forward, then every backward (``K`` micro-batches of
  activations alive per stage);
* 1F1B (PipeDream-Flush, Narayanan et al. 2021): after a warm-up, one forward then one backward, so a
  stage holds at most ``pp`` micro-batches of activations; the bubble is the same ``(pp−1)/(K+pp−1)``.

The loss is the run's own objective, evaluated on the last stage through a view whose
``hidden_states`` is the pipeline's output; each micro-batch backpropagates ``loss_sum · scale / N``
(``N``: the step's supervised count) with ``scale_grads=False``, so the gradients are the
single-process ones. A tied embedding (our decoder's default) lives on the first stage and as a copy on
the last; their gradients are summed between those two ranks before the update, which keeps the two
copies equal (Megatron-LM's embedding group). The global gradient norm sums each stage's squares
(the tied copy counted once).

Activations between stages travel point to point: ``b·s·h`` per micro-batch forward and again
backward per boundary (`trainlab.distributed.comm.strategy_volume("pp", ...)`). Batches must be
right-padded (positions are ``0..T-1``; the attention mask does not travel through the pipeline).
Evaluation and the saved model gather the whole decoder (every stage's weights) on every rank.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from trainlab.errors import UserError


def stage_layers(n_layers: int, stages: int, stage: int) -> range:
    """Blocks of ``stage``: consecutive, as equal as possible (earlier stages take the remainder)."""
    if n_layers < stages:
        raise UserError(f"pipeline parallel with {stages} stages needs at least {stages} layers "
                        f"(model.n_layers={n_layers})", key="dist.pp")
    base, extra = divmod(n_layers, stages)
    start = stage * base + min(stage, extra)
    return range(start, start + base + (1 if stage < extra else 0))


class PipelineStageModule(nn.Module):
    """One stage of a `trainlab.model.decoder.Decoder`: ``forward(x)`` takes input ids on the first
    stage and hidden states elsewhere, and returns hidden states (final-normed on the last stage)."""

    def __init__(self, model: nn.Module, stage: int, stages: int) -> None:
        super().__init__()
        self.config = model.config
        self.first, self.last = stage == 0, stage == stages - 1
        self.embed = model.embed if self.first else None
        keep = stage_layers(len(model.layers), stages, stage)
        self.layers = nn.ModuleDict({str(i): model.layers[i] for i in keep})
        self.norm = model.norm if self.last else None
        self.lm_head = model.lm_head if self.last else None
        self.tied_head: nn.Parameter | None = None
        if self.last and model.lm_head is None:  # tied: the last stage keeps a copy of the embedding
            self.tied_head = nn.Parameter(model.embed.weight.detach().clone())

    def forward(self, x: Tensor) -> Tensor:
        from trainlab.model.decoder import rope_cos_sin

        if self.first:
            x = self.embed(x)
        b, t = x.shape[0], x.shape[1]
        positions = torch.arange(t, device=x.device).expand(b, t)
        cos, sin = rope_cos_sin(positions, self.config.head_dim, self.config.rope_theta, x.dtype)
        for i, layer in self.layers.items():
            x = layer(x, cos, sin, None, None, int(i))
        return self.norm(x) if self.last else x

    def output_embedding(self) -> Tensor:
        if not self.last:
            raise RuntimeError("only the last pipeline stage has the LM head")
        return self.tied_head if self.tied_head is not None else self.lm_head.weight


class _LastStageView:
    """What an objective sees on the last stage: the pipeline output as ``hidden_states``."""

    def __init__(self, hidden: Tensor, stage: PipelineStageModule) -> None:
        self.hidden, self.stage = hidden, stage

    def hidden_states(self, input_ids: Tensor, *args: Any, **kwargs: Any) -> Tensor:
        del input_ids, args, kwargs
        return self.hidden

    def output_embedding(self) -> Tensor:
        return self.stage.output_embedding()


def check_right_padded(batch: dict[str, Tensor]) -> None:
    mask = batch.get("attention_mask")
    if mask is not None and not bool((mask[:, 1:] <= mask[:, :-1]).all()):
        raise UserError("dist.strategy=pp needs right-padded batches (the attention mask does not travel through "
                        "the pipeline); this batch has padding before real tokens", key="dist.strategy")


def _pad_to(batch: dict[str, Tensor], length: int) -> dict[str, Tensor]:
    t = batch["input_ids"].shape[1]
    if t == length:
        return batch
    fill = {"input_ids": 0, "labels": -100, "attention_mask": 0}
    return {k: torch.nn.functional.pad(v, (0, length - t), value=fill.get(k, 0)) if v.dim() == 2 else v
            for k, v in batch.items()}


def _register() -> None:
    from trainlab.distributed.strategy import Strategy, register_strategy

    @register_strategy("pp")
    class PipelineStrategy(Strategy):
        """``dist.strategy=pp`` (``dist.pp=N``, ``dist.pp_schedule=1f1b|gpipe``): one decoder stage per rank."""

        name = "pp"
        description = "pipeline parallel (torch.distributed.pipelining; GPipe or 1F1B)"
        shards_parameters = True

        def __init__(self, ctx: Any) -> None:
            super().__init__(ctx)
            mesh = ctx.mesh["pp"] if ctx.mesh is not None else None
            if mesh is None or mesh.size() != ctx.world:
                raise UserError(f"dist.strategy=pp runs one stage per process: set dist.pp={ctx.world} (pipeline "
                                "combined with data or tensor parallelism is not implemented)", key="dist.pp")
            self.mesh = mesh
            self.group = mesh.get_group()
            self.stages = mesh.size()
            self.stage_index = mesh.get_local_rank()
            self.schedule_name = getattr(ctx.config, "pp_schedule", "1f1b")
            self._schedules: dict[int, Any] = {}
            self._stage: Any = None
            self.module: PipelineStageModule | None = None

        def validate(self, cfg: Any) -> None:
            if getattr(cfg, "precision", "fp32") == "fp16":
                raise UserError("dist.strategy=pp with train.precision=fp16: use bf16 or fp32", key="train.precision")
            k = int(getattr(cfg, "grad_accum", 1))
            if self.schedule_name == "1f1b" and k < self.stages:
                raise UserError(f"dist.pp_schedule=1f1b needs at least as many micro-batches as stages: "
                                f"train.grad_accum={k} < dist.pp={self.stages}; raise train.grad_accum (the "
                                "pipeline's micro-batches) or use dist.pp_schedule=gpipe", key="train.grad_accum")

        def wrap(self, model: nn.Module) -> nn.Module:
            if not hasattr(model, "layers") or not hasattr(model, "embed"):
                raise UserError(f"pipeline parallel needs trainlab's Decoder; got {type(model).__name__}",
                                key="dist.strategy")
            from trainlab.distributed.fsdp import meta_skeleton

            self._skeleton = meta_skeleton(model)
            self.module = PipelineStageModule(model, self.stage_index, self.stages)
            return self.module

        def _schedule(self, n: int, loss_fn: Callable[[Tensor, Tensor], Tensor]) -> Any:
            from torch.distributed.pipelining import PipelineStage, Schedule1F1B, ScheduleGPipe

            if self._stage is None:
                self._stage = PipelineStage(self.module, self.stage_index, self.stages, self.ctx.device,
                                            group=self.group)
            if n not in self._schedules:
                cls = ScheduleGPipe if self.schedule_name == "gpipe" else Schedule1F1B
                self._schedules[n] = cls(self._stage, n, loss_fn=self._loss_proxy, scale_grads=False)
            self._loss_fn = loss_fn
            return self._schedules[n]

        def _loss_proxy(self, output: Tensor, target: Tensor) -> Tensor:
            return self._loss_fn(output, target)

        def accumulate(self, model: nn.Module, objective: Any, micro_batches: Sequence[dict[str, Tensor]], *,
                       total: float, scale: float, device: torch.device
                       ) -> tuple[Tensor, dict[str, float], dict[str, float]]:
            """Run all micro-batches through the pipeline schedule: (loss_sum, metric sums, metric weights),
            the same on every rank (broadcast from the last stage)."""
            del model
            for mb in micro_batches:
                check_right_padded(mb)
            length = max(int(mb["input_ids"].shape[1]) for mb in micro_batches)
            padded = [_pad_to(mb, length) for mb in micro_batches]
            ids = torch.cat([mb["input_ids"] for mb in padded]).to(device)
            labels = torch.cat([mb["labels"] for mb in padded]).to(device)
            calls: list[tuple[float, dict[str, float], float]] = []

            def loss_fn(output: Tensor, target: Tensor) -> Tensor:
                out = objective(_LastStageView(output, self.module), {"input_ids": target, "labels": target})
                calls.append((float(out.loss_sum.detach()), dict(out.metrics), float(out.count)))
                return out.loss_sum * scale / total

            schedule = self._schedule(len(micro_batches), loss_fn)
            if self.module.first:
                schedule.step(ids, target=labels if self.module.last else None)
            elif self.module.last:
                schedule.step(target=labels)
            else:
                schedule.step()
            # The schedule's first step also calls the loss once to infer gradient shapes: the micro-batches
            # are the last len(micro_batches) calls.
            real = calls[-len(micro_batches):] if self.module.last else []
            metric_sums: dict[str, float] = {}
            metric_weights: dict[str, float] = {}
            for _, metrics, count in real:
                for k, v in metrics.items():
                    metric_sums[k] = metric_sums.get(k, 0.0) + v * count
                    metric_weights[k] = metric_weights.get(k, 0.0) + count
            last_rank = dist.get_global_rank(self.group, self.stages - 1)
            payload = [(sum(c[0] for c in real), metric_sums, metric_weights)]
            dist.broadcast_object_list(payload, src=last_rank, group=self.group)
            loss, metric_sums, metric_weights = payload[0]
            self._sum_tied_grads()
            return torch.tensor(loss, device=device, dtype=torch.float32), metric_sums, metric_weights

        def _tied(self) -> Tensor | None:
            m = self.module
            if m is None or m.lm_head is not None or self.stages == 1:
                return None
            if m.first:
                return m.embed.weight
            return m.tied_head if m.last else None

        def _sum_tied_grads(self) -> None:
            """Σ of the tied embedding's gradients of the first and last stage, on both (a sum over the pp group:
            middle stages contribute zeros)."""
            if self.module is None or self.module.lm_head is not None:
                return
            tied = self._tied()
            ref = self.module.embed.weight if self.module.first else self.module.tied_head
            shape = ref.shape if ref is not None else None
            if shape is None:  # a middle stage: only the size is needed
                shape = (self.module.config.vocab_size, self.module.config.dim)
            grad = tied.grad if tied is not None and tied.grad is not None else None
            buf = grad if grad is not None else torch.zeros(shape, device=self.ctx.comm_device)
            dist.all_reduce(buf, group=self.group)
            if tied is not None:
                tied.grad = buf

        def all_reduce_sum(self, values: Any) -> list[float]:
            return [float(v) for v in values]  # every stage sees the whole batch

        def reduce_metrics(self, sums: dict[str, float], weights: dict[str, float]) -> tuple[dict[str, float],
                                                                                             dict[str, float]]:
            return sums, weights

        def clip_grad_norm(self, params: Sequence[nn.Parameter], max_norm: float) -> Tensor:
            tied_copy = self.module.tied_head if self.module is not None and not self.module.first else None
            sq = torch.zeros((), dtype=torch.float64)
            grads = [p.grad for p in params if p.grad is not None]
            for p in params:
                if p.grad is not None and p is not tied_copy:
                    sq += p.grad.double().pow(2).sum().cpu()
            dist.all_reduce(sq, group=self.group)
            norm = sq.sqrt().float()
            if max_norm > 0:
                coef = torch.clamp(max_norm / (norm + 1e-6), max=1.0)
                for g in grads:
                    g.mul_(coef.to(g.dtype))
            return norm

        def full_state_dict(self, model: nn.Module) -> dict[str, Tensor]:
            mine = {k: v.detach().cpu() for k, v in model.state_dict().items() if not k.startswith("tied_head")}
            gathered: list[Any] = [None] * self.stages
            dist.all_gather_object(gathered, mine, group=self.group)
            if not self.ctx.is_main:
                return {}
            state: dict[str, Tensor] = {}
            for part in gathered:
                state.update(part)
            return state

        def _full_model(self, model: nn.Module) -> nn.Module:
            """The whole decoder with the trained weights, on every rank (collective: gathers every stage)."""
            from trainlab.distributed.fsdp import load_into_skeleton

            mine = {k: v.detach().cpu() for k, v in model.state_dict().items() if not k.startswith("tied_head")}
            gathered: list[Any] = [None] * self.stages
            dist.all_gather_object(gathered, mine, group=self.group)
            state: dict[str, Tensor] = {}
            for part in gathered:
                state.update(part)
            return load_into_skeleton(copy.deepcopy(self._skeleton), state).to(self.ctx.device)

        def final_model(self, model: nn.Module) -> nn.Module | None:
            full = self._full_model(model)
            return full if self.ctx.is_main else None

        def forward(self, model: nn.Module, fn: Callable[[nn.Module], Any]) -> Any:
            """Evaluation (the loop's eval_fn): on the whole model gathered on every rank, each computing the same
            numbers (simple and exact; a pipelined forward-only schedule is not implemented)."""
            full = self._full_model(model)
            full.train(model.training)
            return fn(full)

        def micro_step(self, model: nn.Module, last: bool) -> contextlib.AbstractContextManager[Any]:
            return contextlib.nullcontext()


_register()

__all__ = ["PipelineStageModule", "check_right_padded", "stage_layers"]
