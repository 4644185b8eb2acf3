"""Judging aligned models: oracle accuracy, win rate, implicit-reward accuracy, KL to the reference.

* **Oracle accuracy** (`oracle_accuracy`): greedy completions of held-out task prompts, each
  scored exactly by its task's oracle (`trainlab.data.tasks`). "Did alignment help" is then a
  measured fraction, not a judge model's opinion.
* **Win rate** (`win_rate`): model A beats model B on a prompt when the oracle accepts A's answer
  and rejects B's; a tie when both are right or both wrong. Reported as
  ``(wins + ties/2) / n`` (the convention of AlpacaEval-style pairwise judging) with the counts.
* **Implicit-reward accuracy** (`reward_accuracy`): on held-out preference pairs, the share whose
  implicit reward ranks chosen above rejected: ``β log(π/π_ref)`` for DPO/KTO, the policy's mean
  log-prob for the reference-free ORPO and SimPO.
* **KL(π ‖ π_ref) on completions** (`completion_kl`): the exact KL divergence between the two
  models' next-token distributions, summed over the completion positions of each sequence,
  ``Σ_t Σ_v π(v|x,y<t) (log π(v|x,y<t) − log π_ref(v|x,y<t))``, averaged over sequences. It
  measures how far alignment moved the policy on the data, token by token, without sampling noise.
* A table of sample generations side by side (`generation_table`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor, nn

from trainlab.align.datasets import PreferenceDataset, UnpairedDataset, collate_preference, collate_unpaired
from trainlab.align.logprobs import resolve_chunk, sequence_logps
from trainlab.align.prefix_sharing import pair_sequence_logps
from trainlab.data.tasks import TaskRecord, score
from trainlab.evaluation import TaskAccuracy, generate_completions, task_accuracy
from trainlab.train.objectives import supervised_targets


def oracle_accuracy(model: Any, tokenizer: Any, records: Sequence[TaskRecord], *, batch_size: int = 64,
                    n_samples: int = 3) -> TaskAccuracy:
    """Greedy completion of each held-out prompt, scored by its task's oracle (overall and per task)."""
    return task_accuracy(model, tokenizer, records, batch_size=batch_size, n_samples=n_samples)


def _max_new_tokens(tokenizer: Any, records: Sequence[TaskRecord]) -> int:
    return max(len(tokenizer.encode(r.answer, add_special_tokens=False)) for r in records) + 3


def task_completions(model: Any, tokenizer: Any, records: Sequence[TaskRecord], *, batch_size: int = 64
                     ) -> list[str]:
    """Greedy completions of the records' prompts (the same decoding `oracle_accuracy` uses)."""
    return generate_completions(model, tokenizer, [r.prompt for r in records],
                                max_new_tokens=_max_new_tokens(tokenizer, records), batch_size=batch_size)


@dataclass
class WinRate:
    """A against B, judged by the oracle on the same prompts."""

    wins: int
    losses: int
    ties: int
    n: int

    @property
    def rate(self) -> float:
        return (self.wins + 0.5 * self.ties) / self.n if self.n else float("nan")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"rate": self.rate}


def win_rate_from_completions(records: Sequence[TaskRecord], completions_a: Sequence[str],
                              completions_b: Sequence[str]) -> WinRate:
    wins = losses = ties = 0
    for record, a, b in zip(records, completions_a, completions_b, strict=True):
        ok_a, ok_b = score(record, a), score(record, b)
        if ok_a and not ok_b:
            wins += 1
        elif ok_b and not ok_a:
            losses += 1
        else:
            ties += 1
    return WinRate(wins=wins, losses=losses, ties=ties, n=len(records))


def win_rate(model_a: Any, model_b: Any, tokenizer: Any, records: Sequence[TaskRecord], *,
             batch_size: int = 64) -> WinRate:
    """How often ``model_a``'s greedy answer is right where ``model_b``'s is wrong (see module docstring)."""
    return win_rate_from_completions(records, task_completions(model_a, tokenizer, records, batch_size=batch_size),
                                     task_completions(model_b, tokenizer, records, batch_size=batch_size))


def _device(model: nn.Module) -> torch.device:
    """Where the model's weights are; a `trainlab.peft.ReferenceView` (π_ref = the policy with its adapters off)
    holds none of its own: its policy's."""
    return next(getattr(model, "policy", model).parameters()).device


