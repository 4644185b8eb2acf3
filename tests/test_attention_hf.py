"""trainlab backends inside a Hugging Face Llama through transformers' AttentionInterface."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from trainlab.attention import register_hf_attention
from trainlab.attention.hf import hf_name


@pytest.fixture(scope="module")
def llama():
    names = register_hf_attention()
    assert {"trainlab", "trainlab_fa_torch", "trainlab_naive", "trainlab_sdpa", "trainlab_triton"} <= set(names)
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=64)
    return LlamaForCausalLM(cfg).eval()


def _logits_and_grads(model, impl, ids, mask):
    model.set_attn_implementation(impl)
    model.zero_grad(set_to_none=True)
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    logits = model(input_ids=ids, attention_mask=mask, position_ids=pos).logits
    (logits * mask[..., None]).sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return logits.detach(), grads


@pytest.mark.parametrize("impl", ["trainlab_fa_torch", "trainlab", "trainlab_naive"])
def test_llama_matches_eager_with_left_padding(llama, impl):
    ids = torch.randint(0, 64, (2, 12), generator=torch.Generator().manual_seed(1))
    mask = torch.ones(2, 12, dtype=torch.long)
    mask[0, :4] = 0  # left padding: the 2-D mask reaches our backend as a key padding mask
    want, want_g = _logits_and_grads(llama, "eager", ids, mask)
    got, got_g = _logits_and_grads(llama, impl, ids, mask)
    real = mask.bool()
    torch.testing.assert_close(got[real], want[real], atol=2e-5, rtol=1e-4)
    assert want_g.keys() == got_g.keys()
    for name in want_g:
        torch.testing.assert_close(got_g[name], want_g[name], atol=2e-5, rtol=1e-4, msg=name)


def test_llama_generation_with_kv_cache_is_unchanged(llama):
    """Decoding with a cache queries 1 token against T keys: bottom-right causal alignment."""
    ids = torch.randint(0, 64, (2, 7), generator=torch.Generator().manual_seed(2))
    mask = torch.ones(2, 7, dtype=torch.long)
    mask[1, :2] = 0
    outs = {}
    for impl in ("eager", hf_name("flash_torch")):
        llama.set_attn_implementation(impl)
        outs[impl] = llama.generate(ids, attention_mask=mask, max_new_tokens=6, do_sample=False, pad_token_id=0)
    assert torch.equal(outs["eager"], outs["trainlab_fa_torch"])


def test_unsupported_features_raise(llama):
    from trainlab.attention.hf import hf_attention_function

    fn = hf_attention_function("flash_torch")
    q = torch.randn(1, 4, 5, 8)
    with pytest.raises(ValueError, match="dropout"):
        fn(llama.model.layers[0].self_attn, q, q[:, :2], q[:, :2], None, dropout=0.1)
    with pytest.raises(ValueError, match="2-D padding mask"):
        fn(llama.model.layers[0].self_attn, q, q[:, :2], q[:, :2], torch.ones(1, 1, 5, 5, dtype=torch.bool))
    out, weights = fn(llama.model.layers[0].self_attn, q, q[:, :2], q[:, :2], None, sliding_window=2)
    assert out.shape == (1, 5, 4, 8) and weights is None
