"""Lion: EvoLved Sign Momentum (Chen et al., 2023, "Symbolic Discovery of Optimization Algorithms").

One update of a parameter ``θ`` with gradient ``g``, momentum ``m``, rate ``η``, decay ``λ``
(Algorithm 2 of the paper)::

    c = β₁·m + (1 − β₁)·g              interpolate momentum and gradient
    θ ← θ − η·(sign(c) + λ·θ)          every coordinate moves by exactly η (plus decoupled decay)
    m ← β₂·m + (1 − β₂)·g              the momentum uses the *other* β

Defaults β₁ = 0.9, β₂ = 0.99. Because ``sign`` makes every step ±η, the paper's advice is a
learning rate 3-10x smaller than AdamW's and a weight decay 3-10x larger, to keep ``η·λ`` similar.

Memory: one state tensor (``m``) per parameter instead of AdamW's two (``m``, ``v``): 4 bytes per
fp32 parameter instead of 8, the "saves 50% of optimizer memory" of the seed (003). `sign(0) = 0`:
a coordinate with ``c = 0`` only decays.

Registered as ``train.optim=lion``; it reads ``train.beta1`` and ``train.beta2`` (set
``train.beta2=0.99`` for the paper's default, since trainlab's default 0.95 is AdamW's).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor

from trainlab.config import TrainConfig
from trainlab.optim import ParamGroups, register_optimizer


class Lion(torch.optim.Optimizer):
    """The Lion optimizer (see the module docstring). State per parameter: ``exp_avg`` (``m``)."""

    def __init__(self, params: Iterable[Tensor] | Iterable[dict[str, Any]], lr: float = 1e-4,
                 betas: tuple[float, float] = (0.9, 0.99), weight_decay: float = 0.0) -> None:
        if not lr > 0:
            raise ValueError(f"invalid learning rate {lr}")
        if not (0.0 <= betas[0] < 1.0 and 0.0 <= betas[1] < 1.0):
            raise ValueError(f"invalid betas {betas}")
        if weight_decay < 0:
            raise ValueError(f"invalid weight_decay {weight_decay}")
        super().__init__(params, {"lr": lr, "betas": betas, "weight_decay": weight_decay})

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, wd = group["lr"], group["weight_decay"]
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("Lion does not support sparse gradients")
                grad = p.grad
                state = self.state[p]
                if not state:
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                m: Tensor = state["exp_avg"]
                # Decoupled decay first, from θ before the sign step: θ·(1 − ηλ) − η·sign(c) is the
                # paper's θ − η(sign(c) + λθ).
                if wd != 0:
                    p.mul_(1.0 - lr * wd)
                update = m.mul(beta1).add_(grad, alpha=1.0 - beta1).sign_()
                p.add_(update, alpha=-lr)
                m.mul_(beta2).add_(grad, alpha=1.0 - beta2)
        return loss


@register_optimizer("lion")
def _lion(groups: ParamGroups, cfg: TrainConfig) -> torch.optim.Optimizer:
    return Lion(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), weight_decay=cfg.weight_decay)


__all__ = ["Lion"]
