"""Learning-rate schedule: linear warm-up, then cosine decay to a floor.

For the k-th optimizer update (k = 1, 2, ..., ``max_steps``), with peak rate ``lr``,
floor ``min_lr = lr · min_lr_ratio`` and ``w = warmup_steps``::

    lr(k) = lr · k / w                                             if k <= w   (warm-up)
    lr(k) = min_lr + ½ (lr − min_lr) (1 + cos(π · p)),  p = (k − w) / (max_steps − w)   otherwise

so the rate rises linearly to the peak at update ``w`` and reaches ``min_lr`` exactly at the last
update (``p = 1``); past ``max_steps`` it stays at ``min_lr``. The steps are 1-based on purpose:
a 0-based ``lr · 0 / w`` would spend the first update at rate 0, i.e. waste a batch.

Cosine decay: Loshchilov & Hutter, "SGDR: Stochastic Gradient Descent with Warm Restarts" (2017),
without restarts, as in GPT-3 (Brown et al., 2020) and nanoGPT. Linear warm-up keeps Adam's early
updates small while its second-moment estimate is still noisy (Liu et al., "On the Variance of the
Adaptive Learning Rate and Beyond", 2020).

`CosineWarmupScheduler` is a small scheduler of our own rather than a ``LambdaLR``: it has
exactly the state it needs (the update count), it never warns when an fp16 loss scaler skips the
first ``optimizer.step()``, and its learning rates are recomputed from the *current* config on
resume, so "resume with a lower lr" does what it says.
"""

from __future__ import annotations

import math
from typing import Any

from torch.optim import Optimizer


def cosine_with_warmup(step: int, *, lr: float, min_lr: float, warmup_steps: int, max_steps: int) -> float:
    """The learning rate of the ``step``-th optimizer update (1-based); see the module docstring."""
    if step < 1:
        raise ValueError(f"step is 1-based, got {step}")
    if warmup_steps > 0 and step <= warmup_steps:
        return lr * step / warmup_steps
    decay_steps = max_steps - warmup_steps
    # max_steps <= warmup_steps: there is no decay phase; hold the floor after warm-up.
    progress = 1.0 if decay_steps <= 0 else min(1.0, (step - warmup_steps) / decay_steps)
    return min_lr + 0.5 * (lr - min_lr) * (1.0 + math.cos(math.pi * progress))


class CosineWarmupScheduler:
    """Sets each param group's ``lr`` to ``base_lr · factor(k)`` before update ``k``.

    ``factor(k) = cosine_with_warmup(k, lr=1, min_lr=min_lr_ratio, ...)``, so param groups with
    different base rates (e.g. a later per-group scaling) keep their ratios. Call `step()` once
    after every optimizer step (skipped fp16 steps included: the schedule follows the step
    counter, not the number of successful updates, so ``max_steps`` always ends at ``min_lr``).
    """

    def __init__(self, optimizer: Optimizer, *, warmup_steps: int, max_steps: int,
                 min_lr_ratio: float = 0.0) -> None:
        if warmup_steps < 0 or max_steps < 1:
            raise ValueError(f"need warmup_steps >= 0 and max_steps >= 1, got {warmup_steps}, {max_steps}")
        if not 0.0 <= min_lr_ratio <= 1.0:
            raise ValueError(f"min_lr_ratio must be in [0, 1], got {min_lr_ratio}")
        self.optimizer = optimizer
        self.warmup_steps = warmup_steps
        self.max_steps = max_steps
        self.min_lr_ratio = min_lr_ratio
        # "initial_lr" is the key torch's own schedulers use for the same purpose; reusing it
        # lets a torch scheduler and ours read the same base rate.
        for group in optimizer.param_groups:
            group.setdefault("initial_lr", group["lr"])
        self.base_lrs = [float(g["initial_lr"]) for g in optimizer.param_groups]
        self.last_step = 0  # optimizer updates done so far
        self._apply()

    def factor(self, step: int) -> float:
        """Multiplier of the base rate for the ``step``-th update (1-based)."""
        return cosine_with_warmup(step, lr=1.0, min_lr=self.min_lr_ratio,
                                  warmup_steps=self.warmup_steps, max_steps=self.max_steps)

    def _apply(self) -> None:
        f = self.factor(self.last_step + 1)
        for group, base in zip(self.optimizer.param_groups, self.base_lrs, strict=True):
            group["lr"] = base * f

    def step(self) -> None:
        """Advance past one optimizer update and set the rate for the next one."""
        self.last_step += 1
        self._apply()

    def get_last_lr(self) -> list[float]:
        """The rates the next ``optimizer.step()`` will use (torch's scheduler method name)."""
        return [float(g["lr"]) for g in self.optimizer.param_groups]

    def state_dict(self) -> dict[str, Any]:
        # Only the position: the shape (warm-up, decay length, floor) comes from the config the
        # resumed run was started with.
        return {"last_step": self.last_step}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.last_step = int(state["last_step"])
        self._apply()
