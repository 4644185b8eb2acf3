"""trainlab's attention backends inside Hugging Face ``transformers`` models.

``register_hf_attention()`` registers, with transformers' ``AttentionInterface``, one attention
function per trainlab backend (plus ``trainlab`` for ``auto``), so any model that supports the
attention interface (Llama, Mistral, Qwen2, ...) can run on them::

    register_hf_attention()
    model = AutoModelForCausalLM.from_config(cfg, attn_implementation="trainlab_fa_torch")
    model.set_attn_implementation("trainlab_triton")      # or switch later

Names are ``trainlab_<backend>`` with "flash" shortened to "fa" (``flash_torch`` ->
``trainlab_fa_torch``, ``flash_attn`` -> ``trainlab_fa_attn``): transformers treats every
implementation name containing "flash" as a flash-attn kernel it must import (see :func:`hf_name`).

Masks: the functions are registered with transformers' FlashAttention mask function, so they receive
the 2-D padding mask ``[B, Tk]`` (or None) rather than a materialized 4-D mask, which is what lets a
linear-memory backend stay linear. Causality comes from ``module.is_causal`` (bottom-right aligned,
so decoding with a KV cache works) and a model's ``sliding_window`` becomes a window
``(sliding_window - 1, 0)``, HF's convention. Attention dropout, logit soft-capping and packed
sequences signalled only through ``position_ids`` are not supported and raise instead of computing
something else; packed batches with ``cu_seq_lens_q/k`` go through :func:`~trainlab.attention.varlen.varlen_attention`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import Tensor, nn

PREFIX = "trainlab"


def hf_name(backend: str) -> str:
    """The ``attn_implementation`` name of trainlab backend ``backend`` (``auto`` -> ``trainlab``)."""
    return PREFIX if backend == "auto" else f"{PREFIX}_{backend.replace('flash', 'fa')}"


def hf_attention_function(backend: str) -> Callable[..., tuple[Tensor, None]]:
    """An ``AttentionInterface`` function running trainlab backend ``backend`` (or ``auto``)."""

    def trainlab_attention_forward(
        module: nn.Module,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        attention_mask: Tensor | None,
        dropout: float = 0.0,
        scaling: float | None = None,
        is_causal: bool | None = None,
        sliding_window: int | None = None,
        softcap: float | None = None,
        **kwargs: Any,
    ) -> tuple[Tensor, None]:
        from trainlab.attention.dispatch import attention
        from trainlab.attention.varlen import varlen_attention

        if dropout:
            raise ValueError(f"{hf_name(backend)} attention has no attention dropout (got dropout={dropout}); "
                             "set the model's attention_dropout to 0")
        if softcap is not None:
            raise ValueError(f"{hf_name(backend)} attention does not implement logit soft-capping")
        causal = bool(is_causal if is_causal is not None else getattr(module, "is_causal", True))
        window = (int(sliding_window) - 1, -1) if sliding_window else None
        cu_q, cu_k = kwargs.get("cu_seq_lens_q"), kwargs.get("cu_seq_lens_k")
        if cu_q is not None and query.shape[0] == 1:
            # One packed row: [1, H, total, D] -> [total, H, D] and back.
            out = varlen_attention(query[0].transpose(0, 1), key[0].transpose(0, 1), value[0].transpose(0, 1),
                                   cu_q, cu_k if cu_k is not None else cu_q, causal=causal, scale=scaling,
                                   window=window, backend="auto" if backend == "auto" else _varlen_name(backend))
            return out.unsqueeze(0), None
        if attention_mask is not None and attention_mask.dim() != 2:
            raise ValueError(f"{hf_name(backend)} attention expects the 2-D padding mask; got a "
                             f"{attention_mask.dim()}-D mask (register the model with register_hf_attention())")
        kpm = attention_mask.bool() if attention_mask is not None else None
        out = attention(query, key, value, causal=causal, key_padding_mask=kpm, scale=scaling, window=window,
                        backend=backend)
        return out.transpose(1, 2).contiguous(), None

    trainlab_attention_forward.__name__ = f"{hf_name(backend)}_attention_forward"
    return trainlab_attention_forward


def _varlen_name(backend: str) -> str:
    return backend if backend in ("flash_attn", "triton", "flash_torch", "naive") else "flash_torch"


def register_hf_attention(backends: list[str] | None = None) -> list[str]:
    """Register ``trainlab`` (auto) and :func:`hf_name` of every registered backend; return the names."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, flash_attention_mask

    from trainlab.attention.dispatch import registered_backends

    names = []
    for backend in ["auto", *(backends if backends is not None else registered_backends())]:
        name = hf_name(backend)
        AttentionInterface.register(name, hf_attention_function(backend))
        AttentionMaskInterface.register(name, flash_attention_mask)
        names.append(name)
    return names


__all__ = ["hf_attention_function", "hf_name", "register_hf_attention"]
