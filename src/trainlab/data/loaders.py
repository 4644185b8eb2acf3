"""User data: plain-text documents for pretraining, and the one JSONL reader.

`read_jsonl` is the only JSONL reader in trainlab (pretraining documents here, every alignment
format in `trainlab.align.records`). It reads UTF-8 with or without a byte-order mark, ``\n`` or
``\r\n`` line endings, skips blank lines, and splits on ``\n`` only (``str.splitlines`` would also
split inside a JSON string holding U+2028 or U+0085). Each line comes back as a `JsonlRow` with
its 1-based line number and either the object or the reason it is not one; callers decide whether
a bad line is fatal (`load_text_documents`: yes) or skipped and counted (alignment records).

Bad data is the user's to fix, so every problem names the file, the 1-based line and the key,
plus what was expected, e.g.::

    data/docs.jsonl:7: text: expected a string under 'text', got int

The CLI prints that one line and exits with code 2.

Accepted inputs for `load_text_documents`:

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
class JsonlRow:
    """One non-blank line of a JSONL file: the object, or why it is not one (``value`` is then None)."""

    path: Path
    line: int
    value: dict[str, Any] | None
    error: str | None = None


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


RECORD_SUFFIXES = (".jsonl", ".json", ".parquet", ".csv", ".arrow")
DATASET_MARKERS = ("dataset_info.json", "state.json", "dataset_dict.json")


def has_files(folder: Path, suffixes: tuple[str, ...]) -> bool:
    """Whether ``folder`` holds a file with one of ``suffixes`` (hidden files and folders aside)."""
    return any(p.is_file() and p.suffix.lower() in suffixes
               and not any(part.startswith(".") for part in p.relative_to(folder).parts) for p in folder.rglob("*"))


def check_record_source(source: str | Path) -> Path:
    """The cheap checks of a ``--data`` path, before any work: it exists, and is a data file or a folder
    holding some (or a ``datasets`` folder). Raises `UserError` naming the path."""
    path = Path(source).expanduser()
    if not path.exists():
        raise UserError("data file or folder not found (trainlab reads local files only and never downloads)",
                        path=path)
    if path.is_dir():
        if not any((path / m).is_file() for m in DATASET_MARKERS) and not has_files(path, RECORD_SUFFIXES):
            raise UserError(f"folder has no data files: expected {', '.join(RECORD_SUFFIXES)} files or a "
                            "`datasets` folder (save_to_disk)", path=path)
    elif path.suffix.lower() not in RECORD_SUFFIXES:
        raise UserError(f"unsupported data file type {path.suffix or '(none)'!r}; expected .jsonl, .json, .parquet, "
                        ".csv or a `datasets` folder", path=path)
    return path


def _read_text(path: Path) -> str:
    """The file's text (a UTF-8 byte-order mark dropped), or a `UserError` naming the bad line."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise UserError(f"cannot read file: {exc.strerror}", path=path) from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise UserError(f"not valid UTF-8 text (byte {exc.start})", path=path, line=line) from None


def read_jsonl(path: str | Path) -> Iterator[JsonlRow]:
    """Every non-blank line of a JSONL file as a `JsonlRow` (see the module docstring)."""
    path = Path(path)
    for number, line in enumerate(_read_text(path).split("\n"), start=1):
        line = line.removesuffix("\r")
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            yield JsonlRow(path, number, None, f"invalid JSON: {exc.msg} (column {exc.colno})")
            continue
        if not isinstance(obj, dict):
            yield JsonlRow(path, number, None, f"expected a JSON object, got {_type_name(obj)}")
            continue
        yield JsonlRow(path, number, obj)


def jsonl_files(path: str | Path) -> list[Path]:
    """The JSONL files of ``path``: itself, or the ``.jsonl`` files under a folder (sorted)."""
    return _data_files(Path(path).expanduser(), JSONL_SUFFIXES)


def _jsonl_objects(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) for every non-blank line; anything but a JSON object is an error."""
    for row in read_jsonl(path):
        if row.error is not None or row.value is None:
            raise UserError(row.error or "expected a JSON object", path=path, line=row.line)
        yield row.line, row.value


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
