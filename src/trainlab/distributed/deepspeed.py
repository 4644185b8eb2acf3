"""DeepSpeed ZeRO stages 1-3 as strategies: ``dist.engine=deepspeed dist.strategy=zero1|zero2|zero3``.

Optional extra (``pip install trainlab[deepspeed]``; on a CPU ``DS_BUILD_OPS=0`` and DeepSpeed's CPU
accelerator with gloo). The same training step runs; DeepSpeed's engine (Rasley et al. 2020; ZeRO:
Rajbhandari et al. 2020) owns what it must own:

* ``wrap``: ``deepspeed.initialize`` with trainlab's own optimizer (`trainlab.optim.build_optimizer`:
  AdamW with its decay groups, built from the run's ``train`` section) and a config of ``zero_optimization.stage``
  = 1/2/3, ``gradient_clipping`` = ``train.grad_clip``, fp32 (the loop's autocast does mixed precision);
* micro-steps: ``engine.set_gradient_accumulation_boundary(last)`` (reduction only at the step's last
  micro-batch, for stage 1 and 2), ``engine.backward(loss, scale_wrt_gas=False)`` (the loop has already
  divided by the step's token count) — DeepSpeed averages over the data-parallel ranks, hence
  ``grad_scale = dp_world`` as for DDP;
* the update: the optimizer the loop steps is DeepSpeed's ZeRO optimizer (`build_optimizer`), which
  clips by the global norm and updates its fp32 partitions; the gradient norm the loop logs is its
  own (``scaled_global_norm`` for stages 1/2, the partitioned norm groups for stage 3);
* stage 3: parameters live partitioned; the tied embedding, which the loss head reads outside the
  embedding's forward, is registered as an external parameter of the model (gathered with it).

Per step, ZeRO-1/2 send what DDP sends (``2(p−1)/p·S``); ZeRO-3 1.5x (`trainlab.distributed.comm`).
Checkpoints: the loop's torch.distributed.checkpoint in the layout every strategy uses (parameters and
AdamW states keyed by parameter name, full tensors assembled with DeepSpeed's ``safe_get_full_*``), so a
ZeRO-1/2 run resumes on any world size or under another strategy; resuming *into* a ZeRO-3 engine is
refused (its partitions are not re-set from full tensors here).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import torch
from torch import Tensor, nn

from trainlab.distributed.ddp import call_as_forward
from trainlab.distributed.strategy import Strategy, register_strategy
from trainlab.errors import UserError

T = TypeVar("T")


def available() -> tuple[bool, str]:
    """(True, "") if DeepSpeed imports here, else (False, why)."""
    os.environ.setdefault("DS_BUILD_OPS", "0")
    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    try:
        import deepspeed  # noqa: F401
    except Exception as exc:  # ImportError, or a broken build raising anything at import
        return False, f"{type(exc).__name__}: {exc}"
    return True, ""


#: What a DeepSpeed rank imports (seconds each): import once before forking ranks (`run_ranks(preload=)`).
PRELOAD = ("deepspeed", "deepspeed.runtime.engine", "deepspeed.runtime.zero.stage_1_and_2",
           "deepspeed.runtime.zero.stage3")


def ds_config(stage: int, micro_batch: int, grad_clip: float, params: int) -> dict[str, Any]:
    """DeepSpeed's config. Buckets are sized to the model (at most DeepSpeed's 5e8 elements): the default
    allocates 5e8 fp32 elements (2 GB) for a model of any size at the first reduction."""
    bucket = int(min(5e8, max(params, 1)))
    zero: dict[str, Any] = {"stage": stage, "reduce_bucket_size": bucket, "allgather_bucket_size": bucket}
    if stage == 3:
        zero |= {"stage3_prefetch_bucket_size": bucket, "stage3_param_persistence_threshold": 0}
        del zero["allgather_bucket_size"]
    return {"train_micro_batch_size_per_gpu": max(micro_batch, 1), "gradient_accumulation_steps": 1,
            "zero_optimization": zero, "gradient_clipping": float(grad_clip),
            "steps_per_print": 10**9, "wall_clock_breakdown": False, "zero_allow_untested_optimizer": True}


class DeepSpeedStrategy(Strategy):
    """``dist.engine=deepspeed``: ZeRO stage ``stage`` through DeepSpeed's engine (module docstring)."""

    stage = 2
    shards_parameters = True

    def __init__(self, ctx: Any) -> None:
        super().__init__(ctx)
        ok, why = available()
        if not ok:
            raise UserError(f"dist.engine=deepspeed: DeepSpeed is not usable here ({why}); pip install "
                            "'trainlab[deepspeed]' (on a CPU with DS_BUILD_OPS=0)", key="dist.engine")
        self.name = f"deepspeed:zero{self.stage}"
        self.description = f"DeepSpeed ZeRO stage {self.stage}"
        self.cfg: Any = None
        self.engine: Any = None
        self._skeleton: nn.Module | None = None
        self._optimizer_taken = False

    def validate(self, cfg: Any) -> None:
        if getattr(cfg, "precision", "fp32") == "fp16":
            raise UserError("dist.engine=deepspeed with train.precision=fp16: use bf16 or fp32 (the loop's "
                            "autocast; DeepSpeed's own fp16 loss scaling is not wired in)", key="train.precision")
        self.cfg = cfg

    def wrap(self, model: nn.Module) -> nn.Module:
        import deepspeed

        from trainlab.optim import build_optimizer

        if self.cfg is None:
            raise RuntimeError("DeepSpeedStrategy.validate(train_cfg) must run before wrap (it needs the optimizer "
                               "settings)")
        assert self.ctx is not None
        micro = max(int(getattr(self.cfg, "batch_size", 1)) // self.ctx.dp_world, 1)
        if self.stage == 3 and self.ctx.is_main:
            from trainlab.distributed.fsdp import meta_skeleton

            self._skeleton = meta_skeleton(model)
        optimizer = build_optimizer(model, self.cfg.model_copy(update={"fused": False}))
        names = {id(p): n for n, p in model.named_parameters()}
        self._group_names = [[names[id(p)] for p in g["params"]] for g in optimizer.param_groups]
        for group in optimizer.param_groups:  # DeepSpeed flattens groups; torch's name list is not a tensor list
            group.pop("param_names", None)
        self.engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer,
                                                    config=ds_config(self.stage, micro, self.cfg.grad_clip,
                                                                     sum(p.numel() for p in model.parameters())),
                                                    dist_init_required=False)
        if self.stage == 3:
            head = getattr(model, "output_embedding", None)
            if head is not None:
                deepspeed.zero.register_external_parameter(model, head())
        return self.engine

    def unwrap(self, model: nn.Module) -> nn.Module:
        return getattr(model, "module", model)

    def build_optimizer(self, model: nn.Module, cfg: Any) -> Any:
        """The optimizer the loop must step: DeepSpeed's ZeRO optimizer (it owns the gradient partitions)."""
        del model, cfg
        self._optimizer_taken = True
        return self.engine.optimizer

    def forward(self, model: nn.Module, fn: Callable[[nn.Module], T]) -> T:
        return call_as_forward(model, self.unwrap(model), fn)

    def micro_step(self, model: nn.Module, last: bool) -> contextlib.AbstractContextManager[Any]:
        self.engine.set_gradient_accumulation_boundary(last)
        return contextlib.nullcontext()

    @property
    def grad_scale(self) -> float:
        assert self.ctx is not None
        return float(self.ctx.dp_world)

    def backward(self, loss: Tensor) -> None:
        self.engine.backward(loss, scale_wrt_gas=False)

    def clip_grad_norm(self, params: Sequence[nn.Parameter], max_norm: float) -> Tensor:
        # DeepSpeed clips inside its optimizer step (gradient_clipping = max_norm); this is its norm.
        del params, max_norm
        if not self._optimizer_taken:  # a loop stepping its own optimizer would silently never update
            raise UserError("dist.engine=deepspeed: this training loop steps an optimizer of its own, not "
                            "DeepSpeed's (Strategy.build_optimizer); DeepSpeed would never update the weights",
                            key="dist.engine")
        opt = self.engine.optimizer
        if self.stage == 3:
            from deepspeed.runtime.utils import combine_grad_norm_groups

            norm = combine_grad_norm_groups(opt._get_norm_groups())
        else:
            norm = opt.scaled_global_norm()
        return torch.as_tensor(norm, dtype=torch.float32).detach().cpu()

    def memory_tensors(self, model: nn.Module) -> dict[str, list[Tensor]]:
        """DeepSpeed's own buffers: its partitioned gradients and its fp32 copy of the parameter partition."""
        del model
        opt = self.engine.optimizer
        grads = [t for v in getattr(opt, "averaged_gradients", {}).values()
                 for t in (v if isinstance(v, list) else [v]) if isinstance(t, Tensor)]
        master = (getattr(opt, "fp32_partitioned_groups_flat", None) if self.stage == 3
                  else getattr(opt, "single_partition_of_fp32_groups", None)) or []
        out = {"gradients": grads, "master_weights": [t for t in master if isinstance(t, Tensor)]}
        if self.stage == 3:  # a partitioned parameter's data is empty; its shard is ds_tensor
            out["parameters"] = [p.ds_tensor for p in self.unwrap(self.engine).parameters()
                                 if isinstance(getattr(p, "ds_tensor", None), Tensor)]
        return out

    # -- checkpoints: the FQN layout of torch's get_model_state_dict / get_optimizer_state_dict --------------

    def _params(self) -> dict[str, nn.Parameter]:
        return dict(self.unwrap(self.engine).named_parameters())

    def model_state_dict(self, model: nn.Module) -> dict[str, Any]:
        from deepspeed.utils import safe_get_full_fp32_param

        del model
        return {n: safe_get_full_fp32_param(p).detach().cpu().clone() for n, p in self._params().items()}

    def load_model_state_dict(self, model: nn.Module, state: dict[str, Any]) -> None:
        from deepspeed.utils import safe_set_full_fp32_param

        del model
        if self.stage == 3:
            raise UserError("resuming into dist.engine=deepspeed zero3 is not supported; resume with zero1/zero2 or "
                            "dist.engine=torch (the checkpoint's layout is the same)", key="dist.strategy")
        for n, p in self._params().items():
            safe_set_full_fp32_param(p, state[n].to(p.device))
            with torch.no_grad():
                p.copy_(state[n].to(p.device, p.dtype))

    def _link_states(self) -> None:
        """DeepSpeed links each parameter to its optimizer-state fragments lazily (ZeRO-1/2)."""
        opt = self.engine.optimizer
        link = getattr(opt, "_lazy_init_hp_params_optimizer_state", None)
        inner = getattr(opt, "optimizer", None)
        for flat in getattr(opt, "single_partition_of_fp32_groups", []) if inner is not None else []:
            if not inner.state.get(flat):  # before the first step: AdamW's state as it would create it
                inner.state[flat] = {"step": torch.zeros((), dtype=torch.float32),
                                     "exp_avg": torch.zeros_like(flat), "exp_avg_sq": torch.zeros_like(flat)}
        if link is not None:  # linked again: a link made before AdamW's lazy state existed is empty
            opt._hp_optimizer_states_linked = False
            link()

    def _step_count(self) -> Any:
        inner = getattr(self.engine.optimizer, "optimizer", None)
        for st in (inner.state.values() if inner is not None else []):
            if "step" in st:
                return st["step"]
        return torch.zeros(())

    def optimizer_state_dict(self, model: nn.Module, optimizer: Any) -> dict[str, Any]:
        from deepspeed.utils import safe_get_full_optimizer_state

        del model
        self._link_states()
        params = self._params()
        step = torch.as_tensor(self._step_count(), dtype=torch.float32).clone()
        state = {}
        for n, p in params.items():
            entry = {k: v.detach().cpu().clone() for k in ("exp_avg", "exp_avg_sq")
                     if (v := safe_get_full_optimizer_state(p, k)) is not None}
            state[n] = entry | {"step": step.clone()}
        groups = []
        for g, names in zip(optimizer.param_groups, self._group_names, strict=False):
            groups.append({k: v for k, v in g.items() if k != "params"} | {"params": list(names),
                                                                           "param_names": list(names)})
        return {"state": state, "param_groups": groups}

    def load_optimizer_state_dict(self, model: nn.Module, optimizer: Any, state: dict[str, Any]) -> None:
        from deepspeed.utils import safe_set_full_optimizer_state

        del model, optimizer
        if self.stage == 3:
            raise UserError("resuming into dist.engine=deepspeed zero3 is not supported", key="dist.strategy")
        self._link_states()
        step = None
        for n, p in self._params().items():
            entry = state["state"][n]
            for k in ("exp_avg", "exp_avg_sq"):
                if k in entry:
                    safe_set_full_optimizer_state(p, entry[k].to(p.device), k)
            step = entry.get("step", step)
        inner = getattr(self.engine.optimizer, "optimizer", None)
        for st in (inner.state.values() if inner is not None and step is not None else []):
            if "step" in st:
                st["step"] = torch.as_tensor(step, dtype=st["step"].dtype if torch.is_tensor(st["step"])
                                             else torch.float32).clone()

    def full_state_dict(self, model: nn.Module) -> dict[str, Tensor]:
        inner = self.unwrap(model)
        assert self.ctx is not None
        if self.stage == 3:
            import deepspeed

            with deepspeed.zero.GatheredParameters(list(inner.parameters()), modifier_rank=None):
                state = {k: v.detach().cpu().clone() for k, v in inner.state_dict().items()}
        else:
            state = {k: v.detach().cpu().clone() for k, v in inner.state_dict().items()}
        return state if self.ctx.is_main else {}

    def final_model(self, model: nn.Module) -> nn.Module | None:
        state = self.full_state_dict(model)
        assert self.ctx is not None
        if not self.ctx.is_main:
            return None
        if self.stage != 3:
            return self.unwrap(model)
        from trainlab.distributed.fsdp import load_into_skeleton

        assert self._skeleton is not None
        skeleton, self._skeleton = self._skeleton, None
        return load_into_skeleton(skeleton, state)


def _register(stage: int) -> None:
    cls = type(f"DeepSpeedZero{stage}", (DeepSpeedStrategy,), {"stage": stage})
    register_strategy(f"deepspeed:zero{stage}")(cls)


for _stage in (1, 2, 3):
    _register(_stage)

__all__ = ["PRELOAD", "DeepSpeedStrategy", "available", "ds_config"]
