"""flash_torch (tiled online-softmax attention in PyTorch) against float64 references, forward and backward."""

from __future__ import annotations

import math

import pytest
import torch

from trainlab.attention import (
    AttentionBackendError,
    attention,
    available_backends,
    flash_attention_torch,
    flash_attention_varlen_torch,
    naive_attention,
    pack,
    resolve_backend,
    sdpa_attention,
    unpack,
    varlen_attention,
)
from trainlab.attention.flash_torch import FlashStats, default_blocks, flash_forward
from trainlab.bench import measure_peak
from trainlab.config import ModelConfig
from trainlab.model.decoder import Decoder


def loop_reference(q, k, v, *, causal=False, key_padding_mask=None, window=None, scale=None):
    """Independent reference: per-row Python loops over visible keys, float64, rows with no key -> 0."""
    b, hq, tq, d = q.shape
    hkv, tk = k.shape[1], k.shape[2]
    scale = 1 / math.sqrt(d) if scale is None else scale
    off = tk - tq
    out = torch.zeros(b, hq, tq, v.shape[-1], dtype=q.dtype)
    left, right = window if window is not None else (-1, -1)
    if causal:
        right = 0 if right < 0 else min(right, 0)
    for bi in range(b):
        for h in range(hq):
            kh = h // (hq // hkv)
            for i in range(tq):
                cols = [j for j in range(tk)
                        if (left < 0 or j >= i + off - left) and (right < 0 or j <= i + off + right)
                        and (key_padding_mask is None or bool(key_padding_mask[bi, j]))]
                if not cols:
                    continue
                s = torch.stack([q[bi, h, i] @ k[bi, kh, j] for j in cols]) * scale
                p = torch.softmax(s, dim=0)
                out[bi, h, i] = sum(p[n] * v[bi, kh, j] for n, j in enumerate(cols))
    return out


# (B, Hq, Hkv, Tq, Tk, causal, padding, window)
CASES = [
    pytest.param(2, 2, 2, 19, 19, False, False, None, id="mha-ragged"),
    pytest.param(2, 4, 4, 21, 21, True, False, None, id="causal"),
    pytest.param(2, 6, 2, 17, 17, True, False, None, id="gqa-causal"),
    pytest.param(1, 4, 1, 13, 13, True, True, None, id="mqa-causal-padding"),
    pytest.param(2, 4, 2, 7, 23, True, False, None, id="causal-tq<tk"),
    pytest.param(2, 2, 1, 20, 9, True, False, None, id="causal-tq>tk-empty-rows"),
    pytest.param(3, 4, 2, 16, 16, False, True, None, id="padding-with-empty-row"),
    pytest.param(2, 2, 2, 25, 25, False, False, (4, 2), id="window"),
    pytest.param(2, 4, 2, 25, 25, True, True, (6, -1), id="causal-window-padding"),
    pytest.param(1, 2, 2, 9, 30, False, False, (3, 0), id="window-tq<tk"),
]


def make_inputs(b, hq, hkv, tq, tk, padding, dtype=torch.float64, seed=0, d=8):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(b, hq, tq, d, generator=g, dtype=dtype)
    k = torch.randn(b, hkv, tk, d, generator=g, dtype=dtype)
    v = torch.randn(b, hkv, tk, d, generator=g, dtype=dtype)
    mask = None
    if padding:
        mask = torch.ones(b, tk, dtype=torch.bool)
        mask[0, :3] = False
        mask[-1, -4:] = False
        if b > 2:
            mask[1] = False
    return q, k, v, mask


def fwd_bwd(fn, q, k, v, grad_out, **kwargs):
    qq, kk, vv = (t.detach().clone().requires_grad_() for t in (q, k, v))
    out = fn(qq, kk, vv, **kwargs)
    out.backward(grad_out)
    return out.detach(), qq.grad, kk.grad, vv.grad


