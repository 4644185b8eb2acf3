"""The static KV cache and its decode step (trainlab.model.static_cache) against independent references.

References: the model's full forward without any cache (logits), the dynamic cache and the no-cache path of
`generate` (tokens, per-row EOS stops, left padding, sampling), transformers' `generate` on the exported
folder (greedy tokens, as in tests/test_generate_parity.py), and the KV-cache formula of trainlab.memory.kv.
"""

from __future__ import annotations

import pytest
import torch
from _hf_tiny import make_tokenizer
from test_generate_parity import MAX_NEW, _build, _prompts, _reference

from trainlab.config import ModelConfig
from trainlab.errors import UserError
from trainlab.memory.kv import kv_cache_bytes
from trainlab.model import Decoder, encode_prompts, load_model
from trainlab.model import static_cache as sc
from trainlab.model.static_cache import StaticDecoder, StaticKVCache, supports_static

VOCAB = 97


def _model(kv: int, seed: int = 0, dtype: torch.dtype = torch.float32) -> Decoder:
    torch.manual_seed(seed)
    cfg = ModelConfig(vocab_size=VOCAB, dim=32, n_layers=2, n_heads=4, n_kv_heads=kv, ffn_dim=64,
                      max_seq_len=1024, init_std=0.3)
    return Decoder(cfg).to(dtype).eval()


def _prompts_padded(b: int = 4, t: int = 9, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, VOCAB, (b, t), generator=g)
    mask = torch.ones_like(ids)
    for row in range(1, b):  # rows of different lengths, left-padded
        mask[row, : min(2 * row, t - 1)] = 0
    return ids * mask, mask


@pytest.mark.parametrize("kv", [4, 2, 1], ids=["mha", "gqa2", "mqa"])
def test_static_step_logits_equal_the_full_forward(kv):
    model = _model(kv)
    ids, mask = _prompts_padded()
    state = StaticDecoder(model, ids.shape[0], ids.shape[1] + 6)
    logits = state.prefill(ids, mask)
    seq, full_mask = ids, mask
    pos = mask.sum(-1)
    for _ in range(6):
        with torch.no_grad():
            ref = model(seq, full_mask)[:, -1]
        torch.testing.assert_close(logits, ref, atol=2e-5, rtol=1e-5)
        nxt = logits.argmax(-1)
        logits = state.step(nxt, pos)
        pos = pos + 1
        seq = torch.cat([seq, nxt[:, None]], 1)
        full_mask = torch.cat([full_mask, torch.ones_like(nxt)[:, None]], 1)


@pytest.mark.parametrize("kv", [4, 2, 1], ids=["mha", "gqa2", "mqa"])
def test_greedy_tokens_identical_static_dynamic_and_uncached(kv):
    model = _model(kv)
    ids, mask = _prompts_padded()
    dynamic = model.generate(ids, mask, max_new_tokens=24)
    static = model.generate(ids, mask, max_new_tokens=24, cache="static")
    uncached = model.generate(ids, mask, max_new_tokens=24, use_cache=False)
    assert torch.equal(static, dynamic) and torch.equal(static, uncached)


def test_per_row_eos_stops_and_padding_as_the_dynamic_cache():
    model = _model(2)
    ids, mask = _prompts_padded()
    free = model.generate(ids, mask, max_new_tokens=12)[:, ids.shape[1]:]
    eos = int(free[0, 3])  # row 0 emits it at step 3 at the latest; the others may not at all
    kw = dict(max_new_tokens=12, eos_token_id=eos, pad_token_id=0)
    dynamic = model.generate(ids, mask, **kw)
    static = model.generate(ids, mask, cache="static", **kw)
    assert torch.equal(static, dynamic)
    new = static[:, ids.shape[1]:]
    first = int((new[0] == eos).nonzero()[0])
    assert first <= 3 and bool((new[0, first + 1:] == 0).all())  # padding after row 0's eos


def test_sampling_same_generator_same_tokens():
    model = _model(1)
    ids, mask = _prompts_padded()
    kw = dict(max_new_tokens=16, temperature=0.8, top_k=20, top_p=0.9)
    a = model.generate(ids, mask, generator=torch.Generator().manual_seed(3), **kw)
    b = model.generate(ids, mask, generator=torch.Generator().manual_seed(3), cache="static", **kw)
    assert torch.equal(a, b)


def test_long_context_attention_path(monkeypatch):
    """The two-matmul attention used from MATMUL_ATTENTION_MIN_KEYS keys on equals SDPA's tokens."""
    model = _model(2)
    ids, mask = _prompts_padded(t=40)
    sdpa = model.generate(ids, mask, max_new_tokens=10, cache="static")
    monkeypatch.setattr(sc, "MATMUL_ATTENTION_MIN_KEYS", 1)
    matmul = model.generate(ids, mask, max_new_tokens=10, cache="static")
    assert torch.equal(sdpa, matmul) and torch.equal(sdpa, model.generate(ids, mask, max_new_tokens=10))


