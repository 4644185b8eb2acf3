"""The models of an alignment run: the policy and its tokenizer, and the reference π_ref.

* `load_policy`: our decoder or any local transformers causal LM, with its tokenizer (pad = eos
  when it has none);
* `prepare_reference`: π_ref for methods that have one (`AlignMethod.reference`): the starting
  policy or ``align.ref_model`` (another folder with the same tokenizer), its log-probs cached
  before training or a frozen copy scoring every batch, and the reference kept for KL evaluation.

Saving is `trainlab.model.save_model` (the input model's dtype unless ``align.save_dtype`` says
otherwise), dropout `trainlab.model.disable_dropout` (TRL's ``disable_dropout``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from trainlab.align.config import POSITION_KEYS, AlignRunConfig
from trainlab.align.evaluate import pair_logps
from trainlab.align.reference import FrozenReference, reference_logps
from trainlab.data.tokenizer import load_tokenizer
from trainlab.errors import UserError
from trainlab.model.protocol import disable_dropout, load_model
from trainlab.peft.api import ReferenceView, peft_state
from trainlab.recipes.align_data import AlignmentData, check_vocab
from trainlab.recipes.methods import AlignMethod
from trainlab.train.amp import autocast_context


def load_policy(path: str | Path, device: torch.device | str = "cpu") -> tuple[nn.Module, Any]:
    """(model, tokenizer) from a model folder: ours, or any local transformers causal LM."""
    p = Path(path)
    model = load_model(p)
    try:
        tokenizer = load_tokenizer(p)
    except UserError:
        tokenizer = getattr(model, "tokenizer", None)
        if tokenizer is None or getattr(tokenizer, "eos_token_id", None) is None:
            raise
    # the tokenizer is used (and saved) as it is: no pad token is invented (batches pad with eos)
    return model.to(device), tokenizer  # type: ignore[attr-defined]


def max_positions(model: nn.Module) -> int | None:
    """The longest sequence ``model`` takes: our decoder's ``max_seq_len``, a transformers config's
    ``max_position_embeddings`` / ``n_positions`` / ...; None if its config names none."""
    config = getattr(model, "config", None)
    for key in ("max_seq_len", *POSITION_KEYS):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


@dataclass
class ReferenceSetup:
    """π_ref for a run: ``frozen`` scores training batches (``align.reference=frozen``), ``model``
    is the reference network kept for KL evaluation, ``eval_logps`` its log-probs on the
    evaluation pairs, ``info`` what was done (for the summary)."""

    frozen: FrozenReference | None
    model: nn.Module | None
    eval_logps: Tensor | None
    info: dict[str, Any]


def check_same_tokenizer(tokenizer: Any, policy_tokenizer: Any, path: str | Path, what: str) -> None:
    """A reference model scores the policy's token ids: its tokenizer must be the policy's (same vocabulary)."""
    get_vocab = getattr(tokenizer, "get_vocab", None)
    if callable(get_vocab) and callable(getattr(policy_tokenizer, "get_vocab", None)) \
            and get_vocab() != policy_tokenizer.get_vocab():
        raise UserError(f"{what}: its tokenizer differs from the policy's; the reference must score the "
                        "same token ids", path=Path(path))


def _load_reference_model(path: str | Path, policy_tokenizer: Any, data: AlignmentData, device: torch.device,
                          drop: bool) -> nn.Module:
    ref, tokenizer = load_policy(path, device)
    check_same_tokenizer(tokenizer, policy_tokenizer, path, "align.ref_model")
    check_vocab(ref, data)
    if drop:
        disable_dropout(ref)
    return ref


def prepare_reference(spec: AlignMethod, cfg: AlignRunConfig, model: nn.Module, tokenizer: Any,
                      data: AlignmentData, device: torch.device) -> ReferenceSetup:
    """Everything a run needs of π_ref (see `ReferenceSetup`); the cached pass runs here."""
    a = cfg.align
    if a.ref_model is not None and not spec.reference:
        raise UserError(f"align.ref_model: {spec.name} uses no reference model")
    want_kl = "kl" in spec.evaluations and a.eval_kl and data.eval_pairs is not None
    if not (spec.reference or want_kl):
        return ReferenceSetup(None, None, None, {"mode": "none"})
    source = (_load_reference_model(a.ref_model, tokenizer, data, device, a.disable_dropout) if a.ref_model
              else None)
    info: dict[str, Any] = {"mode": a.reference if spec.reference else "none"}
    if spec.reference:
        info["model"] = a.ref_model or "the starting policy"
    # a copy of the starting weights only where a model must live on during training
    keep = want_kl or (spec.reference and a.reference == "frozen")
    # a policy with PEFT adapters: π_ref is the same model with its adapters switched off (no copy)
    base = ReferenceView(model) if peft_state(model) is not None else model
    frozen = FrozenReference(source if source is not None else base, chunk_size=a.chunk_size,
                             copy_weights=source is None and base is model) if keep else None
    scorer = source if source is not None else base  # before training: the policy is still π_0
    if spec.reference and a.reference == "cached":
        values, cached = reference_logps(scorer, data.train, spec.collate(data.pad_id), kind=spec.reference_kind,
                                         # no graph is kept: a wide batch is cheaper per pair
                                         batch_size=max(4 * cfg.train.batch_size, 64), chunk_size=a.chunk_size,
                                         precision=cfg.train.precision, device=device,
                                         share_prefix=a.share_prefix)
        data.train.set_reference_logps(values)
        info.update(cached)
    elif spec.reference:
        data.train.ref_logps = None  # the frozen model scores every batch; never stale cached values
    eval_logps = None
    if spec.reference and data.eval_pairs is not None and "reward_accuracy" in spec.evaluations:
        with autocast_context(device, cfg.train.precision):  # as the evaluation of the policy
            eval_logps = pair_logps(scorer, data.eval_pairs, pad_id=data.pad_id)[0]
    return ReferenceSetup(frozen if spec.reference and a.reference == "frozen" else None,
                          frozen.model if (frozen is not None and want_kl) else None, eval_logps, info)


def save_policy(policy: nn.Module, cfg: Any, out: Path, tokenizer: Any, *, method: str, model_in: str | Path,
                peft_info: Any = None, save: bool = True) -> tuple[Path | None, dict[str, Any] | None]:
    """Write a trained policy: ``out/model`` in the input model's dtype (unless ``align.save_dtype`` says
    otherwise), or a PEFT run's ``out/adapter`` (and ``out/model`` merged with ``peft.merge``), with the
    provenance the next stage reads (`PROVENANCE_FILE`: the defaults profile of the model it started from).
    Returns (the model folder or None, the PEFT summary or None)."""
    from trainlab.align.config import PROVENANCE_FILE, defaults_profile
    from trainlab.model.saving import resolve_save_dtype, save_model
    from trainlab.utils import write_json

    save_dtype = resolve_save_dtype(policy, cfg.align.save_dtype)
    peft_summary = None
    if peft_info is not None:
        from trainlab.peft.run import save_run_peft

        peft_summary, model_dir = save_run_peft(policy, cfg, out, tokenizer, save_dtype, peft_info, save)
    else:
        model_dir = save_model(policy, out / "model", tokenizer, save_dtype=save_dtype) if save else None
    if model_dir is not None:  # the next stage from this folder starts from the same defaults
        write_json(Path(model_dir) / PROVENANCE_FILE, {"defaults": defaults_profile(model_in), "method": method,
                                                       "model_in": str(model_in)})
    return (Path(model_dir) if model_dir is not None else None), peft_summary

