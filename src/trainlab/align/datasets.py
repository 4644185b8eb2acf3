"""Alignment datasets: records tokenized as TRL 1.16 tokenizes them, the length policy, and collates.

Tokenization (what TRL's SFT/DPO/KTO trainers do in ``_prepare_dataset``, so the ids are equal):

* plain records: the tokenizer's own special tokens, no more (``tokenizer(text)``: a Llama-style
  tokenizer adds its BOS, GPT-2- and Qwen-style ones add nothing). eos is appended to a
  completion (or a ``text``) only when it does not already end with it;
* conversational records (rendered by the chat template): no special token is added at all
  (the template wrote them, ``apply_chat_template`` tokenizes with ``add_special_tokens=False``)
  and no eos: the template's end-of-turn (Qwen's ``<|im_end|>\\n``) ends the completion;
* prompt and completion: the prompt and prompt+completion are tokenized, and the completion
  starts where the two id lists diverge (TRL's ``common_prefix_length``; for a pair, the
  earlier of the two sides). Usually that is the end of the prompt; when a BPE merge straddles
  the boundary the prompt loses its last token(s) to the completion (counted: ``boundary_merges``);
* ``messages``: the whole rendered conversation; with ``assistant_only_loss`` (default) the loss
  is on every assistant turn (tokens overlapping the turn's characters, as transformers'
  ``return_assistant_tokens_mask``), else on every token.

Length policy (`LengthPolicy`, TRL's semantics). ``max_length`` caps prompt + completion per
sequence. ``keep_start`` (TRL's default and only supported mode for pairs) keeps the first
``max_length`` tokens: completions are cut from the end (a cut completion loses its eos), and a
record whose prompt alone fills ``max_length`` is dropped (TRL filters it out). ``keep_end``
(SFT only) keeps the last tokens. Optional ``max_prompt_length`` (keep the prompt's last tokens)
and ``max_completion_length`` (keep the completion's first tokens) apply before. Nothing is cut
silently: every dataset counts truncated and dropped records (``stats()``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch.utils.data import Dataset

from trainlab.align.records import CHAT_TEMPLATE_FIX, CompletionRecord, PreferenceRecord, TextRecord, common_prefix
from trainlab.errors import UserError

IGNORE_INDEX = -100
TruncationMode = Literal["keep_start", "keep_end"]
Example = dict[str, torch.Tensor]


# --------------------------------------------------------------------------------------------
# Length policy
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LengthPolicy:
    """How sequences are cut (see the module docstring). ``None`` turns a limit off."""

    max_length: int | None = 1024
    truncation_mode: TruncationMode = "keep_start"
    max_prompt_length: int | None = None
    max_completion_length: int | None = None

    def __post_init__(self) -> None:
        if self.truncation_mode not in ("keep_start", "keep_end"):
            raise UserError(f"unknown truncation_mode {self.truncation_mode!r}; expected keep_start or keep_end",
                            key="align.truncation_mode")
        for name in ("max_length", "max_prompt_length", "max_completion_length"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise UserError(f"must be at least 1, got {value}", key=f"align.{name}")

    @classmethod
    def from_config(cls, align: Any, model_max_length: int | None = None) -> LengthPolicy:
        """From an ``align`` config section; ``max_length`` is capped by the model's positions."""
        def get(name: str, old: str | None = None) -> Any:
            if hasattr(align, name):
                return getattr(align, name)
            return getattr(align, old, None) if old else None

        max_length = get("max_length", "max_len")
        if model_max_length is not None:
            max_length = model_max_length if max_length is None else min(max_length, model_max_length)
        return cls(max_length=max_length, truncation_mode=get("truncation_mode") or "keep_start",
                   max_prompt_length=get("max_prompt_length", "max_prompt_len"),
                   max_completion_length=get("max_completion_length", "max_completion_len"))

    def fit(self, prompt: list[int], completions: Sequence[list[int]]
            ) -> tuple[list[int], list[list[int]], bool, bool]:
        """(prompt, completions, truncated?, dropped?) of one prompt with its completions (each
        completion forms one sequence with the prompt); ``keep_start`` only (TRL's pairs)."""
        if self.truncation_mode != "keep_start":
            raise UserError("truncation_mode keep_end is only supported for SFT (TRL 1.16 deprecates it and "
                            "supports keep_start only for preference and unpaired data)", key="align.truncation_mode")
        prompt, completions, cut = self.cap(prompt, completions)
        room = None
        if self.max_length is not None:
            if len(prompt) >= self.max_length:
                return prompt, [], True, True
            room = self.max_length - len(prompt)
        out = []
        for c in completions:
            if room is not None and len(c) > room:
                c, cut = c[:room], True
            out.append(c)
        return prompt, out, cut, False

    def cap(self, prompt: list[int], completions: Sequence[list[int]]) -> tuple[list[int], list[list[int]], bool]:
        """The optional caps: the prompt's last ``max_prompt_length`` tokens, each completion's first
        ``max_completion_length``; (prompt, completions, cut?)."""
        cut = False
        if self.max_prompt_length is not None and len(prompt) > self.max_prompt_length:
            prompt, cut = prompt[len(prompt) - self.max_prompt_length:], True
        out = []
        for c in completions:
            if self.max_completion_length is not None and len(c) > self.max_completion_length:
                c, cut = c[: self.max_completion_length], True
            out.append(c)
        return prompt, out, cut

    def fit_sequence(self, ids: list[int], labels: list[int]) -> tuple[list[int], list[int], bool]:
        """(ids, labels, truncated?) of one SFT sequence cut to ``max_length`` (TRL's SFT truncation)."""
        if self.max_length is None or len(ids) <= self.max_length:
            return ids, labels, False
        sl = slice(None, self.max_length) if self.truncation_mode == "keep_start" else slice(-self.max_length, None)
        return ids[sl], labels[sl], True


