"""The model contract trainers and labs rely on, and one loader for any model folder.

See docs/INTERFACES.md ("Model protocol"). Implementations: :class:`trainlab.model.decoder.Decoder`
(our Llama-style model) and :class:`trainlab.model.hf.HFCausalLM` (any ``transformers`` causal LM).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

import torch
from torch import Tensor

from trainlab.errors import UserError
from trainlab.model.generate import TokenIds


@runtime_checkable
class CausalLM(Protocol):
    """What a trainer trains and a lab evaluates. ``attention_mask``: 1 = real token, 0 = padding."""

    config: Any

    def hidden_states(
        self, input_ids: Tensor, attention_mask: Tensor | None = None, position_ids: Tensor | None = None
    ) -> Tensor:
        """Final-normed hidden states ``[B, T, D]``."""
        ...

    def output_embedding(self) -> Tensor:
        """LM-head weight ``[V, D]``: ``logits = hidden_states @ W.T``."""
        ...

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """Logits ``[B, T, V]``."""
        ...

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
    ) -> Tensor:
        """Continue left-padded prompts: ``[B, T + n]`` with ``n <= max_new_tokens``."""
        ...


ModelKind = Literal["auto", "trainlab", "hf"]


def load_model(
    path: str | Path,
    *,
    kind: ModelKind = "auto",
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> CausalLM:
    """Load a model folder as a :class:`CausalLM`.

    ``kind="auto"``: our :class:`~trainlab.model.decoder.Decoder` when the folder has a
    ``trainlab.json`` or a Llama ``config.json`` the decoder can represent exactly; otherwise
    :class:`~trainlab.model.hf.HFCausalLM` through ``AutoModelForCausalLM`` (local files only).
    ``"trainlab"`` / ``"hf"`` force one. ``dtype`` None means float32.
    """
    from trainlab.model.hf import load_hf
    from trainlab.model.hf_export import (
        TRAINLAB_JSON,
        WEIGHTS_INDEX_NAME,
        WEIGHTS_NAME,
        load_pretrained,
        model_config_from_hf,
    )

    p = Path(path)
    if not p.exists():
        raise UserError("model path not found", path=p)
    if not p.is_dir():
        raise UserError("expected a model folder (config.json + safetensors), got a file", path=p)
    if not (p / "config.json").is_file() and not (p / TRAINLAB_JSON).is_file():
        raise UserError("no config.json: not a model folder", path=p)
    if kind not in ("auto", "trainlab", "hf"):
        raise UserError(f"unknown model kind {kind!r}; expected auto, trainlab or hf")

    if kind == "auto":
        kind = "hf"
        if (p / TRAINLAB_JSON).is_file():
            kind = "trainlab"
        elif (p / "config.json").is_file() and ((p / WEIGHTS_NAME).is_file() or (p / WEIGHTS_INDEX_NAME).is_file()):
            config = json.loads((p / "config.json").read_text(encoding="utf-8"))
            try:
                model_config_from_hf(config)
                kind = "trainlab"
            except (UserError, KeyError):
                kind = "hf"
    if kind == "trainlab":
        return load_pretrained(p, dtype=dtype or torch.float32, device=device)
    return load_hf(p, dtype=dtype, device=device)


def apply_checkpointing(model: Any, policy: str, every: int = 2) -> None:
    """Set the activation-checkpointing policy of a loaded model (``model.checkpointing`` of a run).

    A saved folder holds the architecture, not how to train it: a run's ``model.checkpointing``
    applies to whatever model it loads. Our decoder takes every policy (none, full, every_n,
    selective); a transformers model has one, the library's own per-layer checkpointing, so it takes
    ``full`` (``gradient_checkpointing_enable``, non-reentrant) or ``none``.
    """
    from trainlab.model.decoder import Decoder

    if isinstance(model, Decoder):
        if (model.config.checkpointing, model.config.checkpoint_every) != (policy, every):
            model.config = model.config.model_copy(update={"checkpointing": policy, "checkpoint_every": every})
        return
    hf = getattr(model, "model", None)
    if policy == "none":
        if hf is not None and getattr(hf, "is_gradient_checkpointing", False):
            hf.gradient_checkpointing_disable()
        return
    if policy != "full":
        raise UserError(f"model.checkpointing={policy!r} needs trainlab's decoder; a transformers model supports "
                        "'full' or 'none'")
    if hf is None or not getattr(hf, "supports_gradient_checkpointing", False):
        raise UserError(f"model.checkpointing=full: {type(hf or model).__name__} does not support gradient "
                        "checkpointing; use model.checkpointing=none")
    hf.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
