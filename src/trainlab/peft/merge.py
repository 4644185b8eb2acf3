"""Merging a saved adapter into its base model after the fact (``trainlab export --model DIR --merge``).

``DIR`` is a PEFT run's ``--out`` folder (its ``adapter/``; the base is the run's ``model_in`` from
``summary.json``) or an adapter folder itself (trainlab's or HF PEFT's; the base is ``base_model_name_or_path``
when that is a local folder). The base is loaded as training loads it, the adapter injected and loaded, and
`trainlab.peft.merge` folds it in: ``W = W₀ + (α/r)·BA`` (LoRA; DoRA, QLoRA and IA3 their own way).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from trainlab.errors import UserError
from trainlab.peft.api import ADAPTER_DIR, is_adapter_folder, load_adapter, merge
from trainlab.peft.hf_format import CONFIG_NAME


def find_adapter(path: str | Path) -> Path | None:
    """The adapter folder of a run folder (``adapter/``) or ``path`` itself; None if neither is one."""
    p = Path(path).expanduser()
    if is_adapter_folder(p / ADAPTER_DIR):
        return p / ADAPTER_DIR
    return p if is_adapter_folder(p) else None


def base_model_of(adapter: Path, run_dir: Path | None = None) -> Path:
    """The base model folder of ``adapter``: the run's ``model_in``, else ``base_model_name_or_path``."""
    if run_dir is not None and (run_dir / "summary.json").is_file():
        model_in = json.loads((run_dir / "summary.json").read_text(encoding="utf-8")).get("model_in")
        if model_in and Path(model_in).is_dir():
            return Path(model_in)
    name = json.loads((adapter / CONFIG_NAME).read_text(encoding="utf-8")).get("base_model_name_or_path")
    if name and Path(name).expanduser().is_dir():
        return Path(name).expanduser()
    raise UserError(f"the adapter's base model ({name or 'not recorded'}) is not a local folder; trainlab merges "
                    "onto local folders only", path=adapter)


def load_merged(path: str | Path, *, device: str | None = None) -> tuple[Any, Any, Path, Path]:
    """(merged model, tokenizer, base folder, adapter folder) for a run or adapter folder (module docstring)."""
    from trainlab.recipes.export import load_with_tokenizer

    p = Path(path).expanduser()
    adapter = find_adapter(p)
    if adapter is None:
        raise UserError(f"--merge: no PEFT adapter here ({ADAPTER_DIR}/{CONFIG_NAME} or {CONFIG_NAME})", path=p)
    base = base_model_of(adapter, p if adapter != p else None)
    model, tokenizer = load_with_tokenizer(base, device=device)
    load_adapter(model, adapter)
    merge(model)
    return model, tokenizer, base, adapter