@pytest.mark.parametrize("loop_order", ["fa1", "fa2"])
@pytest.mark.parametrize(("b", "hq", "hkv", "tq", "tk", "causal", "padding", "window"), CASES)
def test_matches_float64_naive_forward_and_backward(b, hq, hkv, tq, tk, causal, padding, window, loop_order):
    q, k, v, mask = make_inputs(b, hq, hkv, tq, tk, padding)
    grad_out = torch.randn(b, hq, tq, q.shape[-1], dtype=torch.float64)
    kw = {"causal": causal, "key_padding_mask": mask, "window": window}
    want = fwd_bwd(naive_attention, q, k, v, grad_out, **kw)
    got = fwd_bwd(flash_attention_torch, q, k, v, grad_out, block_q=4, block_k=8, loop_order=loop_order, **kw)
    for name, a, r in zip(("out", "dq", "dk", "dv"), got, want, strict=True):
        assert torch.isfinite(a).all(), name
        torch.testing.assert_close(a, r, atol=1e-10, rtol=1e-9, msg=name)


@pytest.mark.parametrize(("b", "hq", "hkv", "tq", "tk", "causal", "padding", "window"), CASES)
def test_naive_windows_and_masks_match_the_loop_reference(b, hq, hkv, tq, tk, causal, padding, window):
    # naive is the reference for the others, so its masks are checked against explicit loops.
    q, k, v, mask = make_inputs(b, hq, hkv, tq, tk, padding, seed=1)
    want = loop_reference(q, k, v, causal=causal, key_padding_mask=mask, window=window)
    for fn in (naive_attention, sdpa_attention, flash_attention_torch):
        torch.testing.assert_close(fn(q, k, v, causal=causal, key_padding_mask=mask, window=window), want,
                                   atol=1e-10, rtol=1e-9)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_low_precision_error_within_twice_naive(dtype):
    """flash-attn's criterion: error vs float64 at most 2x that of the naive implementation in ``dtype``."""
    q, k, v, _ = make_inputs(2, 4, 2, 70, 70, False, dtype=torch.float32, seed=3, d=32)
    q, k, v = (t.to(dtype) for t in (q, k, v))
    grad_out = torch.randn(q.shape, generator=torch.Generator().manual_seed(4)).to(dtype)
    ref = fwd_bwd(naive_attention, q.double(), k.double(), v.double(), grad_out.double(), causal=True)
    base = fwd_bwd(naive_attention, q, k, v, grad_out, causal=True)
    got = fwd_bwd(flash_attention_torch, q, k, v, grad_out, causal=True, block_q=16, block_k=32)
    assert got[0].dtype == dtype and got[1].dtype == dtype
    for name, a, n, r in zip(("out", "dq", "dk", "dv"), got, base, ref, strict=True):
        err, base_err = (a.double() - r).abs().max(), (n.double() - r).abs().max()
        assert err <= 2 * base_err, (name, float(err), float(base_err))


def test_autocast_keeps_float32_accumulation():
    q, k, v, _ = make_inputs(1, 2, 2, 40, 40, False, dtype=torch.float32, d=16)
    want = naive_attention(q.double(), k.double(), v.double(), causal=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = flash_attention_torch(q.bfloat16(), k.bfloat16(), v.bfloat16(), causal=True, block_q=8, block_k=8)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.double(), want, atol=2e-2, rtol=2e-2)


def test_fully_masked_rows_are_zero_with_zero_grads():
    q, k, v, _ = make_inputs(2, 2, 2, 4, 4, False)
    mask = torch.tensor([[True, True, False, False], [False, False, False, False]])
    qq, kk, vv = (t.clone().requires_grad_() for t in (q, k, v))
    out = flash_attention_torch(qq, kk, vv, causal=True, key_padding_mask=mask, block_q=2, block_k=2)
    assert torch.equal(out[1], torch.zeros_like(out[1]))
    out.sum().backward()
    assert all(torch.isfinite(g).all() for g in (qq.grad, kk.grad, vv.grad))
    assert torch.equal(qq.grad[1], torch.zeros_like(qq.grad[1]))
    assert torch.equal(kk.grad[1], torch.zeros_like(kk.grad[1]))