# --------------------------------------------------------------------------------------------
# Tokenization
# --------------------------------------------------------------------------------------------


def eos_id(tokenizer: Any) -> int:
    eos = getattr(tokenizer, "eos_token_id", None)
    if eos is None:
        raise UserError("the tokenizer has no eos token: completions need one to end")
    return int(eos)


def encode(tokenizer: Any, texts: Sequence[str], *, chat: bool = False, offsets: bool = False) -> Any:
    """Token ids of ``texts`` as TRL gets them: plain text with the tokenizer's own special tokens,
    rendered conversations with none (and the template's special tokens recognised). With
    ``offsets`` the whole ``BatchEncoding`` (``offset_mapping`` included) is returned."""
    if not texts:
        return {"input_ids": [], "offset_mapping": []} if offsets else []
    kwargs: dict[str, Any] = {"add_special_tokens": not chat}
    if chat:
        kwargs["split_special_tokens"] = False
    if offsets:
        kwargs["return_offsets_mapping"] = True
        return tokenizer(list(texts), **kwargs)
    return [list(ids) for ids in tokenizer(list(texts), **kwargs)["input_ids"]]


def _eos_is_text(tokenizer: Any) -> bool:
    """Whether the eos token written as text tokenizes to the eos id (then TRL's text-level
    ``completion + eos_token`` is reproduced exactly; else eos is appended by id)."""
    text = getattr(tokenizer, "eos_token", None)
    return bool(text) and tokenizer(text, add_special_tokens=False)["input_ids"] == [eos_id(tokenizer)]


def _encode_grouped(tokenizer: Any, texts: Sequence[str], chat: Sequence[bool]) -> list[list[int]]:
    out: list[list[int]] = [[] for _ in texts]
    for flag in (False, True):
        idx = [i for i, c in enumerate(chat) if c == flag]
        for i, ids in zip(idx, encode(tokenizer, [texts[i] for i in idx], chat=flag), strict=True):
            out[i] = ids
    return out


def tokenize_plain_ends(tokenizer: Any, texts: Sequence[str], chat: Sequence[bool]) -> list[list[int]]:
    """Ids of whole sequences (prompt + completion, or a ``text``), eos appended to plain ones
    unless they already end with it (TRL's ``add_eos``)."""
    eos = eos_id(tokenizer)
    if _eos_is_text(tokenizer):
        tail = str(tokenizer.eos_token)
        texts = [t if c or t.endswith(tail) else t + tail for t, c in zip(texts, chat, strict=True)]
        return _encode_grouped(tokenizer, texts, chat)
    ids = _encode_grouped(tokenizer, texts, chat)
    return [x if c or (x and x[-1] == eos) else [*x, eos] for x, c in zip(ids, chat, strict=True)]


