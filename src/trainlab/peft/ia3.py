"""(IA)³: learned scaling vectors on keys, values and the feed-forward's inner activation.

Liu et al., 2022, "Few-Shot Parameter-Efficient Fine-Tuning is Better and Cheaper than In-Context
Learning" (T-Few). Three learned vectors per block rescale activations elementwise::

    k' = l_k ⊙ k,   v' = l_v ⊙ v,   h' = W_down (l_ff ⊙ φ(W_gate x) ⊙ W_up x)

Each vector starts at 1 (the base model's function). As HF PEFT implements it, an "attention" target
scales its layer's *output* (``y = l ⊙ (Wx + b)``, ``l`` of shape ``[out, 1]``) and a "feed-forward"
target scales its layer's *input* (``y = W (l ⊙ x) + b``, ``l`` of shape ``[1, in]``), so the MLP's inner
activation is rescaled by scaling the input of ``down_proj``. Trainable parameters per block:
``d_k + d_v + d_ff`` (no matrices at all: the smallest of the methods here).

Merging folds the vectors into the weights: ``W ← diag(l) W`` (output scaling, the bias too) or
``W ← W diag(l)`` (input scaling), giving the same function with no adapter left.

Targets are PEFT's defaults per architecture (``TRANSFORMERS_MODELS_TO_IA3_TARGET_MODULES_MAPPING``:
Llama/Mistral ``k_proj, v_proj, down_proj``; Qwen2/3 ``q_proj, v_proj, down_proj``; GPT-2 ``c_attn,
mlp.c_proj``) unless ``peft.targets`` names modules; feed-forward modules likewise (``peft.ia3_feedforward``).
Saved in PEFT's format (``peft_type: IA3``, tensors ``<module>.ia3_l``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from trainlab.errors import UserError
from trainlab.peft.config import ALL_LINEAR, PeftConfig
from trainlab.peft.hf_format import (
    PEFT_PREFIX,
    base_model_name,
    hf_module_path,
    split_peft_key,
)
from trainlab.peft.registry import PeftInfo, PeftMethodSpec, register_peft_method
from trainlab.peft.targets import (
    count_parameters,
    freeze,
    is_conv1d,
    is_linear,
    linear_shape,
    matches,
    replace_module,
)

# HF PEFT 0.21's defaults (peft.utils.constants), for the architectures trainlab is tested on
IA3_TARGETS: dict[str, list[str]] = {
    "llama": ["k_proj", "v_proj", "down_proj"], "mistral": ["k_proj", "v_proj", "down_proj"],
    "qwen2": ["q_proj", "v_proj", "down_proj"], "qwen3": ["q_proj", "v_proj", "down_proj"],
    "gemma": ["q_proj", "v_proj", "down_proj"], "phi": ["q_proj", "v_proj", "fc2"],
    "gpt2": ["c_attn", "mlp.c_proj"], "gpt_neox": ["query_key_value", "dense_4h_to_h"],
    "opt": ["q_proj", "k_proj", "fc2"], "falcon": ["query_key_value", "dense_4h_to_h"],
}
IA3_FEEDFORWARD: dict[str, list[str]] = {
    "llama": ["down_proj"], "mistral": ["down_proj"], "qwen2": ["down_proj"], "qwen3": ["down_proj"],
    "gemma": ["down_proj"], "phi": ["fc2"], "gpt2": ["mlp.c_proj"], "gpt_neox": ["dense_4h_to_h"],
    "opt": ["fc2"], "falcon": ["dense_4h_to_h"],
}


def model_type(model: nn.Module) -> str:
    """``llama`` for our decoder (it exports as ``LlamaForCausalLM``), else the HF config's ``model_type``."""
    from trainlab.model.decoder import Decoder

    if isinstance(model, Decoder):
        return "llama"
    return str(getattr(getattr(model, "config", None), "model_type", "") or "")


def _names(value: str | list[str] | None) -> list[str] | None:
    if value is None:
        return None
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    return list(value)


