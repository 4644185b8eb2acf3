"""A static (preallocated) KV cache and the decode step built around it.

:class:`~trainlab.model.cache.KVCache` (the *dynamic* cache) allocates each layer's buffer on its
first write and can grow; every decode step then goes through the general forward: rotary tables
recomputed from the positions, the attention dispatcher, three separate q/k/v and two gate/up
projections. For autoregressive decoding everything about the step is known before the first token:
batch ``B``, capacity ``C = prompt + max_new_tokens``, the positions that will be decoded. The
*static* path sizes it all once (the idea of Hugging Face's ``StaticCache`` and of vLLM's
preallocated KV blocks and merged projections; Pope et al., 2022, "Efficiently Scaling Transformer
Inference", on decode being memory-bound):

* :class:`StaticKVCache`: one tensor ``[L, B, Hkv, C, D]`` each for keys and values and a key mask
  ``[B, C]`` (True = a real token), allocated up front, written in place; bytes
  ``2 · L · Hkv · D · e · C · B`` (:mod:`trainlab.memory.kv`). It also offers ``update(layer, k, v)``
  (the dynamic cache's interface), so the decoder's ordinary forward fills it during prefill.
* :class:`StaticDecoder`: per token and layer, one merged ``[q; k; v]`` matmul and one merged
  ``[gate; up]`` matmul (weights concatenated once per model and kept while the weights are unchanged:
  an extra copy of those weights, :func:`merged_weights`),
  rotary ``cos/sin`` looked up in a table of the ``C`` positions, keys/values written at column
  ``t`` and attention over columns ``< t + 1`` of the buffer.
* Grouped-query attention for one new token without repeating keys/values: the ``G = Hq / Hkv``
  query heads that share a key/value head are laid out as ``G`` *queries* of that head,
  ``q [B, Hkv, G, D]`` against ``k, v [B, Hkv, T, D]`` (no causal mask is needed for the last
  position). MQA (``Hkv = 1``) then reads each cached key once for all heads, which is where its
  decode speed comes from.

Outputs equal the general forward's up to float rounding (merged matmuls and the attention kernel
sum in another order): greedy tokens are tested equal to the dynamic cache's and transformers'.
"""

from __future__ import annotations

import weakref
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from trainlab.errors import UserError

#: From this many cached keys on, attention is computed as ``softmax(q kᵀ) v`` with two matmuls on a
#: CPU; below it SDPA. Measured here (1 thread, fp32, head dim 32): at 1-128 keys SDPA's fused kernel is
#: ~2x faster, at 1K-4K keys the two matmuls 1.2-1.4x (SDPA's CPU kernel tiles for long queries).
MATMUL_ATTENTION_MIN_KEYS = 512


