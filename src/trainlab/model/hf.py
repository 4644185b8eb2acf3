"""Any local ``transformers`` causal LM behind trainlab's :class:`~trainlab.model.protocol.CausalLM`.

:class:`HFCausalLM` lets trainers and labs use e.g. a GPT-2 or Qwen checkpoint exactly like our own
:class:`~trainlab.model.decoder.Decoder`:

* ``hidden_states`` runs the *base* model (``model.base_model``: ``LlamaModel``, ``GPT2Model``, ...)
  whose ``last_hidden_state`` already has the final norm applied, so the LM head is skipped (a
  chunked loss can then avoid materializing ``[B, T, V]`` logits);
* ``output_embedding()`` is ``get_output_embeddings().weight``, and ``hidden @ W.T`` equals the
  model's logits for models whose head is a plain bias-free linear layer. Heads that add a bias,
  a logit scale or soft-capping make that identity false; ``output_embedding()`` then refuses
  (``forward`` still returns the true logits);
* position ids default to ``cumsum(attention_mask) - 1``, as in our decoder and in HF's own
  ``generate``, so left padding does not shift positions (HF's ``forward`` alone would count pads);
* ``generate`` is trainlab's generic batched generation using the model's ``past_key_values``.

Only local folders are loaded (:func:`load_hf`); nothing is downloaded.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from trainlab.errors import UserError
from trainlab.model.decoder import positions_from_mask
from trainlab.model.generate import GenerateMixin


def _nonlinear_head_reason(model: Any) -> str | None:
    head = model.get_output_embeddings()
    if head is None:
        return "the model has no output embedding"
    if getattr(head, "bias", None) is not None:
        return "its LM head has a bias"
    cfg = model.config
    for attr in ("final_logit_softcapping", "output_multiplier_scale"):
        if getattr(cfg, attr, None) not in (None, 0, 0.0, 1, 1.0):
            return f"config.{attr}={getattr(cfg, attr)} rescales logits"
    if getattr(cfg, "logit_scale", None) not in (None, 1, 1.0):
        return f"config.logit_scale={cfg.logit_scale} rescales logits"
    return None


def custom_mask_limit_of(cfg: Any) -> int:
    """The longest row a transformers model with config ``cfg`` attends to correctly given a custom 4D
    attention mask (0: none).

    transformers 5 passes a 4D mask through as is with ``sdpa`` and ``eager`` attention for every
    architecture (`masking_utils`; flash and flex attention take none; 4.x reshaped it in some
    models, e.g. GPT-2, so there: 0); it then also replaces any sliding window, so rows are limited
    to the window where the model has one (`trainlab.align.prefix_sharing`).
    """
    import transformers

    if int(transformers.__version__.split(".")[0]) < 5:
        return 0
    if getattr(cfg, "_attn_implementation", None) not in ("sdpa", "eager"):
        return 0
    if any(kind != "full_attention" for kind in (getattr(cfg, "layer_types", None) or ())):
        return 0
    window = getattr(cfg, "sliding_window", None)
    if window and getattr(cfg, "use_sliding_window", True):
        return int(window)
    return 1 << 62


def mask_argument(model: Any, attention_mask: Tensor | None) -> Tensor | None:
    """A 4D boolean mask (True: attend) as ``model``'s attention implementation takes it (eager: additive)."""
    if attention_mask is None or attention_mask.dim() != 4 or attention_mask.dtype != torch.bool:
        return attention_mask
    if model.config._attn_implementation == "eager":
        dtype = next(model.parameters()).dtype
        return torch.zeros(attention_mask.shape, dtype=dtype, device=attention_mask.device).masked_fill_(
            ~attention_mask, torch.finfo(dtype).min)
    return attention_mask


