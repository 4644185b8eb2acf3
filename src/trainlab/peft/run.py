"""PEFT in a training run (`trainlab.recipes.align.run_alignment`): apply after loading, save at the end.

* `apply_run_peft`: ``cfg.peft`` on the loaded policy (the adapter init seeded by ``peft.init_seed``, else
  ``train.seed``); every other parameter is frozen, so the optimizer builder (which skips frozen parameters)
  and the memory estimate (gradients and optimizer states of trainable parameters only) see only the adapters;
* `save_run_peft`: ``out/adapter/`` in HF PEFT's format (plus the tokenizer, as TRL's trainer saves it), and
  with ``peft.merge=true`` ``out/model/``: the adapters merged into a copy of the policy, a plain HF folder.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch
from torch import nn

from trainlab.errors import UserError
from trainlab.peft.api import ADAPTER_DIR, adapter_nbytes, apply_peft, merge, peft_state, save_adapter
from trainlab.peft.registry import PeftInfo


def apply_run_peft(model: nn.Module, cfg: Any) -> PeftInfo | None:
    """Apply ``cfg.peft`` (a `RunConfig`'s section) to ``model``; None when ``peft.method=none``."""
    peft = cfg.peft
    if not peft.enabled:
        return None
    if peft.init_seed is None:
        peft = peft.model_copy(update={"init_seed": cfg.train.seed})
    if peft.method == "adalora" and peft.adalora_total_step is None:  # the budget schedule spans the run
        peft = peft.model_copy(update={"adalora_total_step": cfg.train.max_steps})
    info = apply_peft(model, peft)
    state = peft_state(model)
    if peft.merge and state is not None and state.spec.merge is None:  # said before training, not after it
        raise UserError(f"peft.merge=true: peft.method={peft.method} adapters cannot be merged into the base weights "
                        "(they add tokens or modules the base model does not have); drop peft.merge")
    return info


def peft_train_extras(model: nn.Module, cfg: Any, objective: Any) -> tuple[Any, list[Any]]:
    """The objective and extra trainer callbacks of the model's PEFT method (`PeftMethodSpec.train_extras`)."""
    state = peft_state(model)
    if state is None or state.spec.train_extras is None:
        return objective, []
    return state.spec.train_extras(model, state.config, objective)


def save_run_peft(policy: nn.Module, cfg: Any, out: Path, tokenizer: Any, save_dtype: torch.dtype,
                  info: PeftInfo, save: bool = True) -> tuple[dict[str, Any], Path | None]:
    """Write ``out/adapter`` (and ``out/model`` merged with ``peft.merge``); returns (summary, model folder)."""
    from trainlab.model.hf_export import save_tokenizer
    from trainlab.model.saving import save_model

    adapter_dir = model_dir = None
    if save:
        adapter_dir = save_adapter(policy, out / ADAPTER_DIR)
        if tokenizer is not None:
            source = getattr(policy, "source", None)
            save_tokenizer(tokenizer, adapter_dir, getattr(source, "path", None))
        if cfg.peft.merge:
            merged = merge(copy.deepcopy(policy))
            model_dir = save_model(merged, out / "model", tokenizer, save_dtype=save_dtype)
            del merged
    summary = info.to_dict() | {"adapter_bytes": adapter_nbytes(policy),
                                "adapter_dir": str(adapter_dir) if adapter_dir else None,
                                "merged": model_dir is not None, "config": cfg.peft.model_dump(mode="json")}
    return summary, model_dir
