"""Attention backends against an independent float64 reference, forward and backward."""

from __future__ import annotations

import math

import pytest
import torch

from trainlab.attention import (
    AttentionBackendError,
    Supports,
    attention,
    available_backends,
    causal_mask,
    naive_attention,
    register_backend,
    registered_backends,
    resolve_backend,
    sdpa_attention,
    unregister_backend,
)
from trainlab.errors import UserError

BACKENDS = {"naive": naive_attention, "sdpa": sdpa_attention}


def reference_attention(q, k, v, *, causal=False, key_padding_mask=None, scale=None):
    """Independent formulation: explicit index masks, einsum, a softmax written out by hand.

    Rows with no visible key give 0 (their normalizer is 0 and is replaced by 1).
    """
    b, hq, tq, d = q.shape
    hkv, tk = k.shape[1], k.shape[2]
    group = hq // hkv
    head_of = torch.tensor([h // group for h in range(hq)])
    k, v = k[:, head_of], v[:, head_of]
    scale = 1 / math.sqrt(d) if scale is None else scale
    allowed = torch.ones(b, 1, tq, tk, dtype=torch.bool)
    for i in range(tq):
        for j in range(tk):
            if causal and j > i + (tk - tq):
                allowed[:, :, i, j] = False
    if key_padding_mask is not None:
        allowed = allowed & key_padding_mask[:, None, None, :]
    s = torch.einsum("bhid,bhjd->bhij", q, k) * scale
    e = torch.exp(s - s.amax(dim=-1, keepdim=True)) * allowed
    denom = e.sum(dim=-1, keepdim=True)
    p = e / torch.where(denom > 0, denom, torch.ones_like(denom))
    return torch.einsum("bhij,bhjd->bhid", p, v)


# (B, Hq, Hkv, Tq, Tk, causal, padding)
CASES = [
    pytest.param(2, 4, 4, 7, 7, False, False, id="mha"),
    pytest.param(2, 4, 4, 7, 7, True, False, id="mha-causal"),
    pytest.param(2, 6, 2, 5, 5, True, False, id="gqa-causal"),
    pytest.param(2, 4, 1, 5, 5, True, False, id="mqa-causal"),
    pytest.param(2, 4, 2, 3, 8, True, False, id="gqa-causal-tq<tk"),
    pytest.param(1, 2, 2, 1, 6, True, False, id="decode-step"),
    pytest.param(2, 2, 1, 6, 4, True, False, id="causal-tq>tk-empty-rows"),
    pytest.param(2, 4, 2, 6, 6, False, True, id="gqa-padding"),
    pytest.param(3, 4, 2, 6, 6, True, True, id="gqa-causal-padding"),
    pytest.param(2, 2, 2, 2, 7, True, True, id="causal-padding-tq<tk"),
]


def make_inputs(b, hq, hkv, tq, tk, padding, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    d = 8
    q = torch.randn(b, hq, tq, d, generator=g, dtype=dtype)
    k = torch.randn(b, hkv, tk, d, generator=g, dtype=dtype)
    v = torch.randn(b, hkv, tk, d, generator=g, dtype=dtype)
    mask = None
    if padding:
        mask = torch.ones(b, tk, dtype=torch.bool)
        mask[0, :2] = False  # left padding in row 0
        mask[-1, -3:] = False  # right padding in the last row
        if b > 2:
            mask[1] = False  # a row with no key at all
    return q, k, v, mask


@pytest.mark.parametrize("backend", list(BACKENDS))
@pytest.mark.parametrize(("b", "hq", "hkv", "tq", "tk", "causal", "padding"), CASES)
def test_matches_reference_forward_and_backward(backend, b, hq, hkv, tq, tk, causal, padding):
    q, k, v, mask = make_inputs(b, hq, hkv, tq, tk, padding)
    grad_out = torch.randn(b, hq, tq, q.shape[-1], dtype=torch.float64)

    def run(fn):
        qq, kk, vv = (t.clone().requires_grad_() for t in (q, k, v))
        out = fn(qq, kk, vv, causal=causal, key_padding_mask=mask)
        out.backward(grad_out)
        return out.detach(), qq.grad, kk.grad, vv.grad

    got = run(BACKENDS[backend])
    want = run(reference_attention)
    for name, a, r in zip(("out", "dq", "dk", "dv"), got, want, strict=True):
        assert torch.isfinite(a).all(), name
        torch.testing.assert_close(a, r, atol=1e-10, rtol=1e-9, msg=name)


@pytest.mark.parametrize(("b", "hq", "hkv", "tq", "tk", "causal", "padding"), CASES)
def test_naive_and_sdpa_agree_in_fp32(b, hq, hkv, tq, tk, causal, padding):
    q, k, v, mask = make_inputs(b, hq, hkv, tq, tk, padding, dtype=torch.float32, seed=1)
    a = naive_attention(q, k, v, causal=causal, key_padding_mask=mask)
    s = sdpa_attention(q, k, v, causal=causal, key_padding_mask=mask)
    assert a.dtype == s.dtype == torch.float32
    torch.testing.assert_close(a, s, atol=2e-6, rtol=1e-5)


def test_fully_masked_rows_are_zero_with_zero_grads():
    q, k, v, _ = make_inputs(2, 2, 2, 4, 4, False)
    mask = torch.tensor([[True, True, False, False], [False, False, False, False]])
    for fn in BACKENDS.values():
        qq, kk, vv = (t.clone().requires_grad_() for t in (q, k, v))
        out = fn(qq, kk, vv, causal=True, key_padding_mask=mask)
        assert torch.equal(out[1], torch.zeros_like(out[1]))
        out.sum().backward()
        for g in (qq.grad, kk.grad, vv.grad):
            assert torch.isfinite(g).all()
        assert torch.equal(qq.grad[1], torch.zeros_like(qq.grad[1]))
        assert torch.equal(kk.grad[1], torch.zeros_like(kk.grad[1]))


def test_low_precision_dtype_and_accuracy():
    q, k, v, mask = make_inputs(2, 4, 2, 6, 6, True, dtype=torch.float64, seed=3)
    want = reference_attention(q, k, v, causal=True, key_padding_mask=mask)
    for fn in BACKENDS.values():
        out = fn(q.bfloat16(), k.bfloat16(), v.bfloat16(), causal=True, key_padding_mask=mask)
        assert out.dtype == torch.bfloat16
        torch.testing.assert_close(out.double(), want, atol=3e-2, rtol=3e-2)


def test_custom_scale():
    q, k, v, _ = make_inputs(1, 2, 2, 4, 4, False)
    want = reference_attention(q, k, v, causal=True, scale=0.3)
    for fn in BACKENDS.values():
        torch.testing.assert_close(fn(q, k, v, causal=True, scale=0.3), want)


def test_causal_mask_is_bottom_right():
    m = causal_mask(2, 4)
    assert m.tolist() == [[True, True, True, False], [True, True, True, True]]
    assert causal_mask(3, 3).equal(torch.ones(3, 3, dtype=torch.bool).tril())
    assert causal_mask(3, 2)[0].tolist() == [False, False]


def test_shape_errors():
    q = torch.randn(1, 3, 4, 8)
    k = torch.randn(1, 2, 4, 8)
    with pytest.raises(ValueError, match="multiple"):
        naive_attention(q, k, k)
    with pytest.raises(ValueError, match="key_padding_mask"):
        sdpa_attention(q, q, q, key_padding_mask=torch.ones(1, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match="B,Hq,Tq,D"):
        attention(q[0], q[0], q[0])


# ---- dispatch ---------------------------------------------------------------------------------


@pytest.fixture
def fake_backends():
    names: list[str] = []

    def add(name, **kwargs):
        register_backend(name, naive_attention, **kwargs)
        names.append(name)

    yield add
    for name in names:
        unregister_backend(name)


def test_builtin_backends_and_auto_choice():
    assert set(available_backends()) >= {"naive", "sdpa"}
    assert registered_backends().index("sdpa") < registered_backends().index("naive")
    q = torch.randn(1, 2, 4, 8)
    name, reason = resolve_backend("auto", q, causal=True)
    assert name == "sdpa" and "sdpa" in reason
    assert resolve_backend("naive", q) == ("naive", "'naive' requested")


def test_unknown_backend_is_a_user_error():
    q = torch.randn(1, 2, 4, 8)
    with pytest.raises(UserError, match=r"unknown attention backend 'flash'.*naive"):
        attention(q, q, q, backend="flash")


def test_forced_unsupported_backend_raises_and_auto_skips_it(fake_backends):
    fake_backends("gpu_only", supports=Supports(devices=frozenset({"cuda"})), priority=100)
    q = torch.randn(1, 2, 4, 8)
    with pytest.raises(AttentionBackendError, match=r"gpu_only.*cannot run.*device 'cpu'.*backends that can: sdpa"):
        attention(q, q, q, backend="gpu_only")
    name, reason = resolve_backend("auto", q)
    assert name == "sdpa"
    assert "skipped gpu_only: device 'cpu' not supported" in reason


def test_feature_checks(fake_backends):
    fake_backends(
        "limited",
        supports=Supports(
            dtypes=frozenset({torch.float16}),
            padding_mask=False,
            gqa=False,
            causal_unequal_lengths=False,
            backward=False,
            head_dims=frozenset({64}),
        ),
        priority=-1,
    )
    fake_backends("absent", supports=Supports(available=lambda: "package not installed"), priority=50)
    q = torch.randn(1, 2, 4, 64, dtype=torch.float16)
    assert resolve_backend("limited", q, causal=True)[0] == "limited"
    checks = [
        ({"q": q.float()}, "dtype float32"),
        ({"q": torch.randn(1, 2, 4, 32, dtype=torch.float16)}, "head_dim 32"),
        ({"key_padding_mask": torch.ones(1, 4, dtype=torch.bool)}, "padding mask"),
        ({"k": q[:, :1]}, "grouped-query"),
        ({"k": torch.randn(1, 2, 6, 64, dtype=torch.float16), "causal": True}, "Tq=4 != Tk=6"),
        ({"q": q.clone().requires_grad_()}, "backward"),
    ]
    for kwargs, match in checks:
        args = {"q": q, "k": None, "causal": False, "key_padding_mask": None} | kwargs
        with pytest.raises(AttentionBackendError, match=match):
            resolve_backend(
                "limited", args["q"], args["k"], causal=args["causal"], key_padding_mask=args["key_padding_mask"]
            )
    with pytest.raises(AttentionBackendError, match="package not installed"):
        resolve_backend("absent", q)
    assert "absent" not in available_backends() and "absent" in registered_backends()
    assert "skipped absent: package not installed" in resolve_backend("auto", q)[1]


def test_auto_prefers_highest_priority_supported(fake_backends):
    calls = []

    def spy(q, k, v, **kwargs):
        calls.append(kwargs)
        return naive_attention(q, k, v, **kwargs)

    register_backend("spy", spy, priority=99)
    try:
        q = torch.randn(1, 2, 3, 8)
        attention(q, q, q, causal=True)
        assert calls == [{"causal": True, "key_padding_mask": None, "scale": None}]
    finally:
        unregister_backend("spy")
    assert resolve_backend("auto", torch.randn(1, 2, 3, 8))[0] == "sdpa"


def test_register_rejects_duplicates_and_auto():
    with pytest.raises(ValueError, match="already registered"):
        register_backend("naive", naive_attention)
    with pytest.raises(ValueError, match="reserved"):
        register_backend("auto", naive_attention)