class StaticKVCache:
    """Keys and values of every layer in two preallocated tensors ``[L, B, Hkv, C, D]``.

    ``mask [B, C]`` marks the cached columns that hold real tokens (left padding is False).
    ``update(layer, k, v)`` appends ``k, v [B, Hkv, T, D]`` to ``layer`` like
    :meth:`KVCache.update <trainlab.model.cache.KVCache.update>`; writing past the capacity is an error
    (a static cache never grows).
    """

    def __init__(self, n_layers: int, batch: int, kv_heads: int, head_dim: int, capacity: int, *,
                 dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu") -> None:
        if min(n_layers, batch, kv_heads, head_dim, capacity) <= 0:
            raise ValueError("a static cache needs positive layers, batch, kv_heads, head_dim and capacity")
        self.n_layers, self.capacity = n_layers, capacity
        # uninitialised: a column is read only after it was written (attention covers columns < length)
        self.keys = torch.empty(n_layers, batch, kv_heads, capacity, head_dim, dtype=dtype, device=device)
        self.values = torch.empty_like(self.keys)
        self.mask = torch.zeros(batch, capacity, dtype=torch.bool, device=device)
        self.lengths: list[int] = [0] * n_layers

    @property
    def seq_len(self) -> int:
        """Tokens already cached (layer 0 is written first)."""
        return self.lengths[0]

    def update(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Write ``k, v [B, Hkv, T, D]`` after the cached tokens of ``layer``; return all of them (views)."""
        start = self.lengths[layer]
        end = start + k.shape[2]
        if end > self.capacity:
            raise RuntimeError(f"static KV cache is full: {end} tokens needed, capacity {self.capacity}")
        self.keys[layer, :, :, start:end] = k
        self.values[layer, :, :, start:end] = v
        self.lengths[layer] = end
        return self.keys[layer, :, :, :end], self.values[layer, :, :, :end]

    def reset(self) -> None:
        """Forget every token (the buffers stay)."""
        self.lengths = [0] * self.n_layers
        self.mask.zero_()

    def nbytes(self) -> int:
        """Bytes of the key and value buffers (the whole capacity; the mask is not KV data)."""
        return 2 * self.keys.numel() * self.keys.element_size()

    def used_nbytes(self) -> int:
        """Bytes of the tokens written so far: ``2 · L · Hkv · D · e · seq_len · B``."""
        per_token = self.keys[0, :, :, :1].numel() * self.keys.element_size()
        return 2 * per_token * sum(self.lengths)


def supports_static(model: Any) -> bool:
    """Whether ``model`` can be decoded with :class:`StaticDecoder` (trainlab's own decoder)."""
    from torch import nn

    from trainlab.model.decoder import Attention, Block, Decoder, RMSNorm, SwiGLU

    def plain(blk: Any) -> bool:  # an adapter (LoRA, prefix, ...) wraps a module: then the general path
        linears = (blk.attn.q_proj, blk.attn.k_proj, blk.attn.v_proj, blk.attn.o_proj, blk.mlp.gate_proj,
                   blk.mlp.up_proj, blk.mlp.down_proj)
        return (type(blk) is Block and type(blk.attn) is Attention and type(blk.mlp) is SwiGLU
                and all(type(m) is nn.Linear for m in linears)
                and type(blk.attn_norm) is RMSNorm and type(blk.mlp_norm) is RMSNorm)

    # a subclass that changes how tokens are decoded (virtual tokens, prefixes) keeps the general path
    hooks = ("hidden_states", "init_cache", "decode_step", "forward", "logits")
    own = isinstance(model, Decoder) and all(getattr(type(model), h) is getattr(Decoder, h) for h in hooks)
    return own and type(model.norm) is RMSNorm and all(plain(b) for b in model.layers)


_MERGED: weakref.WeakKeyDictionary[Any, tuple[tuple[Any, ...], list[tuple[Tensor, Tensor]]]] = (
    weakref.WeakKeyDictionary())


def merged_weights(model: Any) -> list[tuple[Tensor, Tensor]]:
    """Per layer ``([W_q; W_k; W_v], [W_gate; W_up])``, concatenated once and reused by later calls.

    Kept per model while its projection weights are the same tensors at the same version (an in-place
    update, e.g. an optimizer step, bumps ``Tensor._version``; a new tensor changes its identity), so
    decoding the same model again costs no copy; any change rebuilds them.
    """
    sources = [(blk.attn.q_proj.weight, blk.attn.k_proj.weight, blk.attn.v_proj.weight, blk.mlp.gate_proj.weight,
                blk.mlp.up_proj.weight) for blk in model.layers]
    key = tuple((id(w), w._version, w.dtype, w.device) for ws in sources for w in ws)
    hit = _MERGED.get(model)
    if hit is not None and hit[0] == key:
        return hit[1]
    with torch.no_grad():
        merged = [(torch.cat([q, k, v]), torch.cat([g, u])) for q, k, v, g, u in sources]
    _MERGED[model] = (key, merged)
    return merged


class StaticDecoder:
    """Greedy/sampled decoding state of a :class:`~trainlab.model.decoder.Decoder` on a static cache.

    ``prefill(input_ids, attention_mask)`` runs the left-padded prompts through the model's ordinary
    forward (filling the cache) and returns the last position's logits ``[B, V]``; ``step(tokens,
    positions)`` appends one token per row (``tokens [B]`` at ``positions [B]``) and returns the next
    logits. Built for one batch and capacity; weights are read when built (do not train meanwhile).
    """

    def __init__(self, model: Any, batch: int, capacity: int) -> None:
        if not supports_static(model):
            raise UserError("cache='static' is implemented for trainlab's own decoder without adapters; "
                            f"this model ({type(model).__name__}) decodes with cache='dynamic'")
        from trainlab.model.decoder import rope_cos_sin

        cfg = model.config
        self.model = model
        weight = model.embed.weight
        self.hq, self.hkv, self.d = cfg.n_heads, cfg.kv_heads, cfg.head_dim
        self.cache = StaticKVCache(cfg.n_layers, batch, self.hkv, self.d, capacity, dtype=weight.dtype,
                                   device=weight.device)
        positions = torch.arange(capacity, device=weight.device)[None]
        cos, sin = rope_cos_sin(positions, self.d, cfg.rope_theta, weight.dtype)
        self.cos, self.sin = cos[0], sin[0]  # [C, D]
        self.layers = [(blk.attn_norm, qkv, blk.attn.o_proj.weight, blk.mlp_norm, gu, blk.mlp.down_proj.weight)
                       for blk, (qkv, gu) in zip(model.layers, merged_weights(model), strict=True)]
        self.hidden = cfg.hidden_dim
        self.scale = self.d ** -0.5

    def nbytes(self) -> int:
        """Bytes this state holds beyond the model: KV buffers, mask, rotary table, merged weights."""
        extra = [self.cache.mask, self.cos, self.sin, *(t for lay in self.layers for t in (lay[1], lay[4]))]
        return self.cache.nbytes() + sum(t.numel() * t.element_size() for t in extra)

    @torch.no_grad()
    def prefill(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """Cache the prompts ``[B, T]`` (left-padded); logits of their last position ``[B, V]``."""
        t = input_ids.shape[1]
        self.cache.reset()
        self.cache.mask[:, :t] = attention_mask.bool()
        hidden = self.model.hidden_states(input_ids, attention_mask, cache=self.cache)
        return self.model.logits(hidden[:, -1])

    @torch.no_grad()
    def step(self, tokens: Tensor, positions: Tensor) -> Tensor:
        """Append ``tokens [B]`` at rotary ``positions [B]``; logits of the next token ``[B, V]``."""
        cache = self.cache
        col = cache.lengths[0]
        if col >= cache.capacity:
            raise RuntimeError(f"static KV cache is full: capacity {cache.capacity}")
        b = tokens.shape[0]
        hq, hkv, d = self.hq, self.hkv, self.d
        cache.mask[:, col] = True
        end = col + 1
        mask = cache.mask[:, :end]
        dense_mask = None if bool(mask.all()) else mask[:, None, None, :]
        cos = self.cos[positions][:, None, :]  # [B, 1, D]: broadcast over heads
        sin = self.sin[positions][:, None, :]
        x = self.model.embed(tokens)  # [B, dim]
        for i, (attn_norm, w_qkv, w_o, mlp_norm, w_gu, w_down) in enumerate(self.layers):
            qkv = F.linear(attn_norm(x), w_qkv).view(b, hq + 2 * hkv, d)
            qk = qkv[:, : hq + hkv]
            qk = qk * cos + torch.cat((-qk[..., d // 2:], qk[..., : d // 2]), dim=-1) * sin  # RoPE
            cache.keys[i, :, :, col] = qk[:, hq:]
            cache.values[i, :, :, col] = qkv[:, hq + hkv:]
            k, v = cache.keys[i, :, :, :end], cache.values[i, :, :, :end]
            q = qk[:, :hq].reshape(b, hkv, hq // hkv, d)  # the G query heads of a kv head as G queries
            out = self._attend(q, k, v, dense_mask)
            x = x + F.linear(out.reshape(b, hq * d), w_o)
            gate, up = F.linear(mlp_norm(x), w_gu).split(self.hidden, dim=-1)
            x = x + F.linear(F.silu(gate) * up, w_down)
        cache.lengths = [end] * cache.n_layers
        return self.model.logits(self.model.norm(x))

    def _attend(self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None) -> Tensor:
        """``softmax(q kᵀ / sqrt(D) + mask) v`` for ``q [B, Hkv, G, D]``, ``k, v [B, Hkv, T, D]``."""
        if q.device.type == "cpu" and k.shape[2] >= MATMUL_ATTENTION_MIN_KEYS:
            scores = torch.matmul(q, k.transpose(-1, -2)) * self.scale
            if mask is not None:
                scores = scores.masked_fill(~mask, float("-inf"))
            return torch.matmul(torch.softmax(scores.float(), dim=-1).to(v.dtype), v)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=self.scale)


__all__ = ["MATMUL_ATTENTION_MIN_KEYS", "StaticDecoder", "StaticKVCache", "supports_static"]
