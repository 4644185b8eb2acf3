"""Alignment objectives for the one training loop (`trainlab.train.Trainer`).

Each implements the `trainlab.train.objectives.Objective` protocol: ``count(batch)`` is the
number of pairs (KTO: examples) without a forward pass, and ``__call__`` returns the *sum* of the
per-pair losses of `trainlab.align.losses` with that count. The loop divides by the step's total
count, so K micro-batches give exactly the gradient of one batch of the same pairs.

Metrics carry TRL's names (``rewards/chosen``, ``rewards/rejected``, ``rewards/accuracies``,
``rewards/margins``, ``logps/chosen``, ``logps/rejected``, ``logits/chosen``, ``logits/rejected``,
and ``nll_loss``/``log_odds_ratio`` for ORPO, ``kl`` for KTO) so curves read the same as a TRL
run's. They are per-pair means within a micro-batch (``logits/*``: per completion token); the loop
averages them over micro-batches weighted by the count.

SFT needs no objective of its own: it is `trainlab.train.CausalLMObjective` on examples whose
prompt labels are -100 (`trainlab.align.datasets.SFTDataset`).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from trainlab.align.logprobs import SequenceLogps, sequence_logps
from trainlab.align.losses import LossOutput, dpo_losses, kto_losses, orpo_losses, simpo_losses
from trainlab.align.prefix_sharing import pair_sequence_logps
from trainlab.align.reference import FrozenReference
from trainlab.train.objectives import Batch, ObjectiveOutput


def _metrics(values: dict[str, Tensor]) -> dict[str, float]:
    """Detached scalar tensors -> floats with one host sync (``.tolist()`` of one stacked tensor)."""
    if not values:
        return {}
    keys = list(values)
    stacked = torch.stack([values[k].detach().float().reshape(()) for k in keys]).tolist()
    return dict(zip(keys, stacked, strict=True))


def pair_metrics(loss: LossOutput, logps: SequenceLogps, b: int) -> dict[str, Tensor]:
    """TRL's pair metrics for rows ``[0, b)`` chosen and ``[b, 2b)`` rejected."""
    ntok = logps.n_tokens
    return {
        "rewards/chosen": loss.chosen_rewards.mean(),
        "rewards/rejected": loss.rejected_rewards.mean(),
        "rewards/accuracies": (loss.chosen_rewards > loss.rejected_rewards).float().mean(),
        "rewards/margins": (loss.chosen_rewards - loss.rejected_rewards).mean(),
        "logps/chosen": logps.sum[:b].detach().mean(),
        "logps/rejected": logps.sum[b:].detach().mean(),
        "logits/chosen": logps.logit_sum[:b].sum() / ntok[:b].sum().clamp(min=1.0),
        "logits/rejected": logps.logit_sum[b:].sum() / ntok[b:].sum().clamp(min=1.0),
    }


def _reference(batch: Batch, reference: FrozenReference | None, key: str = "ref_logps", prefix: str = "", *,
               share_prefix: bool = False) -> Tensor:
    if key in batch:
        return batch[key]
    if reference is None:
        raise RuntimeError(f"no reference log-probs: the batch has no {key!r} (cached) and no frozen reference "
                           "model was given")
    return reference.logps(batch, prefix, share_prefix=share_prefix)


class _PairObjective:
    """Shared by the pair losses: the batch holds B chosen rows, then B rejected rows (one forward)."""

    chunk_size: int = 0
    share_prefix: bool = True  # `trainlab.align.prefix_sharing`: each pair's prompt computed once

    def count(self, batch: Batch) -> int:
        return int(batch["input_ids"].shape[0]) // 2

    def _logps(self, model: nn.Module, batch: Batch, labels: Tensor | None = None,
               fused_weights: Tensor | None = None) -> Any:
        return pair_sequence_logps(model, batch["input_ids"], batch["labels"] if labels is None else labels,
                                   batch.get("attention_mask"), chunk_size=self.chunk_size,
                                   share_prefix=self.share_prefix, fused_weights=fused_weights)


