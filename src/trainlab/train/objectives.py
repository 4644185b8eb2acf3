"""Training objectives: what a micro-batch contributes to the loss.

An objective returns a *sum* of per-unit losses and the number of units (``count``) instead of
a mean. The loop adds the counts of all micro-batches of an optimizer step first, then
backpropagates ``loss_sum / total_count`` for each micro-batch, so the accumulated gradient is

    ∇ (Σ_i ℓ_i) / N,   N = number of supervised tokens in the whole step,

which is exactly the gradient of one big batch. Averaging per-micro-batch means instead (the
common ``loss / grad_accum``) weights a token in a short micro-batch more than one in a long
micro-batch — wrong whenever padding or prompt masking makes the counts differ.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from trainlab.train.token_logprobs import resolve_chunk, weighted_logprob_sum

Batch = dict[str, Tensor]
IGNORE_INDEX = -100


@dataclass
class ObjectiveOutput:
    """One micro-batch's contribution.

    ``loss_sum``: scalar tensor (with grad) — the sum of per-unit losses, fp32.
    ``count``: the number of units in ``loss_sum`` (supervised tokens, pairs, ...).
    ``metrics``: per-unit means of extra quantities (e.g. token accuracy); the loop averages them
    over micro-batches weighted by ``count``.
    """

    loss_sum: Tensor
    count: int | float
    metrics: dict[str, float] = field(default_factory=dict)


@runtime_checkable
class Objective(Protocol):
    """Anything the `Trainer` can optimise."""

    def count(self, batch: Batch) -> int | float:
        """The ``count`` that ``self(model, batch)`` will report, computed without a forward pass."""
        ...

    def __call__(self, model: nn.Module, batch: Batch) -> ObjectiveOutput: ...


def _model_kwargs(batch: Batch) -> dict[str, Tensor]:
    # Only what the batch has: position_ids exist for packed documents, not for padded ones.
    kwargs: dict[str, Tensor] = {}
    for key in ("attention_mask", "position_ids"):
        if key in batch:
            kwargs[key] = batch[key]
    return kwargs


def supervised_targets(labels: Tensor) -> tuple[Tensor, Tensor]:
    """(mask, targets) for next-token prediction: position t predicts ``labels[:, t+1]``.

    ``mask``: bool ``[B, T-1]``, True where the target is supervised (not ``-100``).
    ``targets``: the supervised target ids, ``[N]`` with ``N = mask.sum()``.
    """
    shifted = labels[:, 1:]
    mask = shifted != IGNORE_INDEX
    return mask, shifted[mask]


class CausalLMObjective:
    """Next-token cross-entropy with ``-100`` masking (pretraining and SFT alike).

        loss_sum = Σ_{(b,t): y_{b,t+1} ≠ −100}  −log softmax(h_{b,t} Wᵀ)[y_{b,t+1}],
        count    = |{(b,t): y_{b,t+1} ≠ −100}|

    with ``h = model.hidden_states(...)`` and ``W = model.output_embedding()``. SFT is the same
    objective: its data sets the prompt's labels to ``-100``.

    Three implementation choices, all loss-preserving:

    * Logits are computed only at supervised positions (``h[mask] @ Wᵀ``): padding and masked
      prompt tokens would cost a ``V``-wide matmul and softmax each and contribute nothing.
    * The logit matmul and the softmax run in fp32 even under bf16/fp16 autocast. With a
      vocabulary of thousands, low-precision logits lose the small differences log-softmax
      depends on (bf16 keeps ~3 significant digits), biasing the loss and its gradient.
    * ``chunk_size`` (``-1``: automatic, as SFT runs it): where the ``[N, V]`` logits would pass
      32 MiB, they are formed in chunks and each chunk's gradient right away
      (`trainlab.train.token_logprobs.weighted_logprob_sum`: no logits kept, none recomputed);
      0 (the default): one pass.
    """

    def __init__(self, *, token_accuracy: bool = True, chunk_size: int = 0) -> None:
        self.token_accuracy = token_accuracy
        self.chunk_size = chunk_size

    def count(self, batch: Batch) -> int:
        return int((batch["labels"][:, 1:] != IGNORE_INDEX).sum().item())

    def __call__(self, model: nn.Module, batch: Batch) -> ObjectiveOutput:
        input_ids = batch["input_ids"]
        hidden = model.hidden_states(input_ids, **_model_kwargs(batch))  # [B, T, D]
        mask, targets = supervised_targets(batch["labels"])
        h = hidden[:, :-1][mask]  # [N, D]
        weight = model.output_embedding()  # [V, D]
        n = int(targets.numel())
        if resolve_chunk(self.chunk_size, n, weight.shape[0]) > 0:
            # every token's weight in the loss is known (-1): gradients formed chunk by chunk in the forward
            total, _, hit = weighted_logprob_sum(h, weight, targets, h.new_ones(n), self.chunk_size)
            chunked = {"token_acc": float(hit.float().mean().item())} if self.token_accuracy and n else {}
            return ObjectiveOutput(loss_sum=-total, count=n, metrics=chunked)
        # fp32 at least (fp64 stays fp64: a float64 model is the exactness reference of the tests)
        dtype = torch.promote_types(h.dtype, torch.float32)
        with torch.autocast(device_type=h.device.type, enabled=False):
            logits = h.to(dtype) @ weight.to(dtype).T  # [N, V]
            loss_sum = F.cross_entropy(logits, targets, reduction="sum")
        metrics: dict[str, float] = {}
        if self.token_accuracy and n:
            with torch.no_grad():
                metrics["token_acc"] = float((logits.argmax(-1) == targets).float().mean().item())
        return ObjectiveOutput(loss_sum=loss_sum, count=n, metrics=metrics)
