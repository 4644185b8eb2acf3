"""Alignment data: preference pairs, unpaired (KTO) and SFT records; load, validate, tokenize, collate.

Formats (the ones TRL users already have), from a JSONL file, a folder of them, a ``datasets``
folder written by ``save_to_disk``, a ``.json``/``.parquet``/``.csv`` file, or an in-memory
``datasets.Dataset``:

* preference: ``{"prompt", "chosen", "rejected"}``; conversational records hold lists of
  ``{"role", "content"}`` messages instead of strings, and may leave ``prompt`` out (TRL's
  "implicit prompt": the messages ``chosen`` and ``rejected`` share at the start are the prompt);
* unpaired (KTO): ``{"prompt", "completion", "label": bool}``; preference records are also accepted
  and become one desirable and one undesirable example;
* SFT: ``{"prompt", "completion"}``, ``{"messages": [...]}`` (the last assistant turn is the
  completion), or a preference record (trained on ``chosen``).

Conversations are rendered to text with the tokenizer's chat template (``add_generation_prompt``
for the prompt) or, when it has none, with a simple built-in template
(`render_conversation`). Everything downstream works on (prompt text, completion text).

Validation. Every problem with a record (bad JSON, not an object, missing key, wrong type, a
malformed message, an empty completion, ``chosen`` identical to ``rejected``) becomes an `Issue`
naming ``file:line`` (``source[row N]`` for datasets), the key and the reason. By default the
record is skipped and counted (`LoadReport.issues`); with ``strict=True`` the first one raises
`UserError` (exit 2 in the CLI).

Tokenization and truncation policy (`LengthPolicy`). Prompt and completion are tokenized
*separately* and their ids concatenated: ``[bos] + prompt_ids + completion_ids + [eos]``. The
boundary is therefore exact in token space: a BPE merge can never straddle it, and the prompt
seen in training is the prompt given at generation. eos is appended to every completion (unless
its ids already end with it, as chat templates sometimes render). Then:

1. the prompt keeps its *last* ``max_prompt_len`` tokens (the text nearest the answer);
2. each completion keeps its *first* ``max_completion_len`` tokens (eos included; a cut
   completion loses its eos, so the model is never taught to stop where the text was cut);
3. with ``max_len``, the completion is cut further so that ``bos + prompt + completion`` fits.

A record left with no completion token (on either side of a pair) is dropped and counted
(``.dropped``); ``.truncated`` counts records that were cut at all.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch
from torch.utils.data import Dataset

from trainlab.data.tasks import TASKS, TaskRecord, get_task, make_task_records
from trainlab.errors import UserError

if TYPE_CHECKING:
    from trainlab.align.config import AlignDataConfig

IGNORE_INDEX = -100
RecordKind = Literal["preference", "unpaired", "sft"]
Example = dict[str, torch.Tensor]
_DATASET_MARKERS = ("dataset_info.json", "state.json", "dataset_dict.json")
_DATASET_SUFFIXES = {".json": "json", ".parquet": "parquet", ".csv": "csv", ".arrow": "arrow"}


# --------------------------------------------------------------------------------------------
# Records and validation issues
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PreferenceRecord:
    """A prompt with a preferred (``chosen``) and a dispreferred (``rejected``) completion, as text."""

    prompt: str
    chosen: str
    rejected: str
    where: str = ""


@dataclass(frozen=True)
class CompletionRecord:
    """A prompt and one completion: an SFT example, or a KTO example with its ``label`` (desirable?)."""

    prompt: str
    completion: str
    label: bool = True
    where: str = ""


@dataclass(frozen=True)
class Issue:
    """One malformed record: where it is, which key, and why."""

    path: str
    line: int | None
    key: str | None
    reason: str

    def error(self) -> UserError:
        return UserError(self.reason, path=self.path, line=self.line, key=self.key)

    def __str__(self) -> str:
        return str(self.error())


@dataclass
class LoadReport:
    """What loading found: the valid records, the skipped ones (with reasons), and counts."""

    source: str
    kind: RecordKind
    records: list[Any]
    issues: list[Issue] = field(default_factory=list)
    n_read: int = 0

    @property
    def skipped(self) -> int:
        return len(self.issues)

    def summary(self) -> dict[str, Any]:
        return {"source": self.source, "kind": self.kind, "read": self.n_read, "records": len(self.records),
                "skipped": self.skipped, "issues": [str(i) for i in self.issues[:20]]}


class _RecordError(Exception):
    def __init__(self, reason: str, key: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.key = key


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


# --------------------------------------------------------------------------------------------
# Conversations
# --------------------------------------------------------------------------------------------


def _check_messages(value: Any, key: str) -> list[dict[str, str]]:
    if not isinstance(value, list) or not value:
        raise _RecordError(f"expected a non-empty list of messages under {key!r}", key)
    out = []
    for i, msg in enumerate(value):
        where = f"{key}[{i}]"
        if not isinstance(msg, dict):
            raise _RecordError(f"expected a message object {{role, content}}, got {_type_name(msg)}", where)
        for field_name in ("role", "content"):
            if field_name not in msg:
                raise _RecordError(f"message has no {field_name!r}", where)
            if not isinstance(msg[field_name], str):
                raise _RecordError(f"expected a string, got {_type_name(msg[field_name])}",
                                   f"{where}.{field_name}")
        out.append({"role": msg["role"], "content": msg["content"]})
    return out


def _common_prefix(a: Sequence[Any], b: Sequence[Any]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def render_conversation(tokenizer: Any, prompt: list[dict[str, str]], completion: list[dict[str, str]]
                        ) -> tuple[str, str]:
    """(prompt text, completion text) of a conversation split into prompt and completion turns.

    With a chat template: the prompt is rendered with ``add_generation_prompt=True`` and the
    completion is what the full conversation adds after it. (When a template renders the prompt
    differently alone, the prompt is cut to the longest common prefix of both renderings, TRL's
    rule, so training never sees a context the full conversation does not contain.)
    Without one, the built-in template: ``<|role|>\\ncontent\\n`` per prompt message, then
    ``<|assistant|>\\n``; the completion is the assistant's content.
    """
    template = getattr(tokenizer, "chat_template", None) if tokenizer is not None else None
    if template:
        try:
            p = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
            full = tokenizer.apply_chat_template(prompt + completion, tokenize=False)
        except Exception as exc:  # jinja errors, role checks of the template
            raise _RecordError(f"the tokenizer's chat template failed: {str(exc).splitlines()[0]}") from None
        if not full.startswith(p):
            p = full[: _common_prefix(p, full)]
        return p, full[len(p):]
    text = "".join(f"<|{m['role']}|>\n{m['content']}\n" for m in prompt) + "<|assistant|>\n"
    first, rest = completion[0], completion[1:]
    return text, first["content"] + "".join(f"\n<|{m['role']}|>\n{m['content']}" for m in rest)


def _text_or_conversation(row: dict[str, Any], key: str) -> str | list[dict[str, str]]:
    if key not in row:
        present = ", ".join(repr(k) for k in row) or "none"
        raise _RecordError(f"missing key {key!r} (keys present: {present})", key)
    value = row[key]
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return _check_messages(value, key)
    raise _RecordError(f"expected a string or a list of messages under {key!r}, got {_type_name(value)}", key)


def _nonempty(text: str, key: str) -> str:
    if not text.strip():
        raise _RecordError(f"empty completion under {key!r}", key)
    return text


def _render(tokenizer: Any, prompt: str | list[dict[str, str]], completion: str | list[dict[str, str]],
            key: str) -> tuple[str, str]:
    if isinstance(prompt, str) != isinstance(completion, str):
        raise _RecordError(f"'prompt' and {key!r} mix plain text and messages; use one style", key)
    if isinstance(prompt, str):
        assert isinstance(completion, str)
        return prompt, _nonempty(completion, key)
    assert isinstance(completion, list)
    p, c = render_conversation(tokenizer, prompt, completion)
    return p, _nonempty(c, key)


def _preference(row: dict[str, Any], tokenizer: Any, where: str) -> PreferenceRecord:
    chosen = _text_or_conversation(row, "chosen")
    rejected = _text_or_conversation(row, "rejected")
    if "prompt" in row:
        prompt = _text_or_conversation(row, "prompt")
    elif isinstance(chosen, list) and isinstance(rejected, list):
        # implicit prompt: the shared leading messages
        k = _common_prefix(chosen, rejected)
        if k == len(chosen) or k == len(rejected):
            raise _RecordError("'chosen' and 'rejected' are identical (or one contains the other)", "rejected")
        prompt, chosen, rejected = chosen[:k], chosen[k:], rejected[k:]
        if not prompt:
            raise _RecordError("missing key 'prompt' and the conversations share no leading message", "prompt")
    else:
        raise _RecordError(f"missing key 'prompt' (keys present: {', '.join(repr(k) for k in row)})", "prompt")
    p1, c = _render(tokenizer, prompt, chosen, "chosen")
    p2, r = _render(tokenizer, prompt, rejected, "rejected")
    if p1 != p2:
        # a template whose rendering of the prompt depends on the completion: use the shared part
        n = _common_prefix(p1, p2)
        c, r, p1 = p1[n:] + c, p2[n:] + r, p1[:n]
    if c == r:
        raise _RecordError("'chosen' and 'rejected' are identical", "rejected")
    return PreferenceRecord(prompt=p1, chosen=c, rejected=r, where=where)


def _sft(row: dict[str, Any], tokenizer: Any, where: str) -> CompletionRecord:
    if "messages" in row and "prompt" not in row:
        msgs = _check_messages(row["messages"], "messages")
        if len(msgs) < 2 or msgs[-1]["role"] != "assistant":
            raise _RecordError("expected at least one prompt message and a final 'assistant' message",
                               "messages")
        p, c = render_conversation(tokenizer, msgs[:-1], msgs[-1:])
        return CompletionRecord(prompt=p, completion=_nonempty(c, "messages"), where=where)
    prompt = _text_or_conversation(row, "prompt")
    key = "completion" if "completion" in row or "chosen" not in row else "chosen"
    p, c = _render(tokenizer, prompt, _text_or_conversation(row, key), key)
    return CompletionRecord(prompt=p, completion=c, where=where)


def _unpaired(row: dict[str, Any], tokenizer: Any, where: str) -> list[CompletionRecord]:
    if "completion" not in row and "chosen" in row:
        pair = _preference(row, tokenizer, where)
        return [CompletionRecord(pair.prompt, pair.chosen, True, where),
                CompletionRecord(pair.prompt, pair.rejected, False, where)]
    prompt = _text_or_conversation(row, "prompt")
    p, c = _render(tokenizer, prompt, _text_or_conversation(row, "completion"), "completion")
    if "label" not in row:
        raise _RecordError(f"missing key 'label' (keys present: {', '.join(repr(k) for k in row)})", "label")
    if not isinstance(row["label"], bool):
        raise _RecordError(f"expected true or false under 'label', got {_type_name(row['label'])}", "label")
    return [CompletionRecord(prompt=p, completion=c, label=row["label"], where=where)]


# --------------------------------------------------------------------------------------------
# Sources
# --------------------------------------------------------------------------------------------


def _jsonl_rows(path: Path) -> Iterator[tuple[str, int | None, dict[str, Any] | _RecordError]]:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise UserError(f"not valid UTF-8 text (byte {exc.start})", path=path) from None
    except OSError as exc:
        raise UserError(f"cannot read file: {exc.strerror}", path=path) from None
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            yield str(path), number, _RecordError(f"invalid JSON: {exc.msg} (column {exc.colno})")
            continue
        if not isinstance(obj, dict):
            yield str(path), number, _RecordError(f"expected a JSON object, got {_type_name(obj)}")
            continue
        yield str(path), number, obj


def _dataset_rows(dataset: Any, name: str) -> Iterator[tuple[str, int | None, dict[str, Any] | _RecordError]]:
    for i, row in enumerate(dataset):
        yield f"{name}[row {i}]", None, dict(row)


def _open_dataset(path: Path, split: str) -> Any:
    try:
        import datasets
    except ImportError:  # pragma: no cover - datasets is a dev/hf extra
        raise UserError("reading a datasets folder needs the `datasets` package (pip install datasets)",
                        path=path) from None
    try:
        if path.is_dir():
            ds = datasets.load_from_disk(str(path))
        else:
            ds = datasets.load_dataset(_DATASET_SUFFIXES[path.suffix.lower()], data_files=str(path), split="train")
    except Exception as exc:  # datasets raises many kinds for unreadable inputs
        raise UserError(f"cannot read as a dataset: {str(exc).splitlines()[0]}", path=path) from None
    if isinstance(ds, datasets.DatasetDict):
        if split not in ds:
            raise UserError(f"dataset has no split {split!r} (splits: {', '.join(ds)})", path=path)
        ds = ds[split]
    return ds


def _rows(source: Any, split: str) -> tuple[str, Iterable[tuple[str, int | None, dict[str, Any] | _RecordError]]]:
    """(a name for messages, the rows) of a source: a path or an in-memory dataset / list of dicts."""
    if not isinstance(source, (str, Path)):
        if hasattr(source, "keys") and hasattr(source, "values") and split in source:  # a DatasetDict
            source = source[split]
        name = (getattr(source, "info", None) and getattr(source.info, "dataset_name", None)) or "dataset"
        return str(name), _dataset_rows(source, str(name))
    path = Path(source).expanduser()
    if not path.exists():
        raise UserError("data file or folder not found (trainlab reads local files only and never downloads)",
                        path=path)
    if path.is_dir():
        if any((path / m).is_file() for m in _DATASET_MARKERS):
            return str(path), _dataset_rows(_open_dataset(path, split), str(path))
        files = sorted(p for p in path.rglob("*.jsonl")
                       if p.is_file() and not any(part.startswith(".") for part in p.relative_to(path).parts))
        if not files:
            raise UserError("folder has no .jsonl files and is not a saved `datasets` dataset", path=path)
        return str(path), (row for f in files for row in _jsonl_rows(f))
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        return str(path), _jsonl_rows(path)
    if suffix in _DATASET_SUFFIXES:
        return str(path), _dataset_rows(_open_dataset(path, split), str(path))
    raise UserError(f"unsupported data file type {suffix or '(none)'!r}; expected .jsonl, .json, .parquet, .csv "
                    "or a `datasets` folder", path=path)


def load_records(source: Any, kind: RecordKind = "preference", *, tokenizer: Any = None, strict: bool = False,
                 split: str = "train") -> LoadReport:
    """Read and validate ``kind`` records from ``source`` (see the module docstring).

    Malformed records are skipped and reported in the `LoadReport`, or raise `UserError` at the
    first one with ``strict``. No valid record at all is always an error.
    """
    name, rows = _rows(source, split)
    report = LoadReport(source=name, kind=kind, records=[])
    for path, line, row in rows:
        report.n_read += 1
        where = f"{path}:{line}" if line is not None else path
        try:
            if isinstance(row, _RecordError):
                raise row
            if kind == "preference":
                report.records.append(_preference(row, tokenizer, where))
            elif kind == "sft":
                report.records.append(_sft(row, tokenizer, where))
            else:
                report.records.extend(_unpaired(row, tokenizer, where))
        except _RecordError as exc:
            issue = Issue(path=path, line=line, key=exc.key, reason=exc.reason)
            if strict:
                raise issue.error() from None
            report.issues.append(issue)
    if not report.records:
        detail = f"; first problem: {report.issues[0]}" if report.issues else ""
        raise UserError(f"no valid {kind} records ({report.n_read} read, {report.skipped} malformed){detail}",
                        path=name)
    return report


# --------------------------------------------------------------------------------------------
# Tokenization
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LengthPolicy:
    """Truncation (see the module docstring): prompt from the left, completion from the right."""

    max_prompt_len: int = 64
    max_completion_len: int = 32
    max_len: int | None = None

    def fit(self, prefix: int, prompt: list[int], completions: Sequence[list[int]]
            ) -> tuple[list[int], list[list[int]], bool]:
        """(prompt, completions, truncated?) cut to the policy; a completion may come out empty."""
        cut = False
        if len(prompt) > self.max_prompt_len:
            prompt, cut = prompt[len(prompt) - self.max_prompt_len:], True
        room = self.max_completion_len
        if self.max_len is not None:
            room = min(room, max(0, self.max_len - prefix - len(prompt)))
        out = []
        for c in completions:
            if len(c) > room:
                c, cut = c[:room], True
            out.append(c)
        return prompt, out, cut


def encode_texts(tokenizer: Any, texts: Sequence[str]) -> list[list[int]]:
    """Bare token ids (no special tokens added), batched through the Rust tokenizer when there is one."""
    if not texts:
        return []
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        return [enc.ids for enc in backend.encode_batch(list(texts), add_special_tokens=False)]
    return [list(ids) for ids in tokenizer(list(texts), add_special_tokens=False)["input_ids"]]


def special_ids(tokenizer: Any) -> tuple[list[int], int]:
    """(the prefix every sequence starts with: [bos] or [], the eos id). eos is required."""
    eos = getattr(tokenizer, "eos_token_id", None)
    if eos is None:
        raise UserError("the tokenizer has no eos token: completions need one to end")
    bos = getattr(tokenizer, "bos_token_id", None)
    return ([int(bos)] if bos is not None else []), int(eos)


def _with_eos(ids: list[int], eos: int) -> list[int]:
    return ids if ids and ids[-1] == eos else [*ids, eos]


def _with_prefix(prefix: list[int], ids: list[int]) -> list[int]:
    # a chat template may render bos itself; never put it there twice
    return ids if prefix and ids[: len(prefix)] == prefix else prefix + ids


def sequence_fingerprint(*columns: Sequence[Sequence[int]]) -> str:
    """A short stable hash of token-id columns (for keying cached reference log-probs)."""
    h = hashlib.sha256()
    for col in columns:
        for ids in col:
            h.update(len(ids).to_bytes(4, "little"))
            h.update(torch.tensor(list(ids), dtype=torch.int64).numpy().tobytes())
        h.update(b"|")
    return h.hexdigest()[:16]


class PreferenceDataset(Dataset[Example]):
    """Tokenized preference pairs. Item ``i``: ``prompt`` (bos included), ``chosen``, ``rejected``
    (eos included) as 1-D LongTensors, ``index`` (= i), and ``ref_logps`` ``[2]`` once
    `set_reference_logps` attached cached reference log-probs (chosen, rejected)."""

    def __init__(self, tokenizer: Any, records: Sequence[PreferenceRecord], policy: LengthPolicy | None = None
                 ) -> None:
        self.policy = policy or LengthPolicy()
        prefix, eos = special_ids(tokenizer)
        prompts = encode_texts(tokenizer, [r.prompt for r in records])
        chosen = encode_texts(tokenizer, [r.chosen for r in records])
        rejected = encode_texts(tokenizer, [r.rejected for r in records])
        self.prompts: list[list[int]] = []
        self.chosen: list[list[int]] = []
        self.rejected: list[list[int]] = []
        self.kept_indices: list[int] = []
        self.dropped = 0
        self.truncated = 0
        for i, (p, c, r) in enumerate(zip(prompts, chosen, rejected, strict=True)):
            full_p = _with_prefix(prefix, p)
            n_prefix = len(full_p) - len(p)
            p_fit, (c_fit, r_fit), cut = self.policy.fit(n_prefix, full_p[n_prefix:],
                                                         [_with_eos(c, eos), _with_eos(r, eos)])
            self.truncated += int(cut)
            if not c_fit or not r_fit:
                self.dropped += 1
                continue
            self.prompts.append(full_p[:n_prefix] + p_fit)
            self.chosen.append(c_fit)
            self.rejected.append(r_fit)
            self.kept_indices.append(i)
        self.ref_logps: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.prompts)

    def __getitem__(self, i: int) -> Example:
        item = {"index": torch.tensor(i), "prompt": torch.tensor(self.prompts[i]),
                "chosen": torch.tensor(self.chosen[i]), "rejected": torch.tensor(self.rejected[i])}
        if self.ref_logps is not None:
            item["ref_logps"] = self.ref_logps[i]
        return item

    def fingerprint(self) -> str:
        return sequence_fingerprint(self.prompts, self.chosen, self.rejected)

    def set_reference_logps(self, logps: torch.Tensor) -> None:
        if tuple(logps.shape) != (len(self), 2):
            raise ValueError(f"expected reference log-probs of shape {(len(self), 2)}, got {tuple(logps.shape)}")
        self.ref_logps = logps.detach().float().cpu()

    def stats(self) -> dict[str, Any]:
        lens = [len(p) + max(len(c), len(r)) for p, c, r in zip(self.prompts, self.chosen, self.rejected,
                                                                  strict=True)]
        return {"pairs": len(self), "dropped": self.dropped, "truncated": self.truncated,
                "max_seq_len": max(lens, default=0), "mean_seq_len": sum(lens) / max(len(lens), 1)}


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
    one kernel launch per layer instead of two). ``labels`` are -100 on bos, prompt and padding.
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


class CompletionDataset(Dataset[Example]):
    """Tokenized (prompt, completion) examples under the same policy as `PreferenceDataset`.

    For SFT (``kind="sft"``) an item is ``input_ids``/``labels``/``attention_mask`` (labels -100 on
    bos and prompt) and batches with `trainlab.data.collate_padded` for `CausalLMObjective`.
    For KTO (``kind="unpaired"``) items are (``prompt``, ``completion``, ``kl_completion``,
    ``label``, ``index``): ``kl_completion`` is the completion of the previous example within
    consecutive blocks of ``kl_block`` examples (TRL's rotation by one), a mismatched pair used to
    estimate KTO's reference point KL(π‖π_ref).
    """

    def __init__(self, tokenizer: Any, records: Sequence[CompletionRecord], policy: LengthPolicy | None = None,
                 *, kind: Literal["sft", "unpaired"] = "sft", kl_block: int = 8) -> None:
        self.policy = policy or LengthPolicy()
        self.kind = kind
        prefix, eos = special_ids(tokenizer)
        prompts = encode_texts(tokenizer, [r.prompt for r in records])
        completions = encode_texts(tokenizer, [r.completion for r in records])
        self.prompts: list[list[int]] = []
        self.completions: list[list[int]] = []
        self.labels: list[bool] = []
        self.kept_indices: list[int] = []
        self.dropped = 0
        self.truncated = 0
        for i, (p, c) in enumerate(zip(prompts, completions, strict=True)):
            full_p = _with_prefix(prefix, p)
            n_prefix = len(full_p) - len(p)
            p_fit, (c_fit,), cut = self.policy.fit(n_prefix, full_p[n_prefix:], [_with_eos(c, eos)])
            self.truncated += int(cut)
            if not c_fit:
                self.dropped += 1
                continue
            self.prompts.append(full_p[:n_prefix] + p_fit)
            self.completions.append(c_fit)
            self.labels.append(records[i].label)
            self.kept_indices.append(i)
        n = len(self.completions)
        self.kl_source = [start + (j - start - 1) % min(kl_block, n - start)
                          for start in range(0, n, kl_block) for j in range(start, min(start + kl_block, n))]
        self.ref_logps: torch.Tensor | None = None  # [n, 2]: completion, kl completion

    def __len__(self) -> int:
        return len(self.prompts)

    def __getitem__(self, i: int) -> Example:
        p, c = self.prompts[i], self.completions[i]
        if self.kind == "sft":
            ids = torch.tensor(p + c, dtype=torch.long)
            labels = torch.tensor([IGNORE_INDEX] * len(p) + c, dtype=torch.long)
            return {"input_ids": ids, "labels": labels, "attention_mask": torch.ones_like(ids)}
        item = {"index": torch.tensor(i), "prompt": torch.tensor(p), "completion": torch.tensor(c),
                "kl_completion": torch.tensor(self.completions[self.kl_source[i]]),
                "label": torch.tensor(self.labels[i])}
        if self.ref_logps is not None:
            item["ref_logps"] = self.ref_logps[i]
        return item

    def fingerprint(self) -> str:
        return sequence_fingerprint(self.prompts, self.completions, [[int(x)] for x in self.labels],
                                    [[k] for k in self.kl_source])

    def set_reference_logps(self, logps: torch.Tensor) -> None:
        if tuple(logps.shape) != (len(self), 2):
            raise ValueError(f"expected reference log-probs of shape {(len(self), 2)}, got {tuple(logps.shape)}")
        self.ref_logps = logps.detach().float().cpu()

    def stats(self) -> dict[str, Any]:
        return {"examples": len(self), "desirable": sum(self.labels), "dropped": self.dropped,
                "truncated": self.truncated}


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
# The embedded default: verifiable tasks
# --------------------------------------------------------------------------------------------


@dataclass
class EmbeddedAlignmentData:
    """Alignment data made from the verifiable tasks (train-split problems; eval-split held out).

    ``sft``: prompt + answer, of which ``n_wrong_sft`` carry a plausible wrong answer instead, so
    that SFT alone stays imperfect. ``pairs``: chosen = the correct answer, rejected = a plausible
    wrong one (off by one, swapped digits, partly sorted, ...), on the same problems.
    ``eval_records``: held-out problems for oracle accuracy; ``eval_pairs``: held-out pairs.
    """

    sft: list[CompletionRecord]
    pairs: list[PreferenceRecord]
    eval_records: list[TaskRecord]
    eval_pairs: list[PreferenceRecord]
    n_wrong_sft: int


def _wrong(record: TaskRecord, rng: random.Random) -> str:
    return get_task(record.task).wrong_answer(record, rng)


def embedded_alignment_data(cfg: AlignDataConfig) -> EmbeddedAlignmentData:
    """Deterministic in ``cfg.seed``; see `EmbeddedAlignmentData`."""
    tasks = cfg.tasks
    n_tasks = len(tasks) if tasks is not None else len(TASKS)
    train = make_task_records(cfg.n_train, cfg.seed, tasks, cfg.difficulty, split="train")
    rng = random.Random(cfg.seed + 1)
    n_wrong = round(cfg.n_train * cfg.sft_wrong_share)
    wrong_idx = set(rng.sample(range(len(train)), n_wrong))
    sft = [CompletionRecord(r.prompt, _wrong(r, rng) if i in wrong_idx else r.answer, where=f"embedded:{i}")
           for i, r in enumerate(train)]
    pairs = [PreferenceRecord(r.prompt, r.answer, _wrong(r, rng), where=f"embedded:{i}")
             for i, r in enumerate(train)]
    eval_records = make_task_records(cfg.n_eval_per_task * n_tasks, cfg.seed + 17, tasks, cfg.difficulty,
                                     split="eval")
    held = make_task_records(cfg.n_eval_pairs, cfg.seed + 29, tasks, cfg.difficulty, split="eval")
    eval_pairs = [PreferenceRecord(r.prompt, r.answer, _wrong(r, rng), where=f"embedded-eval:{i}")
                  for i, r in enumerate(held)]
    return EmbeddedAlignmentData(sft=sft, pairs=pairs, eval_records=eval_records, eval_pairs=eval_pairs,
                                 n_wrong_sft=n_wrong)
