"""The PEFT method registry: one `PeftMethodSpec` per method (``peft.method`` names it).

A method is a small module that registers its spec at import time::

    register_peft_method(PeftMethodSpec(
        name="lora", peft_type="LORA",
        apply=apply_lora,                # (model, cfg) -> PeftInfo: inject adapter modules, freeze the rest
        peft_config=lora_peft_config,    # (cfg, model) -> dict: adapter_config.json
        state_to_peft=lora_state,        # (model) -> {HF PEFT key: tensor} (adapter_model.safetensors)
        state_from_peft=load_lora_state, # (model, state) -> None (keys as written by state_to_peft / by PEFT)
        merge=merge_lora,                # (model) -> None: fold the adapters into the base weights, or None
        config_from_peft=lora_from_peft, # (adapter_config dict) -> PeftConfig, or None (no HF PEFT format)
    ))

``peft_type`` is HF PEFT's ``PeftType`` string ("LORA", "ADALORA", "IA3", "PREFIX_TUNING", ...) or None for
methods PEFT has no format for (bottleneck adapters, BitFit): those save in trainlab's own format (same two
file names, ``peft_type`` absent from ``adapter_config.json``).

Adapter modules follow one convention so that `trainlab.peft.adapters_disabled` works for every method: a
module with an ``adapter_enabled`` attribute (bool) computes the base model's function when it is False.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor, nn

from trainlab.errors import UserError
from trainlab.peft.config import PeftConfig


@dataclass
class PeftInfo:
    """What `apply` did: trainable and total parameters (after injection), the adapted modules (our paths)."""

    method: str
    trainable: int
    total: int
    modules: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "trainable_params": self.trainable, "total_params": self.total,
                "trainable_fraction": self.trainable / max(self.total, 1), "modules": len(self.modules),
                "notes": list(self.notes)}


@dataclass(frozen=True)
class PeftMethodSpec:
    """One PEFT method (see the module docstring for each field's signature)."""

    name: str
    peft_type: str | None
    apply: Callable[[nn.Module, PeftConfig], PeftInfo]
    peft_config: Callable[[PeftConfig, nn.Module], dict[str, Any]]
    state_to_peft: Callable[[nn.Module], dict[str, Tensor]]
    state_from_peft: Callable[[nn.Module, dict[str, Tensor]], None]
    merge: Callable[[nn.Module], None] | None = None
    config_from_peft: Callable[[dict[str, Any]], PeftConfig] | None = None
    description: str = ""
    # (model, cfg, objective) -> (objective, trainer callbacks): what training needs beyond the loss (AdaLoRA's
    # regularizer and rank allocator); None: nothing
    train_extras: Callable[[nn.Module, PeftConfig, Any], tuple[Any, list[Any]]] | None = None


_METHODS: dict[str, PeftMethodSpec] = {}


def register_peft_method(spec: PeftMethodSpec) -> PeftMethodSpec:
    """Add ``spec`` (re-registering a name replaces it: module reloads in notebooks)."""
    _METHODS[spec.name] = spec
    return spec


def _load_builtin() -> None:
    import importlib

    for module in ("lora", "dora", "qlora", "adalora", "ia3", "bottleneck", "prefix", "prompt", "ptuning",
                   "bitfit"):
        try:
            importlib.import_module(f"trainlab.peft.{module}")
        except ModuleNotFoundError as exc:  # a method module not written yet; any other import error is a bug
            if exc.name != f"trainlab.peft.{module}":
                raise


def get_peft_method(name: str) -> PeftMethodSpec:
    """The spec of ``name``; an unknown (or not yet available) method is a `UserError`."""
    _load_builtin()
    if name not in _METHODS:
        raise UserError(f"peft.method={name}: no such PEFT method here; available: {', '.join(peft_methods())}",
                        key="peft.method")
    return _METHODS[name]


def peft_methods() -> list[str]:
    _load_builtin()
    return sorted(_METHODS)


def method_for_peft_type(peft_type: str, adapter_config: dict[str, Any]) -> PeftMethodSpec:
    """The spec that reads an HF PEFT ``adapter_config.json`` of ``peft_type`` (LORA with ``use_dora`` is DoRA)."""
    _load_builtin()
    if peft_type == "LORA" and adapter_config.get("use_dora"):
        return get_peft_method("dora")
    for spec in _METHODS.values():
        if spec.peft_type == peft_type and spec.config_from_peft is not None and spec.name not in ("dora", "qlora"):
            return spec
    raise UserError(f"PEFT adapter type {peft_type!r} is not supported by trainlab "
                    f"(supported: {', '.join(sorted({s.peft_type for s in _METHODS.values() if s.peft_type}))})")
