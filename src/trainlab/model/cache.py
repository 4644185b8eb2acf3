"""Key/value cache for incremental decoding.

Autoregressive decoding recomputes nothing for past tokens if their keys and values are kept: a
step with one new token costs ``O(T)`` attention work instead of the ``O(T²)`` of re-running the
prefix (the standard trick since the original Transformer decoder; see e.g. Pope et al., 2022,
"Efficiently Scaling Transformer Inference"). Rotary embeddings are applied *before* caching, so
cached keys are already position-encoded and never touched again.

Storage is one preallocated buffer per layer, ``[B, Hkv, capacity, D]``, allocated lazily on the
first write (so it takes the dtype and device of the keys, e.g. bf16 under autocast). Writing past
the capacity doubles it (amortized ``O(1)`` per token) unless ``growable=False``. :meth:`nbytes` is
what the buffers hold (the capacity), :meth:`used_nbytes` the written tokens; both follow
``2 · layers · kv_heads · head_dim · bytes · tokens · batch`` (:mod:`trainlab.memory.kv`).
There is no sliding window: every token stays cached (the decoder attends to all of them).
"""

from __future__ import annotations

import torch
from torch import Tensor


class KVCache:
    """Per-layer keys and values of the tokens seen so far.

    ``update(layer, k, v)`` appends ``k, v [B, Hkv, T, D]`` to layer ``layer`` and returns the full
    keys and values ``[B, Hkv, past + T, D]`` (views into the buffer, no copy).
    """

    def __init__(self, n_layers: int, *, max_len: int | None = None, growable: bool = True) -> None:
        if n_layers <= 0:
            raise ValueError(f"n_layers must be positive, got {n_layers}")
        self.n_layers = n_layers
        self.max_len = max_len
        self.growable = growable
        self.keys: list[Tensor | None] = [None] * n_layers
        self.values: list[Tensor | None] = [None] * n_layers
        self.lengths: list[int] = [0] * n_layers

    @property
    def seq_len(self) -> int:
        """Tokens already cached (layer 0 is written first, so it is the one a new step extends)."""
        return self.lengths[0]

    def capacity(self, layer: int = 0) -> int:
        buf = self.keys[layer]
        return 0 if buf is None else buf.shape[2]

    def _reserve(self, layer: int, k: Tensor, v: Tensor, needed: int) -> None:
        buf_k, buf_v = self.keys[layer], self.values[layer]
        if buf_k is not None and buf_v is not None and buf_k.shape[2] >= needed:
            return
        if buf_k is None:
            capacity = max(needed, self.max_len or 0)
        elif not self.growable:
            raise RuntimeError(f"KV cache is full: {needed} tokens needed, capacity {buf_k.shape[2]}")
        else:
            capacity = max(needed, 2 * buf_k.shape[2])
        b, h, _, d = k.shape
        new_k = k.new_empty(b, h, capacity, d)
        new_v = v.new_empty(b, h, capacity, v.shape[3])
        n = self.lengths[layer]
        if buf_k is not None and buf_v is not None and n:
            new_k[:, :, :n] = buf_k[:, :, :n]
            new_v[:, :, :n] = buf_v[:, :, :n]
        self.keys[layer], self.values[layer] = new_k, new_v

    def update(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Append ``k, v`` (``[B, Hkv, T, D]``) to ``layer``; return all cached keys and values."""
        start = self.lengths[layer]
        end = start + k.shape[2]
        self._reserve(layer, k, v, end)
        buf_k, buf_v = self.keys[layer], self.values[layer]
        assert buf_k is not None and buf_v is not None
        if buf_k.shape[0] != k.shape[0] or buf_k.shape[1] != k.shape[1]:
            raise ValueError(f"cache holds [B={buf_k.shape[0]}, H={buf_k.shape[1]}], got {tuple(k.shape)}")
        buf_k[:, :, start:end] = k
        buf_v[:, :, start:end] = v
        self.lengths[layer] = end
        return buf_k[:, :, :end], buf_v[:, :, :end]

    def reset(self) -> None:
        """Forget every token but keep the buffers for reuse."""
        self.lengths = [0] * self.n_layers

    def nbytes(self) -> int:
        """Bytes held by the buffers (both keys and values, all layers)."""
        return sum(t.numel() * t.element_size() for t in (*self.keys, *self.values) if t is not None)

    def used_nbytes(self) -> int:
        """Bytes of the tokens written so far (``lengths``), without the spare capacity.

        Equals ``2 · layers · kv_heads · head_dim · bytes · tokens · batch``
        (:func:`trainlab.memory.kv.kv_cache_bytes`) with ``tokens = seq_len``.
        """
        total = 0
        for k, v, n in zip(self.keys, self.values, self.lengths, strict=True):
            if k is not None and v is not None:
                total += n * (k[:, :, :1].numel() * k.element_size() + v[:, :, :1].numel() * v.element_size())
        return total

    def to(self, device: torch.device | str) -> KVCache:
        """Move the buffers (in place) and return self."""
        self.keys = [None if t is None else t.to(device) for t in self.keys]
        self.values = [None if t is None else t.to(device) for t in self.values]
        return self