def tokenize_completions(tokenizer: Any, prompts: Sequence[str], completions: Sequence[Sequence[str]],
                         chat: Sequence[bool]) -> list[tuple[list[int], list[list[int]], bool]]:
    """Per record: (prompt ids, the ids of each completion, did a merge move the boundary?).

    As TRL: the prompt and each prompt+completion are tokenized; the completion starts at the
    shortest common prefix of the prompt's ids with every prompt+completion's ids."""
    n_comp = len(completions[0]) if completions else 0
    prompt_ids = _encode_grouped(tokenizer, prompts, chat)
    fulls = [tokenize_plain_ends(tokenizer, [p + cs[k] for p, cs in zip(prompts, completions, strict=True)], chat)
             for k in range(n_comp)]
    out = []
    for i, p in enumerate(prompt_ids):
        seqs = [f[i] for f in fulls]
        n = min(common_prefix(p, s) for s in seqs)
        out.append((seqs[0][:n], [s[n:] for s in seqs], n < len(p)))
    return out


def sequence_fingerprint(*columns: Sequence[Sequence[int]]) -> str:
    """A short stable hash of token-id columns (for keying cached reference log-probs)."""
    h = hashlib.sha256()
    for col in columns:
        for ids in col:
            h.update(len(ids).to_bytes(4, "little"))
            h.update(torch.tensor(list(ids), dtype=torch.int64).numpy().tobytes())
        h.update(b"|")
    return h.hexdigest()[:16]


def _max_id(*columns: Sequence[Sequence[int]]) -> int:
    return max((max(s) for col in columns for s in col if s), default=0)


def _length_stats(lens: Sequence[int]) -> dict[str, Any]:
    return {"max_seq_len": max(lens, default=0), "mean_seq_len": sum(lens) / max(len(lens), 1)}


# --------------------------------------------------------------------------------------------
# Preference pairs
# --------------------------------------------------------------------------------------------


class _Counted:
    """Counters every dataset reports: records in, kept, truncated, dropped, boundary merges."""

    policy: LengthPolicy
    n_records = 0
    dropped = 0
    truncated = 0
    boundary_merges = 0

    def _counts(self) -> dict[str, Any]:
        return {"records": self.n_records, "dropped": self.dropped, "truncated": self.truncated,
                "boundary_merges": self.boundary_merges, "max_length": self.policy.max_length,
                "truncation_mode": self.policy.truncation_mode}


class PreferenceDataset(_Counted, Dataset[Example]):
    """Tokenized preference pairs. Item ``i``: ``prompt``, ``chosen``, ``rejected`` as 1-D
    LongTensors (special tokens as the tokenizer adds them, eos ending plain completions),
    ``index`` (= i), and ``ref_logps`` ``[2]`` once `set_reference_logps` attached cached
    reference log-probs (chosen, rejected). ``kept_indices[i]``: the record of item ``i``."""

    def __init__(self, tokenizer: Any, records: Sequence[PreferenceRecord], policy: LengthPolicy | None = None
                 ) -> None:
        self.policy = policy or LengthPolicy()
        self.n_records = len(records)
        tokenized = tokenize_completions(tokenizer, [r.prompt for r in records],
                                         [(r.chosen, r.rejected) for r in records], [r.chat for r in records])
        self.prompts: list[list[int]] = []
        self.chosen: list[list[int]] = []
        self.rejected: list[list[int]] = []
        self.kept_indices: list[int] = []
        for i, (p, comps, merged) in enumerate(tokenized):
            self.boundary_merges += int(merged)
            p_fit, fit, cut, drop = self.policy.fit(p, comps)
            self.truncated += int(cut and not drop)
            if drop or not all(fit):
                self.dropped += 1
                continue
            self.prompts.append(p_fit)
            self.chosen.append(fit[0])
            self.rejected.append(fit[1])
            self.kept_indices.append(i)
        self.ref_logps: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.prompts)

    def __getitem__(self, i: int) -> Example:
        item = {"index": torch.tensor(i), "prompt": torch.tensor(self.prompts[i], dtype=torch.long),
                "chosen": torch.tensor(self.chosen[i], dtype=torch.long),
                "rejected": torch.tensor(self.rejected[i], dtype=torch.long)}
        if self.ref_logps is not None:
            item["ref_logps"] = self.ref_logps[i]
        return item

    def fingerprint(self) -> str:
        return sequence_fingerprint(self.prompts, self.chosen, self.rejected)

    def max_token_id(self) -> int:
        return _max_id(self.prompts, self.chosen, self.rejected)

    def set_reference_logps(self, logps: torch.Tensor) -> None:
        if tuple(logps.shape) != (len(self), 2):
            raise ValueError(f"expected reference log-probs of shape {(len(self), 2)}, got {tuple(logps.shape)}")
        self.ref_logps = logps.detach().float().cpu()

    def stats(self) -> dict[str, Any]:
        lens = [len(p) + max(len(c), len(r)) for p, c, r in zip(self.prompts, self.chosen, self.rejected,
                                                                  strict=True)]
        return {"pairs": len(self), **self._counts(), **_length_stats(lens)}


