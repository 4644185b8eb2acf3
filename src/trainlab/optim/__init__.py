"""Optimizers and the learning-rate schedule.

`build_optimizer(model, cfg)` returns the optimizer named by ``cfg.optim`` (AdamW: the fused
kernel where torch has one, ``cfg.fused``); `build_scheduler` returns the warm-up + cosine
schedule of `trainlab.optim.schedule`. Every recipe builds its optimizer here.

Weight decay goes to parameters with two or more dimensions — the weight matrices of linear
layers *and the embedding table* — and not to one-dimensional ones (biases, RMSNorm/LayerNorm
gains). This is nanoGPT's rule (``p.dim() >= 2``). Rationale: decay is a prior that pulls a weight
toward 0; for a norm gain the natural centre is 1, and a bias is a shift whose size carries no
capacity cost, so decaying either only fights the model. The embedding table is decayed like any
matrix: with tied embeddings it *is* the LM head, and GPT-2/nanoGPT train well with it decayed.
(Some recipes exempt embeddings; that is a one-line change of `decay_mask`.)

AdamW: Loshchilov & Hutter, "Decoupled Weight Decay Regularization" (ICLR 2019) — the decay
``θ ← θ − lr·λ·θ`` is applied outside the adaptive update, so it is not rescaled by ``1/√v``.

New optimizers register a builder with `register_optimizer` (``optim/lion.py`` adds
``"lion"``); ``cfg.optim`` names the builder.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from trainlab.config import TrainConfig
from trainlab.errors import UserError
from trainlab.optim.schedule import CosineWarmupScheduler, cosine_with_warmup

ParamGroups = list[dict[str, Any]]
OptimizerBuilder = Callable[[ParamGroups, TrainConfig], torch.optim.Optimizer]

_BUILDERS: dict[str, OptimizerBuilder] = {}


def register_optimizer(name: str) -> Callable[[OptimizerBuilder], OptimizerBuilder]:
    """Decorator: make ``builder(param_groups, cfg)`` available as ``cfg.optim == name``."""

    def deco(builder: OptimizerBuilder) -> OptimizerBuilder:
        _BUILDERS[name] = builder
        return builder

    return deco


def available_optimizers() -> list[str]:
    return sorted(_BUILDERS)


def decay_mask(name: str, param: nn.Parameter) -> bool:
    """True if ``param`` gets weight decay: every tensor with ``ndim >= 2`` (see module docstring)."""
    del name  # the rule is by shape; the name is there for recipes that exempt by name
    return param.ndim >= 2


def param_groups(model: nn.Module, weight_decay: float) -> ParamGroups:
    """Two groups, ``decay`` (weight_decay) and ``no_decay`` (0.0), of trainable parameters.

    ``named_parameters()`` yields a tied parameter once, so a tied embedding/LM-head is not
    stepped twice. Frozen parameters (``requires_grad=False``, e.g. a LoRA base) are left out.
    """
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    decay_names: list[str] = []
    no_decay_names: list[str] = []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if decay_mask(name, p):
            decay.append(p)
            decay_names.append(name)
        else:
            no_decay.append(p)
            no_decay_names.append(name)
    groups: ParamGroups = []
    # "param_names" is torch's own key (>= 2.6) for naming a group's parameters; it travels
    # with the optimizer's state_dict, which makes saved optimizer states self-describing.
    if decay:
        groups.append({"params": decay, "weight_decay": weight_decay, "param_names": decay_names})
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0, "param_names": no_decay_names})
    if not groups:
        raise UserError("the model has no trainable parameters")
    return groups


def fused_supported(groups: ParamGroups) -> bool:
    """True if torch has a fused AdamW kernel for every parameter's device and dtype (floating point)."""
    try:
        from torch.optim.optimizer import _get_fused_kernels_supported_devices

        devices = set(_get_fused_kernels_supported_devices())
    except ImportError:  # a torch without the helper: the two devices fused AdamW has had longest
        devices = {"cpu", "cuda"}
    params = [p for g in groups for p in g["params"]]
    return (bool(params) and not mixes_dtensors(groups)
            and all(p.device.type in devices and torch.is_floating_point(p) for p in params))


def mixes_dtensors(groups: ParamGroups) -> bool:
    """DTensor and plain parameters in one optimizer (tensor parallel shards the block matmuls and keeps
    norms and embeddings plain): torch's multi-tensor kernels (fused, foreach) take one kind per call."""
    module = sys.modules.get("torch.distributed.tensor")  # not imported: no DTensor exists
    if module is None:
        return False
    kinds = {isinstance(p, module.DTensor) for g in groups for p in g["params"]}
    return len(kinds) > 1


@register_optimizer("adamw")
def _adamw(groups: ParamGroups, cfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW, fused or foreach (``cfg.fused``; see `fused_supported`).

    Both kernels apply the same update rule. The foreach kernel batches the per-parameter math into
    a dozen or so passes over parameters, gradients and both moments, with temporaries as large as
    the parameters; the fused kernel makes one pass (CPU since torch 2.4, CUDA), which is what a
    fine-tuning step that updates every weight wants. Their results differ by rounding only, and
    each is deterministic, so a resumed run is bit-exact with either (tests/test_optim.py).
    """
    fused = fused_supported(groups) if cfg.fused is None else cfg.fused
    if cfg.fused and not fused_supported(groups):
        raise UserError("train.fused=true: torch has no fused AdamW for these parameters' device or dtype; "
                        "use train.fused=false or leave it unset", key="train.fused")
    kwargs: dict[str, Any] = {"fused": True} if fused else {"foreach": False if mixes_dtensors(groups) else None}
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps,
                             weight_decay=cfg.weight_decay, **kwargs)


@register_optimizer("sgd")
def _sgd(groups: ParamGroups, cfg: TrainConfig) -> torch.optim.Optimizer:
    # Heavy-ball momentum μ = beta1 (0.9 by default): v ← μ·v + g, θ ← θ − lr·v. The decay here
    # is L2 (added to g), which for SGD is equivalent to decoupled decay up to a rescaling of λ.
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.beta1, weight_decay=cfg.weight_decay)


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """The optimizer ``cfg.optim`` over ``model``'s trainable parameters, decay groups as above."""
    builder = _BUILDERS.get(cfg.optim)
    if builder is None:
        expected = ", ".join(available_optimizers())
        raise UserError(f"unknown optimizer {cfg.optim!r}; expected one of {expected}", key="train.optim")
    if cfg.fused and cfg.optim != "adamw":
        raise UserError(f"train.fused=true applies to adamw, not {cfg.optim}", key="train.fused")
    return builder(param_groups(model, cfg.weight_decay), cfg)


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig) -> CosineWarmupScheduler:
    """Warm-up for ``cfg.warmup_steps`` updates, cosine to ``cfg.lr · cfg.min_lr_ratio`` at ``max_steps``."""
    return CosineWarmupScheduler(optimizer, warmup_steps=cfg.warmup_steps, max_steps=cfg.max_steps,
                                 min_lr_ratio=cfg.min_lr_ratio)


# Imported for its side effect: it registers "lion" (it needs `register_optimizer` defined above).
from trainlab.optim.lion import Lion  # noqa: E402

__all__ = [
    "CosineWarmupScheduler",
    "Lion",
    "available_optimizers",
    "build_optimizer",
    "build_scheduler",
    "cosine_with_warmup",
    "decay_mask",
    "fused_supported",
    "param_groups",
    "register_optimizer",
]
