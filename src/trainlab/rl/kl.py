"""Per-token estimators of KL(π‖π_ref) from samples of π (J. Schulman, "Approximating KL divergence", 2020).

With ``r = π_ref(y) / π(y)`` for a token ``y ~ π`` (``log r = ref_logps - logps``):

* ``k1 = -log r``                 unbiased, high variance, can be negative;
* ``k2 = ½ (log r)²``             biased (low for close policies), low variance, ≥ 0; its gradient is
  the gradient of the true KL at first order (what verl's ``low_var_kl`` and GRPO's "k2 loss" use);
* ``k3 = (r - 1) - log r``        unbiased, low variance, ≥ 0: DeepSeekMath's GRPO KL term and TRL's
  GRPOTrainer ``per_token_kl = exp(ref - logp) - (ref - logp) - 1``.

verl names them ``kl`` (k1), ``mse`` (k2) and ``low_var_kl`` (k3, which verl also clamps to [-10, 10];
we do not clamp: TRL does not either).
"""

from __future__ import annotations

import torch
from torch import Tensor

KL_ESTIMATORS: tuple[str, ...] = ("k1", "k2", "k3")


def kl_estimate(logps: Tensor, ref_logps: Tensor, estimator: str = "k3") -> Tensor:
    """Per-token KL estimate (same shape as ``logps``) of π (``logps``) from π_ref (``ref_logps``)."""
    log_ratio = ref_logps - logps  # log r
    if estimator == "k1":
        return -log_ratio
    if estimator == "k2":
        return 0.5 * log_ratio.pow(2)
    if estimator == "k3":
        return torch.exp(log_ratio) - log_ratio - 1.0
    raise ValueError(f"unknown KL estimator {estimator!r}; expected one of {', '.join(KL_ESTIMATORS)}")
