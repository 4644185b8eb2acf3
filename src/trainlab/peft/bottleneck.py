"""Bottleneck adapters: a small residual MLP after a sublayer's output, in Houlsby or Pfeiffer placement.

Houlsby et al., 2019, "Parameter-Efficient Transfer Learning for NLP": after the attention sublayer and
after the feed-forward sublayer of every block (before the residual addition) an adapter maps::

    A(h) = h + W_up φ(W_down h + b_down) + b_up          W_down: D → m,  W_up: m → D,  m ≪ D

``W_up, b_up`` start at zero, so the model starts as the base model. Pfeiffer et al., 2020 ("AdapterFusion";
also "MAD-X") place one adapter per block, after the feed-forward sublayer only, with about the same quality
at half the parameters. Parameters per adapter: ``2·D·m + m + D``.

The adapter wraps the sublayer's output projection, whose output *is* the sublayer's output: ``o_proj`` /
``down_proj`` (our decoder, Llama, Mistral, Qwen), ``attn.c_proj`` / ``mlp.c_proj`` (GPT-2); other models
name theirs with ``peft.targets``. ``peft.adapter_size`` is ``m``, ``peft.adapter_act`` is ``φ``.

Hugging Face PEFT has no bottleneck adapter, so the folder is trainlab's own documented format (the same two
files as PEFT's, which PEFT refuses to load since ``peft_type`` is absent):

* ``adapter_config.json``: ``{"trainlab_method": "bottleneck", "format": "trainlab-adapter/1", "placement",
  "adapter_size", "adapter_act", "target_modules", "formula"}`` plus ``base_model_name_or_path``;
* ``adapter_model.safetensors``: ``base_model.model.<HF module path>.adapter_down.{weight,bias}`` and
  ``.adapter_up.{weight,bias}`` (``nn.Linear`` layout ``[out, in]``), the module paths being the transformers
  model's (our decoder's are written as its Llama export's), as PEFT keys its tensors;
* ``trainlab_peft.json``: the `PeftConfig` that rebuilds the modules (`trainlab.peft.load_adapter` reads it).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from trainlab.errors import UserError
from trainlab.peft.config import ALL_LINEAR, PeftConfig
from trainlab.peft.hf_format import PEFT_PREFIX, base_model_name, hf_module_path, split_peft_key
from trainlab.peft.ia3 import find_named, model_type
from trainlab.peft.registry import PeftInfo, PeftMethodSpec, register_peft_method
from trainlab.peft.targets import count_parameters, freeze, linear_shape, replace_module

FORMAT = "trainlab-adapter/1"
# (after attention, after the MLP) output projections per architecture
SUBLAYER_OUTPUTS: dict[str, tuple[str, str]] = {
    "llama": ("o_proj", "down_proj"), "mistral": ("o_proj", "down_proj"), "qwen2": ("o_proj", "down_proj"),
    "qwen3": ("o_proj", "down_proj"), "gemma": ("o_proj", "down_proj"), "phi3": ("o_proj", "down_proj"),
    "gpt2": ("attn.c_proj", "mlp.c_proj"), "opt": ("out_proj", "fc2"), "gpt_neox": ("attention.dense",
                                                                                      "dense_4h_to_h"),
}
ACTIVATIONS = {"relu": F.relu, "gelu": F.gelu, "silu": F.silu, "tanh": torch.tanh}


class BottleneckAdapter(nn.Module):
    """``y = base(x)``, then ``y + W_up φ(W_down y)`` (module docstring); identity at init."""

    def __init__(self, base_layer: nn.Module, size: int, act: str) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.act = act
        self.adapter_enabled = True
        _, out_f = linear_shape(base_layer)
        w = base_layer.weight
        self.adapter_down = nn.Linear(out_f, size, device=w.device, dtype=w.dtype)
        self.adapter_up = nn.Linear(size, out_f, device=w.device, dtype=w.dtype)
        nn.init.normal_(self.adapter_down.weight, std=1e-2)  # near-identity start (Houlsby et al., §2.1)
        nn.init.zeros_(self.adapter_down.bias)
        nn.init.zeros_(self.adapter_up.weight)
        nn.init.zeros_(self.adapter_up.bias)

    def forward(self, x: Tensor) -> Tensor:
        y = self.base_layer(x)
        if not self.adapter_enabled:
            return y
        return y + self.adapter_up(ACTIVATIONS[self.act](self.adapter_down(y)))

    def extra_repr(self) -> str:
        return f"size={self.adapter_down.out_features}, act={self.act}"


def _adapters(model: nn.Module) -> list[tuple[str, BottleneckAdapter]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, BottleneckAdapter)]


def placement_targets(model: nn.Module, cfg: PeftConfig) -> list[str]:
    """The output projections that get an adapter: ``peft.targets`` names, or the architecture's
    (attention and MLP outputs for Houlsby, the MLP output for Pfeiffer)."""
    if cfg.targets != ALL_LINEAR:
        return [cfg.targets] if isinstance(cfg.targets, str) else list(cfg.targets)
    arch = model_type(model)
    if arch not in SUBLAYER_OUTPUTS:
        raise UserError(f"peft.method=bottleneck: no known sublayer outputs for model type {arch!r}; name the "
                        "attention and MLP output projections with peft.targets", key="peft.targets")
    attn, mlp = SUBLAYER_OUTPUTS[arch]
    return [attn, mlp] if cfg.adapter_placement == "houlsby" else [mlp]


def apply_bottleneck(model: nn.Module, cfg: PeftConfig) -> PeftInfo:
    """Freeze ``model`` and wrap the sublayer outputs in `BottleneckAdapter` (identity at init)."""
    names = placement_targets(model, cfg)
    found = find_named(model, names)
    freeze(model)
    if cfg.init_seed is not None:
        torch.manual_seed(cfg.init_seed)
    for path, module in found:
        replace_module(model, path, BottleneckAdapter(module, cfg.adapter_size, cfg.adapter_act))
    trainable, total = count_parameters(model)
    return PeftInfo(method="bottleneck", trainable=trainable, total=total, modules=[p for p, _ in found],
                    notes=[f"{cfg.adapter_placement} placement: {len(found)} adapters (after {', '.join(names)}), "
                           f"bottleneck {cfg.adapter_size}, {cfg.adapter_act}; trainlab's adapter format "
                           "(HF PEFT has no bottleneck adapter)"])


def bottleneck_config(cfg: PeftConfig, model: nn.Module) -> dict[str, Any]:
    """``adapter_config.json`` (module docstring: trainlab's format, no ``peft_type``)."""
    mods = _adapters(model)
    if not mods:
        raise UserError("the model has no bottleneck adapters to save")
    return {"trainlab_method": "bottleneck", "format": FORMAT, "base_model_name_or_path": base_model_name(model),
            "placement": cfg.adapter_placement, "adapter_size": cfg.adapter_size, "adapter_act": cfg.adapter_act,
            "target_modules": sorted({hf_module_path(model, p) for p, _ in mods}),
            "formula": "y = base(x); y + adapter_up(act(adapter_down(y)))"}


_SUFFIXES = ("adapter_down.weight", "adapter_down.bias", "adapter_up.weight", "adapter_up.bias")


def bottleneck_state(model: nn.Module) -> dict[str, Tensor]:
    out: dict[str, Tensor] = {}
    for path, m in _adapters(model):
        for suffix in _SUFFIXES:
            out[f"{PEFT_PREFIX}{hf_module_path(model, path)}.{suffix}"] = m.get_parameter(suffix).detach()
    return out


def load_bottleneck_state(model: nn.Module, state: dict[str, Tensor]) -> None:
    mods = dict(_adapters(model))
    seen: set[tuple[str, str]] = set()
    for key, value in state.items():
        path, suffix = split_peft_key(model, key, _SUFFIXES)
        if path not in mods:
            raise UserError(f"adapter key {key!r}: the model has no bottleneck adapter at {path}")
        target = mods[path].get_parameter(suffix)
        if tuple(value.shape) != tuple(target.shape):
            raise UserError(f"adapter key {key!r}: shape {tuple(value.shape)}, the model's is {tuple(target.shape)}")
        with torch.no_grad():
            target.copy_(value.to(target.dtype))
        seen.add((path, suffix))
    missing = [f"{p}.{s}" for p in mods for s in _SUFFIXES if (p, s) not in seen]
    if missing:
        raise UserError(f"bottleneck adapter: missing {', '.join(missing[:3])}" + (" ..." if len(missing) > 3 else ""))


SPEC = register_peft_method(PeftMethodSpec(
    name="bottleneck", peft_type=None, apply=apply_bottleneck, peft_config=bottleneck_config,
    state_to_peft=bottleneck_state, state_from_peft=load_bottleneck_state, merge=None,
    description="bottleneck adapters after attention and MLP (Houlsby et al., 2019) or the MLP only (Pfeiffer)"))

__all__ = ["BottleneckAdapter", "apply_bottleneck", "bottleneck_config", "bottleneck_state",
           "load_bottleneck_state", "placement_targets"]