class HFCausalLM(GenerateMixin, nn.Module):
    """Wrap a ``transformers`` ``*ForCausalLM`` model (and optionally its tokenizer)."""

    def __init__(self, model: Any, tokenizer: Any = None) -> None:
        super().__init__()
        if not callable(getattr(model, "get_output_embeddings", None)) or not hasattr(model, "base_model"):
            raise TypeError(f"expected a transformers PreTrainedModel, got {type(model).__name__}")
        self.model = model
        self.tokenizer = tokenizer
        self._head_problem = _nonlinear_head_reason(model)
        # transformers 5.x calls the KV cache argument `cache` (`past_key_values` is deprecated there);
        # 4.x knows only `past_key_values`. Likewise `logits_to_keep` (4.50+) / `num_logits_to_keep`.
        params = inspect.signature(model.forward).parameters
        self._cache_arg = "cache" if "cache" in params else "past_key_values"
        self._keep_arg = next((n for n in ("logits_to_keep", "num_logits_to_keep") if n in params), None)

    @property
    def config(self) -> Any:
        """The wrapped model's HF config."""
        return self.model.config

    def _positions(self, attention_mask: Tensor | None, position_ids: Tensor | None) -> Tensor | None:
        if position_ids is None and attention_mask is not None:
            return positions_from_mask(attention_mask)
        return position_ids

    def custom_mask_max_length(self) -> int:
        """The longest row this model attends to correctly given a custom 4D attention mask (0: none);
        see `custom_mask_limit_of`."""
        return custom_mask_limit_of(self.model.config)

    def _mask_argument(self, attention_mask: Tensor | None) -> Tensor | None:
        return mask_argument(self.model, attention_mask)

    def hidden_states(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        position_ids: Tensor | None = None,
    ) -> Tensor:
        """Final-normed hidden states ``[B, T, D]`` from the base model.

        ``attention_mask``: ``[B, T]`` (1 = token), or a custom ``[B, 1, T, T]`` boolean mask (True =
        attend; with ``position_ids``) where `custom_mask_max_length` allows it.
        """
        out = self.model.base_model(
            input_ids=input_ids,
            attention_mask=self._mask_argument(attention_mask),
            position_ids=self._positions(attention_mask, position_ids),
            use_cache=False,
        )
        return out.last_hidden_state

    def output_embedding(self) -> Tensor:
        """The LM-head weight ``[V, D]`` (refused when logits are not ``hidden @ W.T``)."""
        if self._head_problem is not None:
            raise UserError(f"{type(self.model).__name__}: logits are not hidden @ W.T ({self._head_problem})")
        return self.model.get_output_embeddings().weight

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        position_ids: Tensor | None = None,
    ) -> Tensor:
        """Logits ``[B, T, V]``."""
        out = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=self._positions(attention_mask, position_ids),
            use_cache=False,
        )
        return out.logits

    # ---- incremental decoding hooks for trainlab.model.generate -------------------------------

    def init_cache(self, batch_size: int, max_len: int) -> Any:
        """None: the HF model creates its own cache (``DynamicCache``) on the first step."""
        del batch_size, max_len
        return None

    def decode_step(
        self, input_ids: Tensor, attention_mask: Tensor, position_ids: Tensor, cache: Any
    ) -> tuple[Tensor, Any]:
        kwargs: dict[str, Any] = {self._cache_arg: cache}
        if self._keep_arg is not None:
            kwargs[self._keep_arg] = 1  # only the last position's logits, as transformers' generate
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                         use_cache=True, **kwargs)
        return out.logits[:, -1], getattr(out, self._cache_arg, None)

    def num_parameters(self, *, only_trainable: bool = False, exclude_embeddings: bool = False) -> int:
        return int(self.model.num_parameters(only_trainable=only_trainable, exclude_embeddings=exclude_embeddings))


def _has_tokenizer(path: Path) -> bool:
    return any((path / name).is_file() for name in ("tokenizer.json", "tokenizer_config.json", "vocab.json"))