def test_loop_orders_agree_and_fa2_moves_fewer_bytes():
    q, k, v, _ = make_inputs(1, 2, 2, 64, 64, False, dtype=torch.float32)
    s1, s2 = FlashStats(), FlashStats()
    o1, l1 = flash_forward(q, k, v, scale=0.3, window=(-1, 0), block_q=16, block_k=16, loop_order="fa1", stats=s1)
    o2, l2 = flash_forward(q, k, v, scale=0.3, window=(-1, 0), block_q=16, block_k=16, loop_order="fa2", stats=s2)
    torch.testing.assert_close(o1, o2, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(l1, l2, atol=1e-6, rtol=1e-5)
    # Causal with 4x4 blocks visits the 10 blocks on or below the diagonal, in either order.
    assert s1.block_pairs == s2.block_pairs == 10
    # FA2 reads each Q block once and writes O once; FA1 reads and writes O, l, m for every block pair.
    elem = 4
    assert s2.bytes_written == 2 * 64 * (8 + 1) * elem
    assert s1.bytes_written == 10 * 2 * 16 * (8 + 1 + 1) * elem
    assert s1.bytes_moved > s2.bytes_moved
    assert s1.rescale_flops > s2.rescale_flops


def test_lse_is_the_row_logsumexp():
    q, k, v, _ = make_inputs(1, 2, 2, 10, 10, False)
    _, lse = flash_forward(q, k, v, scale=0.5, window=(-1, 0), block_q=3, block_k=4)
    s = (q @ k.transpose(-1, -2)) * 0.5
    s = s.masked_fill(~torch.ones(10, 10, dtype=torch.bool).tril(), -math.inf)
    torch.testing.assert_close(lse, torch.logsumexp(s, dim=-1))


def test_peak_memory_grows_linearly_not_quadratically():
    """Measured, not assumed: doubling N doubles flash_torch's peak bytes and quadruples naive's."""
    def peak(fn, n, **kw):
        q, k, v, _ = make_inputs(1, 2, 2, n, n, False, dtype=torch.float32, d=16)
        qq, kk, vv = (t.requires_grad_() for t in (q, k, v))
        _, p = measure_peak(lambda: fn(qq, kk, vv, causal=True, **kw).sum().backward(), inputs=(qq, kk, vv))
        return p.peak_bytes

    flash = [peak(flash_attention_torch, n, block_q=32, block_k=32) for n in (256, 512)]
    naive = [peak(naive_attention, n) for n in (256, 512)]
    assert 1.7 < flash[1] / flash[0] < 2.3, flash
    assert 3.5 < naive[1] / naive[0] < 4.5, naive
    assert flash[1] < 0.25 * naive[1]


def test_default_blocks_context_and_validation():
    q, k, v, _ = make_inputs(1, 1, 1, 12, 12, False, dtype=torch.float32)
    with default_blocks(4):
        stats = FlashStats()
        flash_forward(q, k, v, scale=1.0, block_q=4, block_k=4, stats=stats)
        a = flash_attention_torch(q, k, v)
    b = flash_attention_torch(q, k, v, block_q=5, block_k=7)
    torch.testing.assert_close(a, b)
    with pytest.raises(ValueError, match="positive"):
        flash_attention_torch(q, k, v, block_q=0)
    with pytest.raises(ValueError, match="loop_order"):
        flash_attention_torch(q, k, v, loop_order="fa3")  # type: ignore[arg-type]


def test_dispatch_registers_flash_torch_and_honest_errors():
    assert "flash_torch" in available_backends()
    q = torch.randn(1, 2, 8, 16)
    name, _ = resolve_backend("auto", q, causal=True)
    assert name == "sdpa"  # flash_torch is the readable reference: slower than SDPA on a CPU
    out = attention(q, q, q, causal=True, backend="flash_torch")
    torch.testing.assert_close(out, naive_attention(q, q, q, causal=True))
    with pytest.raises(AttentionBackendError, match=r"flash_attn.*(not installed|needs a CUDA)"):
        attention(q.half(), q.half(), q.half(), backend="flash_attn")


def test_window_through_the_dispatcher():
    q, k, v, _ = make_inputs(1, 2, 2, 12, 12, False)
    want = loop_reference(q, k, v, window=(2, 1))
    for backend in ("naive", "sdpa", "flash_torch", "auto"):
        torch.testing.assert_close(attention(q, k, v, window=(2, 1), backend=backend), want)
    # (-1, 0) is causality itself; (-1, -1) is no window at all
    torch.testing.assert_close(attention(q, k, v, window=(-1, 0), backend="flash_torch"),
                               naive_attention(q, k, v, causal=True))
    torch.testing.assert_close(attention(q, k, v, window=(-1, -1)), naive_attention(q, k, v))
    with pytest.raises(ValueError, match="window"):
        attention(q, k, v, window=(-2, 0))


def test_varlen_matches_per_sequence_attention_and_pack_roundtrip():
    lengths = [3, 9, 14]
    g = torch.Generator().manual_seed(5)
    x = torch.randn(3, 14, 3, 4, 8, generator=g, dtype=torch.float64)
    mask = torch.zeros(3, 14, dtype=torch.bool)
    for i, n in enumerate(lengths):
        mask[i, 14 - n:] = True  # left padding
    packed, cu, max_len = pack(x, mask)
    assert cu.tolist() == [0, 3, 12, 26] and max_len == 14
    assert torch.equal(unpack(packed, mask)[mask], x[mask])
    q, k, v = packed[:, 0], packed[:, 1, :2], packed[:, 2, :2]  # GQA: 4 query heads, 2 kv heads
    for backend in ("flash_torch", "naive", "auto"):
        out = varlen_attention(q, k, v, cu, causal=True, window=(5, -1), backend=backend)
        for s in range(len(lengths)):
            rows = slice(int(cu[s]), int(cu[s + 1]))
            want = loop_reference(q[rows].transpose(0, 1)[None], k[rows].transpose(0, 1)[None],
                                  v[rows].transpose(0, 1)[None], causal=True, window=(5, -1))[0].transpose(0, 1)
            torch.testing.assert_close(out[rows], want, atol=1e-10, rtol=1e-9)
    out = flash_attention_varlen_torch(q, k, v, cu, cu, causal=True, block_q=4, block_k=4)
    assert out.shape == q.shape
    with pytest.raises(ValueError, match="cu_seqlens_q"):
        flash_attention_varlen_torch(q, k, v, torch.tensor([0, 5]), torch.tensor([0, 5]))
    with pytest.raises(AttentionBackendError, match="unknown varlen"):
        varlen_attention(q, k, v, cu, backend="magic")


def test_decoder_trains_identically_with_flash_torch():
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=40, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=40)
    naive = Decoder(cfg.model_copy(update={"attention": "naive"})).double()
    flash = Decoder(cfg.model_copy(update={"attention": "flash_torch", "checkpointing": "full"})).double()
    flash.load_state_dict(naive.state_dict())
    ids = torch.randint(0, 40, (2, 33))
    mask = torch.ones(2, 33, dtype=torch.long)
    mask[1, :5] = 0  # left padding -> a key padding mask reaches the backend
    with default_blocks(8):
        for model in (naive, flash):
            model.train()
            model(ids, attention_mask=mask)[mask.bool()].sum().backward()
        out_f = flash(ids, attention_mask=mask)
    torch.testing.assert_close(out_f, naive(ids, attention_mask=mask), atol=1e-10, rtol=1e-9)
    for (name, a), b in zip(naive.named_parameters(), flash.parameters(), strict=True):
        torch.testing.assert_close(b.grad, a.grad, atol=1e-10, rtol=1e-8, msg=name)


def test_measure_peak_counts_only_the_call_and_enforces_a_cap():
    x = torch.randn(256, 256)  # 256 KiB, allocated before the call: not counted

    def work():
        a = x * 2  # +256 KiB
        b = a[:128] + 1  # +128 KiB; the slice of a is a view, not an allocation
        del a  # -256 KiB
        return b.exp_()  # in place: no new storage

    out, peak = measure_peak(work, inputs=[x])
    assert peak.peak_bytes == (256 + 128) * 256 * 4
    assert out.shape == (128, 256)
    with pytest.raises(torch.OutOfMemoryError):
        measure_peak(lambda: [x * i for i in range(8)], inputs=[x], cap_bytes=1 << 20)
