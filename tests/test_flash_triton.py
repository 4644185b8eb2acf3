"""The Triton FlashAttention kernels against the float64 reference, forward and backward.

Without a GPU the kernels run in Triton's interpreter (TRITON_INTERPRET=1; NumPy underneath, so
shapes stay tiny and dtypes are fp32/fp16: the interpreter does not emulate bf16 faithfully). With a
GPU the same tests run the compiled kernels, bf16 included. The interpreter must be selected before
triton is first imported, which tests/conftest.py does.
"""

from __future__ import annotations

import os

import pytest
import torch

CUDA = torch.cuda.is_available()
if not CUDA:  # normally already set by conftest.py, before anything imported triton
    os.environ.setdefault("TRITON_INTERPRET", "1")

pytest.importorskip("triton")

from trainlab.attention import (  # noqa: E402
    AttentionBackendError,
    attention,
    flash_triton,
    naive_attention,
    resolve_backend,
    varlen_attention,
)
from trainlab.attention.flash_triton import (  # noqa: E402
    KernelConfig,
    flash_attention_triton,
    flash_attention_varlen_triton,
)
from trainlab.config import ModelConfig  # noqa: E402
from trainlab.model.decoder import Decoder  # noqa: E402

if not CUDA and not flash_triton.INTERPRET:
    raise RuntimeError("no GPU and the Triton kernels were not loaded in the interpreter: set TRITON_INTERPRET=1 "
                       "before anything imports triton (tests/conftest.py does)")

DEVICE = "cuda" if CUDA else "cpu"
LOW = [torch.float16, torch.bfloat16] if CUDA else [torch.float16]


def make(b, hq, hkv, tq, tk, d, *, dtype=torch.float32, seed=0, padding=False):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(b, hq, tq, d, generator=g).to(DEVICE, dtype)
    k = torch.randn(b, hkv, tk, d, generator=g).to(DEVICE, dtype)
    v = torch.randn(b, hkv, tk, d, generator=g).to(DEVICE, dtype)
    do = torch.randn(b, hq, tq, d, generator=g).to(DEVICE, dtype)
    mask = None
    if padding:
        mask = torch.ones(b, tk, dtype=torch.bool, device=DEVICE)
        mask[0, :4] = False  # left padding
        mask[-1, -6:] = False  # right padding
    return q, k, v, do, mask


def run(fn, q, k, v, do, **kwargs):
    qq, kk, vv = (t.detach().clone().requires_grad_() for t in (q, k, v))
    out = fn(qq, kk, vv, **kwargs)
    out.backward(do)
    return [t.detach() for t in (out, qq.grad, kk.grad, vv.grad)]


def assert_close_to_reference(q, k, v, do, *, atol=2e-5, **kwargs):
    deterministic = kwargs.pop("deterministic", False)
    want = run(naive_attention, q.double(), k.double(), v.double(), do.double(), **kwargs)
    got = run(flash_attention_triton, q, k, v, do, deterministic=deterministic, **kwargs)
    for name, a, r in zip(("out", "dq", "dk", "dv"), got, want, strict=True):
        assert a.dtype == q.dtype and a.shape == r.shape, name
        assert torch.isfinite(a).all(), name
        torch.testing.assert_close(a.double(), r, atol=atol, rtol=1e-4, msg=name)
    return got


# (B, Hq, Hkv, Tq, Tk, D, causal, padding, window, deterministic); lengths are not multiples of the
# interpreter's 16-wide blocks, so every case also covers ragged last blocks.
CASES = [
    pytest.param(1, 2, 2, 37, 37, 16, True, False, None, False, id="causal"),
    pytest.param(2, 4, 2, 21, 21, 32, False, False, None, False, id="gqa"),
    pytest.param(2, 4, 1, 18, 41, 16, True, True, None, False, id="mqa-causal-tq<tk-padding"),
    pytest.param(1, 2, 1, 40, 19, 16, True, False, None, True, id="causal-tq>tk-empty-rows-deterministic"),
    pytest.param(2, 2, 2, 45, 45, 24, False, True, (7, 3), False, id="window-padding-d24"),
    pytest.param(1, 4, 2, 50, 50, 16, True, False, (9, -1), True, id="causal-window-gqa-deterministic"),
]


@pytest.mark.parametrize(("b", "hq", "hkv", "tq", "tk", "d", "causal", "padding", "window", "det"), CASES)
def test_kernels_match_float64_reference(b, hq, hkv, tq, tk, d, causal, padding, window, det):
    q, k, v, do, mask = make(b, hq, hkv, tq, tk, d, padding=padding)
    assert_close_to_reference(q, k, v, do, causal=causal, key_padding_mask=mask, window=window, deterministic=det)


@pytest.mark.parametrize("dtype", LOW)
def test_low_precision_error_within_twice_naive(dtype):
    q, k, v, do, _ = make(2, 4, 2, 40, 40, 32, dtype=dtype, seed=3)
    ref = run(naive_attention, q.double(), k.double(), v.double(), do.double(), causal=True)
    base = run(naive_attention, q, k, v, do, causal=True)
    got = run(flash_attention_triton, q, k, v, do, causal=True)
    for name, a, n, r in zip(("out", "dq", "dk", "dv"), got, base, ref, strict=True):
        assert a.dtype == dtype
        err, base_err = (a.double() - r).abs().max(), (n.double() - r).abs().max()
        assert err <= 2 * base_err, (name, float(err), float(base_err))


