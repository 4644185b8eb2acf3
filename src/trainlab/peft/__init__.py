"""Parameter-efficient fine-tuning: adapters on a frozen model, saved in Hugging Face PEFT's format.

The entry points live in `trainlab.peft.api` and are imported from here lazily, so that reading the ``peft``
config section (`trainlab.peft.config`, imported by `trainlab.config`) does not import torch:

* `apply_peft(model, cfg) -> PeftInfo`, `save_adapter(model, dir)`, `load_adapter(model, dir)`,
  `adapters_disabled(model)` (context manager), `merge(model)`, `ReferenceView(policy)`, `adapter_nbytes(model)`;
* the registry: `register_peft_method`, `get_peft_method`, `PeftMethodSpec`, `PeftInfo`.
"""

from __future__ import annotations

from typing import Any

_API = ("ADAPTER_DIR", "PeftState", "ReferenceView", "adapter_nbytes", "adapter_state", "adapters_disabled",
        "apply_peft", "is_adapter_folder", "load_adapter", "merge", "peft_state", "read_adapter_config",
        "save_adapter", "TRAINLAB_PEFT_NAME")
_REGISTRY = ("PeftInfo", "PeftMethodSpec", "get_peft_method", "peft_methods", "register_peft_method")
_CONFIG = ("ALL_LINEAR", "PeftConfig")

__all__ = [*_API, *_REGISTRY, *_CONFIG]


def __getattr__(name: str) -> Any:
    import importlib

    for module, names in (("api", _API), ("registry", _REGISTRY), ("config", _CONFIG)):
        if name in names:
            return getattr(importlib.import_module(f"trainlab.peft.{module}"), name)
    raise AttributeError(f"module 'trainlab.peft' has no attribute {name!r}")