def _pad_rows(rows: Sequence[tuple[list[int], list[int]]], pad_id: int) -> Example:
    """Right-pad (prompt, completion) rows: ``input_ids``, ``attention_mask``, ``labels`` (-100 off the completion)."""
    length = max(len(p) + len(c) for p, c in rows)
    input_ids = torch.full((len(rows), length), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), length), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(rows), length), dtype=torch.long)
    for i, (p, c) in enumerate(rows):
        n = len(p) + len(c)
        input_ids[i, :n] = torch.tensor(p + c, dtype=torch.long)
        labels[i, len(p):n] = torch.tensor(c, dtype=torch.long)
        mask[i, :n] = 1
    return {"input_ids": input_ids, "attention_mask": mask, "labels": labels}


def collate_preference(items: Sequence[Example], pad_id: int) -> Example:
    """One batch holding both sides: rows ``0..B-1`` are prompt+chosen, rows ``B..2B-1`` prompt+rejected.

    Chosen and rejected then go through the model in one forward pass (one set of weight reads,
    one kernel launch per layer instead of two). ``labels`` are -100 on the prompt and padding.
    ``pair_index [B]`` are dataset indices; ``ref_logps [2B]`` (same row order) when cached.
    """
    if not items:
        raise ValueError("cannot collate an empty batch")
    rows = [(it["prompt"].tolist(), it["chosen"].tolist()) for it in items]
    rows += [(it["prompt"].tolist(), it["rejected"].tolist()) for it in items]
    batch = _pad_rows(rows, pad_id)
    batch["pair_index"] = torch.stack([it["index"] for it in items])
    if "ref_logps" in items[0]:
        ref = torch.stack([it["ref_logps"] for it in items])  # [B, 2]
        batch["ref_logps"] = torch.cat([ref[:, 0], ref[:, 1]])
    return batch


# --------------------------------------------------------------------------------------------
# Unpaired (KTO)
# --------------------------------------------------------------------------------------------


