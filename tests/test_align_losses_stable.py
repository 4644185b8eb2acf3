"""log1mexp and ORPO near log-prob 0, in fp32, bf16 and fp16, against fp64 closed forms.

``log(1 − eˣ)`` has value ``log(−x)`` and derivative ``eˣ/(eˣ − 1) ≈ 1/x`` as ``x → 0⁻``: both blow up
at 0. The function must return finite values and gradients (never NaN) for every input of every
float dtype, equal to the fp64 reference wherever the dtype can hold the derivative (``x ≤ −tiny``),
and the value and derivative at ``−tiny`` above that (documented in `log1mexp`).
"""

from __future__ import annotations

import math

import mpmath
import pytest
import torch

from trainlab.align.losses import log1mexp, orpo_losses

# relative tolerance per dtype: a few units of the dtype's last place
RTOL = {torch.float32: 4e-6, torch.bfloat16: 2e-2, torch.float16: 2e-3, torch.float64: 1e-12}


def _grid(dtype: torch.dtype) -> torch.Tensor:
    """Inputs from 0 down to −100 (dense near 0, both sides of the −ln 2 switch), as ``dtype`` holds them."""
    near = [-(10.0 ** -k) for k in range(1, 46)] + [-6e-8, -5.9e-8, -3e-8, -1e-44]
    xs = [0.0, -0.0, *near, -0.5, -0.69, -math.log(2.0), -0.7, -1.0, -5.0, -20.0, -50.0, -100.0]
    return torch.tensor(sorted(set(xs)), dtype=torch.float64).to(dtype)


def _reference(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Value and derivative of log(1 − eˣ) at the dtype's input clamped to −tiny (see the docstring),
    in 120-digit arithmetic (mpmath), rounded to fp64."""
    tiny = torch.finfo(x.dtype).tiny
    values, grads = [], []
    with mpmath.workdps(120):
        for v in x.double().clamp(max=-tiny).tolist():
            xm = mpmath.mpf(v)
            values.append(float(mpmath.log(-mpmath.expm1(xm))))
            grads.append(float(mpmath.exp(xm) / mpmath.expm1(xm)))
    return torch.tensor(values, dtype=torch.float64), torch.tensor(grads, dtype=torch.float64)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16, torch.float16])
def test_log1mexp_value_and_gradient_near_zero(dtype: torch.dtype) -> None:
    x = _grid(dtype).requires_grad_(True)
    y = log1mexp(x)
    assert y.dtype == dtype
    y.sum().backward()
    assert x.grad is not None
    assert torch.isfinite(y).all(), (x, y)
    assert torch.isfinite(x.grad).all(), (x, x.grad)
    want_y, want_g = _reference(x.detach())
    tiny = torch.finfo(dtype).tiny
    # the outputs rounded to dtype: compare with the reference rounded the same way
    torch.testing.assert_close(y.detach().double(), want_y.to(dtype).double(), rtol=RTOL[dtype], atol=tiny)
    torch.testing.assert_close(x.grad.double(), want_g.to(dtype).double(), rtol=RTOL[dtype], atol=tiny)


def test_log1mexp_gradient_is_finite_where_exp_rounds_to_one() -> None:
    """The reported case: fp32, x in (−6e-8, 0], where eˣ rounds to 1 in the unselected branch."""
    x = torch.tensor([-1e-9, -3e-8, -5.9e-8], requires_grad=True)
    log1mexp(x).sum().backward()
    assert x.grad is not None
    want = torch.exp(x.detach().double()) / torch.expm1(x.detach().double())
    torch.testing.assert_close(x.grad.double(), want, rtol=1e-6, atol=0.0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_orpo_with_a_chosen_log_prob_of_zero(dtype: torch.dtype) -> None:
    """p̄_c = 0 (the chosen completion's probability rounds to 1): the loss is the NLL (the odds-ratio
    term saturates at log σ(+∞) = 0) and the gradients are the exact limits:
    ∂L/∂p̄_c → ∂NLL/∂p̄_c − λ·odds(e^{p̄_r}),  ∂L/∂p̄_r → 0."""
    lam = 0.1
    pc = torch.tensor([0.0, 0.0, -0.5], dtype=dtype, requires_grad=True)
    pr = torch.tensor([-2.0, -0.3, -1.0], dtype=dtype, requires_grad=True)
    nll = -pc  # ORPO's NLL is the chosen side's mean negative log-prob
    out = orpo_losses(pc, pr, nll, lam=lam)
    out.losses.sum().backward()
    assert pc.grad is not None and pr.grad is not None
    assert torch.isfinite(out.losses).all() and torch.isfinite(pc.grad).all() and torch.isfinite(pr.grad).all()

    # fp64 closed forms: rows 0-1 at the limit p̄_c → 0, row 2 the exact formula
    pcd, prd = pc.detach().double(), pr.detach().double()
    odds_r = torch.exp(prd) / -torch.expm1(prd)
    log_odds = pcd - prd - torch.log(-torch.expm1(pcd)) + torch.log(-torch.expm1(prd))
    want_loss = torch.where(pcd == 0, -pcd, -pcd - lam * torch.nn.functional.logsigmoid(log_odds))
    sig = torch.sigmoid(-log_odds)  # ∂(−log σ(L))/∂L = −σ(−L)
    dl_dpc = 1.0 / -torch.expm1(pcd)  # ∂L/∂p̄_c
    dl_dpr = -1.0 / -torch.expm1(prd)
    want_gc = torch.where(pcd == 0, -1.0 - lam * odds_r, -1.0 - lam * sig * dl_dpc)
    want_gr = torch.where(pcd == 0, torch.zeros_like(prd), -lam * sig * dl_dpr)
    rtol = max(RTOL[dtype], 1e-5)
    torch.testing.assert_close(out.losses.double(), want_loss, rtol=rtol, atol=1e-6)
    torch.testing.assert_close(pc.grad.double(), want_gc, rtol=rtol, atol=1e-6)
    torch.testing.assert_close(pr.grad.double(), want_gr, rtol=rtol, atol=1e-6)
