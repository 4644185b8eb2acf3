"""The Llama-style decoder: shapes, padding invariance, KV cache, checkpointing, gradients."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from trainlab.config import ModelConfig
from trainlab.errors import UserError
from trainlab.model import Decoder, KVCache, positions_from_mask
from trainlab.model.decoder import apply_rope, rope_cos_sin


def tiny_cfg(**kw) -> ModelConfig:
    base = dict(vocab_size=53, dim=32, n_layers=3, n_heads=4, n_kv_heads=2, max_seq_len=32, rope_theta=500.0)
    return ModelConfig(**(base | kw))


def tiny_model(seed: int = 0, **kw) -> Decoder:
    torch.manual_seed(seed)
    return Decoder(tiny_cfg(**kw))


def test_forward_shapes_and_protocol():
    m = tiny_model()
    ids = torch.randint(0, 53, (2, 7))
    h = m.hidden_states(ids)
    assert h.shape == (2, 7, 32)
    logits = m(ids)
    assert logits.shape == (2, 7, 53)
    torch.testing.assert_close(logits, h @ m.output_embedding().T)
    assert m.output_embedding() is m.embed.weight and m.lm_head is None
    untied = tiny_model(tie_embeddings=False)
    assert untied.output_embedding() is untied.lm_head.weight


def test_num_parameters_counts_tied_once():
    cfg = tiny_cfg()
    d, f, v, hd = cfg.dim, cfg.hidden_dim, cfg.vocab_size, cfg.head_dim
    per_layer = d * d * 2 + 2 * d * cfg.kv_heads * hd + 3 * d * f + 2 * d
    expected = v * d + cfg.n_layers * per_layer + d
    assert tiny_model().num_parameters() == expected
    assert tiny_model(tie_embeddings=False).num_parameters() == expected + v * d
    assert tiny_model().num_parameters(exclude_embeddings=True) == expected - v * d


def test_init_scales_residual_projections():
    m = tiny_model(dim=64, n_layers=4, n_heads=4, vocab_size=512, ffn_dim=256)
    std = m.config.init_std
    assert abs(m.layers[0].attn.q_proj.weight.std().item() - std) < 0.003
    resid = std / (2 * 4) ** 0.5
    assert abs(m.layers[0].mlp.down_proj.weight.std().item() - resid) < 0.002
    assert torch.equal(m.norm.weight, torch.ones(64))


def test_vocab_zero_and_unknown_backend_are_user_errors():
    with pytest.raises(UserError, match="vocab_size"):
        Decoder(tiny_cfg(vocab_size=0))
    with pytest.raises(UserError, match="unknown attention backend 'nope'"):
        Decoder(tiny_cfg(attention="nope"))


def test_rope_matches_complex_rotation():
    """rotate_half RoPE == rotating (x_k, x_{k+D/2}) as a complex number by p·θ_k (Su et al.)."""
    d, theta = 8, 100.0
    x = torch.randn(1, 1, 5, d, dtype=torch.float64)
    pos = torch.arange(5)[None]
    cos, sin = rope_cos_sin(pos, d, theta, torch.float64)
    got = apply_rope(x, cos, sin)
    freqs = theta ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)
    z = torch.complex(x[..., : d // 2], x[..., d // 2 :]) * torch.polar(
        torch.ones(5, d // 2, dtype=torch.float64), pos[0, :, None] * freqs
    )
    torch.testing.assert_close(got, torch.cat([z.real, z.imag], dim=-1))


def test_rope_attention_is_relative():
    """Shifting every position by a constant leaves the logits unchanged (up to float error)."""
    m = tiny_model().eval()
    ids = torch.randint(0, 53, (1, 6))
    with torch.no_grad():
        a = m(ids, position_ids=torch.arange(6)[None])
        b = m(ids, position_ids=torch.arange(6)[None] + 11)
    torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_positions_from_mask():
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 0, 0]])
    assert positions_from_mask(mask).tolist() == [[0, 0, 0, 1, 2], [0, 1, 2, 2, 2]]


@pytest.mark.parametrize("backend", ["naive", "sdpa"])
def test_left_and_right_padding_match_unpadded(backend):
    m = tiny_model(attention=backend).eval()
    ids = torch.randint(1, 53, (1, 5))
    with torch.no_grad():
        alone = m.hidden_states(ids)
        left = torch.cat([torch.zeros(1, 3, dtype=torch.long), ids], 1)
        left_mask = torch.tensor([[0, 0, 0, 1, 1, 1, 1, 1]])
        right = torch.cat([ids, torch.zeros(1, 2, dtype=torch.long)], 1)
        right_mask = torch.tensor([[1, 1, 1, 1, 1, 0, 0]])
        # a second row so the batch really is ragged
        other = torch.randint(1, 53, (1, 8))
        h_left = m.hidden_states(torch.cat([left, other]), torch.cat([left_mask, torch.ones(1, 8).long()]))
        h_right = m.hidden_states(right, right_mask)
    torch.testing.assert_close(h_left[0, 3:], alone[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(h_right[0, :5], alone[0], atol=1e-5, rtol=1e-5)
    assert torch.isfinite(h_left).all()


def test_backends_agree_inside_the_model():
    ids = torch.randint(0, 53, (2, 9))
    mask = torch.ones(2, 9, dtype=torch.long)
    mask[1, :4] = 0
    m = tiny_model(attention="naive")
    with torch.no_grad():
        naive = m(ids, mask)
        m.set_attention_backend("sdpa")
        assert m.config.attention == "sdpa" and m.layers[-1].attn.backend == "sdpa"
        torch.testing.assert_close(m(ids, mask), naive, atol=1e-5, rtol=1e-5)
    with pytest.raises(UserError, match="unknown attention backend"):
        m.set_attention_backend("nope")


def test_kv_cache_prefill_and_steps_match_full_forward():
    m = tiny_model().eval()
    ids = torch.randint(1, 53, (2, 10))
    mask = torch.ones(2, 10, dtype=torch.long)
    mask[0, :3] = 0  # left-padded row
    with torch.no_grad():
        full = m(ids, mask)
        cache = KVCache(m.config.n_layers, max_len=4)  # small: forces the buffers to grow
        logits = [m(ids[:, :6], mask[:, :6], cache=cache)]
        for t in range(6, 10):
            logits.append(m(ids[:, t : t + 1], mask[:, : t + 1], cache=cache))
    assert cache.seq_len == 10 and cache.capacity() >= 10
    stepped = torch.cat(logits, dim=1)
    torch.testing.assert_close(stepped[0, 3:], full[0, 3:], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(stepped[1], full[1], atol=1e-5, rtol=1e-5)


def test_kv_cache_without_growth_raises_when_full():
    cache = KVCache(1, max_len=3, growable=False)
    k = torch.zeros(1, 1, 2, 4)
    cache.update(0, k, k)
    with pytest.raises(RuntimeError, match="full"):
        cache.update(0, k, k)
    cache.reset()
    assert cache.seq_len == 0 and cache.nbytes() == 2 * 3 * 4 * 4


def test_gradients_reach_every_parameter():
    m = tiny_model(tie_embeddings=False).train()
    ids = torch.randint(0, 53, (2, 8))
    loss = F.cross_entropy(m(ids[:, :-1]).flatten(0, 1), ids[:, 1:].flatten())
    loss.backward()
    for name, p in m.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def _loss_and_grads(policy: str, every: int = 2, backend: str = "auto"):
    m = tiny_model(seed=3, checkpointing=policy, checkpoint_every=every, attention=backend).train()
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 53, (2, 12), generator=g)
    mask = torch.ones(2, 12, dtype=torch.long)
    mask[1, :3] = 0
    logits = m(ids, mask)
    loss = F.cross_entropy(logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten(), reduction="none")
    loss = (loss * mask[:, 1:].flatten()).sum() / mask[:, 1:].sum()
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in m.named_parameters()}


@pytest.mark.parametrize("backend", ["naive", "sdpa"])
@pytest.mark.parametrize(("policy", "every"), [("full", 2), ("every_n", 2), ("every_n", 1), ("selective", 2)])
def test_checkpointing_gives_same_loss_and_grads(policy, every, backend):
    ref_loss, ref_grads = _loss_and_grads("none", backend=backend)
    loss, grads = _loss_and_grads(policy, every, backend=backend)
    torch.testing.assert_close(loss, ref_loss, atol=0, rtol=0)
    for name, g in grads.items():
        torch.testing.assert_close(g, ref_grads[name], atol=1e-7, rtol=1e-6, msg=name)


def test_checkpointing_only_when_training_with_grad():
    m = tiny_model(checkpointing="full")
    assert m._checkpointed(0)
    m.eval()
    assert not m._checkpointed(0)
    m.train()
    with torch.no_grad():
        assert not m._checkpointed(0)
    every = tiny_model(checkpointing="every_n", checkpoint_every=2)
    assert [every._checkpointed(i) for i in range(3)] == [True, False, True]


def test_selective_checkpointing_recomputes_no_matmul():
    """Backward matmul FLOPs: selective == none (matmuls saved) < full (whole blocks recomputed)."""
    from torch.utils.flop_counter import FlopCounterMode

    def backward_flops(policy: str) -> int:
        m = tiny_model(seed=3, checkpointing=policy, attention="naive").train()
        loss = m(torch.randint(0, 53, (2, 16))).square().mean()
        with FlopCounterMode(display=False) as counter:
            loss.backward()
        return counter.get_total_flops()

    none, sel, full = backward_flops("none"), backward_flops("selective"), backward_flops("full")
    assert sel == none < full


def test_from_config_dtype_and_flops():
    m = Decoder.from_config(tiny_cfg(), dtype=torch.bfloat16)
    assert m.embed.weight.dtype == torch.bfloat16
    out = m(torch.randint(0, 53, (1, 4)))
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()
    n = m.num_parameters()
    assert m.flops_per_token(16) == 6 * n + 12 * 3 * 16 * 32


def test_autocast_keeps_attention_inputs_in_half_precision():
    from trainlab.attention import naive_attention, register_backend, unregister_backend

    seen = []

    def spy(q, k, v, **kwargs):
        seen.append((q.dtype, k.dtype, v.dtype))
        return naive_attention(q, k, v, **kwargs)

    register_backend("spy_autocast", spy, priority=1000)
    try:
        m = tiny_model()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            h = m.hidden_states(torch.randint(0, 53, (1, 5)))
    finally:
        unregister_backend("spy_autocast")
    assert seen and all(d == (torch.bfloat16,) * 3 for d in seen)
    assert torch.isfinite(h).all()