def test_deterministic_backward_is_bitwise_reproducible_and_agrees_with_atomics():
    q, k, v, do, _ = make(1, 4, 2, 33, 33, 16, seed=5)
    first = run(flash_attention_triton, q, k, v, do, causal=True, deterministic=True)
    second = run(flash_attention_triton, q, k, v, do, causal=True, deterministic=True)
    for a, b in zip(first, second, strict=True):
        assert torch.equal(a, b)
    atomic = run(flash_attention_triton, q, k, v, do, causal=True, deterministic=False)
    for a, b in zip(first, atomic, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_varlen_packed_sequences_never_see_each_other():
    lens_q, lens_k = [5, 17, 30], [9, 17, 36]  # Tq != Tk per sequence: bottom-right causal
    cu_q = torch.tensor([0, 5, 22, 52], dtype=torch.int32)
    cu_k = torch.tensor([0, 9, 26, 62], dtype=torch.int32)
    g = torch.Generator().manual_seed(7)
    q = torch.randn(52, 4, 16, generator=g).to(DEVICE)
    k = torch.randn(62, 2, 16, generator=g).to(DEVICE)
    v = torch.randn(62, 2, 16, generator=g).to(DEVICE)
    do = torch.randn(52, 4, 16, generator=g).to(DEVICE)
    for causal, window in [(True, None), (False, (4, 2))]:
        def packed(q_, k_, v_, causal=causal, window=window):
            return flash_attention_varlen_triton(q_, k_, v_, cu_q, cu_k, max(lens_q), max(lens_k), causal=causal,
                                                 window=window)

        def per_sequence(q_, k_, v_, causal=causal, window=window):
            return varlen_attention(q_, k_, v_, cu_q, cu_k, causal=causal, window=window, backend="naive")

        got = run(packed, q, k, v, do)
        want = run(per_sequence, q.double(), k.double(), v.double(), do.double())
        for name, a, r in zip(("out", "dq", "dk", "dv"), got, want, strict=True):
            torch.testing.assert_close(a.double(), r, atol=2e-5, rtol=1e-4, msg=f"{name} causal={causal}")


def test_dispatch_runs_triton_only_when_asked_and_refuses_bf16_in_the_interpreter():
    q, k, v, _, mask = make(1, 2, 1, 20, 20, 16, padding=True)
    out = attention(q, k, v, causal=True, key_padding_mask=mask, backend="triton")
    torch.testing.assert_close(out, naive_attention(q, k, v, causal=True, key_padding_mask=mask), atol=2e-6,
                               rtol=1e-5)
    chosen, _ = resolve_backend("auto", q, k, v, causal=True, key_padding_mask=mask)
    if CUDA:
        assert chosen in ("triton", "flash_attn", "sdpa")
    else:
        assert chosen == "sdpa"  # the interpreter is never chosen automatically
        with pytest.raises(AttentionBackendError, match="bfloat16 is not emulated"):
            attention(q.bfloat16(), k.bfloat16(), v.bfloat16(), backend="triton")
    with pytest.raises(AttentionBackendError, match="head_dim 8 not supported"):
        attention(q[..., :8], k[..., :8], v[..., :8], backend="triton")


def test_decoder_trains_identically_with_the_triton_backend():
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=32, dim=32, n_layers=1, n_heads=2, n_kv_heads=1, max_seq_len=24)
    naive = Decoder(cfg.model_copy(update={"attention": "naive"})).to(DEVICE)
    tri = Decoder(cfg.model_copy(update={"attention": "triton"})).to(DEVICE)
    tri.load_state_dict(naive.state_dict())
    ids = torch.randint(0, 32, (2, 19), device=DEVICE)
    for model in (naive, tri):
        model(ids).sum().backward()
    torch.testing.assert_close(tri(ids), naive(ids), atol=1e-5, rtol=1e-5)
    for (name, a), b in zip(naive.named_parameters(), tri.parameters(), strict=True):
        torch.testing.assert_close(b.grad, a.grad, atol=1e-4, rtol=1e-4, msg=name)


def test_explicit_block_config_and_input_validation():
    q, k, v, do, _ = make(1, 2, 2, 35, 35, 16, seed=2)
    cfg = KernelConfig(32, 16, 1, 1)
    got = run(lambda *a, **kw: flash_attention_triton(*a, fwd_config=cfg, bwd_config=cfg, **kw), q, k, v, do,
              causal=True)
    want = run(naive_attention, q.double(), k.double(), v.double(), do.double(), causal=True)
    for a, r in zip(got, want, strict=True):
        torch.testing.assert_close(a.double(), r, atol=2e-5, rtol=1e-4)
    with pytest.raises(ValueError, match="head dims"):
        flash_attention_triton(q[..., :8], k[..., :8], v[..., :8])
    with pytest.raises(ValueError, match="share a dtype"):
        flash_attention_triton(q, k.half(), v)
    with pytest.raises(ValueError, match="max_seqlen"):
        flash_attention_varlen_triton(q[0].transpose(0, 1), k[0].transpose(0, 1), v[0].transpose(0, 1),
                                      torch.tensor([0, 35]), torch.tensor([0, 35]), 10, 35)
    assert flash_triton.INTERPRET is not CUDA
