"""Prefix tuning: learned key/value prefixes in every attention layer.

Li & Liang, 2021, "Prefix-Tuning: Optimizing Continuous Prompts for Generation". Every layer ``ℓ``
attends over ``n`` extra key/value pairs before the real tokens' own::

    head = softmax(q [P_k^ℓ; K]ᵀ / √d) [P_v^ℓ; V]

The prefixes ``P ∈ R^{n × L·2·H_kv·d}`` (keys and values of every layer, ``H_kv`` key/value heads: PEFT's
rule for grouped-query models) are trained directly, or, as the paper does for stability, reparameterized
during training by an MLP over ``n`` small embeddings (``peft.prefix_projection=true``, PEFT's
``prefix_projection``)::

    P = W₂ tanh(W₁ E + b₁) + b₂          E ∈ R^{n × token_dim},  W₁: token_dim → H,  W₂: H → L·2·token_dim

Only ``P`` is needed afterwards: HF PEFT saves the MLP's output as ``prompt_embeddings [n, L·2·token_dim]``
(``peft_type: PREFIX_TUNING``, inference form: ``prefix_projection`` is written but the file holds the
plain prefix) and so does trainlab; loading gives a plain prefix. In the model the prefix is the KV cache
before the first real token (`trainlab.peft.prompt.VirtualTokensLM`); prefix keys carry no rotary
rotation, as in PEFT (they are passed to transformers as ``past_key_values``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from trainlab.peft.config import PeftConfig
from trainlab.peft.prompt import (
    VirtualTokens,
    _check_shape,
    _info,
    _single_submodule,
    attach_encoder,
    get_encoder,
    load_prompt_state,
    model_dims,
    prompt_learning_config,
    prompt_state,
)
from trainlab.peft.registry import PeftInfo, PeftMethodSpec, register_peft_method


class PrefixEncoder(VirtualTokens):
    """``forward() -> [n, L·2·token_dim]``: the embedding itself, or the MLP of it (module docstring)."""

    kind = "prefix"
    peft_type = "PREFIX_TUNING"

    def __init__(self, num_virtual_tokens: int, layers: int, token_dim: int, hidden: int, projection: bool) -> None:
        super().__init__(num_virtual_tokens)
        self.layers, self.token_dim = layers, token_dim
        self.transform: nn.Sequential | None = None
        if projection:
            self.embedding = nn.Embedding(num_virtual_tokens, token_dim)
            self.transform = nn.Sequential(nn.Linear(token_dim, hidden), nn.Tanh(),
                                           nn.Linear(hidden, layers * 2 * token_dim))
        else:
            self.embedding = nn.Embedding(num_virtual_tokens, layers * 2 * token_dim)

    @property
    def plain(self) -> bool:
        return self.transform is None

    def forward(self) -> Tensor:
        e = self.embedding.weight
        return e if self.transform is None else self.transform(e)

    def load_embeddings(self, value: Tensor) -> None:
        if self.transform is not None:  # the MLP is gone once the prefix is known (PEFT's inference form)
            ref = self.embedding.weight
            self.embedding = nn.Embedding(self.num_virtual_tokens, self.layers * 2 * self.token_dim,
                                          device=ref.device, dtype=ref.dtype)
            self.transform = None
        _check_shape("prompt_embeddings", value, self.embedding.weight)
        with torch.no_grad():
            self.embedding.weight.copy_(value)


def apply_prefix(model: nn.Module, cfg: PeftConfig) -> PeftInfo:
    """Prefix tuning: ``peft.num_virtual_tokens`` key/value prefixes per layer (``peft.prefix_projection``)."""
    n = int(getattr(cfg, "num_virtual_tokens", 20))
    d = model_dims(model)
    token_dim = d["kv_heads"] * d["head_dim"]
    hidden = int(getattr(cfg, "encoder_hidden", None) or token_dim)
    projection = bool(getattr(cfg, "prefix_projection", True))
    if cfg.init_seed is not None:
        torch.manual_seed(cfg.init_seed)
    ckpt = _checkpointing_off(model)
    attach_encoder(model, PrefixEncoder(n, d["layers"], token_dim, hidden, projection))
    how = f"reparameterized by an MLP (hidden {hidden}) while training" if projection else "trained directly"
    return _info(model, "prefix", f"{n} key/value prefixes × {d['layers']} layers × {token_dim} ({how}); "
                                  "saved as the plain prefix" + ckpt)


def _checkpointing_off(model: nn.Module) -> str:
    """The prefix is a KV cache, and activation checkpointing runs without one (transformers drops
    ``past_key_values`` under gradient checkpointing; our decoder checkpoints no cached forward): turn
    it off and say so, rather than train a prefix the model never sees."""
    from trainlab.model.decoder import Decoder
    from trainlab.model.protocol import apply_checkpointing, hf_checkpointing

    if isinstance(model, Decoder):
        if model.config.checkpointing == "none":
            return ""
    elif not hf_checkpointing(model.model):
        return ""
    apply_checkpointing(model, "none")
    return "; activation checkpointing turned off (a prefix is a KV cache, which checkpointed layers do not take)"


def prefix_peft_config(cfg: PeftConfig, model: nn.Module) -> dict[str, Any]:
    enc = get_encoder(model)
    d = model_dims(model)
    token_dim = d["kv_heads"] * d["head_dim"]
    return prompt_learning_config(model, {
        "encoder_hidden_size": int(getattr(cfg, "encoder_hidden", None) or token_dim),
        "prefix_projection": bool(getattr(cfg, "prefix_projection", True)), "init_weights": None}, "PREFIX_TUNING",
        enc)


def prefix_config_from_peft(adapter_config: dict[str, Any]) -> PeftConfig:
    _single_submodule(adapter_config)
    # the file holds the plain prefix whatever prefix_projection says (PEFT saves the MLP's output)
    return PeftConfig(method="prefix", num_virtual_tokens=int(adapter_config["num_virtual_tokens"]),
                      prefix_projection=False)


SPEC = register_peft_method(PeftMethodSpec(
    name="prefix", peft_type="PREFIX_TUNING", apply=apply_prefix, peft_config=prefix_peft_config,
    state_to_peft=prompt_state, state_from_peft=load_prompt_state, merge=None,
    config_from_peft=prefix_config_from_peft,
    description="prefix tuning: learned key/value prefixes in every layer (Li & Liang, 2021)"))

__all__ = ["PrefixEncoder", "apply_prefix"]