@torch.no_grad()
def pair_logps(model: nn.Module, dataset: PreferenceDataset, *, batch_size: int = 64, chunk_size: int = -1,
               pad_id: int = 0, share_prefix: bool = True) -> tuple[Tensor, Tensor]:
    """(sums ``[n, 2]``, token counts ``[n, 2]``) of chosen/rejected completion log-probs over a dataset
    (``share_prefix``: each pair's prompt computed once, `trainlab.align.prefix_sharing`)."""
    device = _device(model)
    was_training = model.training
    model.eval()
    sums, counts = [], []
    try:
        for start in range(0, len(dataset), batch_size):
            batch = collate_preference([dataset[i] for i in range(start, min(len(dataset), start + batch_size))],
                                       pad_id)
            out = pair_sequence_logps(model, batch["input_ids"].to(device), batch["labels"].to(device),
                                      batch["attention_mask"].to(device), chunk_size=chunk_size,
                                      share_prefix=share_prefix)
            b = out.sum.shape[0] // 2
            sums.append(torch.stack([out.sum[:b], out.sum[b:]], 1).cpu())
            counts.append(torch.stack([out.n_tokens[:b], out.n_tokens[b:]], 1).cpu())
    finally:
        model.train(was_training)
    return torch.cat(sums), torch.cat(counts)


def reward_accuracy(model: nn.Module, dataset: PreferenceDataset, *, beta: float = 0.1,
                    reference_logps: Tensor | None = None, batch_size: int = 64, pad_id: int = 0
                    ) -> dict[str, float]:
    """Implicit-reward accuracy and mean margin on held-out pairs.

    With ``reference_logps [n, 2]``: rewards ``β (log π − log π_ref)`` (DPO, KTO). Without:
    the reference-free reward ``β · mean log π`` (ORPO, SimPO: β = λ or the SimPO β).
    """
    sums, counts = pair_logps(model, dataset, batch_size=batch_size, pad_id=pad_id)
    if reference_logps is not None:
        rewards = beta * (sums - reference_logps.to(sums.dtype))
    else:
        rewards = beta * sums / counts.clamp(min=1.0)
    margin = rewards[:, 0] - rewards[:, 1]
    return {"rewards/accuracies": float((margin > 0).float().mean()), "rewards/margins": float(margin.mean()),
            "logps/chosen": float(sums[:, 0].mean()), "logps/rejected": float(sums[:, 1].mean())}


def unpaired_logps(model: nn.Module, dataset: UnpairedDataset, *, batch_size: int = 64, pad_id: int = 0
                   ) -> tuple[Tensor, Tensor, Tensor]:
    """(sums ``[n]``, token counts ``[n]``, labels ``[n]`` bool) of the completions of unpaired (KTO) examples."""
    device = _device(model)
    was_training = model.training
    model.eval()
    sums, counts, labels = [], [], []
    try:
        with torch.no_grad():
            for start in range(0, len(dataset), batch_size):
                batch = collate_unpaired([dataset[i] for i in range(start, min(len(dataset), start + batch_size))],
                                         pad_id)
                out = sequence_logps(model, batch["input_ids"].to(device), batch["labels"].to(device),
                                     batch["attention_mask"].to(device))
                sums.append(out.sum.cpu())
                counts.append(out.n_tokens.cpu())
                labels.append(batch["label"])
    finally:
        model.train(was_training)
    return torch.cat(sums), torch.cat(counts), torch.cat(labels)


def unpaired_rewards(model: nn.Module, dataset: UnpairedDataset, *, beta: float = 0.1,
                     reference_logps: Tensor | None = None, batch_size: int = 64, pad_id: int = 0
                     ) -> dict[str, float]:
    """Implicit rewards on labelled unpaired examples (KTO's data): the mean reward of desirable and of
    undesirable completions (TRL's KTO logs ``rewards/chosen`` and ``rewards/rejected``), their margin, and
    ``rewards/ordering``: the share of (desirable, undesirable) pairs whose desirable reward is higher (ties
    count half; the area under the ROC curve of the reward as a classifier). Rewards as `reward_accuracy`."""
    sums, counts, labels = unpaired_logps(model, dataset, batch_size=batch_size, pad_id=pad_id)
    if reference_logps is not None:
        rewards = beta * (sums - reference_logps.to(sums.dtype))
    else:
        rewards = beta * sums / counts.clamp(min=1.0)
    good, bad = rewards[labels], rewards[~labels]
    out: dict[str, float] = {"n_desirable": float(len(good)), "n_undesirable": float(len(bad))}
    if len(good):
        out["rewards/chosen"] = float(good.mean())
    if len(bad):
        out["rewards/rejected"] = float(bad.mean())
    if len(good) and len(bad):
        diff = good[:, None] - bad[None, :]
        out["rewards/margins"] = out["rewards/chosen"] - out["rewards/rejected"]
        out["rewards/ordering"] = float((diff > 0).float().mean() + 0.5 * (diff == 0).float().mean())
    return out


