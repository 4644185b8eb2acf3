"""The models of an alignment run: the policy and its tokenizer, the reference π_ref, saving.

* `load_policy`: our decoder or any local transformers causal LM, with its tokenizer (pad = eos
  when it has none); `disable_dropout` as TRL's ``disable_dropout``;
* `prepare_reference`: π_ref for methods that have one (`AlignMethod.reference`): the starting
  policy or ``align.ref_model`` (another folder with the same tokenizer), its log-probs cached
  before training or a frozen copy scoring every batch, and the reference kept for KL evaluation;
* `save_model`: the Hugging Face folder, in the input model's dtype unless ``align.save_dtype``
  says otherwise (a bf16 model stays bf16 on disk; training itself runs on fp32 master weights).
"""

from __future__ import annotations

import copy
import json
import shutil
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
from trainlab.model.protocol import load_model
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


def disable_dropout(model: nn.Module) -> int:
    """Every dropout of ``model`` to p = 0, as TRL's ``disable_dropout_in_model`` (plus the float
    ``attention_dropout`` Llama-family attention reads); the saved config is unchanged. Returns
    how many were on."""
    n = 0
    for module in model.modules():
        if isinstance(module, nn.Dropout) and module.p > 0:
            module.p, n = 0.0, n + 1
        value = getattr(module, "attention_dropout", None)
        if isinstance(value, float) and value > 0:
            module.attention_dropout, n = 0.0, n + 1  # type: ignore[assignment]
    return n


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


def _load_reference_model(path: str | Path, policy_tokenizer: Any, data: AlignmentData, device: torch.device,
                          drop: bool) -> nn.Module:
    ref, tokenizer = load_policy(path, device)
    get_vocab = getattr(tokenizer, "get_vocab", None)
    if callable(get_vocab) and callable(getattr(policy_tokenizer, "get_vocab", None)) \
            and get_vocab() != policy_tokenizer.get_vocab():
        raise UserError("align.ref_model: its tokenizer differs from the policy's; the reference must score the "
                        "same token ids", path=Path(path))
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
    frozen = FrozenReference(source if source is not None else model, chunk_size=a.chunk_size,
                             copy_weights=source is None) if keep else None
    scorer = source if source is not None else model  # before training: the policy is still π_0
    if spec.reference and a.reference == "cached":
        values, cached = reference_logps(scorer, data.train, spec.collate(data.pad_id), kind=spec.reference_kind,
                                         # no graph is kept: a wide batch is cheaper per pair
                                         batch_size=max(4 * cfg.train.batch_size, 64), chunk_size=a.chunk_size,
                                         precision=cfg.train.precision, device=device)
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


_SAVE_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def stored_dtype(model_dir: str | Path) -> torch.dtype:
    """The floating dtype a model folder's ``config.json`` declares (``dtype`` / ``torch_dtype``); fp32 if none."""
    path = Path(model_dir) / "config.json"
    try:
        cfg = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    except (OSError, ValueError):
        cfg = {}
    value = getattr(torch, str(cfg.get("dtype", cfg.get("torch_dtype")) or "float32"), None)
    return value if isinstance(value, torch.dtype) and value.is_floating_point else torch.float32


def save_dtype_for(cfg: AlignRunConfig, model_path: str | Path) -> torch.dtype:
    """``align.save_dtype``, with ``auto`` the dtype the input model was stored in."""
    name = cfg.align.save_dtype
    return stored_dtype(model_path) if name == "auto" else _SAVE_DTYPES[name]


def _cast_state(state: dict[str, Tensor], dtype: torch.dtype) -> dict[str, Tensor]:
    """``state`` in ``dtype``, tensors that shared storage (tied weights) still shared."""
    cast: dict[tuple[int, tuple[int, ...], tuple[int, ...]], Tensor] = {}
    out = {}
    for name, t in state.items():
        if not t.is_floating_point() or t.dtype == dtype:
            out[name] = t
            continue
        key = (t.data_ptr(), tuple(t.shape), tuple(t.stride()))
        out[name] = cast.setdefault(key, t.detach().to(dtype))
    return out


def save_model(model: nn.Module, tokenizer: Any, out: Path, *, dtype: torch.dtype | None = None) -> Path:
    """The model in the Hugging Face format with its tokenizer (our decoder: the Llama layout),
    its weights in ``dtype`` (None: as they are); the model in memory is not changed."""
    from trainlab.model.decoder import Decoder
    from trainlab.model.hf import HFCausalLM

    if isinstance(model, Decoder):
        current = next(model.parameters()).dtype
        if dtype is None or dtype == current:
            return model.save_pretrained(out, tokenizer=tokenizer)
        return copy.deepcopy(model).to(dtype).save_pretrained(out, tokenizer=tokenizer)
    if isinstance(model, HFCausalLM):
        if out.exists():
            shutil.rmtree(out)
        hf = model.model
        if dtype is None or dtype == hf.dtype:
            hf.save_pretrained(str(out))
        else:
            hf.save_pretrained(str(out), state_dict=_cast_state(hf.state_dict(), dtype))
            config_path = out / "config.json"
            config = json.loads(config_path.read_text(encoding="utf-8"))
            config["dtype"] = str(dtype).removeprefix("torch.")
            config.pop("torch_dtype", None)
            config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        tokenizer.save_pretrained(str(out))
        return out
    raise TypeError(f"cannot save a {type(model).__name__}")
