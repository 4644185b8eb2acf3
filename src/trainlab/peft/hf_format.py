"""Hugging Face PEFT's adapter folder: ``adapter_config.json`` + ``adapter_model.safetensors``.

PEFT saves the adapter tensors under the wrapped model's module paths prefixed by ``base_model.model.``
and without the adapter name: ``base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight`` for a
``LlamaForCausalLM``. So that ``PeftModel.from_pretrained(LlamaForCausalLM.from_pretrained(exported), dir)``
loads what trainlab wrote, our decoder's module paths are written as HF Llama's
(`trainlab.model.hf_export.to_hf_name`: ``layers.0.attn.q_proj`` -> ``model.layers.0.self_attn.q_proj``),
and an `HFCausalLM`'s paths lose their wrapper prefix (``model.transformer.h.0`` -> ``transformer.h.0``).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from trainlab.errors import UserError

PEFT_PREFIX = "base_model.model."
CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"

# our decoder's module path prefixes -> HF Llama's (hf_export.to_hf_name does the same for parameters)
_DECODER_TO_HF: list[tuple[str, str]] = [
    (r"^layers\.(\d+)\.attn(?=\.|$)", r"model.layers.\1.self_attn"),
    (r"^layers\.(\d+)\.mlp(?=\.|$)", r"model.layers.\1.mlp"),
    (r"^layers\.(\d+)\.attn_norm(?=\.|$)", r"model.layers.\1.input_layernorm"),
    (r"^layers\.(\d+)\.mlp_norm(?=\.|$)", r"model.layers.\1.post_attention_layernorm"),
    (r"^layers\.(\d+)(?=\.|$)", r"model.layers.\1"),
    (r"^embed(?=\.|$)", "model.embed_tokens"),
    (r"^norm(?=\.|$)", "model.norm"),
    (r"^lm_head(?=\.|$)", "lm_head"),
]
_HF_TO_DECODER: list[tuple[str, str]] = [
    (r"^model\.layers\.(\d+)\.self_attn(?=\.|$)", r"layers.\1.attn"),
    (r"^model\.layers\.(\d+)\.mlp(?=\.|$)", r"layers.\1.mlp"),
    (r"^model\.layers\.(\d+)\.input_layernorm(?=\.|$)", r"layers.\1.attn_norm"),
    (r"^model\.layers\.(\d+)\.post_attention_layernorm(?=\.|$)", r"layers.\1.mlp_norm"),
    (r"^model\.layers\.(\d+)(?=\.|$)", r"layers.\1"),
    (r"^model\.embed_tokens(?=\.|$)", "embed"),
    (r"^model\.norm(?=\.|$)", "norm"),
    (r"^lm_head(?=\.|$)", "lm_head"),
]


def _is_decoder(model: nn.Module) -> bool:
    from trainlab.model.decoder import Decoder

    return isinstance(model, Decoder)


def _first(path: str, table: list[tuple[str, str]]) -> str | None:
    for pattern, repl in table:
        if re.match(pattern, path):
            return re.sub(pattern, repl, path, count=1)
    return None


def hf_module_path(model: nn.Module, path: str) -> str:
    """Our module path -> the transformers model's (see the module docstring)."""
    if _is_decoder(model):
        out = _first(path, _DECODER_TO_HF)
        if out is None:
            raise KeyError(f"no HF Llama path for module {path!r}")
        return out
    if path == "model" or path.startswith("model."):
        return path[len("model."):]
    return path


def our_module_path(model: nn.Module, hf_path: str) -> str:
    """The transformers model's module path -> ours (inverse of `hf_module_path`)."""
    if _is_decoder(model):
        out = _first(hf_path, _HF_TO_DECODER)
        if out is None:
            raise UserError(f"adapter key {hf_path!r} names no module of a Llama model")
        return out
    return "model." + hf_path


def peft_key(model: nn.Module, path: str, suffix: str) -> str:
    """``base_model.model.<hf path>.<suffix>`` for the module at our ``path``."""
    return f"{PEFT_PREFIX}{hf_module_path(model, path)}.{suffix}"


def split_peft_key(model: nn.Module, key: str, suffixes: tuple[str, ...]) -> tuple[str, str]:
    """``(our module path, suffix)`` of an adapter key ending in one of ``suffixes``."""
    body = key.removeprefix(PEFT_PREFIX)
    for suffix in sorted(suffixes, key=len, reverse=True):
        if body.endswith("." + suffix):
            return our_module_path(model, body[: -len(suffix) - 1]), suffix
    raise UserError(f"adapter key {key!r}: not one of this method's tensors ({', '.join(suffixes)})")


def hf_target_names(model: nn.Module, paths: list[str]) -> list[str]:
    """The ``target_modules`` list PEFT writes: the adapted modules' last path component, sorted."""
    return sorted({hf_module_path(model, p).rsplit(".", 1)[-1] for p in paths})


def base_model_name(model: nn.Module) -> str | None:
    """``base_model_name_or_path`` for adapter_config.json: the folder the model was loaded from, if known."""
    source = getattr(model, "source", None)
    path = getattr(source, "path", None)
    return str(path) if path is not None else None


def write_adapter(out_dir: str | Path, config: dict[str, Any], state: dict[str, Tensor]) -> Path:
    """Write the two files into ``out_dir`` (created); tensors contiguous, on the CPU."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().contiguous().cpu() for k, v in state.items()}
    save_file(tensors, str(out / WEIGHTS_NAME), metadata={"format": "pt"})
    (out / CONFIG_NAME).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return out


def read_adapter(path: str | Path) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """``(adapter_config, tensors)`` of an adapter folder (ours or HF PEFT's)."""
    p = Path(path)
    if not (p / CONFIG_NAME).is_file():
        raise UserError(f"not an adapter folder: no {CONFIG_NAME}", path=p)
    if not (p / WEIGHTS_NAME).is_file():
        raise UserError(f"no {WEIGHTS_NAME} (only safetensors adapters are read)", path=p)
    try:
        config = json.loads((p / CONFIG_NAME).read_text(encoding="utf-8"))
    except ValueError as exc:
        raise UserError(f"invalid JSON: {exc}", path=p / CONFIG_NAME) from None
    try:
        state = load_file(str(p / WEIGHTS_NAME))
    except Exception as exc:
        raise UserError(f"cannot read the adapter weights: {exc}".splitlines()[0], path=p / WEIGHTS_NAME) from None
    return config, state