class IA3Linear(nn.Module):
    """A Linear (or GPT-2 Conv1D) with an (IA)³ vector: output scaling, or input scaling (feed-forward)."""

    def __init__(self, base_layer: nn.Module, feedforward: bool) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.feedforward = feedforward
        self.adapter_enabled = True
        in_f, out_f = linear_shape(base_layer)
        w = base_layer.weight
        shape = (1, in_f) if feedforward else (out_f, 1)
        self.ia3_l = nn.Parameter(torch.ones(shape, device=w.device, dtype=w.dtype))

    def forward(self, x: Tensor) -> Tensor:
        if not self.adapter_enabled:
            return self.base_layer(x)
        scale = self.ia3_l.flatten()
        if self.feedforward:
            return self.base_layer(x * scale.to(x.dtype))
        y = self.base_layer(x)
        return y * scale.to(y.dtype)

    @torch.no_grad()
    def merged_base(self) -> nn.Module:
        """The base layer with the vector folded into its weight (and bias for output scaling)."""
        base, l = self.base_layer, self.ia3_l.flatten()
        w = base.weight
        out_dim = 1 if is_conv1d(base) else 0  # Conv1D stores [in, out]
        in_dim = 1 - out_dim
        dim = in_dim if self.feedforward else out_dim
        shape = [1, 1]
        shape[dim] = -1
        w.mul_(l.to(w.dtype).view(shape))
        if not self.feedforward and getattr(base, "bias", None) is not None:
            base.bias.mul_(l.to(base.bias.dtype))
        return base

    def extra_repr(self) -> str:
        return f"feedforward={self.feedforward}, ia3_l={tuple(self.ia3_l.shape)}"


def name_matches(model: nn.Module, path: str, names: list[str]) -> bool:
    """PEFT's suffix match of ``names`` against the module's path, ours or the HF model's
    (``k_proj`` and ``self_attn.k_proj`` both select our decoder's ``layers.0.attn.k_proj``)."""
    try:
        hf = hf_module_path(model, path)
    except KeyError:
        hf = path
    return any(matches(path, n) or matches(hf, n) for n in names)


def find_named(model: nn.Module, names: list[str]) -> list[tuple[str, nn.Module]]:
    """Linear/Conv1D layers selected by ``names`` (`name_matches`); a name matching none is a `UserError`."""
    layers = [(n, m) for n, m in model.named_modules() if n and is_linear(m) and not n.endswith(".base_layer")]
    found = [(n, m) for n, m in layers if name_matches(model, n, names)]
    unmatched = [t for t in names if not any(name_matches(model, n, [t]) for n, _ in layers)]
    if unmatched:
        leaves = sorted({n.rsplit(".", 1)[-1] for n, _ in layers})
        raise UserError(f"peft.targets: no layer named {', '.join(unmatched)}; this model's layers: "
                        f"{', '.join(leaves)}", key="peft.targets")
    return found


def _modules(model: nn.Module) -> list[tuple[str, IA3Linear]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, IA3Linear)]


def resolve_targets(model: nn.Module, cfg: PeftConfig) -> tuple[list[str], list[str]]:
    """(target names, feed-forward names): ``peft.targets`` when it names modules; its default
    (``all-linear``) means PEFT's (IA)³ targets for the architecture, as a bare ``IA3Config()`` does."""
    arch = model_type(model)
    if cfg.targets != ALL_LINEAR:
        targets = _names(cfg.targets) or []
    elif arch in IA3_TARGETS:
        targets = IA3_TARGETS[arch]
    else:
        raise UserError(f"peft.method=ia3: no default targets for model type {arch!r}; set peft.targets "
                        "(e.g. the key, value and MLP output projections) and peft.ia3_feedforward",
                        key="peft.targets")
    ff = _names(getattr(cfg, "ia3_feedforward", None))
    if ff is None:
        default_ff = IA3_FEEDFORWARD.get(arch, [])
        ff = [f for f in default_ff if f in targets]
    if targets:
        outside = [f for f in ff if f not in targets]
        if outside:
            raise UserError(f"{', '.join(outside)} not among peft.targets "
                            f"({', '.join(targets)}); PEFT requires feed-forward modules to be targets",
                            key="peft.ia3_feedforward")
    return targets, ff


def apply_ia3(model: nn.Module, cfg: PeftConfig) -> PeftInfo:
    """Freeze ``model`` and wrap its target layers in `IA3Linear` (vectors at 1: the same function)."""
    targets, ff = resolve_targets(model, cfg)
    found = find_named(model, targets)
    freeze(model)
    for path, module in found:
        replace_module(model, path, IA3Linear(module, name_matches(model, path, ff)))
    trainable, total = count_parameters(model)
    n_ff = sum(1 for _, m in _modules(model) if m.feedforward)
    return PeftInfo(method="ia3", trainable=trainable, total=total, modules=[p for p, _ in found],
                    notes=[f"(IA)³ vectors on {len(found) - n_ff} attention outputs and {n_ff} feed-forward "
                           f"inputs ({', '.join(targets)}; feed-forward: {', '.join(ff) or 'none'})"])