@torch.no_grad()
def completion_kl(policy: nn.Module, reference: nn.Module, dataset: PreferenceDataset, *, side: str = "both",
                  batch_size: int = 64, chunk_size: int = -1, pad_id: int = 0) -> dict[str, float]:
    """Exact KL(π ‖ π_ref) of next-token distributions along the dataset's completions.

    Returns the mean over sequences of the per-sequence sum (``kl``) and the mean per token
    (``kl_per_token``). ``side``: ``chosen``, ``rejected`` or ``both``. The ``[rows, V]`` logits are
    formed ``chunk_size`` rows at a time (-1: automatic, see `trainlab.align.logprobs.resolve_chunk`).
    """
    device = _device(policy)
    was = (policy.training, reference.training)
    policy.eval()
    reference.eval()
    total_kl = torch.zeros((), dtype=torch.float64)
    total_tokens = 0.0
    n_seqs = 0
    w_p = policy.output_embedding().float()
    w_r = reference.output_embedding().float()
    try:
        for start in range(0, len(dataset), batch_size):
            batch = collate_preference([dataset[i] for i in range(start, min(len(dataset), start + batch_size))],
                                       pad_id)
            b = batch["input_ids"].shape[0] // 2
            rows = slice(0, b) if side == "chosen" else slice(b, 2 * b) if side == "rejected" else slice(0, 2 * b)
            ids = batch["input_ids"][rows].to(device)
            mask = batch["attention_mask"][rows].to(device)
            pos, _ = supervised_targets(batch["labels"][rows].to(device))
            h_p = policy.hidden_states(ids, attention_mask=mask)[:, :-1][pos].float()
            h_r = reference.hidden_states(ids, attention_mask=mask)[:, :-1][pos].float()
            rows = resolve_chunk(chunk_size, h_p.shape[0], w_p.shape[0]) or max(h_p.shape[0], 1)
            for s in range(0, h_p.shape[0], rows):
                lp = torch.log_softmax(h_p[s:s + rows] @ w_p.T, dim=-1)
                lr = torch.log_softmax(h_r[s:s + rows] @ w_r.T, dim=-1)
                total_kl += (lp.exp() * (lp - lr)).sum().double().cpu()
            total_tokens += float(pos.sum())
            n_seqs += int(ids.shape[0])
    finally:
        policy.train(was[0])
        reference.train(was[1])
    return {"kl": float(total_kl / max(n_seqs, 1)), "kl_per_token": float(total_kl / max(total_tokens, 1.0))}


def generation_table(completions: dict[str, Sequence[str]], records: Sequence[TaskRecord], *, n: int = 12
                     ) -> tuple[list[str], list[list[Any]]]:
    """(columns, rows) of sample generations: prompt, expected answer, then each model's answer with ✓/✗.

    ``completions`` maps a model name to its completions of ``records`` (in order). Rows are spread
    over the tasks (round robin) so every task shows up.
    """
    by_task: dict[str, list[int]] = {}
    for i, r in enumerate(records):
        by_task.setdefault(r.task, []).append(i)
    order: list[int] = []
    while len(order) < min(n, len(records)):
        progressed = False
        for idx in by_task.values():
            if idx and len(order) < n:
                order.append(idx.pop(0))
                progressed = True
        if not progressed:
            break
    columns = ["task", "prompt", "expected", *completions]
    rows = []
    for i in order:
        r = records[i]
        cells = [f"{c[i].strip()!r} {'✓' if score(r, c[i]) else '✗'}" for c in completions.values()]
        rows.append([r.task, r.prompt, r.answer, *cells])
    return columns, rows

