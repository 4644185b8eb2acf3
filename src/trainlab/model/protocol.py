"""The model contract trainers and labs rely on, and one loader for any model folder.

See docs/INTERFACES.md ("Model protocol"). Implementations: :class:`trainlab.model.decoder.Decoder`
(our Llama-style model) and :class:`trainlab.model.hf.HFCausalLM` (any ``transformers`` causal LM).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

import torch
from torch import Tensor, nn

from trainlab.errors import UserError
from trainlab.model.generate import SamplingParams


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
        params: SamplingParams | None = None,
        **options: Any,
    ) -> Tensor:
        """Continue left-padded prompts: ``[B, T + n]`` with ``n <= max_new_tokens``.

        ``params`` or its fields as keywords (:class:`~trainlab.model.generate.SamplingParams`);
        both implementations inherit :class:`~trainlab.model.generate.GenerateMixin`.
        """
        ...


@dataclass(frozen=True)
class ModelSource:
    """Where a loaded model came from and what its folder says about using it (``model.source``).

    ``dtype``: the dtype its ``config.json`` declares (``dtype``, or ``torch_dtype`` before
    transformers 4.56), None when it declares none; the model is loaded in float32 for training and
    saved back in this dtype (:func:`trainlab.model.saving.save_model`). ``eos_token_ids``: where
    generation stops, from ``generation_config.json`` (else ``config.json``), as transformers'
    ``generate`` does. ``generation_config``: that file's content, written again on save.
    """

    path: Path
    dtype: torch.dtype | None = None
    eos_token_ids: tuple[int, ...] = ()
    generation_config: dict[str, Any] | None = None


def config_dtype(config: dict[str, Any]) -> torch.dtype | None:
    """The floating dtype a ``config.json`` dict declares (``dtype`` / ``torch_dtype``), else None."""
    name = config.get("dtype", config.get("torch_dtype"))
    if not isinstance(name, str):
        return None
    value = getattr(torch, name.removeprefix("torch."), None)
    return value if isinstance(value, torch.dtype) and value.is_floating_point else None


def read_source(path: Path) -> ModelSource:
    """The :class:`ModelSource` of a model folder (its config files; nothing is loaded)."""
    from trainlab.model.checks import CONFIG_NAME, GENERATION_CONFIG_NAME, model_special_ids, read_json

    config = read_json(path / CONFIG_NAME) if (path / CONFIG_NAME).is_file() else {}
    generation = read_json(path / GENERATION_CONFIG_NAME) if (path / GENERATION_CONFIG_NAME).is_file() else None
    eos = model_special_ids(generation if generation is not None else config)["eos_token_id"]
    return ModelSource(path=path, dtype=config_dtype(config), eos_token_ids=tuple(eos), generation_config=generation)


ModelKind = Literal["auto", "trainlab", "hf"]


def load_model(
    path: str | Path,
    *,
    kind: ModelKind = "auto",
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> CausalLM:
    """Load a model folder as a :class:`CausalLM`, after checking it (:mod:`trainlab.model.checks`).

    ``kind="auto"``: our :class:`~trainlab.model.decoder.Decoder` when the folder has a
    ``trainlab.json`` or a Llama ``config.json`` the decoder can represent exactly; otherwise
    :class:`~trainlab.model.hf.HFCausalLM` through ``AutoModelForCausalLM`` (local files only).
    ``"trainlab"`` / ``"hf"`` force one. ``dtype`` None means float32 (training's master weights);
    the folder's own dtype is recorded as ``model.source.dtype`` (:class:`ModelSource`).

    Bad input is one ``UserError`` line before anything else happens: not a causal LM, corrupt or
    truncated safetensors, missing weights, a tokenizer in the folder that does not match the model.
    """
    from trainlab.model.checks import (
        check_causal_lm,
        check_safetensors,
        check_tokenizer,
        model_special_ids,
        not_a_model_folder,
        read_json,
        weight_files,
    )
    from trainlab.model.hf import load_checked_hf, load_folder_tokenizer
    from trainlab.model.hf_export import TRAINLAB_JSON, load_pretrained, model_config_from_hf

    p = Path(path)
    if not p.exists():
        raise UserError("model path not found", path=p)
    if not p.is_dir():
        raise UserError("expected a model folder (config.json + safetensors), got a file", path=p)
    if not (p / "config.json").is_file() and not (p / TRAINLAB_JSON).is_file():
        raise not_a_model_folder(p)
    if kind not in ("auto", "trainlab", "hf"):
        raise UserError(f"unknown model kind {kind!r}; expected auto, trainlab or hf")

    config = read_json(p / "config.json") if (p / "config.json").is_file() else None
    source = read_source(p)
    if config is not None:
        check_causal_lm(config, path=p)
    files = weight_files(p)
    check_safetensors(files)
    if kind == "auto":
        kind = "hf"
        if (p / TRAINLAB_JSON).is_file():
            kind = "trainlab"
        elif config is not None and files:
            try:
                model_config_from_hf(config)
                kind = "trainlab"
            except (UserError, KeyError, TypeError, ValueError):
                kind = "hf"
    model: Any
    if kind == "trainlab":
        model = load_pretrained(p, dtype=dtype or torch.float32, device=device)
        tokenizer = load_folder_tokenizer(p)
        if tokenizer is not None:
            check_tokenizer(tokenizer, embedding_rows=model.config.vocab_size,
                            special_ids=model_special_ids(config or {}, source.generation_config),
                            path=p)
    else:
        if config is None:
            raise not_a_model_folder(p)
        model = load_checked_hf(p, dtype=dtype, device=device)  # checked above: not twice
    model.source = source
    return model


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
    # transformers 5.x renamed gradient_checkpointing_* to activation_checkpointing_* (old names warn)
    new_api = hf is not None and hasattr(type(hf), "activation_checkpointing_enable")
    if policy == "none":
        if hf is not None and hf_checkpointing(hf):
            if new_api:
                hf.activation_checkpointing_disable()
            else:
                hf.gradient_checkpointing_disable()
        return
    if policy != "full":
        raise UserError(f"model.checkpointing={policy!r} needs trainlab's decoder; a transformers model supports "
                        "'full' or 'none'")
    if hf is None or not getattr(hf, "supports_gradient_checkpointing", False):
        raise UserError(f"model.checkpointing=full: {type(hf or model).__name__} does not support gradient "
                        "checkpointing; use model.checkpointing=none")
    if new_api:
        hf.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        hf.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def hf_checkpointing(hf: Any) -> bool:
    """Whether a transformers model has activation checkpointing on (either API generation's name)."""
    name = "is_activation_checkpointing" if hasattr(type(hf), "is_activation_checkpointing") else \
        "is_gradient_checkpointing"
    return bool(getattr(hf, name, False))


def _is_dropout_field(name: str) -> bool:
    return "dropout" in name or name.endswith("pdrop")


def disable_dropout(model: Any) -> dict[str, float]:
    """Turn every dropout of a loaded model off, as TRL's ``disable_dropout=True`` (its default) does.

    TRL's ``disable_dropout_in_model`` sets ``p = 0`` on every ``nn.Dropout``. Some attention code
    reads its probability from a plain float instead (``LlamaAttention.attention_dropout``, passed as
    ``dropout=`` to the attention kernel in training mode) or from the config at call time, so those
    are zeroed too: float module attributes named ``*dropout*`` and numeric config fields named
    ``*dropout*`` / ``*pdrop`` (GPT-2's ``resid_pdrop``, ``embd_pdrop``, ``attn_pdrop``).

    Returns the config fields changed, with their original values; they are also kept as
    ``model.dropout_disabled`` so :func:`trainlab.model.saving.save_model` writes the user's values back.
    Our :class:`~trainlab.model.decoder.Decoder` has no dropout: nothing changes.
    """
    for module in model.modules():
        if isinstance(module, nn.modules.dropout._DropoutNd):
            module.p = 0.0
        for name, value in list(vars(module).items()):
            if _is_dropout_field(name) and isinstance(value, float) and value != 0.0:
                setattr(module, name, 0.0)
    changed: dict[str, float] = dict(getattr(model, "dropout_disabled", None) or {})
    hf = getattr(model, "model", model)
    config = getattr(hf, "config", None)
    if config is not None and callable(getattr(config, "to_dict", None)):
        for name, value in config.to_dict().items():
            if (_is_dropout_field(name) and isinstance(value, (int, float)) and not isinstance(value, bool)
                    and value != 0 and hasattr(config, name)):
                changed.setdefault(name, value)
                setattr(config, name, 0.0)
    model.dropout_disabled = changed
    return changed
