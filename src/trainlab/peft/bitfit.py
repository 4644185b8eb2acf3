"""BitFit: fine-tune only the bias terms.

Ben Zaken, Goldberg & Ravfogel, 2022, "BitFit: Simple Parameter-efficient Fine-tuning for Transformer-based
Masked Language-models". Every weight is frozen; every bias ``b`` of a Linear / Conv1D / LayerNorm trains::

    y = W x + (b + Δb)          (a LayerNorm: y = γ ⊙ norm(x) + (β + Δβ))

Implemented as a trainable offset ``Δb`` (zero at start) beside the frozen bias, so that
`trainlab.peft.adapters_disabled` gives back the base model and merging is ``b ← b + Δb``.

Only biases that exist are trained, and the count is reported as is. Llama-style models (our decoder,
Llama, Mistral) have **no** biases: BitFit would train 0 parameters, so applying it is a `UserError`
naming the alternatives rather than silently training something else (e.g. norm weights, which is not
BitFit). GPT-2 has biases everywhere (attention, MLP, LayerNorms); Qwen2 only on q/k/v.

Hugging Face PEFT has no BitFit format; the folder is trainlab's (see `trainlab.peft.bottleneck` for the
layout): ``adapter_config.json`` ``{"trainlab_method": "bitfit", "format": "trainlab-adapter/1", ...}`` and
``adapter_model.safetensors`` holding the *fine-tuned biases* ``b + Δb`` under
``base_model.model.<HF module path>.bias``: readable as the model's own bias tensors.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from trainlab.errors import UserError
from trainlab.peft.bottleneck import FORMAT
from trainlab.peft.config import PeftConfig
from trainlab.peft.hf_format import PEFT_PREFIX, base_model_name, hf_module_path, split_peft_key
from trainlab.peft.registry import PeftInfo, PeftMethodSpec, register_peft_method
from trainlab.peft.targets import conv1d_class, count_parameters, freeze, replace_module


def _biased_kinds() -> tuple[type, ...]:
    conv1d = conv1d_class()
    return (nn.Linear, nn.LayerNorm) + ((conv1d,) if conv1d is not None else ())


class BiasDelta(nn.Module):
    """``base(x) + Δb`` over the last dimension (module docstring)."""

    def __init__(self, base_layer: nn.Module) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.adapter_enabled = True
        b = base_layer.bias
        self.bias_delta = nn.Parameter(torch.zeros_like(b))

    def forward(self, x: Tensor) -> Tensor:
        y = self.base_layer(x)
        return y + self.bias_delta.to(y.dtype) if self.adapter_enabled else y

    def tuned_bias(self) -> Tensor:
        return (self.base_layer.bias + self.bias_delta).detach()


def _deltas(model: nn.Module) -> list[tuple[str, BiasDelta]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, BiasDelta)]


def biased_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Modules with a bias BitFit can train (Linear, Conv1D, LayerNorm with a bias parameter)."""
    kinds = _biased_kinds()
    return [(n, m) for n, m in model.named_modules()
            if n and isinstance(m, kinds) and isinstance(getattr(m, "bias", None), nn.Parameter)
            and not n.endswith(".base_layer")]


def _model_name(model: nn.Module) -> str:
    from trainlab.model.hf import HFCausalLM

    return type(model.model).__name__ if isinstance(model, HFCausalLM) else type(model).__name__


def apply_bitfit(model: nn.Module, cfg: PeftConfig) -> PeftInfo:
    """Freeze every weight; a trainable ``Δb`` beside every bias. No bias at all is a `UserError`."""
    del cfg
    found = biased_modules(model)
    if not found:
        raise UserError(f"bitfit: {_model_name(model)} has no bias parameters (a Llama-style, "
                        "bias-free model), so BitFit would train 0 parameters; use peft.method=ia3 (a few scaling "
                        "vectors per block) or peft.method=lora instead", key="peft.method")
    freeze(model)
    for path, module in found:
        replace_module(model, path, BiasDelta(module))
    trainable, total = count_parameters(model)
    kinds = sorted({type(m).__name__ for _, m in found})
    return PeftInfo(method="bitfit", trainable=trainable, total=total, modules=[p for p, _ in found],
                    notes=[f"the {len(found)} biases that exist ({', '.join(kinds)}) train, nothing else; "
                           "trainlab's adapter format (HF PEFT has no BitFit)"])


def bitfit_config(cfg: PeftConfig, model: nn.Module) -> dict[str, Any]:
    del cfg
    mods = _deltas(model)
    if not mods:
        raise UserError("the model has no BitFit biases to save")
    return {"trainlab_method": "bitfit", "format": FORMAT, "base_model_name_or_path": base_model_name(model),
            "bias_modules": [hf_module_path(model, p) for p, _ in mods],
            "formula": "the tensors are the fine-tuned biases b + delta_b (replace the base model's)"}


def bitfit_state(model: nn.Module) -> dict[str, Tensor]:
    return {f"{PEFT_PREFIX}{hf_module_path(model, p)}.bias": m.tuned_bias() for p, m in _deltas(model)}


def load_bitfit_state(model: nn.Module, state: dict[str, Tensor]) -> None:
    mods = dict(_deltas(model))
    seen: set[str] = set()
    for key, value in state.items():
        path, _ = split_peft_key(model, key, ("bias",))
        if path not in mods:
            raise UserError(f"adapter key {key!r}: the model has no bias at {path}")
        m = mods[path]
        if tuple(value.shape) != tuple(m.bias_delta.shape):
            raise UserError(f"adapter key {key!r}: shape {tuple(value.shape)}, the model's is "
                            f"{tuple(m.bias_delta.shape)}")
        with torch.no_grad():
            m.bias_delta.copy_(value.to(m.bias_delta.dtype) - m.base_layer.bias)
        seen.add(path)
    missing = sorted(set(mods) - seen)
    if missing:
        raise UserError(f"BitFit adapter: no bias for {', '.join(missing[:4])}" + (" ..." if len(missing) > 4 else ""))


def merge_bitfit(model: nn.Module) -> None:
    """``b ← b + Δb`` and the plain modules back."""
    for path, m in _deltas(model):
        with torch.no_grad():
            m.base_layer.bias.add_(m.bias_delta.to(m.base_layer.bias.dtype))
        replace_module(model, path, m.base_layer)


SPEC = register_peft_method(PeftMethodSpec(
    name="bitfit", peft_type=None, apply=apply_bitfit, peft_config=bitfit_config, state_to_peft=bitfit_state,
    state_from_peft=load_bitfit_state, merge=merge_bitfit,
    description="BitFit: only the biases train (Ben Zaken et al., 2022)"))

__all__ = ["BiasDelta", "apply_bitfit", "biased_modules", "bitfit_state", "load_bitfit_state", "merge_bitfit"]
