"""The preference losses, one implementation each, as functions of per-sequence log-probabilities.

Notation: for a pair (x, y_w, y_l), ``π_c = log π_θ(y_w|x)`` and ``π_r = log π_θ(y_l|x)`` are the
policy's completion log-probs (sums over tokens), ``ρ_c = log π_ref(y_w|x)``, ``ρ_r`` the
reference's, ``|y|`` a completion's token count and ``σ`` the logistic function. Every function
returns per-unit losses (one per pair; one per example for KTO) so that the training loop can sum
them over micro-batches and divide by the step's count (exact gradient accumulation), plus the
implicit rewards that TRL logs.

DPO family (Rafailov et al., 2023, "Direct Preference Optimization: Your Language Model is
Secretly a Reward Model"). With the implicit reward ``r = β log(π/π_ref)`` and the margin
``δ = (π_c − ρ_c) − (π_r − ρ_r)``:

* ``sigmoid`` (DPO, Bradley-Terry): ``−log σ(βδ)``; with label smoothing ε it is conservative DPO
  (cDPO, Mitchell 2023): ``−(1−ε) log σ(βδ) − ε log σ(−βδ)``.
* ``ipo`` (Azar et al., 2023, "A General Theoretical Paradigm to Understand Learning from Human
  Preferences"): ``(δ̄ − 1/(2τ))²`` with τ = β and δ̄ the length-normalized margin
  ``(π_c − ρ_c)/|y_w| − (π_r − ρ_r)/|y_l|`` (as TRL, confirmed with the IPO authors).
* ``hinge`` (SLiC, Zhao et al., 2023): ``max(0, 1 − βδ)``.
* ``robust`` (Chowdhury et al., 2024, "Provably Robust DPO"): unbiased under preference labels
  flipped with probability ε: ``[−(1−ε) log σ(βδ) + ε log σ(−βδ)] / (1 − 2ε)``.

ORPO (Hong et al., 2024, "ORPO: Monolithic Preference Optimization without Reference Model"),
with length-normalized log-probs ``p̄ = π/|y|`` and ``odds(p) = p / (1 − p)``::

    L = NLL(y_w) − λ log σ( log odds(e^{p̄_c}) − log odds(e^{p̄_r}) ),
    log odds(e^{p̄}) = p̄ − log(1 − e^{p̄})          (log1mexp, computed stably)

SimPO (Meng et al., 2024, "SimPO: Simple Preference Optimization with a Reference-Free
Reward"): ``−log σ(β (p̄_c − p̄_r) − γ)``, with label smoothing as in cDPO.

KTO (Ethayarajh et al., 2024, "KTO: Model Alignment as Prospect Theoretic Optimization"),
unpaired: with ``r = log(π/π_ref)`` of one example and the reference point ``z₀ = max(0, KL)``
(detached), desirable examples cost ``λ_D (1 − σ(β(r − z₀)))`` and undesirable ones
``λ_U (1 − σ(β(z₀ − r)))``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

_LN_HALF = -math.log(2.0)


@dataclass
class LossOutput:
    """Per-unit ``losses`` (with grad) and the detached implicit rewards TRL logs."""

    losses: Tensor
    chosen_rewards: Tensor
    rejected_rewards: Tensor
    extra: dict[str, Tensor] = field(default_factory=dict)


def log1mexp(x: Tensor) -> Tensor:
    """``log(1 − eˣ)`` for ``x ≤ 0``, stably (Mächler, 2012, "Accurately Computing log(1 − exp(−|a|))").

    Near 0, ``1 − eˣ`` cancels catastrophically, so ``log(−expm1(x))`` is used; far below,
    ``eˣ`` underflows relative to 1, so ``log1p(−eˣ)``. The switch point is ``−ln 2``.

    Both branches get an input clamped to their own side of the switch ("safe where"): the branch
    ``torch.where`` does not select must stay finite, or its infinite derivative times the zero
    that ``where`` routes to it makes the gradient NaN (fp32, ``x`` in (−6e-8, 0]: ``eˣ`` rounds to 1
    and ``log1p(−1)`` is −∞).

    Inputs in ``(−tiny, 0]`` (``tiny``: the smallest normal number of ``x``'s dtype) are evaluated
    at ``−tiny``, with the derivative there passed straight through (``−1/tiny``): the exact value
    is ``−∞`` at 0, and the exact derivative (``≈ 1/x``) exceeds what the dtype holds. ORPO's
    log-odds ``p̄ − log1mexp(p̄)`` of a completion whose probability rounds to 1 thus stays finite
    and its gradient tends to the exact limit. Half types are computed in fp32 and rounded back.
    """
    dtype = x.dtype
    tiny = torch.finfo(dtype).tiny if dtype.is_floating_point else torch.finfo(torch.float32).tiny
    xf = x.float() if dtype in (torch.float16, torch.bfloat16) else x
    # straight-through clamp: the value at −tiny, the gradient of the clamped point for every x near 0
    near = xf.clamp(max=-tiny)
    near = xf + (near - xf).detach()
    far = xf < _LN_HALF
    lo = torch.log1p(-torch.exp(torch.where(far, xf, torch.full_like(xf, _LN_HALF))))
    hi = torch.log(-torch.expm1(torch.where(far, torch.full_like(xf, _LN_HALF), near)))
    return torch.where(far, lo, hi).to(dtype)


def dpo_losses(policy_chosen: Tensor, policy_rejected: Tensor, ref_chosen: Tensor, ref_rejected: Tensor, *,
               beta: float, loss_type: str = "sigmoid", label_smoothing: float = 0.0,
               chosen_len: Tensor | None = None, rejected_len: Tensor | None = None) -> LossOutput:
    """DPO and its variants (see the module docstring). Log-probs are per-sequence sums ``[B]``.

    ``chosen_len``/``rejected_len`` (completion token counts) are needed by ``ipo`` only.
    Rewards: ``β (π − ρ)`` for each side.
    """
    chosen_ratio = policy_chosen.float() - ref_chosen.float()
    rejected_ratio = policy_rejected.float() - ref_rejected.float()
    delta = chosen_ratio - rejected_ratio
    eps = label_smoothing
    if loss_type == "sigmoid":
        losses = -F.logsigmoid(beta * delta)
        if eps > 0:
            losses = (1 - eps) * losses - eps * F.logsigmoid(-beta * delta)
    elif loss_type == "ipo":
        if chosen_len is None or rejected_len is None:
            raise ValueError("the ipo loss needs the completion lengths")
        norm_delta = chosen_ratio / chosen_len.clamp(min=1.0) - rejected_ratio / rejected_len.clamp(min=1.0)
        losses = (norm_delta - 1.0 / (2.0 * beta)) ** 2
    elif loss_type == "hinge":
        losses = torch.relu(1.0 - beta * delta)
    elif loss_type == "robust":
        if not 0.0 <= eps < 0.5:
            raise ValueError(f"robust DPO needs 0 <= label_smoothing < 0.5, got {eps}")
        losses = (-(1 - eps) * F.logsigmoid(beta * delta) + eps * F.logsigmoid(-beta * delta)) / (1 - 2 * eps)
    else:
        raise ValueError(f"unknown DPO loss type {loss_type!r}; expected sigmoid, ipo, hinge or robust")
    return LossOutput(losses=losses, chosen_rewards=(beta * chosen_ratio).detach(),
                      rejected_rewards=(beta * rejected_ratio).detach())


def orpo_losses(chosen_mean: Tensor, rejected_mean: Tensor, chosen_nll: Tensor, *, lam: float) -> LossOutput:
    """ORPO per pair: ``nll − λ log σ(log-odds ratio)``; inputs are mean log-probs ``p̄`` and the
    chosen side's NLL ``[B]``. Rewards (as TRL logs them): ``λ p̄``. ``extra``: ``log_odds_ratio``
    (``log σ(·)`` per pair), ``log_odds_chosen`` (the log-odds ratio itself) and ``nll_loss``."""
    pc, pr = chosen_mean.float(), rejected_mean.float()
    log_odds = (pc - pr) - (log1mexp(pc) - log1mexp(pr))
    ratio = F.logsigmoid(log_odds)
    losses = chosen_nll.float() - lam * ratio
    return LossOutput(losses=losses, chosen_rewards=(lam * pc).detach(), rejected_rewards=(lam * pr).detach(),
                      extra={"log_odds_ratio": ratio.detach(), "log_odds_chosen": log_odds.detach(),
                             "nll_loss": chosen_nll.detach().float()})


def simpo_losses(chosen_mean: Tensor, rejected_mean: Tensor, *, beta: float, gamma: float,
                 label_smoothing: float = 0.0) -> LossOutput:
    """SimPO per pair from mean log-probs: ``−log σ(β(p̄_c − p̄_r) − γ)`` (cDPO-style smoothing ε).
    Rewards: ``β p̄``."""
    pc, pr = chosen_mean.float(), rejected_mean.float()
    z = beta * (pc - pr) - gamma
    losses = -F.logsigmoid(z)
    if label_smoothing > 0:
        losses = (1 - label_smoothing) * losses - label_smoothing * F.logsigmoid(-z)
    return LossOutput(losses=losses, chosen_rewards=(beta * pc).detach(), rejected_rewards=(beta * pr).detach())


def kto_losses(policy_logps: Tensor, ref_logps: Tensor, desirable: Tensor, kl: Tensor, *, beta: float,
               desirable_weight: float = 1.0, undesirable_weight: float = 1.0) -> LossOutput:
    """KTO per example (see the module docstring). ``kl`` is the detached reference point z₀ ≥ 0.

    ``chosen_rewards``/``rejected_rewards`` hold ``β r`` of the desirable / undesirable examples.
    """
    ratio = policy_logps.float() - ref_logps.float()
    z0 = kl.detach().float()
    desirable = desirable.bool()
    chosen_losses = 1 - torch.sigmoid(beta * (ratio - z0))
    rejected_losses = 1 - torch.sigmoid(beta * (z0 - ratio))
    losses = torch.where(desirable, desirable_weight * chosen_losses, undesirable_weight * rejected_losses)
    rewards = (beta * ratio).detach()
    return LossOutput(losses=losses, chosen_rewards=rewards[desirable], rejected_rewards=rewards[~desirable])
