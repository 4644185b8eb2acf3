"""``trainlab export``: a model folder (ours or a fine-tuned transformers one) as a clean Hugging Face folder.

What the exported folder holds, so that ``AutoModelForCausalLM`` / ``AutoTokenizer`` / vLLM /
``transformers serve`` use it as trainlab does:

* the weights and ``config.json`` (:func:`trainlab.model.saving.save_model`: our decoder in the Llama
  layout, a transformers model with its own ``save_pretrained``), in the folder's dtype or ``--dtype``;
* the tokenizer, with its chat template;
* ``generation_config.json`` whose ``eos_token_id`` lists every id generation must stop at
  (:func:`trainlab.model.text.stop_token_ids`): the model's eos, the tokenizer's eos and the chat
  template's end-of-turn token. transformers' ``generate`` stops only at the generation config's eos
  ids, so a model fine-tuned on ChatML (turns end with ``<|im_end|>``) whose config still says
  ``<|endoftext|>`` would otherwise talk past the end of its answer — the most common "my SFT model
  never stops" report (vLLM and TGI read the same file).

Nothing else travels: no optimizer checkpoint, no run files. ``--out`` may not be or contain
``--model`` (publishing replaces ``--out``), nor lie inside it.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

from trainlab.errors import UserError
from trainlab.paths import check_out_outside_inputs

#: ``--dtype`` values (:data:`trainlab.model.saving.SAVE_DTYPES` names).
EXPORT_DTYPES = ("bf16", "fp16", "fp32")


def _is_model_folder(p: Path) -> bool:
    if (p / "trainlab.json").is_file():
        return True
    try:
        config = json.loads((p / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and ("model_type" in config or "architectures" in config)


def resolve_model_folder(path: str | Path) -> Path:
    """``path`` when it is a model folder; a run folder's ``model/`` (where training commands save, next to the
    run's own ``config.json``) otherwise."""
    p = Path(path).expanduser()
    if not p.exists():
        raise UserError("model path not found", path=p)
    if not _is_model_folder(p) and _is_model_folder(p / "model"):
        return p / "model"
    return p  # a model folder, or load_model says what is wrong with it


def load_with_tokenizer(model_dir: Path, *, device: str | None = None) -> tuple[Any, Any]:
    """The model of a folder (:func:`~trainlab.model.protocol.load_model`) and its tokenizer (required)."""
    from trainlab.data.tokenizer import load_tokenizer
    from trainlab.model.protocol import load_model

    model = load_model(model_dir, device=device)
    tokenizer = getattr(model, "tokenizer", None) or load_tokenizer(model_dir)
    return model, tokenizer


def generation_config(model: Any, tokenizer: Any) -> dict[str, Any]:
    """The folder's generation settings with ``eos_token_id`` = every stop id (see the module docstring)."""
    from trainlab.model.text import stop_token_ids

    source = getattr(model, "source", None)
    gen: dict[str, Any] = dict(getattr(source, "generation_config", None) or {})
    if not gen:
        hf_gen = getattr(getattr(model, "model", None), "generation_config", None)
        if hf_gen is not None:
            gen = hf_gen.to_diff_dict()
    # _from_model_config lets transformers' generate rebuild the settings from config.json (and its
    # single eos id) when they look derived from it: these are ours, with every stop id
    for name in ("_from_model_config", "transformers_version"):
        gen.pop(name, None)
    stops = stop_token_ids(model, tokenizer)
    if not stops:
        raise UserError("the model has no eos id (config, generation_config, tokenizer) and its tokenizer no chat "
                        "end-of-turn token: an exported model would never stop generating")
    gen["eos_token_id"] = stops[0] if len(stops) == 1 else stops
    for name in ("bos_token_id", "pad_token_id"):
        value = getattr(tokenizer, name, None)
        if gen.get(name) is None and value is not None:
            gen[name] = int(value)
    return gen


def export_model(model_dir: str | Path, out_dir: str | Path, *, dtype: str | None = None,
                 merge: bool = False) -> dict[str, Any]:
    """Write ``model_dir`` to ``out_dir`` as a Hugging Face folder; returns a summary (JSON-ready).

    ``dtype``: ``bf16``, ``fp16`` or ``fp32``; None keeps the folder's own (its ``config.json``'s).
    ``merge``: ``model_dir`` is a PEFT run (or adapter) folder; its adapter is merged into its base model
    (`trainlab.peft.merge.load_merged`), which is what is exported, in the base's dtype unless ``dtype``.
    """
    from transformers import GenerationConfig

    from trainlab.model.decoder import Decoder
    from trainlab.model.hf import quiet_transformers
    from trainlab.model.saving import resolve_save_dtype, save_model
    from trainlab.model.text import chat_end_of_turn_id

    if dtype is not None and dtype not in EXPORT_DTYPES:
        raise UserError(f"--dtype must be one of {', '.join(EXPORT_DTYPES)}, got {dtype!r}")
    src = Path(model_dir).expanduser() if merge else resolve_model_folder(model_dir)
    out = Path(out_dir).expanduser()
    check_out_outside_inputs(out, {"--model": src}, action="the export")
    merged_from = None
    if merge:
        from trainlab.peft.merge import load_merged

        model, tokenizer, base, adapter = load_merged(src)
        merged_from = {"base": str(base), "adapter": str(adapter)}
    else:
        model, tokenizer = load_with_tokenizer(src)
    gen = generation_config(model, tokenizer)
    if isinstance(model, Decoder):
        model.source = replace(model.source, generation_config=gen)
    else:
        with quiet_transformers():
            model.model.generation_config = GenerationConfig(**gen)
    save_dtype = resolve_save_dtype(model, dtype)
    save_model(model, out, tokenizer, save_dtype=save_dtype)
    eot = chat_end_of_turn_id(tokenizer)
    eos = gen["eos_token_id"]
    return {
        "model": str(src),
        "out": str(out),
        "dtype": str(save_dtype).removeprefix("torch."),
        "architecture": "LlamaForCausalLM" if isinstance(model, Decoder) else type(model.model).__name__,
        "eos_token_id": [eos] if isinstance(eos, int) else list(eos),
        "chat_template": bool(getattr(tokenizer, "chat_template", None)),
        "end_of_turn": None if eot is None else tokenizer.convert_ids_to_tokens(eot),
        "files": sorted(f.name for f in out.iterdir()),
    } | ({"merged": merged_from} if merged_from else {})