def _hf_names(model: nn.Module, paths: list[str]) -> list[str]:
    """PEFT ``target_modules``-style names selecting exactly ``paths`` in the HF model: the last path
    component where that is unambiguous (e.g. ``k_proj``), else the last two (``mlp.c_proj``), else full paths."""
    hf_all = [hf_module_path(model, n) for n, m in model.named_modules()
              if n and not isinstance(m, IA3Linear) and not n.endswith(".base_layer") and is_linear(m)]
    wanted = {hf_module_path(model, p) for p in paths}
    for depth in (1, 2):
        names = sorted({".".join(w.split(".")[-depth:]) for w in wanted})
        selected = {h for h in hf_all if any(h == n or h.endswith("." + n) for n in names)} | {
            w for w in wanted if any(w.endswith("." + n) for n in names)}
        if selected == wanted:
            return names
    return sorted(wanted)


def ia3_peft_config(cfg: PeftConfig, model: nn.Module) -> dict[str, Any]:
    """``adapter_config.json`` as PEFT's ``IA3Config.to_dict()`` writes it."""
    mods = _modules(model)
    if not mods:
        raise UserError("the model has no (IA)³ modules to save")
    paths = [p for p, _ in mods]
    targets = _hf_names(model, paths)
    ff = _hf_names(model, [p for p, m in mods if m.feedforward]) if any(m.feedforward for _, m in mods) else []
    if any(m.feedforward for _, m in mods) and not set(ff) <= set(targets):
        targets = sorted(set(targets) | set(ff))
    return {
        "peft_type": "IA3", "task_type": "CAUSAL_LM", "auto_mapping": None,
        "base_model_name_or_path": base_model_name(model), "revision": None, "inference_mode": True,
        "target_modules": targets, "feedforward_modules": ff, "exclude_modules": None,
        "fan_in_fan_out": any(is_conv1d(m.base_layer) for _, m in mods), "modules_to_save": None,
        "init_ia3_weights": True,
    }


def ia3_state(model: nn.Module) -> dict[str, Tensor]:
    """``{base_model.model.<hf path>.ia3_l: vector}`` (PEFT's shapes: ``[out, 1]`` or ``[1, in]``)."""
    return {f"{PEFT_PREFIX}{hf_module_path(model, p)}.ia3_l": m.ia3_l.detach() for p, m in _modules(model)}


def load_ia3_state(model: nn.Module, state: dict[str, Tensor]) -> None:
    """Copy PEFT-keyed vectors into the model's `IA3Linear` modules (every module must get one)."""
    mods = dict(_modules(model))
    seen: set[str] = set()
    for key, value in state.items():
        path, _ = split_peft_key(model, key, ("ia3_l",))
        if path not in mods:
            raise UserError(f"adapter key {key!r}: the model has no (IA)³ module at {path}")
        target = mods[path].ia3_l
        if tuple(value.shape) != tuple(target.shape):
            raise UserError(f"adapter key {key!r}: shape {tuple(value.shape)}, the model's is {tuple(target.shape)}")
        with torch.no_grad():
            target.copy_(value.to(target.dtype))
        seen.add(path)
    missing = sorted(set(mods) - seen)
    if missing:
        raise UserError(f"(IA)³ adapter: no vector for {', '.join(missing[:4])}" + (" ..." if len(missing) > 4 else ""))


def merge_ia3(model: nn.Module) -> None:
    """Fold every vector into its layer's weights and remove the wrappers."""
    for path, module in _modules(model):
        replace_module(model, path, module.merged_base())


def ia3_config_from_peft(adapter_config: dict[str, Any]) -> PeftConfig:
    """The `PeftConfig` that rebuilds the modules of a PEFT ``IA3`` adapter."""
    targets = adapter_config.get("target_modules")
    if isinstance(targets, str):
        raise UserError("IA3 adapter: target_modules as a regular expression is not supported; list the names")
    ff = adapter_config.get("feedforward_modules") or []
    if isinstance(ff, str):
        raise UserError("IA3 adapter: feedforward_modules as a regular expression is not supported")
    return PeftConfig(method="ia3", targets=list(targets or []), ia3_feedforward=list(ff))


SPEC = register_peft_method(PeftMethodSpec(
    name="ia3", peft_type="IA3", apply=apply_ia3, peft_config=ia3_peft_config, state_to_peft=ia3_state,
    state_from_peft=load_ia3_state, merge=merge_ia3, config_from_peft=ia3_config_from_peft,
    description="(IA)³: learned scaling of keys, values and the MLP's inner activation (Liu et al., 2022)"))

__all__ = ["IA3Linear", "apply_ia3", "ia3_peft_config", "ia3_state", "load_ia3_state", "merge_ia3",
           "model_type", "resolve_targets"]
