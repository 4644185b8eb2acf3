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

from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from trainlab.errors import UserError
from trainlab.model.decoder import positions_from_mask
from trainlab.model.generate import TokenIds, generate


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


class HFCausalLM(nn.Module):
    """Wrap a ``transformers`` ``*ForCausalLM`` model (and optionally its tokenizer)."""

    def __init__(self, model: Any, tokenizer: Any = None) -> None:
        super().__init__()
        if not callable(getattr(model, "get_output_embeddings", None)) or not hasattr(model, "base_model"):
            raise TypeError(f"expected a transformers PreTrainedModel, got {type(model).__name__}")
        self.model = model
        self.tokenizer = tokenizer
        self._head_problem = _nonlinear_head_reason(model)

    @property
    def config(self) -> Any:
        """The wrapped model's HF config."""
        return self.model.config

    def _positions(self, attention_mask: Tensor | None, position_ids: Tensor | None) -> Tensor | None:
        if position_ids is None and attention_mask is not None:
            return positions_from_mask(attention_mask)
        return position_ids

    def hidden_states(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        position_ids: Tensor | None = None,
    ) -> Tensor:
        """Final-normed hidden states ``[B, T, D]`` from the base model."""
        out = self.model.base_model(
            input_ids=input_ids,
            attention_mask=attention_mask,
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
        out = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=cache,
            use_cache=True,
        )
        return out.logits[:, -1], out.past_key_values

    def generate(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        *,
        max_new_tokens: int,
        temperature: float = 0.0,
        top_k: int = 0,
        top_p: float = 1.0,
        eos_token_id: TokenIds = None,
        pad_token_id: int | None = None,
        generator: torch.Generator | None = None,
        use_cache: bool = True,
    ) -> Tensor:
        """Continue left-padded prompts; see :func:`trainlab.model.generate.generate`."""
        return generate(
            self,
            input_ids,
            attention_mask,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            eos_token_id=eos_token_id,
            pad_token_id=pad_token_id,
            generator=generator,
            use_cache=use_cache,
        )

    def num_parameters(self, *, only_trainable: bool = False, exclude_embeddings: bool = False) -> int:
        return int(self.model.num_parameters(only_trainable=only_trainable, exclude_embeddings=exclude_embeddings))


def _has_tokenizer(path: Path) -> bool:
    return any((path / name).is_file() for name in ("tokenizer.json", "tokenizer_config.json", "vocab.json"))


def load_hf(
    path: str | Path,
    *,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
    tokenizer: bool = True,
    **kwargs: Any,
) -> HFCausalLM:
    """``AutoModelForCausalLM.from_pretrained(path)`` (local only) wrapped as :class:`HFCausalLM`.

    The tokenizer is loaded too when the folder has one and ``tokenizer`` is True. ``dtype`` None
    means float32. Extra ``kwargs`` go to ``from_pretrained`` (e.g. ``attn_implementation``).
    """
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    p = Path(path)
    # transformers renamed `torch_dtype` to `dtype` in 4.56 (and deprecated the old name)
    new_name = tuple(int(x) for x in transformers.__version__.split(".")[:2]) >= (4, 56)
    kwargs[("dtype" if new_name else "torch_dtype")] = dtype or torch.float32
    if not p.is_dir():
        raise UserError("model folder not found", path=p)
    try:
        model = AutoModelForCausalLM.from_pretrained(str(p), local_files_only=True, **kwargs)
    except (OSError, ValueError, KeyError) as exc:
        raise UserError(f"cannot load a causal LM: {str(exc).splitlines()[0]}", path=p) from None
    if device is not None:
        model = model.to(device)
    tok = None
    if tokenizer and _has_tokenizer(p):
        tok = AutoTokenizer.from_pretrained(str(p), local_files_only=True)
    return HFCausalLM(model, tok)
