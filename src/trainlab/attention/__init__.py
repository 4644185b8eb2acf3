"""trainlab.attention: one attention function, several interchangeable backends.

>>> out = attention(q, k, v, causal=True, backend="auto")  # doctest: +SKIP

Built-in backends (``available_backends()`` lists those usable here, best first):

* ``sdpa`` (priority 10): ``torch.nn.functional.scaled_dot_product_attention``; fused kernels.
* ``naive`` (priority 0): materializes the scores; the readable reference.

See :mod:`trainlab.attention.dispatch` for the registry and :mod:`trainlab.attention.mask` for the
masking conventions shared by all backends.
"""

from __future__ import annotations

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
from trainlab.attention.mask import causal_mask, visibility_mask
from trainlab.attention.naive import naive_attention, repeat_kv
from trainlab.attention.sdpa import sdpa_attention

register_backend(
    "naive",
    naive_attention,
    supports=Supports(),
    priority=0,
    description="materialized scores, fp32 softmax; the reference",
)
register_backend(
    "sdpa",
    sdpa_attention,
    supports=Supports(),
    priority=10,
    description="torch scaled_dot_product_attention (flash / mem-efficient / cuDNN / CPU fused / math)",
)

__all__ = [
    "AttentionBackendError",
    "AttentionCall",
    "AttentionFn",
    "Backend",
    "Supports",
    "attention",
    "available_backends",
    "causal_mask",
    "check_backend_name",
    "get_backend",
    "naive_attention",
    "register_backend",
    "registered_backends",
    "repeat_kv",
    "resolve_backend",
    "sdpa_attention",
    "unregister_backend",
    "visibility_mask",
]
