"""The bytes a KV cache really holds during generation equal the calculator's formula, to the byte.

Ours: :class:`trainlab.model.cache.KVCache` as :meth:`Decoder.generate` fills it (MHA, GQA, MQA;
fp32 and bf16). It preallocates ``prompt + max_new_tokens`` slots and writes one fewer (the last
sampled token is never fed back). Our decoder has no sliding window, so every token stays cached.
Sliding windows are measured on transformers' Mistral caches, the reference the calculator's
windowed case follows: the static cache allocates ``min(tokens, W)`` per sliding layer (tokens = the
ones it will be fed, ``prompt + new - 1``), the dynamic one keeps ``W - 1`` between steps.
"""

from __future__ import annotations

import pytest
import torch

from trainlab.config import ModelConfig
from trainlab.memory.kv import KVSpec, kv_cache_bytes, kv_cache_result, spec_from_hf_config
from trainlab.model.cache import KVCache
from trainlab.model.decoder import Decoder

LAYERS, HEADS, DIM = 3, 4, 32
HEAD_DIM = DIM // HEADS


def _generate_and_capture(model: Decoder, prompt: torch.Tensor, new: int) -> KVCache:
    """Run ``model.generate`` and return the cache it decoded with."""
    seen: list[KVCache] = []
    original = model.init_cache

    def init_cache(batch_size: int, max_len: int) -> KVCache:
        seen.append(original(batch_size, max_len))
        return seen[-1]

    model.init_cache = init_cache  # type: ignore[method-assign]
    out = model.generate(prompt, max_new_tokens=new, eos_token_id=None)
    assert out.shape == (prompt.shape[0], prompt.shape[1] + new)
    assert len(seen) == 1
    return seen[0]


@pytest.mark.parametrize(("kv_heads", "kind"), [(4, "MHA"), (2, "GQA"), (1, "MQA")])
@pytest.mark.parametrize(("dtype", "dtype_name"), [(torch.float32, "fp32"), (torch.bfloat16, "bf16")])
def test_decoder_cache_equals_formula(kv_heads: int, kind: str, dtype: torch.dtype, dtype_name: str) -> None:
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=50, dim=DIM, n_layers=LAYERS, n_heads=HEADS, n_kv_heads=kv_heads, max_seq_len=64)
    model = Decoder(cfg).to(dtype).eval()
    batch, prompt_len, new = 3, 7, 6
    prompt = torch.randint(0, 50, (batch, prompt_len))
    cache = _generate_and_capture(model, prompt, new)

    # every layer's buffers are [B, Hkv, capacity, D]: nothing else is stored
    for buf in (*cache.keys, *cache.values):
        assert buf is not None and tuple(buf.shape) == (batch, kv_heads, prompt_len + new, HEAD_DIM)
    assert cache.seq_len == prompt_len + new - 1
    e = torch.finfo(dtype).bits // 8
    assert cache.nbytes() == kv_cache_bytes(LAYERS, kv_heads, HEAD_DIM, prompt_len + new, batch, e)
    assert cache.used_nbytes() == kv_cache_bytes(LAYERS, kv_heads, HEAD_DIM, prompt_len + new - 1, batch, e)

    # the calculator, given the same shape, says the same (and the MHA equivalent scales by heads / kv_heads)
    doc = kv_cache_result(layers=LAYERS, kv_heads=kv_heads, head_dim=HEAD_DIM, heads=HEADS, seq=prompt_len + new,
                          batch=batch, dtype=dtype_name)
    assert doc["total_bytes"] == cache.nbytes() and doc["attention"] == kind
    assert doc["mha_total_bytes"] == cache.nbytes() * HEADS // kv_heads


def test_decoder_cache_from_trainlab_config(tmp_path) -> None:
    """The calculator reading a trainlab config predicts the cache of the decoder that config builds."""
    cfg_file = tmp_path / "m.yaml"
    cfg_file.write_text(f"model: {{dim: {DIM}, n_layers: {LAYERS}, n_heads: {HEADS}, n_kv_heads: 2, vocab_size: 50}}\n"
                        "data: {seq_len: 12}\n")
    from trainlab.config import load_config

    model = Decoder(load_config(cfg_file, preset="quick").model).eval()
    cache = _generate_and_capture(model, torch.randint(0, 50, (2, 5)), 7)
    assert kv_cache_result(model=cfg_file, batch=2)["total_bytes"] == cache.nbytes()


def test_growing_cache_keeps_every_token() -> None:
    """Past the preallocated capacity the buffer doubles; the written tokens still follow the formula."""
    torch.manual_seed(0)
    model = Decoder(ModelConfig(vocab_size=50, dim=DIM, n_layers=2, n_heads=HEADS, n_kv_heads=1)).eval()
    cache = KVCache(2, max_len=4)
    ids = torch.randint(0, 50, (1, 3))
    model.decode_step(ids, torch.ones(1, 3, dtype=torch.long), torch.arange(3)[None], cache)
    for t in range(3, 9):
        model.decode_step(ids[:, :1], torch.ones(1, t + 1, dtype=torch.long), torch.tensor([[t]]), cache)
    assert cache.seq_len == 9 and cache.capacity() == 16
    assert cache.used_nbytes() == kv_cache_bytes(2, 1, HEAD_DIM, 9, 1, 4)
    assert cache.nbytes() == kv_cache_bytes(2, 1, HEAD_DIM, 16, 1, 4)


def _mistral(kv_heads: int, window: int | None):
    import transformers as tf

    torch.manual_seed(0)
    cfg = tf.MistralConfig(vocab_size=64, hidden_size=DIM, intermediate_size=64, num_hidden_layers=LAYERS,
                           num_attention_heads=HEADS, num_key_value_heads=kv_heads, sliding_window=window,
                           max_position_embeddings=64)
    return tf.MistralForCausalLM(cfg).eval()


def _layers_bytes(cache) -> int:
    return sum(t.numel() * t.element_size() for layer in cache.layers for t in (layer.keys, layer.values))


@pytest.mark.parametrize("kv_heads", [4, 2, 1])
@pytest.mark.parametrize("window", [None, 4])
def test_transformers_sliding_window_caches(kv_heads: int, window: int | None) -> None:
    model = _mistral(kv_heads, window)
    spec: KVSpec = spec_from_hf_config(model.config.to_dict())
    spec.dtype = "fp32"
    assert spec.sliding_layers == (LAYERS if window else 0)
    batch, prompt_len, new = 2, 6, 5
    prompt = torch.randint(1, 64, (batch, prompt_len))
    total = prompt_len + new
    for impl in ("static", "dynamic"):
        kw = {"cache_implementation": "static"} if impl == "static" else {}
        out = model.generate(prompt, max_new_tokens=new, do_sample=False, return_dict_in_generate=True,
                             pad_token_id=0, eos_token_id=None, **kw)
        held = _layers_bytes(out.cache)
        fed = total - 1  # the last sampled token is never fed back
        if impl == "static":  # allocated for the tokens it will be fed, capped at the window: the calculator's number
            assert held == spec.bytes_for(fed, batch)
            assert held == kv_cache_bytes(LAYERS, kv_heads, HEAD_DIM, min(fed, window or fed), batch, 4)
        else:  # between steps the dynamic cache holds the tokens fed so far, the windowed one only W - 1
            assert held == kv_cache_bytes(LAYERS, kv_heads, HEAD_DIM, min(fed, (window or fed + 1) - 1), batch, 4)