class DPOObjective(_PairObjective):
    """DPO (sigmoid / cDPO), IPO, hinge or robust DPO on preference batches (`collate_preference`).

    The reference log-probs come from ``batch["ref_logps"]`` (cached) or from ``reference``.
    ``rpo_alpha`` > 0 adds ``α · NLL(y_w)`` per pair (RPO: Pang et al., 2024, "Iterative Reasoning
    Preference Optimization", who found it necessary for DPO to improve accuracy on verifiable
    reasoning tasks, because pure DPO can lower the likelihood of the chosen answers too).
    """

    def __init__(self, *, beta: float = 0.1, loss_type: str = "sigmoid", label_smoothing: float = 0.0,
                 rpo_alpha: float = 0.0, chunk_size: int = 0, reference: FrozenReference | None = None,
                 share_prefix: bool = True) -> None:
        self.beta = beta
        self.share_prefix = share_prefix
        self.loss_type = loss_type
        self.label_smoothing = label_smoothing
        self.rpo_alpha = rpo_alpha
        self.chunk_size = chunk_size
        self.reference = reference

    def __call__(self, model: nn.Module, batch: Batch) -> ObjectiveOutput:
        b = self.count(batch)
        logps = self._logps(model, batch)
        ref = _reference(batch, self.reference, share_prefix=self.share_prefix).to(logps.sum.device)
        loss = dpo_losses(logps.sum[:b], logps.sum[b:], ref[:b], ref[b:], beta=self.beta,
                          loss_type=self.loss_type, label_smoothing=self.label_smoothing,
                          chosen_len=logps.n_tokens[:b], rejected_len=logps.n_tokens[b:])
        values = pair_metrics(loss, logps, b)
        losses = loss.losses
        if self.rpo_alpha > 0:
            # RPO: + α · NLL of the chosen completion (per-token mean of the pair, see ORPOObjective)
            nll = -logps.mean[:b]
            losses = losses + self.rpo_alpha * nll
            values["nll_loss"] = nll.detach().mean()
        return ObjectiveOutput(loss_sum=losses.sum(), count=b, metrics=_metrics(values))


class SimPOObjective(_PairObjective):
    """SimPO: reference-free, length-normalized (`trainlab.align.losses.simpo_losses`)."""

    def __init__(self, *, beta: float = 2.0, gamma: float = 0.5, label_smoothing: float = 0.0,
                 chunk_size: int = 0, share_prefix: bool = True) -> None:
        self.beta = beta
        self.gamma = gamma
        self.share_prefix = share_prefix
        self.label_smoothing = label_smoothing
        self.chunk_size = chunk_size

    def __call__(self, model: nn.Module, batch: Batch) -> ObjectiveOutput:
        b = self.count(batch)
        logps = self._logps(model, batch)
        loss = simpo_losses(logps.mean[:b], logps.mean[b:], beta=self.beta, gamma=self.gamma,
                            label_smoothing=self.label_smoothing)
        return ObjectiveOutput(loss_sum=loss.losses.sum(), count=b, metrics=_metrics(pair_metrics(loss, logps, b)))


class ORPOObjective(_PairObjective):
    """ORPO: the chosen side's NLL plus λ times the odds-ratio loss, no reference model.

    The NLL of a pair is the mean over its chosen tokens (the ORPO paper's per-sequence
    ``L_SFT``), so the objective stays a per-pair sum and accumulates exactly. With
    ``mask_prompt=False`` the prompt tokens are in that NLL too, as in TRL's ORPOTrainer; TRL
    averages over all chosen tokens of the batch instead of per sequence, which is the same
    number when the chosen sequences of a batch have equal token counts. The odds ratio always
    uses completion-only mean log-probs. Both come from one forward pass.
    """

    def __init__(self, *, lam: float = 0.1, mask_prompt: bool = True, chunk_size: int = 0,
                 share_prefix: bool = True) -> None:
        self.lam = lam
        self.share_prefix = share_prefix
        self.mask_prompt = mask_prompt
        self.chunk_size = chunk_size

    def __call__(self, model: nn.Module, batch: Batch) -> ObjectiveOutput:
        b = self.count(batch)
        labels = batch["labels"]
        if self.mask_prompt:
            logps = self._logps(model, batch)
            completion = logps
            nll = -logps.mean[:b]
        else:
            # chosen rows score every real token (prompt too); rejected rows their completion only
            full = labels.clone()
            mask = batch.get("attention_mask")
            real = mask[:b].bool() if mask is not None else torch.ones_like(labels[:b], dtype=torch.bool)
            full[:b] = torch.where(real, batch["input_ids"][:b], torch.full_like(labels[:b], -100))
            # the prompt tokens are only in the NLL, a cross-entropy of known weights 1/n (n: the pair's
            # chosen tokens): scored with their gradient formed in the forward (no recomputed logits)
            scored = full[:, 1:] != -100
            prompt = scored & (labels[:, 1:] == -100)
            n = scored[:b].sum(dim=1).clamp(min=1).repeat(2)
            logps = self._logps(model, batch, full, prompt / n[:, None])
            nll = -logps.mean[:b]
            if logps.fused_sum is not None:  # values exact already; this adds the prompt tokens' gradient
                nll = nll - (logps.fused_sum - logps.fused_sum.detach()) / b
            completion = _restrict(logps, labels)
        loss = orpo_losses(completion.mean[:b], completion.mean[b:], nll, lam=self.lam)
        values = pair_metrics(loss, completion, b)
        # TRL logs logps/* for ORPO as the mean (length-normalized) log-probs it feeds the odds ratio
        values["logps/chosen"] = completion.mean[:b].detach().mean()
        values["logps/rejected"] = completion.mean[b:].detach().mean()
        values["nll_loss"] = loss.extra["nll_loss"].mean()
        values["log_odds_ratio"] = loss.extra["log_odds_ratio"].mean()
        values["log_odds_chosen"] = loss.extra["log_odds_chosen"].mean()
        return ObjectiveOutput(loss_sum=loss.losses.sum(), count=b, metrics=_metrics(values))


