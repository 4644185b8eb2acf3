"""Alignment records: the TRL dataset formats, read, validated and rendered to text.

Formats (TRL's, see its ``dataset_formats`` guide), from a JSONL file, a folder of them, a
``datasets`` folder written by ``save_to_disk``, a ``.json``/``.parquet``/``.csv`` file, or an
in-memory ``datasets.Dataset`` / list of dicts. "Plain" values are strings; "conversational" values are
lists of ``{"role", "content"}`` messages (content a string or a list of OpenAI text parts).

* language modeling (SFT): ``{"text"}`` (plain) or ``{"messages"}`` (conversational, any number of
  turns) -> `TextRecord`;
* prompt/completion (SFT, and KTO with ``label``): ``{"prompt", "completion"}`` -> `CompletionRecord`;
* preference (DPO, ORPO, SimPO): ``{"prompt", "chosen", "rejected"}`` with an explicit prompt, or
  an implicit one (no ``prompt``: for plain text the longest common prefix of ``chosen`` and
  ``rejected``, for conversations their shared leading messages; `extract_prompt`), or the
  UltraFeedback layout (a ``prompt`` string and full ``chosen``/``rejected`` conversations that
  repeat it as their first user message; the prompt is then taken from the conversations, as
  TRL's ``maybe_extract_prompt`` does) -> `PreferenceRecord`;
* unpaired (KTO): ``{"prompt", "completion", "label": bool}`` (0/1 too, as TRL reads it); preference
  records are unpaired as TRL's ``unpair_preference_dataset`` does (`unpair`). SFT also accepts a
  preference record (trained on ``chosen``).

Conversations are rendered with the tokenizer's chat template: the prompt with
``add_generation_prompt=True``, the completion as what the whole conversation adds after it. A
tokenizer without a template is an error naming the fix (``align_data.chat_template=FILE|builtin``;
`use_chat_template` sets it on the tokenizer, so it is saved with the model). Rendered records carry
``chat=True``: their text holds the template's special tokens, so tokenization adds none. For ``messages`` the character
spans of every assistant turn are kept (``TextRecord.spans``), from the template's
``{% generation %}`` markers when it has them (exactly what ``return_assistant_tokens_mask``
uses), else by rendering the conversation turn by turn.

Validation. Every problem with a record (bad JSON, not an object, missing key, wrong type, a
malformed message, an empty completion, ``chosen`` identical to ``rejected``) becomes an `Issue`
naming ``file:line`` (``source[row N]`` for datasets), the key and the reason. By default the
record is skipped and counted (`LoadReport.issues`); with ``strict=True`` the first one raises
`UserError` (exit 2 in the CLI).
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from trainlab.data.loaders import DATASET_MARKERS, JsonlRow, check_record_source, has_files, jsonl_files, read_jsonl
from trainlab.data.tasks import TASKS, TaskRecord, get_task, make_task_records
from trainlab.errors import UserError

if TYPE_CHECKING:
    from trainlab.align.config import AlignDataConfig

RecordKind = Literal["preference", "unpaired", "sft"]
Messages = list[dict[str, str]]
_DATASET_SUFFIXES = {".json": "json", ".parquet": "parquet", ".csv": "csv", ".arrow": "arrow"}

#: ``align_data.chat_template=builtin``: one ``<|role|>`` line per turn, assistant turns end with
#: eos (so the model learns to stop), ``{% generation %}`` markers around what the assistant says.
BUILTIN_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\n' }}"
    "{% if message['role'] == 'assistant' %}"
    "{% generation %}{{ message['content'] + eos_token }}{% endgeneration %}"
    "{% else %}{{ message['content'] }}{% endif %}"
    "{{ '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)
CHAT_TEMPLATE_FIX = ("set align_data.chat_template=FILE (a Jinja chat template) or align_data.chat_template=builtin; "
                     "it is saved with the model")


# --------------------------------------------------------------------------------------------
# Records and validation issues
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PreferenceRecord:
    """A prompt with a preferred (``chosen``) and a dispreferred (``rejected``) completion, as text.

    ``chat``: rendered by a chat template (tokenized without adding special tokens or eos)."""

    prompt: str
    chosen: str
    rejected: str
    where: str = ""
    chat: bool = False


@dataclass(frozen=True)
class CompletionRecord:
    """A prompt and one completion: an SFT example, or a KTO example with its ``label`` (desirable?)."""

    prompt: str
    completion: str
    label: bool = True
    where: str = ""
    chat: bool = False


@dataclass(frozen=True)
class TextRecord:
    """A whole sequence for language modeling: ``{"text"}``, or ``{"messages"}`` rendered (``chat``).

    ``spans``: character ranges of the assistant turns (rendered conversations only; None when
    the template gives no way to find them)."""

    text: str
    where: str = ""
    chat: bool = False
    spans: tuple[tuple[int, int], ...] | None = None


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


class RecordError(Exception):
    """A problem with one record (becomes an `Issue` with the record's location)."""

    def __init__(self, reason: str, key: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.key = key


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _keys(row: dict[str, Any]) -> str:
    return ", ".join(repr(k) for k in row) or "none"


# --------------------------------------------------------------------------------------------
# Chat templates and conversations
# --------------------------------------------------------------------------------------------


def use_chat_template(tokenizer: Any, spec: str | Path | None) -> str | None:
    """Set ``align_data.chat_template`` on ``tokenizer``: ``builtin``, or a file holding a Jinja
    template (or a ``tokenizer_config.json`` / ``chat_template.json`` with a ``chat_template`` key).
    The tokenizer is saved with the model, so the template travels with it. Returns the template."""
    if spec is None or str(spec) == "":
        return None
    if str(spec) == "builtin":
        template = BUILTIN_CHAT_TEMPLATE
    else:
        path = Path(spec).expanduser()
        if not path.is_file():
            raise UserError("chat template file not found (expected a Jinja file or 'builtin')", path=path,
                            key="align_data.chat_template")
        try:
            template = path.read_text(encoding="utf-8-sig")
        except (OSError, UnicodeDecodeError) as exc:
            raise UserError(f"cannot read the chat template: {exc}", path=path, key="align_data.chat_template") \
                from None
        if path.suffix.lower() == ".json":
            try:
                template = json.loads(template)["chat_template"]
            except (json.JSONDecodeError, KeyError, TypeError):
                raise UserError("expected a JSON object with a 'chat_template' string", path=path,
                                key="align_data.chat_template") from None
        if not isinstance(template, str) or not template.strip():
            raise UserError("the chat template is empty", path=path, key="align_data.chat_template")
    tokenizer.chat_template = template
    return template


def _template(tokenizer: Any) -> str:
    template = getattr(tokenizer, "chat_template", None) if tokenizer is not None else None
    if not template:
        raise UserError(f"conversational records need a chat template and the tokenizer has none: {CHAT_TEMPLATE_FIX}")
    if hasattr(tokenizer, "get_chat_template"):  # a dict of named templates: the one transformers picks
        template = tokenizer.get_chat_template()
    elif isinstance(template, dict):
        template = template.get("default") or next(iter(template.values()))
    return str(template)


def _apply(tokenizer: Any, messages: Messages, *, generation_prompt: bool) -> str:
    _template(tokenizer)
    try:
        return str(tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt))
    except Exception as exc:  # jinja errors, role checks of the template
        raise RecordError(f"the tokenizer's chat template failed: {str(exc).splitlines()[0]}") from None


def common_prefix(a: Sequence[Any], b: Sequence[Any]) -> int:
    """Length of the longest common prefix of two sequences (TRL's ``common_prefix_length``)."""
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def render_conversation(tokenizer: Any, prompt: Messages, completion: Messages) -> tuple[str, str]:
    """(prompt text, completion text) of a conversation split into prompt and completion turns.

    The prompt is rendered with ``add_generation_prompt=True`` and the completion is what the full
    conversation adds after it. When a template renders the prompt differently alone, the prompt
    is cut to the longest common prefix of both renderings (TRL cuts the same way, in tokens).
    """
    p = _apply(tokenizer, prompt, generation_prompt=True)
    full = _apply(tokenizer, prompt + completion, generation_prompt=False)
    if not full.startswith(p):
        p = full[: common_prefix(p, full)]
    return p, full[len(p):]


def assistant_spans(tokenizer: Any, messages: Messages, text: str) -> tuple[tuple[int, int], ...] | None:
    """Character spans of the assistant turns in ``text`` (the rendering of ``messages``).

    With ``{% generation %}`` markers: transformers' own generation indices (what TRL's
    ``assistant_only_loss`` masks). Without: each assistant turn is what rendering the conversation
    through that turn adds to the conversation before it plus the generation prompt; None when the
    template does not render turn by turn."""
    template = _template(tokenizer)
    if re.search(r"\{%-?\s*generation\s*-?%\}", template):
        from transformers.utils.chat_template_utils import render_jinja_template

        rendered, indices = render_jinja_template(conversations=[messages], chat_template=template,
                                                  return_assistant_tokens_mask=True,
                                                  **tokenizer.special_tokens_map)
        if rendered[0] == text:
            return tuple((int(a), int(b)) for a, b in indices[0])
    spans = []
    for i, msg in enumerate(messages):
        if msg["role"] != "assistant":
            continue
        before = _apply(tokenizer, messages[:i], generation_prompt=True) if i else ""
        through = _apply(tokenizer, messages[: i + 1], generation_prompt=False)
        if not (through.startswith(before) and text.startswith(through)):
            return None
        spans.append((len(before), len(through)))
    return tuple(spans)


def _check_messages(value: Any, key: str) -> Messages:
    if not isinstance(value, list) or not value:
        raise RecordError(f"expected a non-empty list of messages under {key!r}", key)
    out = []
    for i, msg in enumerate(value):
        where = f"{key}[{i}]"
        if not isinstance(msg, dict):
            raise RecordError(f"expected a message object {{role, content}}, got {_type_name(msg)}", where)
        for field_name in ("role", "content"):
            if field_name not in msg:
                raise RecordError(f"message has no {field_name!r}", where)
        if not isinstance(msg["role"], str):
            raise RecordError(f"expected a string, got {_type_name(msg['role'])}", f"{where}.role")
        out.append({"role": msg["role"], "content": _content_text(msg["content"], f"{where}.content")})
    return out


def _content_text(content: Any, where: str) -> str:
    """A string, or OpenAI's list of parts (``[{"type": "text", "text": ...}]``) as text: the text parts joined by
    newlines as vLLM's chat parser does; another part (an image) needs a vision model."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise RecordError(f"expected a string or a list of text parts, got {_type_name(content)}", where)
    for j, part in enumerate(content):
        if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
            kind = part.get("type") if isinstance(part, dict) else _type_name(part)
            raise RecordError(f"expected a text part {{type: text, text: ...}}, got {kind!r} (a text model reads "
                              "text parts only)", f"{where}[{j}]")
    return "\n".join(part["text"] for part in content)


def _value(row: dict[str, Any], key: str) -> str | Messages:
    if key not in row:
        raise RecordError(f"missing key {key!r} (keys present: {_keys(row)})", key)
    value = row[key]
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return _check_messages(value, key)
    raise RecordError(f"expected a string or a list of messages under {key!r}, got {_type_name(value)}", key)


def _nonempty(text: str, key: str) -> str:
    if not text.strip():
        raise RecordError(f"empty completion under {key!r}", key)
    return text


def _render(tokenizer: Any, prompt: str | Messages, completion: str | Messages, key: str) -> tuple[str, str, bool]:
    """(prompt text, completion text, chat?)"""
    if isinstance(prompt, str) != isinstance(completion, str):
        raise RecordError(f"'prompt' and {key!r} mix plain text and messages; use one style", key)
    if isinstance(prompt, str):
        assert isinstance(completion, str)
        return prompt, _nonempty(completion, key), False
    assert isinstance(completion, list)
    if not any(m["content"].strip() for m in completion):
        raise RecordError(f"empty completion under {key!r}", key)
    p, c = render_conversation(tokenizer, prompt, completion)
    return p, c, True


# --------------------------------------------------------------------------------------------
# Rows -> records
# --------------------------------------------------------------------------------------------


def extract_prompt(chosen: str | Messages, rejected: str | Messages) -> tuple[Any, Any, Any]:
    """(prompt, chosen, rejected) of an implicit-prompt pair, as TRL's ``extract_prompt``: the
    shared leading messages, or for plain text the longest common prefix (a space just before
    the point where the two differ goes with the completions)."""
    if isinstance(chosen, str) != isinstance(rejected, str):
        raise RecordError("'chosen' and 'rejected' mix plain text and messages; use one style", "rejected")
    k = common_prefix(chosen, rejected)
    if k == len(chosen) or k == len(rejected):
        raise RecordError("'chosen' and 'rejected' are identical (or one contains the other)", "rejected")
    if isinstance(chosen, str) and k and chosen[k - 1] == " ":
        k -= 1
    if k == 0:
        raise RecordError("missing key 'prompt' and 'chosen' and 'rejected' share no leading "
                          f"{'text' if isinstance(chosen, str) else 'message'} to take as the prompt", "prompt")
    return chosen[:k], chosen[k:], rejected[k:]


def preference_record(row: dict[str, Any], tokenizer: Any, where: str = "") -> PreferenceRecord:
    """One preference row (any of the layouts in the module docstring) as a `PreferenceRecord`."""
    chosen, rejected = _value(row, "chosen"), _value(row, "rejected")
    prompt = _value(row, "prompt") if "prompt" in row else None
    if prompt is None or (isinstance(prompt, str) and isinstance(chosen, list)):
        prompt, chosen, rejected = extract_prompt(chosen, rejected)  # implicit prompt, or UltraFeedback
    p1, c, chat = _render(tokenizer, prompt, chosen, "chosen")
    p2, r, _ = _render(tokenizer, prompt, rejected, "rejected")
    if p1 != p2:
        # a template whose rendering of the prompt depends on the completion: use the shared part
        n = common_prefix(p1, p2)
        c, r, p1 = p1[n:] + c, p2[n:] + r, p1[:n]
    if c == r:
        raise RecordError("'chosen' and 'rejected' are identical", "rejected")
    return PreferenceRecord(prompt=p1, chosen=c, rejected=r, where=where, chat=chat)


def sft_record(row: dict[str, Any], tokenizer: Any, where: str = "") -> TextRecord | CompletionRecord:
    """An SFT row: ``text``, ``messages``, prompt/completion, or a preference row (its ``chosen``)."""
    if "prompt" not in row and "messages" in row:
        msgs = _check_messages(row["messages"], "messages")
        if not any(m["role"] == "assistant" and m["content"].strip() for m in msgs):
            raise RecordError("expected at least one non-empty 'assistant' message", "messages")
        text = _apply(tokenizer, msgs, generation_prompt=False)
        return TextRecord(text=text, where=where, chat=True, spans=assistant_spans(tokenizer, msgs, text))
    if "prompt" not in row and "text" in row:
        if not isinstance(row["text"], str):
            raise RecordError(f"expected a string under 'text', got {_type_name(row['text'])}", "text")
        return TextRecord(text=_nonempty(row["text"], "text"), where=where)
    if "completion" not in row and "chosen" in row:
        pair = preference_record(row, tokenizer, where)
        return CompletionRecord(pair.prompt, pair.chosen, True, where, pair.chat)
    if "prompt" not in row:
        raise RecordError(f"expected 'text', 'messages' or 'prompt' and 'completion' (keys present: {_keys(row)})",
                          "prompt")
    p, c, chat = _render(tokenizer, _value(row, "prompt"), _value(row, "completion"), "completion")
    return CompletionRecord(prompt=p, completion=c, where=where, chat=chat)


def unpaired_record(row: dict[str, Any], tokenizer: Any, where: str = "") -> CompletionRecord | PreferenceRecord:
    """A KTO row as a labelled `CompletionRecord`, or a preference row (unpaired by `load_records`)."""
    if "completion" not in row and "chosen" in row:
        return preference_record(row, tokenizer, where)
    if "label" not in row:
        raise RecordError(f"missing key 'label' (keys present: {_keys(row)})", "label")
    label = row["label"]
    # TRL reads the label as torch.as_tensor(label, dtype=torch.bool): 0/1 columns (int64 from pandas, parquet) count
    if isinstance(label, int) and not isinstance(label, bool) and label in (0, 1):
        label = bool(label)
    if not isinstance(label, bool):
        shown = repr(label) if isinstance(label, int | float) else _type_name(label)
        raise RecordError(f"expected true or false (or 1/0) under 'label', got {shown}", "label")
    p, c, chat = _render(tokenizer, _value(row, "prompt"), _value(row, "completion"), "completion")
    return CompletionRecord(prompt=p, completion=c, label=label, where=where, chat=chat)


def unpair(pairs: Sequence[PreferenceRecord], batch: int = 1000) -> list[CompletionRecord]:
    """Preference pairs as labelled examples in TRL's order (``unpair_preference_dataset``, a batched
    map of 1000 rows): per block of ``batch`` pairs, every chosen (desirable), then every rejected.
    (Interleaving would make KTO's mismatched KL pairs share their prompt.)"""
    out: list[CompletionRecord] = []
    for start in range(0, len(pairs), batch):
        block = pairs[start:start + batch]
        out += [CompletionRecord(p.prompt, p.chosen, True, p.where, p.chat) for p in block]
        out += [CompletionRecord(p.prompt, p.rejected, False, p.where, p.chat) for p in block]
    return out


# --------------------------------------------------------------------------------------------
# Sources
# --------------------------------------------------------------------------------------------

Row = tuple[str, int | None, dict[str, Any] | RecordError]


def _jsonl_rows(path: Path) -> Iterator[Row]:
    for row in read_jsonl(path):
        yield _from_jsonl(row)


def _from_jsonl(row: JsonlRow) -> Row:
    return str(row.path), row.line, row.value if row.error is None else RecordError(row.error)


def _dataset_rows(dataset: Any, name: str) -> Iterator[Row]:
    for i, row in enumerate(dataset):
        yield f"{name}[row {i}]", None, dict(row) if isinstance(row, dict) else \
            RecordError(f"expected an object, got {_type_name(row)}")


@contextmanager
def _quiet_datasets(datasets: Any) -> Iterator[None]:
    """No progress bars ("Generating train split") or log lines from `datasets` while it reads a file:
    trainlab prints what loading did itself, and a bad file is one error line."""
    from datasets.utils import logging as ds_logging

    bars_off, verbosity = datasets.are_progress_bars_disabled(), ds_logging.get_verbosity()
    datasets.disable_progress_bars()
    ds_logging.set_verbosity(ds_logging.CRITICAL)  # a reader logs its failure before raising it: reported once
    try:
        yield
    finally:
        ds_logging.set_verbosity(verbosity)
        if not bars_off:
            datasets.enable_progress_bars()


def _open_dataset(path: Path, split: str) -> Any:
    try:
        import datasets
    except ImportError:  # pragma: no cover - datasets is a dev/hf extra
        raise UserError("reading a datasets folder needs the `datasets` package (pip install datasets)",
                        path=path) from None
    try:
        with _quiet_datasets(datasets):
            if path.is_dir() and any((path / m).is_file() for m in DATASET_MARKERS):
                ds = datasets.load_from_disk(str(path))
            elif path.is_dir():  # .parquet/.json/.csv files, as a hub dataset lays them out: splits by file name
                ds = datasets.load_dataset(str(path), split=split)
            else:
                ds = datasets.load_dataset(_DATASET_SUFFIXES[path.suffix.lower()], data_files=str(path),
                                           split="train")
    except Exception as exc:  # datasets raises many kinds for unreadable inputs
        while exc.__cause__ is not None or exc.__context__ is not None:  # the reader's own words, not the wrapper's
            exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
        lines = str(exc).strip().splitlines() or [type(exc).__name__]
        raise UserError(f"cannot read as a dataset: {lines[0]}", path=path) from None
    if isinstance(ds, datasets.DatasetDict):
        if split not in ds:
            raise UserError(f"dataset has no split {split!r} (splits: {', '.join(ds)})", path=path)
        ds = ds[split]
    return ds


def record_rows(source: Any, split: str = "train") -> tuple[str, Iterable[Row]]:
    """(a name for messages, the rows) of a source: a path or an in-memory dataset / list of dicts."""
    if not isinstance(source, (str, Path)):
        if hasattr(source, "keys") and hasattr(source, "values") and split in source:  # a DatasetDict
            source = source[split]
        name = (getattr(source, "info", None) and getattr(source.info, "dataset_name", None)) or "dataset"
        return str(name), _dataset_rows(source, str(name))
    path = check_record_source(source)
    if path.is_dir() and any((path / m).is_file() for m in DATASET_MARKERS):
        return str(path), _dataset_rows(_open_dataset(path, split), str(path))
    if path.is_dir() and not has_files(path, (".jsonl",)) and has_files(path, tuple(_DATASET_SUFFIXES)):
        return str(path), _dataset_rows(_open_dataset(path, split), str(path))
    if path.is_dir() or path.suffix.lower() == ".jsonl":
        return str(path), (row for f in jsonl_files(path) for row in _jsonl_rows(f))
    return str(path), _dataset_rows(_open_dataset(path, split), str(path))  # .json/.parquet/.csv/.arrow


def load_records(source: Any, kind: RecordKind = "preference", *, tokenizer: Any = None, strict: bool = False,
                 split: str = "train") -> LoadReport:
    """Read and validate ``kind`` records from ``source`` (see the module docstring).

    Malformed records are skipped and reported in the `LoadReport`, or raise `UserError` at the
    first one with ``strict``. No valid record at all is always an error; so is conversational
    data for a tokenizer without a chat template.
    """
    name, rows = record_rows(source, split)
    report = LoadReport(source=name, kind=kind, records=[])
    parse = {"preference": preference_record, "sft": sft_record, "unpaired": unpaired_record}[kind]
    pairs: list[PreferenceRecord] = []
    for path, line, row in rows:
        report.n_read += 1
        try:
            if isinstance(row, RecordError):
                raise row
            record = parse(row, tokenizer, f"{path}:{line}" if line is not None else path)
            if kind == "unpaired" and isinstance(record, PreferenceRecord):
                pairs.append(record)
            else:
                report.records.append(record)
        except RecordError as exc:
            issue = Issue(path=path, line=line, key=exc.key, reason=exc.reason)
            if strict:
                raise issue.error() from None
            report.issues.append(issue)
    report.records += unpair(pairs)
    if not report.records:
        detail = f"; first problem: {report.issues[0]}" if report.issues else ""
        raise UserError(f"no valid {kind} records ({report.n_read} read, {report.skipped} malformed){detail}",
                        path=name)
    return report


# --------------------------------------------------------------------------------------------
# The embedded default: verifiable tasks
# --------------------------------------------------------------------------------------------


@dataclass
class EmbeddedAlignmentData:
    """Alignment data made from the verifiable tasks (train-split problems; eval-split held out).

    ``sft``: prompt + answer, ``n_wrong_sft`` of them a plausible wrong answer (SFT alone stays imperfect).
    ``pairs``: chosen = the correct answer, rejected = a plausible wrong one (off by one, swapped digits,
    partly sorted, ...), on the same problems. ``eval_records``: held-out problems; ``eval_pairs``: pairs.
    """

    sft: list[CompletionRecord]
    pairs: list[PreferenceRecord]
    eval_records: list[TaskRecord]
    eval_pairs: list[PreferenceRecord]
    n_wrong_sft: int


def embedded_alignment_data(cfg: AlignDataConfig) -> EmbeddedAlignmentData:
    """Deterministic in ``cfg.seed``; see `EmbeddedAlignmentData`."""
    tasks = cfg.tasks
    n_tasks = len(tasks) if tasks is not None else len(TASKS)
    train = make_task_records(cfg.n_train, cfg.seed, tasks, cfg.difficulty, split="train")
    rng = random.Random(cfg.seed + 1)

    def wrong(record: TaskRecord) -> str:
        return get_task(record.task).wrong_answer(record, rng)

    n_wrong = round(cfg.n_train * cfg.sft_wrong_share)
    wrong_idx = set(rng.sample(range(len(train)), n_wrong))
    sft = [CompletionRecord(r.prompt, wrong(r) if i in wrong_idx else r.answer, where=f"embedded:{i}")
           for i, r in enumerate(train)]
    pairs = [PreferenceRecord(r.prompt, r.answer, wrong(r), where=f"embedded:{i}") for i, r in enumerate(train)]
    eval_records = make_task_records(cfg.n_eval_per_task * n_tasks, cfg.seed + 17, tasks, cfg.difficulty,
                                     split="eval")
    held = make_task_records(cfg.n_eval_pairs, cfg.seed + 29, tasks, cfg.difficulty, split="eval")
    eval_pairs = [PreferenceRecord(r.prompt, r.answer, wrong(r), where=f"embedded-eval:{i}")
                  for i, r in enumerate(held)]
    return EmbeddedAlignmentData(sft=sft, pairs=pairs, eval_records=eval_records, eval_pairs=eval_pairs,
                                 n_wrong_sft=n_wrong)
