"""Save a trained model as its folder defined it: same dtype, same generation settings, same dropout config.

Training loads every model in float32 (master weights for the optimizer), but a folder whose
``config.json`` says ``"dtype": "bfloat16"`` is a bf16 model: :func:`save_model` writes it back in
bf16 (half the bytes of fp32) unless ``save_dtype`` says otherwise. The dtype comes from
``model.source`` (:class:`~trainlab.model.protocol.ModelSource`, recorded by ``load_model``); a
model built in memory keeps its parameters' dtype. Casting happens on a copy of the state dict,
never on the model (a bf16 round trip would destroy the fp32 master weights).

Dropout that :func:`~trainlab.model.protocol.disable_dropout` turned off for training is written
with its original values, as TRL saves a model whose dropout it disabled.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from trainlab.errors import UserError

SAVE_DTYPES: dict[str, torch.dtype | None] = {
    "auto": None,
    "float32": torch.float32, "fp32": torch.float32,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float16": torch.float16, "fp16": torch.float16,
}


def _param_dtype(model: Any) -> torch.dtype:
    floats = [p.dtype for p in model.parameters() if p.is_floating_point()]
    return floats[0] if floats else torch.float32


def resolve_save_dtype(model: Any, save_dtype: torch.dtype | str | None = None) -> torch.dtype:
    """The dtype :func:`save_model` writes: ``save_dtype`` if given (a dtype or one of ``SAVE_DTYPES``),
    else (None / ``"auto"``) the source folder's dtype, else the parameters' dtype."""
    if isinstance(save_dtype, str):
        if save_dtype not in SAVE_DTYPES:
            raise UserError(f"unknown save dtype {save_dtype!r}; expected one of {', '.join(SAVE_DTYPES)}")
        save_dtype = SAVE_DTYPES[save_dtype]
    if save_dtype is not None:
        if not save_dtype.is_floating_point:
            raise UserError(f"save dtype must be a floating type, got {save_dtype}")
        return save_dtype
    source = getattr(model, "source", None)
    if source is not None and source.dtype is not None:
        return source.dtype
    return _param_dtype(model)


def cast_state_dict(state: dict[str, Tensor], dtype: torch.dtype) -> dict[str, Tensor]:
    """``state`` with floating tensors cast to ``dtype``; tensors that share storage (tied weights) stay shared."""
    out: dict[str, Tensor] = {}
    seen: dict[tuple[int, tuple[int, ...], tuple[int, ...]], Tensor] = {}
    for name, t in state.items():
        if not t.is_floating_point() or t.dtype == dtype:
            out[name] = t
            continue
        key = (t.data_ptr(), tuple(t.shape), tuple(t.stride()))
        if key not in seen:
            seen[key] = t.detach().to(dtype)
        out[name] = seen[key]
    return out


def _restore_dropout_config(config: Any, model: Any) -> dict[str, Any]:
    """Put the dropout values :func:`disable_dropout` zeroed back into ``config``; returns what to undo."""
    original = getattr(model, "dropout_disabled", None) or {}
    undo = {name: getattr(config, name) for name in original if hasattr(config, name)}
    for name, value in original.items():
        setattr(config, name, value)
    return undo


def _save_hf(model: Any, tokenizer: Any, out: Path, dtype: torch.dtype) -> Path:
    from trainlab.model.hf import quiet_transformers
    from trainlab.model.hf_export import publish_folder, save_tokenizer

    hf = model.model
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    undo = _restore_dropout_config(hf.config, model)
    try:
        with quiet_transformers():
            hf.save_pretrained(str(tmp), state_dict=cast_state_dict(hf.state_dict(), dtype))
            if tokenizer is not None:
                source = getattr(model, "source", None)
                save_tokenizer(tokenizer, tmp, source.path if source is not None else None)
        # transformers writes the in-memory parameters' dtype (float32) into config.json
        config_file = tmp / "config.json"
        config = json.loads(config_file.read_text(encoding="utf-8"))
        key = "torch_dtype" if "torch_dtype" in config and "dtype" not in config else "dtype"
        config[key] = str(dtype).removeprefix("torch.")
        config_file.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        publish_folder(tmp, out)
    finally:
        for name, value in undo.items():
            setattr(hf.config, name, value)
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def save_model(model: Any, out_dir: str | Path, tokenizer: Any = None, *,
               save_dtype: torch.dtype | str | None = None) -> Path:
    """Write ``model`` (and ``tokenizer``) to ``out_dir`` as a transformers folder; returns ``out_dir``.

    Our :class:`~trainlab.model.decoder.Decoder` is written in the Llama layout
    (:func:`~trainlab.model.hf_export.save_pretrained`), a :class:`~trainlab.model.hf.HFCausalLM` with
    transformers' own ``save_pretrained``. Weights are saved in :func:`resolve_save_dtype`'s dtype;
    the folder replaces ``out_dir`` atomically (complete before it takes the name).
    """
    from trainlab.model.decoder import Decoder
    from trainlab.model.hf import HFCausalLM
    from trainlab.model.hf_export import save_pretrained

    dtype = resolve_save_dtype(model, save_dtype)
    out = Path(out_dir)
    if isinstance(model, Decoder):
        source = getattr(model, "source", None)
        return save_pretrained(model, out, tokenizer, dtype=dtype,
                               generation_config=source.generation_config if source is not None else None)
    if isinstance(model, HFCausalLM):
        return _save_hf(model, tokenizer, out, dtype)
    raise TypeError(f"cannot save a {type(model).__name__}")
