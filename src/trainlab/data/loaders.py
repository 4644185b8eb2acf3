"""User data: plain-text and JSONL documents for pretraining, prompt/completion JSONL for SFT.

Bad data is the user's to fix, so every problem raises `UserError` with the file, the 1-based
line and the key, plus what was expected, e.g.::

    data/sft.jsonl:7: completion: expected a string under 'completion', got int

The CLI prints that one line and exits with code 2. Loading is strict on purpose: a silently
skipped line changes what the model is trained on without anyone noticing.

Accepted inputs:

* ``.txt`` / ``.md``: documents separated by one or more blank lines;
* ``.jsonl``: one JSON object per line (blank lines are skipped);
* a folder: every such file in it and its sub-folders, in sorted path order (hidden files and
  other extensions are ignored), so the document order never depends on the filesystem.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainlab.errors import UserError

TEXT_SUFFIXES = (".txt", ".md")
JSONL_SUFFIXES = (".jsonl",)
_BLANK_LINES = re.compile(r"\n[ \t\r\f\v]*\n(?:[ \t\r\f\v]*\n)*")


@dataclass(frozen=True)
class SFTRecord:
    """One supervised example: the model sees ``prompt`` and learns to continue with ``completion``."""

    prompt: str
    completion: str


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _data_files(path: Path, suffixes: tuple[str, ...]) -> list[Path]:
    """The files to read for ``path``: itself, or the matching files under a folder (sorted)."""
    if not path.exists():
        raise UserError("file or folder not found", path=path)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*")
                       if p.is_file() and p.suffix.lower() in suffixes
                       and not any(part.startswith(".") for part in p.relative_to(path).parts))
        if not files:
            raise UserError(f"folder has no {' or '.join(suffixes)} files", path=path)
        return files
    if path.suffix.lower() not in suffixes:
        raise UserError(f"unsupported file type {path.suffix or '(none)'!r}; expected {', '.join(suffixes)}",
                        path=path)
    return [path]


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        line = path.read_bytes()[: exc.start].count(b"\n") + 1
        raise UserError(f"not valid UTF-8 text (byte {exc.start})", path=path, line=line) from None
    except OSError as exc:
        raise UserError(f"cannot read file: {exc.strerror}", path=path) from None


def _jsonl_objects(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) for every non-blank line; anything but a JSON object is an error."""
    for number, line in enumerate(_read_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise UserError(f"invalid JSON: {exc.msg} (column {exc.colno})", path=path, line=number) from None
        if not isinstance(obj, dict):
            raise UserError(f"expected a JSON object, got {_type_name(obj)}", path=path, line=number)
        yield number, obj


def _string_field(obj: dict[str, Any], key: str, path: Path, line: int) -> str:
    """``obj[key]`` as a non-empty string, else a `UserError` naming file, line and key."""
    if key not in obj:
        present = ", ".join(repr(k) for k in obj) or "none"
        raise UserError(f"missing key {key!r} (keys present: {present})", path=path, line=line, key=key)
    value = obj[key]
    if not isinstance(value, str):
        raise UserError(f"expected a string under {key!r}, got {_type_name(value)}",
                        path=path, line=line, key=key)
    if not value.strip():
        raise UserError(f"empty text under {key!r}", path=path, line=line, key=key)
    return value


def _text_file_documents(path: Path) -> list[str]:
    text = _read_text(path).replace("\r\n", "\n")
    return [doc.strip() for doc in _BLANK_LINES.split(text) if doc.strip()]


def load_text_documents(path: str | Path, text_key: str = "text") -> list[str]:
    """Documents from a ``.txt``/``.md`` file, a ``.jsonl`` file (``text_key`` per line) or a folder.

    Text files: each run of lines between blank lines is one document (stripped). JSONL: each
    line is one document. Raises `UserError` for a missing path, a malformed line, or no text.
    """
    root = Path(path).expanduser()
    documents: list[str] = []
    for file in _data_files(root, TEXT_SUFFIXES + JSONL_SUFFIXES):
        if file.suffix.lower() in JSONL_SUFFIXES:
            documents.extend(_string_field(obj, text_key, file, n) for n, obj in _jsonl_objects(file))
        else:
            documents.extend(_text_file_documents(file))
    if not documents:
        raise UserError("no documents found (the data is empty)", path=root)
    return documents


def load_sft_records(path: str | Path) -> list[SFTRecord]:
    """Prompt/completion pairs from a JSONL file (or a folder of them).

    Each line: ``{"prompt": "...", "completion": "..."}``, both non-empty strings; other keys are
    ignored. The strings are kept verbatim (not stripped): whitespace at the boundary matters to
    the tokenizer. Chat-style ``messages`` records are not supported.
    """
    root = Path(path).expanduser()
    records: list[SFTRecord] = []
    for file in _data_files(root, JSONL_SUFFIXES):
        for n, obj in _jsonl_objects(file):
            if "messages" in obj and "prompt" not in obj:
                raise UserError("chat-style 'messages' records are not supported; "
                                "expected keys 'prompt' and 'completion'", path=file, line=n, key="messages")
            prompt = _string_field(obj, "prompt", file, n)
            completion = _string_field(obj, "completion", file, n)
            records.append(SFTRecord(prompt=prompt, completion=completion))
    if not records:
        raise UserError("no prompt/completion records found (the data is empty)", path=root)
    return records