@contextmanager
def quiet_transformers() -> Iterator[None]:
    """Silence transformers' logging and progress bars (load reports, "Loading weights", "Writing
    model shards") for the calls inside, through its own APIs; the previous settings come back after.

    Only what transformers logs through its logger and its tqdm wrapper is affected; Python warnings
    are left alone (our calls use the current API names, so they raise none).
    """
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    if bars:
        hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__


def load_folder_tokenizer(path: str | Path) -> Any:
    """``AutoTokenizer.from_pretrained(path)`` (local only, quiet), None when the folder has no tokenizer."""
    from transformers import AutoTokenizer

    p = Path(path)
    if not _has_tokenizer(p):
        return None
    try:
        with quiet_transformers():
            return AutoTokenizer.from_pretrained(str(p), local_files_only=True)
    except Exception as exc:  # tokenizers/transformers raise many kinds for unreadable files
        raise UserError(f"cannot load the tokenizer: {_one_line(exc)}", path=p) from None


def load_hf(
    path: str | Path,
    *,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
    tokenizer: bool = True,
    **kwargs: Any,
) -> HFCausalLM:
    """``AutoModelForCausalLM.from_pretrained(path)`` (local only) wrapped as :class:`HFCausalLM`.

    The folder is checked first (:mod:`trainlab.model.checks`: a causal LM, readable safetensors),
    then loaded without transformers' console output; weights missing from the checkpoint are an
    error, not a random initialisation. The tokenizer is loaded too when the folder has one and
    ``tokenizer`` is True, and must match the model. ``dtype`` None means float32. Extra ``kwargs``
    go to ``from_pretrained`` (e.g. ``attn_implementation``).
    """
    from trainlab.model.checks import (
        CONFIG_NAME,
        check_causal_lm,
        check_safetensors,
        not_a_model_folder,
        read_json,
        weight_files,
    )

    p = Path(path)
    if not p.is_dir():
        raise UserError("model folder not found", path=p)
    if not (p / CONFIG_NAME).is_file():
        raise not_a_model_folder(p)
    check_causal_lm(read_json(p / CONFIG_NAME), path=p)
    check_safetensors(weight_files(p))
    return load_checked_hf(p, dtype=dtype, device=device, tokenizer=tokenizer, **kwargs)


def load_checked_hf(path: Path, *, dtype: torch.dtype | None = None, device: torch.device | str | None = None,
                    tokenizer: bool = True, **kwargs: Any) -> HFCausalLM:
    """`load_hf` for a folder whose config and safetensors `trainlab.model.checks` already passed
    (`load_model` checks once, then loads): load, refuse missing weights, check the tokenizer."""
    import transformers
    from transformers import AutoModelForCausalLM

    from trainlab.model.checks import check_loading_info, check_tokenizer, model_special_ids

    p = path
    # transformers renamed `torch_dtype` to `dtype` in 4.56 (and deprecated the old name)
    new_name = tuple(int(x) for x in transformers.__version__.split(".")[:2]) >= (4, 56)
    kwargs[("dtype" if new_name else "torch_dtype")] = dtype or torch.float32
    try:
        with quiet_transformers():
            model, info = AutoModelForCausalLM.from_pretrained(str(p), local_files_only=True,
                                                               output_loading_info=True, **kwargs)
    except Exception as exc:  # OSError, ValueError, RuntimeError (shapes), ...: all mean "this folder"
        raise UserError(f"cannot load a causal LM: {_one_line(exc)}", path=p) from None
    check_loading_info(info, model_name=type(model).__name__, path=p)
    tok = load_folder_tokenizer(p) if tokenizer else None
    if tok is not None:
        check_tokenizer(tok, embedding_rows=int(model.get_input_embeddings().weight.shape[0]),
                        special_ids=model_special_ids(model.config, getattr(model, "generation_config", None)),
                        path=p)
    if device is not None:
        model = model.to(device)
    return HFCausalLM(model, tok)
