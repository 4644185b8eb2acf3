"""LoRA: a frozen weight plus a trainable low-rank update (Hu et al., 2021, "LoRA: Low-Rank Adaptation of Large
Language Models", arXiv:2106.09685)::

    h = W₀ x + (α/r) · B A dropout(x),    A ∈ R^{r×k}, B ∈ R^{d×r}, r ≪ min(d, k)

``A`` starts Kaiming-uniform (a=√5, as ``nn.Linear`` and HF PEFT), ``B`` at zero, so the adapted model starts as
the base model. rsLoRA (Kalajdzievski, 2023, "A Rank Stabilization Scaling Factor for Fine-Tuning with LoRA",
arXiv:2312.03732) scales by ``α/√r`` instead, which keeps the update's magnitude stable as r grows.
Trainable parameters per adapted matrix: ``r(d + k)`` instead of ``dk`` (compression ``r(d+k)/(dk)``).

Merging folds the update into the weight, ``W = W₀ + (α/r) B A``: no extra latency at inference.
GPT-2's ``Conv1D`` stores ``W₀ᵀ`` (``fan_in_fan_out``): the update is transposed when merged, as in PEFT.

HF PEFT format: ``peft_type: LORA``; tensors ``base_model.model.<path>.lora_A.weight`` ``[r, k]`` and
``.lora_B.weight`` ``[d, r]``.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from trainlab.errors import UserError
from trainlab.peft import hf_format
from trainlab.peft.config import ALL_LINEAR, REGEX_PREFIX, PeftConfig
from trainlab.peft.registry import PeftInfo, PeftMethodSpec, register_peft_method
from trainlab.peft.targets import count_parameters, find_targets, freeze, is_conv1d, linear_shape, replace_module


def base_weight(layer: nn.Module) -> Tensor:
    """The base layer's weight as ``[out, in]`` (dequantized for an NF4 layer, transposed for a Conv1D)."""
    dequantize = getattr(layer, "dequantize", None)
    if callable(dequantize):
        return dequantize()
    return layer.weight.T if is_conv1d(layer) else layer.weight


def adapter_dtype(layer: nn.Module) -> torch.dtype:
    w = getattr(layer, "weight", None)
    return w.dtype if w is not None and w.is_floating_point() else torch.float32


class LoraLinear(nn.Module):
    """``base_layer(x) + scaling · lora_B(lora_A(dropout(x)))`` around a Linear / Conv1D / NF4 layer."""

    def __init__(self, base_layer: nn.Module, r: int, scaling: float, dropout: float,
                 generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.in_features, self.out_features = linear_shape(base_layer)
        self.fan_in_fan_out = is_conv1d(base_layer)
        self.r, self.scaling = r, scaling
        device = next(base_layer.parameters()).device
        dtype = adapter_dtype(base_layer)
        self.lora_A = nn.Linear(self.in_features, r, bias=False, device=device, dtype=dtype)
        self.lora_B = nn.Linear(r, self.out_features, bias=False, device=device, dtype=dtype)
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.adapter_enabled = True
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5), generator=generator)
        nn.init.zeros_(self.lora_B.weight)

    def delta_weight(self) -> Tensor:
        """``scaling · B A`` as ``[out, in]``."""
        return (self.lora_B.weight @ self.lora_A.weight) * self.scaling

    def forward(self, x: Tensor) -> Tensor:
        result = self.base_layer(x)
        if not self.adapter_enabled:
            return result
        a = self.lora_A.weight.to(x.dtype)
        b = self.lora_B.weight.to(x.dtype)
        return result + F.linear(F.linear(self.lora_dropout(x), a), b) * self.scaling

    def merged_layer(self) -> nn.Module:
        """The base layer with the update folded in (a new Linear for an NF4 base, the base itself otherwise)."""
        return fold_into_base(self.base_layer, self.merged_weight())

    def merged_weight(self) -> Tensor:
        """``W₀ + scaling · B A`` as ``[out, in]``."""
        w = base_weight(self.base_layer)
        return w + self.delta_weight().to(w.dtype)

    def extra_repr(self) -> str:
        return f"r={self.r}, scaling={self.scaling:g}, fan_in_fan_out={self.fan_in_fan_out}"


def fold_into_base(base: nn.Module, weight: Tensor) -> nn.Module:
    """``base`` with its weight set to ``weight`` (``[out, in]``); a quantized base becomes a float layer."""
    to_float = getattr(base, "to_float", None)
    if callable(to_float):  # a quantized base (QLoRA's NF4Linear) becomes a float layer of its original kind
        return to_float(weight)  # type: ignore[no-any-return]
    with torch.no_grad():
        target = weight.T if is_conv1d(base) else weight
        base.weight.copy_(target.to(base.weight.dtype))
    return base


# --------------------------------------------------------------------------------------------
# The spec: apply, HF PEFT format, merge (shared by DoRA and QLoRA)
# --------------------------------------------------------------------------------------------


def make_generator(cfg: PeftConfig, device: torch.device | str = "cpu") -> torch.Generator | None:
    if cfg.init_seed is None:
        return None
    return torch.Generator(device=device).manual_seed(cfg.init_seed)


def inject(model: nn.Module, cfg: PeftConfig, layer_cls: type[LoraLinear], method: str) -> PeftInfo:
    """Freeze ``model`` and wrap each target of ``cfg.targets`` in ``layer_cls``."""
    targets = find_targets(model, cfg.targets)
    freeze(model)
    generator = None
    for path, module in targets:
        if generator is None:
            generator = make_generator(cfg, next(module.parameters()).device)
        replace_module(model, path, layer_cls(module, cfg.r, cfg.scaling, cfg.dropout, generator))
    trainable, total = count_parameters(model)
    return PeftInfo(method, trainable, total, [p for p, _ in targets])


