"""Checks a model folder must pass before any command uses it, each failure one line (``UserError``).

Run by :func:`trainlab.model.protocol.load_model` before anything is loaded or written, so every
command (``generate``, ``sft``, ``dpo``, ...) refuses bad input the same way:

* **not a causal language model**: ``config.json``'s ``architectures`` name no class that
  ``transformers`` lists as a causal LM (``MODEL_FOR_CAUSAL_LM_MAPPING_NAMES``): a ``BertModel``
  folder is refused instead of being loaded as a ``BertLMHeadModel`` with a randomly initialised head;
* **corrupt or truncated safetensors**: every weight file's header must parse and its tensors must
  lie inside the file (``safe_open`` checks both); a shard listed in the index must exist;
* **model and tokenizer do not match**: the tokenizer has more tokens than the embedding has rows
  (a token id would index past the embedding), or a bos/eos id of the model's config (and
  generation_config's eos ids) is not a special token of the tokenizer;
* **weights missing from the checkpoint** (``transformers`` would initialise them randomly and go on).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from trainlab.errors import UserError

CONFIG_NAME = "config.json"
GENERATION_CONFIG_NAME = "generation_config.json"
SAFETENSORS_INDEX_NAME = "model.safetensors.index.json"


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object from ``path``; UserError (one line) if it is not one."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"cannot read {path.name}: {str(exc).splitlines()[0]}", path=path) from None
    if not isinstance(data, dict):
        raise UserError(f"{path.name} is not a JSON object", path=path)
    return data


def not_a_model_folder(path: Path) -> UserError:
    """The error for a folder without ``config.json``; a PEFT adapter folder is named as one, with the fix."""
    adapter = path / "adapter_config.json"
    if adapter.is_file():
        try:
            base = json.loads(adapter.read_text(encoding="utf-8")).get("base_model_name_or_path")
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError):
            base = None
        on = f" on {base}" if base else ""
        return UserError(f"a PEFT adapter{on} (adapter_config.json), not a model folder: merge it into its base "
                         "(trainlab export --model DIR --merge --out OUT, or peft: PeftModel.from_pretrained(base, "
                         "DIR).merge_and_unload().save_pretrained(OUT), with the tokenizer) and pass that folder",
                         path=path)
    run = _run_folder_error(path)
    return run if run is not None else UserError("no config.json: not a model folder", path=path)


def _run_folder_error(path: Path | None) -> UserError | None:
    """A training run's ``--out`` folder (its own config.json, the model under ``model/``), named with the fix."""
    if path is not None and not (path / "model" / CONFIG_NAME).is_file() \
            and (path / "adapter" / "adapter_config.json").is_file():
        return UserError(f"a PEFT run folder, not a model folder: its adapter is {path / 'adapter'}; merge it into "
                         f"its base with trainlab export --model {path} --merge --out OUT (or train with "
                         "peft.merge=true)", path=path)
    if path is None or not (path / "model" / CONFIG_NAME).is_file():
        return None
    return UserError(f"a run folder, not a model folder; its model is {path / 'model'}", path=path)


