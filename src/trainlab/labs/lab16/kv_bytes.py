"""KV-cache bytes: analytic for published model shapes, measured on our caches during generation.

Formula (`trainlab.memory.kv`): ``bytes = 2 · layers · kv_heads · head_dim · bytes/element · tokens · batch``
(keys and values, every layer). MHA has ``kv_heads = heads``, GQA ``heads / group``, MQA 1, so the cache
shrinks by ``heads / kv_heads`` and MQA removes ``(heads - 1) / heads`` of it. The published shapes are
the models' config.json values (fp16 caches; Mistral-7B's 4,096-token sliding window is not applied
here: at 4,096 tokens it keeps every token anyway).
"""

from __future__ import annotations

from typing import Any

import torch

from trainlab.labs.lab16.presets import Preset, reachable_kv, to_kv_heads, variant_name
from trainlab.memory.kv import kv_cache_bytes
from trainlab.model.decoder import Decoder
from trainlab.model.static_cache import StaticDecoder

#: name: (layers, heads, kv_heads, head_dim), from each model's config.json
REAL_CONFIGS: dict[str, tuple[int, int, int, int]] = {
    "Llama-2-7B": (32, 32, 32, 128),
    "Llama-2-70B": (80, 64, 8, 128),
    "Mistral-7B": (32, 32, 8, 128),
}
TOKENS = 4096


def analytic_rows(tokens: int = TOKENS) -> list[dict[str, Any]]:
    """Per token and per ``tokens``-token sequence (fp16), as published and as MHA/GQA-8/MQA of the same shape."""
    rows = []
    for name, (layers, heads, kv, d) in REAL_CONFIGS.items():
        for label, h in (("as published", kv), ("MHA", heads), ("GQA-8", 8), ("MQA", 1)):
            if heads % h or (label != "as published" and h == kv):
                continue
            rows.append({"model": name, "attention": f"{label} ({variant_name(heads, h)})" if label == "as published"
                         else label, "layers": layers, "heads": heads, "kv_heads": h, "head_dim": d,
                         "bytes_per_token": kv_cache_bytes(layers, h, d, 1, 1, 2),
                         "bytes_per_sequence": kv_cache_bytes(layers, h, d, tokens, 1, 2),
                         "reduction_vs_mha": heads / h})
    return rows


def measured_rows(preset: Preset, base: Decoder, *, seed: int = 0) -> list[dict[str, Any]]:
    """Our dynamic and static caches after prefill + decoding, against the formula, per variant."""
    heads = base.config.n_heads
    b, t, n = preset.kv_batch, preset.kv_prompt, preset.kv_new_tokens
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, base.config.vocab_size, (b, t), generator=g)
    mask = torch.ones_like(ids)
    rows = []
    for kv in [k for k in reachable_kv(base) if k in (heads, heads // 2, 1)]:
        model = base if kv == base.config.kv_heads else to_kv_heads(base, kv, "mean", seed=seed)
        c = model.config
        e = model.embed.weight.element_size()
        formula = kv_cache_bytes(c.n_layers, kv, c.head_dim, t + n - 1, b, e)
        with torch.no_grad():
            cache = model.init_cache(b, t + n)
            logits, cache = model.decode_step(ids, mask, (mask.cumsum(-1) - 1), cache)
            state = StaticDecoder(model, b, t + n)
            s_logits = state.prefill(ids, mask)
            full_mask, pos = mask, mask.sum(-1)
            for _ in range(n - 1):
                nxt = logits.argmax(-1)
                full_mask = torch.cat([full_mask, torch.ones_like(nxt)[:, None]], 1)
                logits, cache = model.decode_step(nxt[:, None], full_mask, pos[:, None], cache)
                s_logits = state.step(s_logits.argmax(-1), pos)
                pos = pos + 1
        for name, used, held in (("dynamic", cache.used_nbytes(), cache.nbytes()),
                                 ("static", state.cache.used_nbytes(), state.cache.nbytes())):
            rows.append({"variant": variant_name(heads, kv), "kv_heads": kv, "cache": name, "batch": b,
                         "tokens": t + n - 1, "measured_bytes": used, "formula_bytes": formula,
                         "buffer_bytes": held, "capacity_tokens": held // max(used // (t + n - 1), 1),
                         "equal": used == formula})
    return rows
