"""Which modules an adapter goes into, and module surgery (replace a submodule, freeze a model).

Target matching is HF PEFT's (``check_target_module_exists``): a name in ``targets`` matches a module
whose full path equals it or ends with ``"." + name``; ``"all-linear"`` selects every ``nn.Linear`` and
transformers ``Conv1D`` (GPT-2's c_attn/c_proj/c_fc) except the LM head (the module holding the output
embedding), as PEFT's ``_maybe_include_all_linear_layers`` does.

Paths are *our* module paths (``layers.0.attn.q_proj`` in our decoder, ``model.transformer.h.0.attn.c_attn``
in an `HFCausalLM`); `trainlab.peft.hf_format` maps them to the HF model's.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from torch import nn

from trainlab.errors import UserError
from trainlab.peft.config import ALL_LINEAR, REGEX_PREFIX


def conv1d_class() -> type | None:
    """transformers' ``Conv1D`` (a Linear with the weight stored ``[in, out]``), None without transformers."""
    try:
        from transformers.pytorch_utils import Conv1D
    except ImportError:  # pragma: no cover - transformers is a dependency
        return None
    return Conv1D


def is_linear(module: nn.Module) -> bool:
    conv1d = conv1d_class()
    return isinstance(module, nn.Linear) or (conv1d is not None and isinstance(module, conv1d))


def is_conv1d(module: nn.Module) -> bool:
    conv1d = conv1d_class()
    return conv1d is not None and isinstance(module, conv1d)


def linear_shape(module: nn.Module) -> tuple[int, int]:
    """``(in_features, out_features)`` of a Linear or a Conv1D (weight ``[in, out]``, ``fan_in_fan_out``)."""
    if callable(getattr(module, "dequantize", None)):  # a quantized base (QLoRA's NF4Linear)
        return int(module.in_features), int(module.out_features)
    w = module.weight
    if is_conv1d(module):
        return int(w.shape[0]), int(w.shape[1])
    return int(w.shape[1]), int(w.shape[0])


def head_module_names(model: nn.Module) -> set[str]:
    """Paths of the modules holding the output embedding (LM head), excluded from ``all-linear``."""
    try:
        head_weight = model.output_embedding()  # type: ignore[operator]
    except Exception:
        head_weight = None
    inner = getattr(model, "model", None)
    if head_weight is None and inner is not None and callable(getattr(inner, "get_output_embeddings", None)):
        head = inner.get_output_embeddings()
        head_weight = head.weight if head is not None else None
    if head_weight is None:
        return set()
    return {name for name, m in model.named_modules() if getattr(m, "weight", None) is head_weight}


def matches(path: str, name: str) -> bool:
    return path == name or path.endswith("." + name)


def find_targets(model: nn.Module, targets: str | Iterable[str], *,
                 accept: type | tuple[type, ...] | None = None) -> list[tuple[str, nn.Module]]:
    """``(path, module)`` of every module ``targets`` selects (module docstring), in model order.

    ``accept``: the module types an adapter can wrap (default: Linear and Conv1D); a named target of
    another type is a `UserError`, as is a name that matches nothing.
    """
    conv1d = conv1d_class()
    kinds: tuple[type, ...] = (nn.Linear,) + ((conv1d,) if conv1d is not None else ())
    if accept is not None:
        kinds = accept if isinstance(accept, tuple) else (accept,)
    named = [(n, m) for n, m in model.named_modules() if n]
    if isinstance(targets, str) and targets == ALL_LINEAR:
        heads = head_module_names(model)
        found = [(n, m) for n, m in named if isinstance(m, kinds) and n not in heads
                 and not n.endswith(".base_layer")]
        if not found:
            raise UserError("all-linear: the model has no Linear layer besides its LM head",
                            key="peft.targets")
        return found
    if isinstance(targets, str) and targets.startswith(REGEX_PREFIX):
        return _regex_targets(model, named, targets[len(REGEX_PREFIX):], kinds)
    names = [targets] if isinstance(targets, str) else list(targets)
    found, unmatched = [], []
    for target in names:
        hits = [(n, m) for n, m in named if matches(n, target)]
        if not hits:
            unmatched.append(target)
        for n, m in hits:
            if not isinstance(m, kinds):
                raise UserError(f"{n} is a {type(m).__name__}, not a layer this method adapts "
                                f"({', '.join(k.__name__ for k in kinds)})", key="peft.targets")
            found.append((n, m))
    if unmatched:
        leaves = sorted({n.rsplit(".", 1)[-1] for n, m in named if isinstance(m, kinds)})
        raise UserError(f"no module named {', '.join(unmatched)}; this model's layers: "
                        f"{', '.join(leaves)}", key="peft.targets")
    order = {n: i for i, (n, _) in enumerate(named)}
    unique = {n: m for n, m in found}
    return sorted(unique.items(), key=lambda item: order[item[0]])


def _regex_targets(model: nn.Module, named: list[tuple[str, nn.Module]], pattern: str,
                   kinds: tuple[type, ...]) -> list[tuple[str, nn.Module]]:
    """Modules whose transformers path full-matches ``pattern`` (PEFT: ``re.fullmatch(target_modules, key)``)."""
    from trainlab.peft.hf_format import hf_module_path

    def hf_path(path: str) -> str:
        try:
            return hf_module_path(model, path)
        except KeyError:
            return path

    found = [(n, m) for n, m in named if re.fullmatch(pattern, hf_path(n)) and not n.endswith(".base_layer")]
    wrong = [n for n, m in found if not isinstance(m, kinds)]
    if wrong:
        raise UserError(f"{REGEX_PREFIX}{pattern} selects {wrong[0]}, a {type(dict(found)[wrong[0]]).__name__}, not a "
                        f"layer this method adapts", key="peft.targets")
    if not found:
        raise UserError(f"{REGEX_PREFIX}{pattern} matches no module of this model", key="peft.targets")
    return found


def replace_module(model: nn.Module, path: str, new: nn.Module) -> None:
    """Put ``new`` at ``path`` (``a.b.c``) in ``model``."""
    parent_path, _, leaf = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    setattr(parent, leaf, new)


def freeze(model: nn.Module) -> None:
    """``requires_grad = False`` on every parameter (the adapters are added after, trainable)."""
    for p in model.parameters():
        p.requires_grad_(False)


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameters, shared tensors counted once."""
    seen: set[int] = set()
    trainable = total = 0
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        total += p.numel()
        trainable += p.numel() if p.requires_grad else 0
    return trainable, total
