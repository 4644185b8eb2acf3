"""The PEFT entry points (re-exported by `trainlab.peft`): adapters on a frozen model, in HF PEFT format.

* `apply_peft(model, cfg)`: inject the method's adapter modules into our `Decoder` or an `HFCausalLM` and
  freeze everything else (only adapter parameters get gradients and optimizer states);
* `save_adapter(model, dir)` / `load_adapter(model, dir)`: ``adapter_config.json`` + ``adapter_model.safetensors``
  as PEFT writes them (``PeftModel.from_pretrained(base, dir)`` loads ours; PEFT's load into ours), plus
  ``trainlab_peft.json`` (our config, for methods PEFT has no format for);
* `adapters_disabled(model)`: a context in which the model computes its base function (the DPO/KTO reference
  without a copy in memory); `ReferenceView` is that as a model object;
* `merge(model)`: fold the adapters into the base weights (LoRA, DoRA, QLoRA, AdaLoRA, IA3): a plain model again.

Methods are registered in `trainlab.peft.registry` (one module each: `lora`, `dora`, `qlora`, `adalora`, ...).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from trainlab.errors import UserError
from trainlab.peft.config import ALL_LINEAR, PeftConfig
from trainlab.peft.hf_format import CONFIG_NAME, WEIGHTS_NAME, read_adapter, write_adapter
from trainlab.peft.registry import (
    PeftInfo,
    PeftMethodSpec,
    get_peft_method,
    method_for_peft_type,
    peft_methods,
    register_peft_method,
)

TRAINLAB_PEFT_NAME = "trainlab_peft.json"
ADAPTER_DIR = "adapter"


@dataclass
class PeftState:
    """What `apply_peft` left on a model (``model.trainlab_peft``)."""

    config: PeftConfig
    info: PeftInfo

    @property
    def spec(self) -> PeftMethodSpec:
        return get_peft_method(self.config.method)


def peft_state(model: nn.Module) -> PeftState | None:
    """The model's adapters (None: a plain model)."""
    return getattr(model, "trainlab_peft", None)


def apply_peft(model: nn.Module, cfg: PeftConfig) -> PeftInfo | None:
    """Inject ``cfg.method``'s adapters into ``model`` (in place) and freeze the rest; None for ``method: none``."""
    if not cfg.enabled:
        return None
    if peft_state(model) is not None:
        raise UserError("the model already has PEFT adapters; merge them first (trainlab export --merge)")
    spec = get_peft_method(cfg.method)
    info = spec.apply(model, cfg)
    model.trainlab_peft = PeftState(cfg, info)
    return info


def _require(model: nn.Module) -> PeftState:
    state = peft_state(model)
    if state is None:
        raise UserError("the model has no PEFT adapters (peft.method=none)")
    return state


def adapter_state(model: nn.Module) -> dict[str, Tensor]:
    """The adapter tensors under HF PEFT's keys (what ``adapter_model.safetensors`` holds)."""
    return _require(model).spec.state_to_peft(model)


def adapter_nbytes(model: nn.Module) -> int:
    """Bytes of the adapter tensors as saved (their dtype)."""
    return sum(t.numel() * t.element_size() for t in adapter_state(model).values())


def save_adapter(model: nn.Module, out_dir: str | Path) -> Path:
    """Write the adapter folder (module docstring); returns it."""
    state = _require(model)
    spec = state.spec
    config = spec.peft_config(state.config, model)
    out = write_adapter(out_dir, config, spec.state_to_peft(model))
    ours = {"method": spec.name, "peft": state.config.model_dump(mode="json"), "info": state.info.to_dict()}
    (out / TRAINLAB_PEFT_NAME).write_text(json.dumps(ours, indent=2) + "\n", encoding="utf-8")
    return out


def read_adapter_config(path: str | Path) -> PeftConfig:
    """The `PeftConfig` of an adapter folder: ours (``trainlab_peft.json``) or HF PEFT's ``adapter_config.json``."""
    p = Path(path)
    if (p / TRAINLAB_PEFT_NAME).is_file():
        try:
            return PeftConfig.model_validate(json.loads((p / TRAINLAB_PEFT_NAME).read_text(encoding="utf-8"))["peft"])
        except (ValueError, KeyError) as exc:
            raise UserError(f"invalid {TRAINLAB_PEFT_NAME}: {exc}".splitlines()[0], path=p) from None
    config, _ = read_adapter(p)
    peft_type = config.get("peft_type")
    if not isinstance(peft_type, str):
        raise UserError(f"{CONFIG_NAME} has no peft_type", path=p)
    spec = method_for_peft_type(peft_type, config)
    assert spec.config_from_peft is not None
    return spec.config_from_peft(config)