def _restrict(logps: SequenceLogps, labels: Tensor) -> SequenceLogps:
    """Completion-only statistics from token log-probs scored on a superset of positions."""
    keep_all = labels[:, 1:] != -100  # [R, T-1]
    keep = keep_all[logps.mask]  # for each scored token (row-major, as scored): a completion token?
    tok = logps.token_logps * keep
    r = keep_all.shape[0]
    total = torch.zeros(r, dtype=torch.float32, device=tok.device).index_add(0, logps.rows, tok)
    n = keep_all.sum(dim=1).float()
    logit_sum = torch.zeros(r, dtype=torch.float32, device=tok.device).index_add(
        0, logps.rows, logps.token_logit_mean * keep)
    return SequenceLogps(sum=total, mean=total / n.clamp(min=1.0), n_tokens=n, token_logps=tok, rows=logps.rows,
                         logit_sum=logit_sum, mask=keep_all, token_logit_mean=logps.token_logit_mean * keep)


class KTOObjective:
    """KTO on unpaired batches (`collate_unpaired`); the count is the number of examples.

    The reference point z₀ = max(0, mean over the micro-batch of log π(y'|x) − log π_ref(y'|x))
    on mismatched pairs (x, y'), detached, as in TRL (which also estimates it per micro-batch; so
    with ``kl=True`` K micro-batches equal one batch only up to this batch statistic, and exactly
    with ``kl=False``, z₀ = 0).
    """

    def __init__(self, *, beta: float = 0.1, desirable_weight: float = 1.0, undesirable_weight: float = 1.0,
                 kl: bool = True, chunk_size: int = 0, reference: FrozenReference | None = None) -> None:
        self.beta = beta
        self.desirable_weight = desirable_weight
        self.undesirable_weight = undesirable_weight
        self.kl = kl
        self.chunk_size = chunk_size
        self.reference = reference

    def count(self, batch: Batch) -> int:
        return int(batch["input_ids"].shape[0])

    def __call__(self, model: nn.Module, batch: Batch) -> ObjectiveOutput:
        logps = sequence_logps(model, batch["input_ids"], batch["labels"], batch.get("attention_mask"),
                               chunk_size=self.chunk_size)
        ref = _reference(batch, self.reference).to(logps.sum.device)
        if self.kl:
            with torch.no_grad():
                kl_logps = sequence_logps(model, batch["kl_input_ids"], batch["kl_labels"],
                                          batch.get("kl_attention_mask"), chunk_size=self.chunk_size).sum
            ref_kl = _reference(batch, self.reference, "ref_kl_logps", "kl_").to(kl_logps.device)
            from trainlab.distributed.env import dp_mean  # distributed: the mean over ranks, as TRL gathers it

            z0 = dp_mean((kl_logps - ref_kl).mean()).clamp(min=0)
        else:
            z0 = torch.zeros((), device=logps.sum.device)
        desirable = batch["label"].bool()
        loss = kto_losses(logps.sum, ref, desirable, z0, beta=self.beta, desirable_weight=self.desirable_weight,
                          undesirable_weight=self.undesirable_weight)
        values: dict[str, Any] = {"kl": z0}
        if bool(desirable.any()):
            values["rewards/chosen"] = loss.chosen_rewards.mean()
            values["logps/chosen"] = logps.sum[desirable].detach().mean()
        if bool((~desirable).any()):
            values["rewards/rejected"] = loss.rejected_rewards.mean()
            values["logps/rejected"] = logps.sum[~desirable].detach().mean()
        if "rewards/chosen" in values and "rewards/rejected" in values:
            values["rewards/margins"] = values["rewards/chosen"] - values["rewards/rejected"]
        return ObjectiveOutput(loss_sum=loss.losses.sum(), count=int(desirable.numel()), metrics=_metrics(values))