class UnpairedDataset(_Counted, Dataset[Example]):
    """Labelled (prompt, completion) examples for KTO, tokenized and cut like `PreferenceDataset`.

    Items: ``prompt``, ``completion``, ``kl_completion``, ``label``, ``index``. ``kl_completion``
    is the completion of the previous example within consecutive blocks of ``kl_block``
    examples (TRL's rotation by one within each batch), a mismatched pair for KTO's reference
    point KL(π‖π_ref); it is cut so that prompt + it fits ``max_length``, as TRL's collator does.
    """

    def __init__(self, tokenizer: Any, records: Sequence[CompletionRecord], policy: LengthPolicy | None = None,
                 *, kl_block: int = 8) -> None:
        self.policy = policy or LengthPolicy()
        self.n_records = len(records)
        tokenized = tokenize_completions(tokenizer, [r.prompt for r in records], [(r.completion,) for r in records],
                                         [r.chat for r in records])
        self.prompts: list[list[int]] = []
        self.completions: list[list[int]] = []
        self.labels: list[bool] = []
        self.kept_indices: list[int] = []
        for i, (p, comps, merged) in enumerate(tokenized):
            self.boundary_merges += int(merged)
            p_fit, fit, cut, drop = self.policy.fit(p, comps)
            self.truncated += int(cut and not drop)
            if drop or not fit[0]:
                self.dropped += 1
                continue
            self.prompts.append(p_fit)
            self.completions.append(fit[0])
            self.labels.append(records[i].label)
            self.kept_indices.append(i)
        n = len(self.completions)
        self.kl_source = [start + (j - start - 1) % min(kl_block, n - start)
                          for start in range(0, n, kl_block) for j in range(start, min(start + kl_block, n))]
        self.ref_logps: torch.Tensor | None = None  # [n, 2]: completion, kl completion

    def __len__(self) -> int:
        return len(self.prompts)

    def _kl_completion(self, i: int) -> list[int]:
        kl = self.completions[self.kl_source[i]]
        if self.policy.max_length is not None:
            kl = kl[: self.policy.max_length - len(self.prompts[i])]
        return kl

    def __getitem__(self, i: int) -> Example:
        item = {"index": torch.tensor(i), "prompt": torch.tensor(self.prompts[i], dtype=torch.long),
                "completion": torch.tensor(self.completions[i], dtype=torch.long),
                "kl_completion": torch.tensor(self._kl_completion(i), dtype=torch.long),
                "label": torch.tensor(self.labels[i])}
        if self.ref_logps is not None:
            item["ref_logps"] = self.ref_logps[i]
        return item

    def fingerprint(self) -> str:
        return sequence_fingerprint(self.prompts, self.completions, [[int(x)] for x in self.labels],
                                    [[k] for k in self.kl_source])

    def max_token_id(self) -> int:
        return _max_id(self.prompts, self.completions)

    def set_reference_logps(self, logps: torch.Tensor) -> None:
        if tuple(logps.shape) != (len(self), 2):
            raise ValueError(f"expected reference log-probs of shape {(len(self), 2)}, got {tuple(logps.shape)}")
        self.ref_logps = logps.detach().float().cpu()

    def stats(self) -> dict[str, Any]:
        lens = [len(p) + len(c) for p, c in zip(self.prompts, self.completions, strict=True)]
        return {"examples": len(self), "desirable": sum(self.labels), **self._counts(), **_length_stats(lens)}


def collate_unpaired(items: Sequence[Example], pad_id: int) -> Example:
    """KTO batch: ``input_ids``/``attention_mask``/``labels`` of prompt+completion, ``kl_*`` of the
    mismatched prompt+kl_completion, ``label [B]`` (bool), ``ref_logps [B]``/``ref_kl_logps [B]`` when cached."""
    batch = _pad_rows([(it["prompt"].tolist(), it["completion"].tolist()) for it in items], pad_id)
    kl = _pad_rows([(it["prompt"].tolist(), it["kl_completion"].tolist()) for it in items], pad_id)
    batch.update({f"kl_{k}": v for k, v in kl.items()})
    batch["label"] = torch.stack([it["label"] for it in items]).bool()
    batch["index"] = torch.stack([it["index"] for it in items])
    if "ref_logps" in items[0]:
        ref = torch.stack([it["ref_logps"] for it in items])
        batch["ref_logps"], batch["ref_kl_logps"] = ref[:, 0], ref[:, 1]
    return batch


# --------------------------------------------------------------------------------------------
# SFT: the one pipeline for prompt/completion, text and messages
# --------------------------------------------------------------------------------------------


def _span_mask(offsets: Sequence[tuple[int, int]], spans: Sequence[tuple[int, int]]) -> list[int]:
    """1 for every token overlapping a span (transformers' ``return_assistant_tokens_mask`` rule)."""
    mask = [0] * len(offsets)
    k = 0
    for t, (start, end) in enumerate(offsets):
        while k < len(spans) and start >= spans[k][1]:
            k += 1
        if k == len(spans):
            break
        if end > spans[k][0]:
            mask[t] = 1
    return mask


