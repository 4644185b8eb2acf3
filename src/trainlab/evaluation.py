"""Evaluation shared by recipes and labs: validation loss and oracle-judged task accuracy.

Oracle accuracy is what makes "did training help" a measured number: a held-out task prompt is
completed greedily and the task's oracle scores the completion exactly (see `trainlab.data.tasks`).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from trainlab.data.datasets import collate_padded
from trainlab.data.tasks import TaskRecord, score
from trainlab.model.text import complete_prompts
from trainlab.train.objectives import CausalLMObjective


@torch.no_grad()
def validation_loss(model: nn.Module, dataset: Sequence[dict[str, torch.Tensor]], *, batch_size: int,
                    max_batches: int | None = None, pad_id: int = 0) -> float:
    """Mean next-token loss (nats per supervised token) over the first windows of ``dataset``.

    Always the same windows, so values are comparable across steps and runs.
    """
    objective = CausalLMObjective(token_accuracy=False)
    device = next(model.parameters()).device
    n = len(dataset) if max_batches is None else min(len(dataset), max_batches * batch_size)
    total = torch.zeros((), dtype=torch.float64)
    count = 0.0
    was_training = model.training
    model.eval()
    try:
        for start in range(0, n, batch_size):
            batch = collate_padded([dataset[i] for i in range(start, min(n, start + batch_size))], pad_id)
            batch = {k: v.to(device) for k, v in batch.items()}
            out = objective(model, batch)
            total += out.loss_sum.double().cpu()
            count += float(out.count)
    finally:
        model.train(was_training)
    return float(total / max(count, 1.0))


def generate_completions(model: Any, tokenizer: Any, prompts: Sequence[str], *, max_new_tokens: int,
                         batch_size: int = 64, temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0,
                         seed: int = 0) -> list[str]:
    """Complete ``prompts`` (batched, left-padded, tokenized as the model's tokenizer does); return the new text.

    Decoding stops at the model's eos ids; special tokens are dropped from the text. See
    :func:`trainlab.model.text.complete_prompts`.
    """
    return complete_prompts(model, tokenizer, prompts, max_new_tokens=max_new_tokens, temperature=temperature,
                            top_k=top_k, top_p=top_p, batch_size=batch_size, seed=seed)


@dataclass
class TaskAccuracy:
    """Oracle accuracy overall and per task, with a few (prompt, completion, correct) samples."""

    overall: float
    per_task: dict[str, float]
    n: int
    per_task_n: dict[str, int]
    samples: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"overall": self.overall, "per_task": self.per_task, "n": self.n,
                "per_task_n": self.per_task_n, "samples": self.samples}


def task_accuracy(model: Any, tokenizer: Any, records: Sequence[TaskRecord], *, batch_size: int = 64,
                  max_new_tokens: int | None = None, n_samples: int = 3) -> TaskAccuracy:
    """Greedy completion of every record's prompt, scored by the task's oracle."""
    if not records:
        raise ValueError("no task records to evaluate")
    if max_new_tokens is None:
        # Room for the longest correct answer plus the newline/eos that ends it.
        longest = max(len(tokenizer.encode(r.answer, add_special_tokens=False)) for r in records)
        max_new_tokens = longest + 3
    completions = generate_completions(model, tokenizer, [r.prompt for r in records],
                                       max_new_tokens=max_new_tokens, batch_size=batch_size)
    return score_completions(records, completions, n_samples=n_samples)


def score_completions(records: Sequence[TaskRecord], completions: Sequence[str], *,
                      n_samples: int = 3) -> TaskAccuracy:
    """The oracle's verdict on completions already decoded (one per record), overall and per task."""
    right: dict[str, int] = defaultdict(int)
    seen: dict[str, int] = defaultdict(int)
    samples: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for record, completion in zip(records, completions, strict=True):
        ok = score(record, completion)
        seen[record.task] += 1
        right[record.task] += int(ok)
        if len(samples[record.task]) < n_samples:
            samples[record.task].append({"task": record.task, "prompt": record.prompt,
                                         "completion": completion, "expected": record.answer, "correct": ok})
    per_task = {t: right[t] / seen[t] for t in sorted(seen)}
    return TaskAccuracy(overall=sum(right.values()) / len(records), per_task=per_task, n=len(records),
                        per_task_n=dict(sorted(seen.items())),
                        samples=[s for t in sorted(samples) for s in samples[t]])
