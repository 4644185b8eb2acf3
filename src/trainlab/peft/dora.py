"""DoRA: weight-decomposed low-rank adaptation (Liu et al., 2024, "DoRA: Weight-Decomposed Low-Rank Adaptation",
arXiv:2402.09353). The weight is split into a magnitude vector and a direction; LoRA updates the direction::

    W' = m ⊙ (W₀ + s·B A) / ‖W₀ + s·B A‖_c,      m ∈ R^d initialised to ‖W₀‖_c

``‖·‖_c`` is the L2 norm of each output row of the ``[d, k]`` weight (PEFT's ``get_weight_norm``: ``norm(W, dim=1)``
after transposing a Conv1D). As the paper's section 4.3 suggests and PEFT does, the norm is treated as a constant
in the backward pass (detached). The forward pass never builds ``W'``::

    h = W₀x + (m/‖W₀ + s·BA‖_c − 1) ⊙ W₀x + (m/‖W₀ + s·BA‖_c) ⊙ s·B A x     (+ the base bias once)

HF PEFT format: a LoRA adapter with ``use_dora: true`` and a ``<path>.lora_magnitude_vector`` tensor ``[d]``.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from trainlab.peft.config import PeftConfig
from trainlab.peft.lora import (
    LoraLinear,
    base_weight,
    inject,
    load_lora_state,
    lora_from_peft,
    lora_modules,
    lora_peft_config,
    lora_state,
    merge_lora,
)
from trainlab.peft.registry import PeftInfo, PeftMethodSpec, register_peft_method


class DoraLinear(LoraLinear):
    """LoRA with a learned magnitude per output row (module docstring)."""

    def __init__(self, base_layer: nn.Module, r: int, scaling: float, dropout: float,
                 generator: torch.Generator | None = None) -> None:
        super().__init__(base_layer, r, scaling, dropout, generator)
        with torch.no_grad():
            norm = self.weight_norm(base_weight(base_layer).to(self.lora_A.weight.dtype))
        self.lora_magnitude_vector = nn.Parameter(norm.clone())

    def weight_norm(self, weight: Tensor) -> Tensor:
        """``‖W₀ + s·B A‖_c`` per output row, without gradient through ``B A`` (module docstring)."""
        lora_weight = (self.lora_B.weight @ self.lora_A.weight).detach().to(weight.dtype)
        return torch.linalg.norm(weight + self.scaling * lora_weight, dim=1)

    def forward(self, x: Tensor) -> Tensor:
        result = self.base_layer(x)
        if not self.adapter_enabled:
            return result
        weight = base_weight(self.base_layer).to(x.dtype)
        scale = (self.lora_magnitude_vector.to(x.dtype) / self.weight_norm(weight).detach()).view(1, -1)
        h = self.lora_dropout(x)
        lora_out = F.linear(F.linear(h, self.lora_A.weight.to(x.dtype)), self.lora_B.weight.to(x.dtype))
        if isinstance(self.lora_dropout, nn.Identity):
            bias = getattr(self.base_layer, "bias", None)
            base_out = result - bias if bias is not None else result
        else:  # the direction term sees the same dropped-out input as the LoRA term (as PEFT)
            base_out = F.linear(h, weight)
        return result + (scale - 1) * base_out + scale * lora_out * self.scaling

    def merged_weight(self) -> Tensor:
        """``m / ‖W₀ + s·BA‖_c ⊙ (W₀ + s·BA)`` as ``[out, in]``."""
        w = base_weight(self.base_layer)
        combined = w + self.delta_weight().to(w.dtype)
        norm = torch.linalg.norm(combined, dim=1)
        return (self.lora_magnitude_vector.to(w.dtype) / norm).view(-1, 1) * combined


def apply_dora(model: nn.Module, cfg: PeftConfig) -> PeftInfo:
    return inject(model, cfg, DoraLinear, "dora")


def dora_peft_config(cfg: PeftConfig, model: nn.Module) -> dict[str, Any]:
    return lora_peft_config(cfg, model, use_dora=True)


def dora_from_peft(adapter_config: dict[str, Any]) -> PeftConfig:
    return lora_from_peft(adapter_config, method="dora")


__all__ = ["DoraLinear", "apply_dora", "lora_modules"]

register_peft_method(PeftMethodSpec(
    name="dora", peft_type="LORA", apply=apply_dora, peft_config=dora_peft_config, state_to_peft=lora_state,
    state_from_peft=load_lora_state, merge=merge_lora, config_from_peft=dora_from_peft,
    description="DoRA (Liu et al., 2024): m * (W0 + sBA) / ||W0 + sBA||_c"))
