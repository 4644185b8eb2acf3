"""The data of an alignment run: records -> tokenized training set, evaluation set, counts.

`build_alignment_data(method, cfg, tokenizer)` reads what the method's `AlignMethod.data` kind
needs (`trainlab.recipes.methods`) from the embedded task data or the user's records
(`trainlab.align.records`, tokenized by `trainlab.align.datasets`), sets the evaluation data
apart (``align_data.eval_source``, or a seeded
hold-out of the user's pairs) and records every count: records read and skipped, examples
truncated and dropped by the length policy, pairs held out. `describe_data` turns those counts
into the console lines the commands print (``--json`` has them under ``data``).
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from trainlab.align.config import AlignRunConfig
from trainlab.align.datasets import LengthPolicy, PreferenceDataset, SFTDataset, UnpairedDataset
from trainlab.align.records import (
    CompletionRecord,
    LoadReport,
    PreferenceRecord,
    TextRecord,
    embedded_alignment_data,
    load_records,
    unpair,
    use_chat_template,
)
from trainlab.data.tasks import TaskRecord
from trainlab.errors import UserError
from trainlab.recipes.methods import get_method

log = logging.getLogger(__name__)


@dataclass
class AlignmentData:
    """The tokenized training set, evaluation data and task prompts, and what loading found."""

    method: str
    tokenizer: Any
    train: PreferenceDataset | SFTDataset | UnpairedDataset
    eval_pairs: PreferenceDataset | None
    eval_records: list[TaskRecord]
    info: dict[str, Any] = field(default_factory=dict)
    eval_examples: SFTDataset | None = None  # SFT with align_data.eval_source: eval loss

    @property
    def pad_id(self) -> int:
        pad = self.tokenizer.pad_token_id
        return int(pad if pad is not None else self.tokenizer.eos_token_id)


def _load(src: Any, kind: str, cfg: AlignRunConfig, tokenizer: Any, what: str, info: dict[str, Any]) -> list[Any]:
    dc = cfg.align_data
    report: LoadReport = load_records(src, kind, tokenizer=tokenizer, strict=dc.strict, split=dc.split)  # type: ignore[arg-type]
    info[what] = report.summary()
    if report.skipped:  # said once, on the console by `describe_data` (and in the summary's data info)
        log.debug("skipped %d malformed record(s) of %d in %s; first: %s", report.skipped, report.n_read,
                  report.source, report.issues[0])
    return list(report.records)


def build_alignment_data(method: str, cfg: AlignRunConfig, tokenizer: Any, *, source: Any = None,
                         max_positions: int | None = None) -> AlignmentData:
    """Records for ``method`` from ``source`` (default ``cfg.align_data.source``), tokenized.

    Embedded: SFT gets the task data with ``sft_wrong_share`` wrong answers, DPO/ORPO/SimPO get
    (correct, plausible wrong) pairs, KTO the same pairs unpaired; evaluation pairs and task
    prompts come from the eval side of the task split. User data: evaluation pairs from
    ``align_data.eval_source`` (SFT: prompt/completion examples, judged by their loss), else
    ``n_eval_pairs`` preference records (seeded choice, at most a tenth) held out of training.
    ``max_positions``: the model's longest sequence, a cap on ``align.max_length``.
    """
    spec = get_method(method)
    dc, a = cfg.align_data, cfg.align
    policy = LengthPolicy.from_config(a, max_positions)
    use_chat_template(tokenizer, dc.chat_template)  # saved with the model
    src = dc.source if source is None else source
    eval_pairs_records: list[PreferenceRecord] = []
    eval_examples_records: list[CompletionRecord | TextRecord] = []
    eval_records: list[TaskRecord] = []
    info: dict[str, Any] = {"source": str(src) if isinstance(src, (str, Path)) else type(src).__name__}
    held_out = 0
    if isinstance(src, str) and src == "embedded":
        emb = embedded_alignment_data(dc)
        records: list[Any] = (emb.sft if spec.data == "sft" else unpair(emb.pairs) if spec.data == "unpaired"
                              else emb.pairs)
        eval_pairs_records, eval_records = emb.eval_pairs, emb.eval_records
        info.update(n_train_problems=dc.n_train, sft_wrong_share=dc.sft_wrong_share, n_wrong_sft=emb.n_wrong_sft,
                    difficulty=dc.difficulty, tasks=dc.tasks or "all")
    else:
        records = _load(src, spec.data, cfg, tokenizer, "load", info)
        if spec.data == "preference" and dc.n_eval_pairs and dc.eval_source is None:
            held_out = min(dc.n_eval_pairs, len(records) // 10)
            if held_out:
                held = set(random.Random(dc.seed).sample(range(len(records)), held_out))
                eval_pairs_records = [r for i, r in enumerate(records) if i in held]
                records = [r for i, r in enumerate(records) if i not in held]
    if dc.eval_source is not None:
        if spec.data == "sft":
            eval_examples_records = _load(dc.eval_source, "sft", cfg, tokenizer, "eval_load", info)
        else:
            eval_pairs_records = _load(dc.eval_source, "preference", cfg, tokenizer, "eval_load", info)
    if spec.data == "preference":
        train: PreferenceDataset | SFTDataset | UnpairedDataset = PreferenceDataset(tokenizer, records, policy)
    elif spec.data == "sft":
        train = SFTDataset(tokenizer, records, policy, completion_only_loss=dc.completion_only_loss,
                           assistant_only_loss=dc.assistant_only_loss)
    else:
        train = UnpairedDataset(tokenizer, records, policy, kl_block=cfg.train.batch_size)
    if len(train) == 0:
        raise UserError(f"no training examples left after truncation ({train.dropped} dropped): raise "
                        "align.max_length / align.max_completion_length")
    eval_pairs = PreferenceDataset(tokenizer, eval_pairs_records, policy) if eval_pairs_records else None
    eval_examples = (SFTDataset(tokenizer, eval_examples_records, policy, completion_only_loss=dc.completion_only_loss,
                                assistant_only_loss=dc.assistant_only_loss) if eval_examples_records else None)
    info["train"] = train.stats()
    if a.max_length is not None and max_positions is not None and a.max_length > max_positions:
        info["train"]["max_length_capped_from"] = a.max_length  # a fallback, said (describe_data)
    info["eval"] = {"source": (str(dc.eval_source) if dc.eval_source is not None else
                               "embedded" if eval_records else "held out" if held_out else "none"),
                    "held_out": held_out,
                    **({"pairs": eval_pairs.stats()} if eval_pairs is not None else {}),
                    **({"examples": eval_examples.stats()} if eval_examples is not None else {})}
    if eval_pairs is not None and len(eval_pairs) == 0:
        eval_pairs = None
    if eval_examples is not None and len(eval_examples) == 0:
        eval_examples = None
    if dc.eval_source is not None and eval_pairs is None and eval_examples is None:
        raise UserError(f"no evaluation examples left after truncation in {dc.eval_source}: raise align.max_length")
    info["eval_pairs"] = len(eval_pairs) if eval_pairs is not None else 0
    info["eval_prompts"] = len(eval_records)
    return AlignmentData(method=method, tokenizer=tokenizer, train=train, eval_pairs=eval_pairs,
                         eval_records=eval_records, info=info, eval_examples=eval_examples)


def describe_data(info: dict[str, Any]) -> list[str]:
    """Console lines for what loading did: records skipped, truncated and dropped, the evaluation set."""
    lines: list[str] = []
    for key, what in (("load", "training"), ("eval_load", "evaluation")):
        load = info.get(key) or {}
        if load.get("skipped"):
            first = f"; first: {load['issues'][0]}" if load.get("issues") else ""
            lines.append(f"{what} data: skipped {load['skipped']} malformed record(s) of {load['read']}{first} "
                         "(--strict to stop at the first)")
    train = info.get("train") or {}
    n = train.get("pairs", train.get("examples", 0))
    limit = train.get("max_length")
    if train.get("max_length_capped_from") is not None:
        lines.append(f"align.max_length={train['max_length_capped_from']} is longer than the model's {limit} "
                     f"positions: capped at {limit}")
    lines.append(f"training data: {n} {'pairs' if 'pairs' in train else 'examples'}; {train.get('truncated', 0)} "
                 f"truncated (align.max_length={limit}, align.max_prompt_length, align.max_completion_length), "
                 f"{train.get('dropped', 0)} dropped (nothing left to train on)")
    ev = info.get("eval") or {}
    stats = ev.get("pairs") or ev.get("examples")
    if ev.get("source") == "held out":
        lines.append(f"evaluation: {ev['held_out']} pairs held out of the training data (align_data.n_eval_pairs; "
                     "--eval-data FILE to evaluate on a file instead)")
    elif ev.get("source") not in (None, "none", "embedded") and stats is not None:
        n_eval = stats.get("pairs", stats.get("examples", 0))
        lines.append(f"evaluation: {n_eval} from {ev['source']}, {stats.get('truncated', 0)} truncated, "
                     f"{stats.get('dropped', 0)} dropped")
    return lines



def check_vocab(model: nn.Module, data: AlignmentData) -> None:
    """Every token id of the training data must index the model's output embedding."""
    vocab = int(model.output_embedding().shape[0])  # type: ignore[operator]
    top = data.train.max_token_id()
    if top >= vocab:
        raise UserError(f"the tokenizer produces id {top}, but the model's vocabulary has {vocab} entries: "
                        "use the tokenizer saved with the model")
