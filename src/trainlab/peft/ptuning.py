"""P-tuning: virtual-token embeddings produced by a small prompt encoder (MLP or LSTM).

Liu et al., 2021, "GPT Understands, Too" (P-tuning). Like prompt tuning, ``n`` virtual tokens are
prepended to the input embeddings, but they are the output of a reparameterization network over ``n``
trainable input embeddings ``E ∈ R^{n×D}``, which makes optimization more stable::

    MLP:   P = W₃ ReLU(W₂ ReLU(W₁ E + b₁) + b₂) + b₃                 (D → H → H → D)
    LSTM:  P = W₂ ReLU(W₁ BiLSTM(E) + b₁) + b₂                       (D → 2H → 2H → D)

with ``H = peft.encoder_hidden`` (default ``D``), as HF PEFT's ``PromptEncoder``. After training only
``P`` is needed: PEFT saves the encoder's output as ``prompt_embeddings [n, D]`` (``peft_type:
P_TUNING``) and loads it into a plain embedding (its inference mode); trainlab does the same, so an
adapter loaded from a file runs the plain prompt, with the encoder gone.

The virtual tokens enter the model through `trainlab.peft.prompt.VirtualTokensLM`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from trainlab.errors import UserError
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


class PromptEncoder(VirtualTokens):
    """P-tuning's encoder (module docstring); ``plain`` once loaded from saved embeddings."""

    peft_type = "P_TUNING"

    def __init__(self, num_virtual_tokens: int, dim: int, hidden: int, kind: str = "mlp",
                 lstm_layers: int = 2) -> None:
        super().__init__(num_virtual_tokens)
        self.encoder_type = kind
        self.embedding = nn.Embedding(num_virtual_tokens, dim)
        self.lstm_head: nn.LSTM | None = None
        if kind == "lstm":
            self.lstm_head = nn.LSTM(input_size=dim, hidden_size=hidden, num_layers=lstm_layers,
                                     bidirectional=True, batch_first=True)
            self.mlp_head: nn.Sequential | None = nn.Sequential(
                nn.Linear(2 * hidden, 2 * hidden), nn.ReLU(), nn.Linear(2 * hidden, dim))
        elif kind == "mlp":
            self.mlp_head = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                                          nn.Linear(hidden, dim))
        else:
            raise UserError(f"peft.ptuning_encoder={kind!r}: expected mlp or lstm", key="peft.ptuning_encoder")

    @property
    def plain(self) -> bool:
        return self.mlp_head is None

    def forward(self) -> Tensor:
        e = self.embedding.weight
        if self.mlp_head is None:
            return e
        if self.lstm_head is not None:
            e = self.lstm_head(e.unsqueeze(0))[0][0]
        return self.mlp_head(e)

    def load_embeddings(self, value: Tensor) -> None:
        _check_shape("prompt_embeddings", value, self.embedding.weight)
        with torch.no_grad():
            self.embedding.weight.copy_(value)
        self.lstm_head, self.mlp_head = None, None


def apply_ptuning(model: nn.Module, cfg: PeftConfig) -> PeftInfo:
    """P-tuning: ``peft.num_virtual_tokens`` tokens from an MLP/LSTM encoder (``peft.ptuning_encoder``)."""
    n = int(getattr(cfg, "num_virtual_tokens", 20))
    dim = model_dims(model)["dim"]
    hidden = int(getattr(cfg, "encoder_hidden", None) or dim)
    kind = str(getattr(cfg, "ptuning_encoder", "mlp"))
    if cfg.init_seed is not None:
        torch.manual_seed(cfg.init_seed)
    attach_encoder(model, PromptEncoder(n, dim, hidden, kind))
    return _info(model, "ptuning", f"{n} virtual tokens × {dim} from a {kind.upper()} encoder (hidden {hidden}); "
                                   "saved as the plain prompt")


def ptuning_peft_config(cfg: PeftConfig, model: nn.Module) -> dict[str, Any]:
    enc = get_encoder(model)
    kind = getattr(enc, "encoder_type", "mlp")
    return prompt_learning_config(model, {
        "encoder_reparameterization_type": kind.upper(),
        "encoder_hidden_size": int(getattr(cfg, "encoder_hidden", None) or model_dims(model)["dim"]),
        "encoder_num_layers": 2, "encoder_dropout": 0.0}, "P_TUNING", enc)


def ptuning_config_from_peft(adapter_config: dict[str, Any]) -> PeftConfig:
    _single_submodule(adapter_config)
    kind = str(adapter_config.get("encoder_reparameterization_type") or "MLP").lower()
    return PeftConfig(method="ptuning", num_virtual_tokens=int(adapter_config["num_virtual_tokens"]),
                      ptuning_encoder=kind if kind in ("mlp", "lstm") else "mlp",
                      encoder_hidden=adapter_config.get("encoder_hidden_size"))


SPEC = register_peft_method(PeftMethodSpec(
    name="ptuning", peft_type="P_TUNING", apply=apply_ptuning, peft_config=ptuning_peft_config,
    state_to_peft=prompt_state, state_from_peft=load_prompt_state, merge=None,
    config_from_peft=ptuning_config_from_peft,
    description="P-tuning: virtual tokens from an MLP/LSTM prompt encoder (Liu et al., 2021)"))

__all__ = ["PromptEncoder", "apply_ptuning"]