def test_bf16_static_matches_dynamic():
    model = _model(2, dtype=torch.bfloat16)
    ids, mask = _prompts_padded()
    state = StaticDecoder(model, 4, 20)
    assert state.cache.keys.dtype == torch.bfloat16
    a = model.generate(ids, mask, max_new_tokens=8)
    b = model.generate(ids, mask, max_new_tokens=8, cache="static")
    assert (a == b).float().mean() > 0.9  # bf16 rounding of merged matmuls may flip a rare near-tie


@pytest.mark.parametrize("kv", [4, 2, 1])
def test_static_cache_bytes_equal_the_formula(kv):
    model = _model(kv)
    ids, mask = _prompts_padded()
    b, t = ids.shape
    state = StaticDecoder(model, b, t + 5)
    state.prefill(ids, mask)
    pos = mask.sum(-1)
    for i in range(3):
        state.step(torch.full((b,), 5), pos + i)
    cfg = model.config
    args = dict(layers=cfg.n_layers, kv_heads=kv, head_dim=cfg.head_dim, batch=b, bytes_per_element=4)
    assert state.cache.used_nbytes() == kv_cache_bytes(tokens=t + 3, **args)
    assert state.cache.nbytes() == kv_cache_bytes(tokens=t + 5, **args)


def test_errors():
    model = _model(2)
    ids, mask = _prompts_padded()
    with pytest.raises(UserError, match="cache must be one of"):
        model.generate(ids, mask, max_new_tokens=2, cache="paged")
    state = StaticDecoder(model, 4, ids.shape[1] + 1)
    state.prefill(ids, mask)
    state.step(torch.zeros(4, dtype=torch.long), mask.sum(-1))
    with pytest.raises(RuntimeError, match="full"):
        state.step(torch.zeros(4, dtype=torch.long), mask.sum(-1) + 1)
    with pytest.raises(RuntimeError, match="full"):
        StaticKVCache(1, 1, 1, 4, 2).update(0, torch.zeros(1, 1, 3, 4), torch.zeros(1, 1, 3, 4))
    wrapped = _model(2)
    wrapped.layers[0].attn.q_proj = torch.nn.Sequential(wrapped.layers[0].attn.q_proj)  # like an adapter
    assert supports_static(model) and not supports_static(wrapped)

    class Prefixed(Decoder):  # like a prompt-tuned model: decodes its own way
        def hidden_states(self, *args, **kwargs):
            return super().hidden_states(*args, **kwargs)

    assert not supports_static(Prefixed(model.config))
    with pytest.raises(UserError, match="without adapters"):
        wrapped.generate(ids, mask, max_new_tokens=2, cache="static")


def test_other_models_have_no_static_path():
    from _tiny import TinyLM

    from trainlab.model.generate import generate

    with pytest.raises(UserError, match="cache='dynamic'"):
        generate(TinyLM(), torch.tensor([[5, 6, 7]]), max_new_tokens=2, cache="static")


def test_static_greedy_matches_transformers_generate(tmp_path):
    """Our exported GQA decoder (eos reachable in row 0 only): static-cache tokens = transformers' greedy."""
    folder = _build("decoder", tmp_path / "model")
    model = load_model(folder)
    assert isinstance(model, Decoder) and model.config.kv_heads < model.config.n_heads
    tok = make_tokenizer("llama")
    prompts = _prompts(tok)
    ids, mask = encode_prompts(tok, prompts)
    out = model.generate(ids, mask, max_new_tokens=MAX_NEW, eos_token_id=tok.eos_token_id, cache="static")
    rows = []
    for row in out[:, ids.shape[1]:].tolist():
        cut = next((j + 1 for j, x in enumerate(row) if x == tok.eos_token_id), len(row))
        rows.append(row[:cut])
    ref = _reference(folder, prompts)
    assert rows == ref
    assert len(ref[0]) < MAX_NEW and any(len(r) == MAX_NEW for r in ref)  # per-row stop compared too


def test_merged_weights_are_reused_and_follow_in_place_updates():
    model = _model(2)
    ids, mask = _prompts_padded()
    first = sc.merged_weights(model)
    assert sc.merged_weights(model) is first  # no copy on the next call
    with torch.no_grad():  # an optimizer step updates in place
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    assert sc.merged_weights(model) is not first
    a = model.generate(ids, mask, max_new_tokens=12)
    assert torch.equal(model.generate(ids, mask, max_new_tokens=12, cache="static"), a)