def lora_modules(model: nn.Module, cls: type[LoraLinear] = LoraLinear) -> list[tuple[str, LoraLinear]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, cls)]


def apply_lora(model: nn.Module, cfg: PeftConfig) -> PeftInfo:
    return inject(model, cfg, LoraLinear, "lora")


def lora_peft_config(cfg: PeftConfig, model: nn.Module, *, use_dora: bool = False) -> dict[str, Any]:
    """``adapter_config.json`` of a LoRA (or DoRA) adapter, as PEFT's ``LoraConfig.to_dict`` writes it."""
    modules = lora_modules(model)
    return {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": hf_format.base_model_name(model),
        "r": cfg.r,
        "lora_alpha": cfg.alpha,
        "lora_dropout": cfg.dropout,
        "use_rslora": cfg.rslora,
        "use_dora": use_dora,
        "target_modules": hf_format.hf_target_names(model, [p for p, _ in modules]),
        "fan_in_fan_out": any(m.fan_in_fan_out for _, m in modules),
        "bias": "none",
        "init_lora_weights": True,
        "inference_mode": True,
        "modules_to_save": None,
        "layers_to_transform": None,
        "layers_pattern": None,
        "rank_pattern": {},
        "alpha_pattern": {},
    }


LORA_SUFFIXES = ("lora_A.weight", "lora_B.weight")


def lora_state(model: nn.Module) -> dict[str, Tensor]:
    out: dict[str, Tensor] = {}
    for path, m in lora_modules(model):
        out[hf_format.peft_key(model, path, "lora_A.weight")] = m.lora_A.weight
        out[hf_format.peft_key(model, path, "lora_B.weight")] = m.lora_B.weight
        magnitude = getattr(m, "lora_magnitude_vector", None)
        if magnitude is not None:
            out[hf_format.peft_key(model, path, "lora_magnitude_vector")] = magnitude
    return out


def load_lora_state(model: nn.Module, state: dict[str, Tensor]) -> None:
    """Copy an adapter's tensors into the injected modules; every module must get all of its tensors."""
    modules = dict(lora_modules(model))
    wanted = {(p, s) for p, m in modules.items() for s in LORA_SUFFIXES
              + (("lora_magnitude_vector",) if hasattr(m, "lora_magnitude_vector") else ())}
    seen = set()
    for key, tensor in state.items():
        path, suffix = hf_format.split_peft_key(model, key, (*LORA_SUFFIXES, "lora_magnitude_vector"))
        if (path, suffix) not in wanted:
            raise UserError(f"adapter tensor {key}: no such adapted module in this model")
        m = modules[path]
        param = m.lora_magnitude_vector if suffix == "lora_magnitude_vector" else \
            (m.lora_A if suffix.startswith("lora_A") else m.lora_B).weight
        if tuple(param.shape) != tuple(tensor.shape):
            raise UserError(f"adapter tensor {key} has shape {tuple(tensor.shape)}, the model needs "
                            f"{tuple(param.shape)}")
        with torch.no_grad():
            param.copy_(tensor.to(param.dtype))
        seen.add((path, suffix))
    missing = sorted(wanted - seen)
    if missing:
        raise UserError(f"adapter is missing {len(missing)} tensors, e.g. "
                        f"{hf_format.peft_key(model, missing[0][0], missing[0][1])}")


def merge_lora(model: nn.Module) -> None:
    """Replace every adapter layer by its base layer with the update folded in."""
    for path, m in lora_modules(model):
        replace_module(model, path, m.merged_layer())


def lora_from_peft(adapter_config: dict[str, Any], method: str = "lora") -> PeftConfig:
    """A `PeftConfig` from PEFT's LoRA ``adapter_config.json``; what we do not implement is refused."""
    c = adapter_config
    for key in ("rank_pattern", "alpha_pattern"):
        if c.get(key):
            raise UserError(f"adapter_config.json: {key} (per-module ranks) is not supported by trainlab")
    if c.get("bias", "none") != "none":
        raise UserError(f"adapter_config.json: bias={c['bias']!r} is not supported (only 'none')")
    if c.get("modules_to_save"):
        raise UserError("adapter_config.json: modules_to_save is not supported by trainlab")
    if c.get("layers_to_transform") is not None:
        raise UserError("adapter_config.json: layers_to_transform is not supported by trainlab")
    targets = c.get("target_modules")
    if isinstance(targets, str) and targets.lower() != ALL_LINEAR:  # PEFT: a string is a full-match pattern
        targets = REGEX_PREFIX + targets
    return PeftConfig(method=method, r=int(c["r"]), alpha=float(c.get("lora_alpha", 8)),  # type: ignore[arg-type]
                      dropout=float(c.get("lora_dropout", 0.0)), targets=targets or ALL_LINEAR,
                      rslora=bool(c.get("use_rslora", False)))


register_peft_method(PeftMethodSpec(
    name="lora", peft_type="LORA", apply=apply_lora, peft_config=lora_peft_config, state_to_peft=lora_state,
    state_from_peft=load_lora_state, merge=merge_lora, config_from_peft=lora_from_peft,
    description="LoRA (Hu et al., 2021): W0 + (alpha/r) B A"))