def load_adapter(model: nn.Module, path: str | Path) -> PeftInfo:
    """Inject the adapter saved in ``path`` (by trainlab or by HF PEFT) into ``model`` and load its tensors."""
    cfg = read_adapter_config(path)
    _, tensors = read_adapter(path)
    if isinstance(cfg.targets, list) and any("." in t for t in cfg.targets):
        # PEFT writes the resolved paths of "all-linear" (and users may name full paths): the HF model's
        from trainlab.peft.hf_format import our_module_path
        from trainlab.peft.targets import matches

        # a dotted name that already selects modules as a suffix (GPT-2's "mlp.c_proj", PEFT's IA3 default) stays
        ours = [n for n, _ in model.named_modules() if n]
        cfg = cfg.model_copy(update={"targets": [our_module_path(model, t) if "." in t and not any(
            matches(n, t) for n in ours) else t for t in cfg.targets]})
    info = apply_peft(model, cfg)
    assert info is not None
    get_peft_method(cfg.method).state_from_peft(model, tensors)
    return info


def is_adapter_folder(path: str | Path) -> bool:
    p = Path(path)
    return (p / CONFIG_NAME).is_file() and (p / WEIGHTS_NAME).is_file()


@contextlib.contextmanager
def adapters_disabled(model: nn.Module) -> Iterator[nn.Module]:
    """Within the block ``model`` computes its base function: every module with an ``adapter_enabled`` flag off."""
    flagged = [m for m in model.modules() if hasattr(m, "adapter_enabled")]
    before = [m.adapter_enabled for m in flagged]
    for m in flagged:
        m.adapter_enabled = False
    try:
        yield model
    finally:
        for m, was in zip(flagged, before, strict=True):
            m.adapter_enabled = was


def merge(model: nn.Module) -> nn.Module:
    """Fold the adapters into the base weights (in place); the model is a plain, fully trainable one again."""
    state = _require(model)
    spec = state.spec
    if spec.merge is None:
        raise UserError(f"peft.method={spec.name}: its adapters cannot be merged into the base weights")
    spec.merge(model)
    del model.trainlab_peft
    for p in model.parameters():
        if p.is_floating_point():
            p.requires_grad_(True)
    return model


class ReferenceView(nn.Module):
    """The base model behind ``policy``'s adapters, as a model: π_ref of DPO/KTO without a copy in memory.

    It scores with the policy's own (frozen) base weights inside `adapters_disabled` and in eval mode (no
    dropout); the policy is not a registered submodule, so it has no parameters of its own.
    """

    def __init__(self, policy: nn.Module) -> None:
        super().__init__()
        object.__setattr__(self, "_policy", policy)

    @property
    def policy(self) -> nn.Module:
        return self._policy  # type: ignore[no-any-return]

    @property
    def config(self) -> Any:
        return self.policy.config

    @contextlib.contextmanager
    def _base(self) -> Iterator[nn.Module]:
        policy = self.policy
        was = policy.training
        policy.eval()
        try:
            with adapters_disabled(policy):
                yield policy
        finally:
            policy.train(was)

    def custom_mask_max_length(self) -> int:
        from trainlab.align.prefix_sharing import custom_mask_limit

        return custom_mask_limit(self.policy)

    def hidden_states(self, *args: Any, **kwargs: Any) -> Tensor:
        with self._base() as m:
            return m.hidden_states(*args, **kwargs)  # type: ignore[operator,no-any-return]

    def output_embedding(self) -> Tensor:
        return self.policy.output_embedding()  # type: ignore[operator,no-any-return]

    def state_dict(self, *args: Any, **kwargs: Any) -> dict[str, Any]:  # type: ignore[override]
        """The policy's (a reference cache is keyed by the weights it scores with)."""
        return self.policy.state_dict(*args, **kwargs)  # type: ignore[no-any-return]

    def forward(self, *args: Any, **kwargs: Any) -> Tensor:
        with self._base() as m:
            return m(*args, **kwargs)  # type: ignore[no-any-return]


__all__ = ["ADAPTER_DIR", "ALL_LINEAR", "PeftConfig", "PeftInfo", "PeftMethodSpec", "PeftState", "ReferenceView",
           "adapter_nbytes", "adapter_state", "adapters_disabled", "apply_peft", "get_peft_method",
           "is_adapter_folder", "load_adapter", "merge", "peft_methods", "peft_state", "read_adapter_config",
           "register_peft_method", "save_adapter"]