class SFTDataset(_Counted, Dataset[Example]):
    """Supervised examples from `CompletionRecord` (prompt/completion) and `TextRecord` (``text``,
    ``messages``); items are ``input_ids``/``labels``/``attention_mask`` for
    `trainlab.data.collate_padded` and `trainlab.train.objectives.CausalLMObjective`.

    Labels (TRL's names): ``completion_only_loss`` (None = True) trains prompt/completion records
    on the completion only; ``assistant_only_loss`` trains rendered conversations on every
    assistant turn, else on every token; a plain ``text`` trains on every token. Sequences
    longer than ``max_length`` are cut (``keep_start`` or ``keep_end``) and those left with no
    trained token are dropped, both counted.
    """

    def __init__(self, tokenizer: Any, records: Sequence[CompletionRecord | TextRecord],
                 policy: LengthPolicy | None = None, *, completion_only_loss: bool | None = None,
                 assistant_only_loss: bool = True) -> None:
        self.policy = policy or LengthPolicy()
        self.n_records = len(records)
        completion_only = True if completion_only_loss is None else completion_only_loss
        built: list[tuple[list[int], list[int]] | None] = [None] * len(records)
        pc = [i for i, r in enumerate(records) if isinstance(r, CompletionRecord)]
        pc_records = [records[i] for i in pc]
        tokenized = tokenize_completions(tokenizer, [r.prompt for r in pc_records],  # type: ignore[union-attr]
                                         [(r.completion,) for r in pc_records],  # type: ignore[union-attr]
                                         [r.chat for r in pc_records])
        capped = [False] * len(records)
        for i, (p, (c,), merged) in zip(pc, tokenized, strict=True):
            self.boundary_merges += int(merged)
            p, (c,), capped[i] = self.policy.cap(p, [c])
            built[i] = (p + c, ([IGNORE_INDEX] * len(p) if completion_only else p) + c)
        self._texts(tokenizer, records, built, assistant_only_loss)
        self.examples: list[tuple[list[int], list[int]]] = []
        self.kept_indices: list[int] = []
        for i, example in enumerate(built):
            assert example is not None
            ids, labels, cut = self.policy.fit_sequence(*example)
            if all(x == IGNORE_INDEX for x in labels):
                self.dropped += 1
                continue
            self.truncated += int(cut or capped[i])
            self.examples.append((ids, labels))
            self.kept_indices.append(i)

    @staticmethod
    def _texts(tokenizer: Any, records: Sequence[CompletionRecord | TextRecord],
               built: list[tuple[list[int], list[int]] | None], assistant_only: bool) -> None:
        plain = [i for i, r in enumerate(records) if isinstance(r, TextRecord) and not r.chat]
        for i, ids in zip(plain, tokenize_plain_ends(tokenizer, [records[i].text for i in plain],  # type: ignore[union-attr]
                                                     [False] * len(plain)), strict=True):
            built[i] = (ids, list(ids))
        chat = [i for i, r in enumerate(records) if isinstance(r, TextRecord) and r.chat]
        enc = encode(tokenizer, [records[i].text for i in chat], chat=True, offsets=True)  # type: ignore[union-attr]
        for j, i in enumerate(chat):
            ids = list(enc["input_ids"][j])
            record = records[i]
            assert isinstance(record, TextRecord)
            if not assistant_only:
                built[i] = (ids, list(ids))
                continue
            if record.spans is None:
                raise UserError(f"{record.where}: cannot find the assistant turns: the chat template has no "
                                "{% generation %} markers and does not render turn by turn; set "
                                "align_data.assistant_only_loss=false (loss on every token) or use a template with "
                                f"generation markers ({CHAT_TEMPLATE_FIX})")
            mask = _span_mask([tuple(o) for o in enc["offset_mapping"][j]], record.spans)
            built[i] = (ids, [t if m else IGNORE_INDEX for t, m in zip(ids, mask, strict=True)])

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i: int) -> Example:
        ids, labels = self.examples[i]
        t = torch.tensor(ids, dtype=torch.long)
        return {"input_ids": t, "labels": torch.tensor(labels, dtype=torch.long), "attention_mask": torch.ones_like(t)}

    def fingerprint(self) -> str:
        return sequence_fingerprint([e[0] for e in self.examples], [e[1] for e in self.examples])

    def max_token_id(self) -> int:
        return _max_id([e[0] for e in self.examples])

    def stats(self) -> dict[str, Any]:
        lens = [len(e[0]) for e in self.examples]
        trained = sum(sum(x != IGNORE_INDEX for x in e[1]) for e in self.examples)
        return {"examples": len(self), **self._counts(), "trained_tokens": trained, **_length_stats(lens)}
