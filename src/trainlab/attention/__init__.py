"""trainlab.attention: one attention function, several interchangeable backends.

>>> out = attention(q, k, v, causal=True, backend="auto")  # doctest: +SKIP

Built-in backends (``available_backends()`` lists those usable here, best first):

* ``flash_attn`` (priority 30): the flash-attn package (FlashAttention-2), CUDA fp16/bf16, when installed.
* ``triton`` (call-dependent, see :mod:`trainlab.attention.triton_dispatch`): our FlashAttention-2
  Triton kernels (:mod:`trainlab.attention.flash_triton`), CUDA; preferred where SDPA needs a dense mask.
* ``sdpa`` (priority 10): ``torch.nn.functional.scaled_dot_product_attention``; fused kernels.
* ``flash_torch`` (priority 5): tiled online-softmax attention in readable PyTorch
  (:mod:`trainlab.attention.flash_torch`); linear memory, slower than SDPA's fused kernels.
* ``naive`` (priority 0): materializes the scores; the readable reference.

Packed variable-length batches go through :func:`varlen_attention` (:mod:`trainlab.attention.varlen`);
:func:`register_hf_attention` makes these backends available to Hugging Face models
(:mod:`trainlab.attention.hf`); :mod:`trainlab.attention.calc` computes FLOPs and bytes.

See :mod:`trainlab.attention.dispatch` for the registry and :mod:`trainlab.attention.mask` for the
masking conventions shared by all backends.
"""

from __future__ import annotations

import torch

from trainlab.attention.dispatch import (
    AttentionBackendError,
    AttentionCall,
    AttentionFn,
    Backend,
    Supports,
    attention,
    available_backends,
    check_backend_name,
    get_backend,
    register_backend,
    registered_backends,
    resolve_backend,
    unregister_backend,
)
from trainlab.attention.flash_attn_ext import flash_attn_backend, flash_attn_check, flash_attn_unavailable_reason
from trainlab.attention.flash_torch import flash_attention_torch, flash_attention_varlen_torch
from trainlab.attention.hf import register_hf_attention
from trainlab.attention.mask import Window, causal_mask, normalize_window, visibility_mask, window_mask
from trainlab.attention.naive import naive_attention, repeat_kv
from trainlab.attention.sdpa import sdpa_attention
from trainlab.attention.triton_dispatch import triton_attention, triton_check, triton_rank, triton_unavailable_reason
from trainlab.attention.varlen import pack, unpack, varlen_attention

register_backend(
    "naive",
    naive_attention,
    supports=Supports(window=True),
    priority=0,
    description="materialized scores, fp32 softmax; the reference",
)
register_backend(
    "sdpa",
    sdpa_attention,
    supports=Supports(window=True),
    priority=10,
    description="torch scaled_dot_product_attention (flash / mem-efficient / cuDNN / CPU fused / math)",
)
register_backend(
    "flash_torch",
    flash_attention_torch,
    supports=Supports(window=True),
    priority=5,
    description="tiled online-softmax attention in PyTorch (FlashAttention-2 loop order), O(T) memory",
)
register_backend(
    "triton",
    triton_attention,
    supports=Supports(
        dtypes=frozenset({torch.float16, torch.bfloat16, torch.float32}),
        window=True,
        available=triton_unavailable_reason,
        check=triton_check,
    ),
    priority=8,
    rank=triton_rank,
    description="trainlab's FlashAttention-2 Triton kernels (CUDA; fp16/bf16/fp32, GQA, windows, padding masks)",
)
register_backend(
    "flash_attn",
    flash_attn_backend,
    supports=Supports(
        devices=frozenset({"cuda"}),
        dtypes=frozenset({torch.float16, torch.bfloat16}),
        padding_mask=False,
        window=True,
        available=flash_attn_unavailable_reason,
        check=flash_attn_check,
    ),
    priority=30,
    description="the flash-attn package's flash_attn_func (FlashAttention-2)",
)

__all__ = [
    "AttentionBackendError",
    "AttentionCall",
    "AttentionFn",
    "Backend",
    "Supports",
    "Window",
    "attention",
    "available_backends",
    "causal_mask",
    "check_backend_name",
    "flash_attention_torch",
    "flash_attention_varlen_torch",
    "get_backend",
    "naive_attention",
    "normalize_window",
    "pack",
    "register_backend",
    "register_hf_attention",
    "registered_backends",
    "repeat_kv",
    "resolve_backend",
    "sdpa_attention",
    "unpack",
    "unregister_backend",
    "varlen_attention",
    "visibility_mask",
    "window_mask",
]
