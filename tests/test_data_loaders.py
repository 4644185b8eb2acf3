"""User data loaders: what they accept, and errors that name file:line and the key."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from trainlab.data.loaders import SFTRecord, load_sft_records, load_text_documents
from trainlab.errors import UserError


def _jsonl(path: Path, *lines: object) -> Path:
    path.write_text("\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n",
                    encoding="utf-8")
    return path


def _message(excinfo: pytest.ExceptionInfo[UserError]) -> str:
    return str(excinfo.value)


def test_text_file_documents_are_separated_by_blank_lines(tmp_path: Path) -> None:
    f = tmp_path / "a.txt"
    f.write_text("First doc,\nline two.\n\n\nSecond doc.\n  \t \nThird\r\n\r\nFourth\n\n", encoding="utf-8")
    assert load_text_documents(f) == ["First doc,\nline two.", "Second doc.", "Third", "Fourth"]


def test_jsonl_documents_use_the_text_key(tmp_path: Path) -> None:
    f = _jsonl(tmp_path / "d.jsonl", {"text": "one", "id": 1}, "", {"text": "two"})
    assert load_text_documents(f) == ["one", "two"]
    g = _jsonl(tmp_path / "e.jsonl", {"body": "x"})
    assert load_text_documents(g, text_key="body") == ["x"]


def test_folder_reads_supported_files_in_sorted_order(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "b.txt").write_text("from b", encoding="utf-8")
    _jsonl(tmp_path / "a.jsonl", {"text": "from a"})
    (tmp_path / "sub" / "c.txt").write_text("from c1\n\nfrom c2", encoding="utf-8")
    (tmp_path / "notes.csv").write_text("ignored", encoding="utf-8")
    (tmp_path / ".hidden.txt").write_text("ignored", encoding="utf-8")
    assert load_text_documents(tmp_path) == ["from a", "from b", "from c1", "from c2"]


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("{not json", "invalid JSON"),
        ('["a list"]', "expected a JSON object, got list"),
        ({"txt": "typo"}, "text: missing key 'text' (keys present: 'txt')"),
        ({"text": 42}, "text: expected a string under 'text', got int"),
        ({"text": None}, "text: expected a string under 'text', got null"),
        ({"text": "   "}, "text: empty text under 'text'"),
    ],
)
def test_malformed_jsonl_line_names_file_line_and_key(tmp_path: Path, line: object, expected: str) -> None:
    f = _jsonl(tmp_path / "docs.jsonl", {"text": "fine"}, "", line)
    with pytest.raises(UserError) as excinfo:
        load_text_documents(f)
    assert _message(excinfo).startswith(f"{f}:3: {expected}"), _message(excinfo)
    assert excinfo.value.line == 3 and excinfo.value.path == f


def test_missing_unsupported_and_empty_inputs(tmp_path: Path) -> None:
    missing = tmp_path / "missing.txt"
    with pytest.raises(UserError, match=f"^{re.escape(str(missing))}: file or folder not found$"):
        load_text_documents(missing)
    csv = tmp_path / "data.csv"
    csv.write_text("a,b", encoding="utf-8")
    with pytest.raises(UserError, match=r"data\.csv: unsupported file type '\.csv'"):
        load_text_documents(csv)
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n  \n", encoding="utf-8")
    with pytest.raises(UserError, match=f"^{re.escape(str(empty))}: no documents found"):
        load_text_documents(empty)
    folder = tmp_path / "nothing"
    folder.mkdir()
    with pytest.raises(UserError, match="nothing: folder has no"):
        load_text_documents(folder)


def test_invalid_utf8_names_the_line(tmp_path: Path) -> None:
    f = tmp_path / "bin.txt"
    f.write_bytes(b"ok\nstill ok\n\xff\xfe bad\n")
    with pytest.raises(UserError, match=f"^{re.escape(str(f))}:3: not valid UTF-8"):
        load_text_documents(f)


def test_sft_records(tmp_path: Path) -> None:
    f = _jsonl(tmp_path / "sft.jsonl", {"prompt": "12+35=", "completion": "47", "source": "x"},
               {"prompt": "Q: hi\nA:", "completion": " hello"})
    assert load_sft_records(f) == [SFTRecord("12+35=", "47"), SFTRecord("Q: hi\nA:", " hello")]


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ({"prompt": "p", "completion": 7}, "completion: expected a string under 'completion', got int"),
        ({"prompt": ["p"], "completion": "c"}, "prompt: expected a string under 'prompt', got list"),
        ({"prompt": "p"}, "completion: missing key 'completion' (keys present: 'prompt')"),
        ({"prompt": "p", "completion": ""}, "completion: empty text under 'completion'"),
        ({"messages": [{"role": "user", "content": "hi"}]}, "messages: chat-style 'messages' records"),
        ('{"prompt": "p", "completion": "c"', "invalid JSON"),
    ],
)
def test_malformed_sft_line_names_file_line_and_key(tmp_path: Path, line: object, expected: str) -> None:
    f = _jsonl(tmp_path / "sft.jsonl", {"prompt": "a", "completion": "b"}, line)
    with pytest.raises(UserError) as excinfo:
        load_sft_records(f)
    assert _message(excinfo).startswith(f"{f}:2: {expected}"), _message(excinfo)


def test_sft_missing_and_empty(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"sft\.jsonl: file or folder not found"):
        load_sft_records(tmp_path / "sft.jsonl")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n", encoding="utf-8")
    with pytest.raises(UserError, match=r"empty\.jsonl: no prompt/completion records found"):
        load_sft_records(empty)
    txt = tmp_path / "sft.txt"
    txt.write_text("prompt", encoding="utf-8")
    with pytest.raises(UserError, match=r"unsupported file type '\.txt'; expected \.jsonl"):
        load_sft_records(txt)
