"""Completion log-probs: chunked == unchunked == a naive computation from the full logits."""

from __future__ import annotations

import pytest
import torch
from _tiny import tiny_decoder

from trainlab.align.datasets import collate_preference
from trainlab.align.logprobs import chunked_token_logprobs, sequence_logps, token_logprobs
from trainlab.align.losses import log1mexp


def _batch(seed: int = 0, n: int = 5, vocab: int = 48) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    items = []
    for i in range(n):
        items.append({"index": torch.tensor(i),
                      "prompt": torch.randint(1, vocab, (int(torch.randint(1, 6, (1,), generator=g)),), generator=g),
                      "chosen": torch.randint(1, vocab, (int(torch.randint(1, 7, (1,), generator=g)),), generator=g),
                      "rejected": torch.randint(1, vocab, (int(torch.randint(1, 7, (1,), generator=g)),),
                                                generator=g)})
    return collate_preference(items, pad_id=0)


@pytest.mark.parametrize("chunk", [1, 3, 7, 1000])
def test_chunked_equals_full_values_and_grads(chunk: int) -> None:
    torch.manual_seed(0)
    h = torch.randn(23, 16, requires_grad=True)
    w = torch.randn(50, 16, requires_grad=True)
    t = torch.randint(0, 50, (23,))
    g = torch.randn(23)
    full = token_logprobs(h, w, t, 0)
    (full * g).sum().backward()
    gh, gw = h.grad.clone(), w.grad.clone()
    h.grad = w.grad = None
    chunked = chunked_token_logprobs(h, w, t, chunk)
    (chunked * g).sum().backward()
    torch.testing.assert_close(chunked, full, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(h.grad, gh, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(w.grad, gw, rtol=1e-5, atol=1e-6)


def test_chunked_gradcheck_fp64() -> None:
    torch.manual_seed(1)
    h = torch.randn(6, 4, dtype=torch.float64, requires_grad=True)
    w = torch.randn(9, 4, dtype=torch.float64, requires_grad=True)
    t = torch.randint(0, 9, (6,))
    # the function computes in fp32 by design; check its backward against its own forward there
    assert torch.autograd.gradcheck(lambda a, b: chunked_token_logprobs(a, b, t, 4).double(),
                                    (h, w), eps=1e-3, atol=1e-3, rtol=1e-3)


@pytest.mark.parametrize("chunk", [0, 4])
def test_sequence_logps_match_full_logits(chunk: int) -> None:
    model = tiny_decoder(0)
    batch = _batch()
    out = sequence_logps(model, batch["input_ids"], batch["labels"], batch["attention_mask"], chunk_size=chunk)
    # independent reference: the model's own [B, T, V] logits, log_softmax, gather, mask, sum
    logits = model(batch["input_ids"], batch["attention_mask"]).float()
    logp = torch.log_softmax(logits[:, :-1], dim=-1)
    labels = batch["labels"][:, 1:]
    mask = labels != -100
    tok = logp.gather(-1, labels.clamp(min=0)[..., None]).squeeze(-1) * mask
    torch.testing.assert_close(out.sum, tok.sum(1), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.n_tokens, mask.sum(1).float())
    torch.testing.assert_close(out.mean, tok.sum(1) / mask.sum(1), rtol=1e-5, atol=1e-5)
    mean_logit = (logits[:, :-1].mean(-1) * mask).sum(1)
    torch.testing.assert_close(out.logit_sum, mean_logit, rtol=1e-4, atol=1e-4)


def test_sequence_logps_grads_chunked_equal_unchunked() -> None:
    batch = _batch(3)
    grads = []
    for chunk in (0, 5):
        model = tiny_decoder(0)
        out = sequence_logps(model, batch["input_ids"], batch["labels"], batch["attention_mask"], chunk_size=chunk)
        (out.sum * torch.linspace(-1, 1, out.sum.numel())).sum().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    for name, g in grads[0].items():
        torch.testing.assert_close(grads[1][name], g, rtol=1e-4, atol=1e-6)


def test_padding_does_not_change_logps() -> None:
    """A pair scored alone and inside a batch padded to a longer row gets the same log-probs."""
    model = tiny_decoder(0).eval()
    batch = _batch(4, n=4)
    with torch.no_grad():
        together = sequence_logps(model, batch["input_ids"], batch["labels"], batch["attention_mask"]).sum
        n = batch["attention_mask"][0].sum()
        alone = sequence_logps(model, batch["input_ids"][:1, :n], batch["labels"][:1, :n]).sum
    torch.testing.assert_close(alone[0], together[0], rtol=1e-5, atol=1e-5)


def test_log1mexp_is_stable() -> None:
    x = torch.tensor([-1e-9, -1e-4, -0.5, -0.7, -5.0, -50.0], dtype=torch.float64)
    expected = torch.log(-torch.expm1(x))  # exact in fp64 over this range
    torch.testing.assert_close(log1mexp(x), expected)
    assert torch.isfinite(log1mexp(torch.tensor([-1e-30, -100.0]))).all()