def _causal_lm_classes() -> tuple[set[str], set[str]]:
    """(model types, class names) that ``AutoModelForCausalLM`` loads."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    names: set[str] = set()
    for value in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values():
        names.update([value] if isinstance(value, str) else value)
    return set(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES), names


def check_causal_lm(config: dict[str, Any], *, path: Path | None = None) -> None:
    """Refuse a ``config.json`` whose architecture is not a causal (decoder-only) language model."""
    model_types, classes = _causal_lm_classes()
    architectures = [str(a) for a in config.get("architectures") or []]
    if architectures:
        if not any(a in classes for a in architectures):
            raise UserError(f"not a causal language model: {', '.join(architectures)}", path=path)
        return
    model_type = config.get("model_type")
    if model_type is None and (run := _run_folder_error(path)) is not None:
        raise run
    if model_type not in model_types:
        raise UserError(f"not a causal language model: model_type {model_type!r}", path=path)


def weight_files(path: Path) -> list[Path]:
    """The safetensors files of a folder (the shards of an index, or every ``*.safetensors``)."""
    index = path / SAFETENSORS_INDEX_NAME
    if index.is_file():
        weight_map = read_json(index).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise UserError(f"{SAFETENSORS_INDEX_NAME} has no weight_map", path=index)
        shards = [path / str(s) for s in sorted(set(weight_map.values()))]
        missing = [s.name for s in shards if not s.is_file()]
        if missing:
            raise UserError(f"safetensors shard(s) listed in the index are missing: {', '.join(missing[:3])}",
                            path=path)
        return shards
    return sorted(path.glob("*.safetensors"))


def check_safetensors(files: Iterable[Path]) -> None:
    """Every file's header parses and covers the file: catches truncated and corrupt files up front.

    ``safe_open`` reads only the header (and checks that the tensors' byte ranges fit the file), so
    this costs no weight loading.
    """
    from safetensors import safe_open

    for file in files:
        try:
            with safe_open(str(file), framework="pt", device="cpu") as f:
                f.keys()
        except Exception as exc:  # SafetensorError, OSError: the format library's own errors
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise UserError(f"corrupt or truncated safetensors file ({reason})", path=file) from None


def _ids(value: Any) -> list[int]:
    if value is None:
        return []
    if isinstance(value, int):
        return [value]
    if isinstance(value, (list, tuple)):
        return [int(v) for v in value if isinstance(v, int)]
    return []


def model_special_ids(config: Any, generation_config: Any = None) -> dict[str, list[int]]:
    """``{"bos_token_id": [...], "eos_token_id": [...], "pad_token_id": [...]}`` of a model (config or dict)."""

    def get(obj: Any, name: str) -> Any:
        return obj.get(name) if isinstance(obj, dict) else getattr(obj, name, None)

    out: dict[str, list[int]] = {}
    for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
        ids = _ids(get(config, name))
        if generation_config is not None:
            ids += [i for i in _ids(get(generation_config, name)) if i not in ids]
        out[name] = ids
    return out


def check_tokenizer(tokenizer: Any, *, embedding_rows: int, special_ids: dict[str, list[int]] | None = None,
                    path: Path | None = None) -> None:
    """Refuse a tokenizer that does not belong to the model.

    Its size must not exceed ``embedding_rows``; every id must lie inside the embedding, and the
    model's bos and eos ids must be special (added) tokens of the tokenizer, e.g. a Llama model's eos
    id 2 must be ``</s>``, not a byte token.
    """
    size = len(tokenizer)
    if size > embedding_rows:
        raise UserError(f"the tokenizer has {size} tokens but the model's embedding has {embedding_rows} rows: "
                        "model and tokenizer do not match", path=path)
    specials = set(getattr(tokenizer, "all_special_ids", []) or [])
    added = getattr(tokenizer, "added_tokens_decoder", None) or {}
    specials.update(int(i) for i in added)
    for name, ids in (special_ids or {}).items():
        for i in ids:
            if i >= embedding_rows or i < 0:
                raise UserError(f"config {name}={i} is outside the embedding ({embedding_rows} rows)", path=path)
            if name == "pad_token_id":
                continue  # some configs pad with an ordinary token: harmless, never attended to
            if i < size and i not in specials:
                token = tokenizer.convert_ids_to_tokens(i)
                raise UserError(f"model and tokenizer do not match: the model's {name} {i} is {token!r} in the "
                                "tokenizer, not a special token", path=path)
            if i >= size:
                raise UserError(f"model and tokenizer do not match: the model's {name} {i} is not in the tokenizer "
                                f"({size} tokens)", path=path)


def check_loading_info(info: dict[str, Any], *, model_name: str, path: Path | None = None) -> None:
    """Refuse a transformers load that initialised weights the checkpoint lacks (or could not fit)."""
    missing = sorted(info.get("missing_keys") or [])
    mismatched = sorted(str(k[0] if isinstance(k, tuple) else k) for k in info.get("mismatched_keys") or [])
    if missing:
        shown = ", ".join(missing[:3]) + (" ..." if len(missing) > 3 else "")
        raise UserError(f"{model_name}: {len(missing)} weight(s) missing from the checkpoint ({shown})", path=path)
    if mismatched:
        raise UserError(f"{model_name}: weight shapes do not match the config ({', '.join(mismatched[:3])})",
                        path=path)
