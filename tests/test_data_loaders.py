"""User data loaders and the one JSONL reader: what they accept, and errors that name file:line and the key."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from trainlab.data.loaders import JsonlRow, load_text_documents, read_jsonl
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


def test_read_jsonl_bom_crlf_blank_lines_and_bad_lines(tmp_path: Path) -> None:
    f = tmp_path / "d.jsonl"
    f.write_bytes(b"\xef\xbb\xbf" + b'{"a": "1"}\r\n\r\n{"a": 2\r\n["x"]\r\n{"a": "3"}')  # BOM, CRLF, no final newline
    rows = list(read_jsonl(f))
    assert [r.line for r in rows] == [1, 3, 4, 5]
    assert rows[0] == JsonlRow(f, 1, {"a": "1"}) and rows[3].value == {"a": "3"}
    assert rows[1].value is None and rows[1].error is not None and rows[1].error.startswith("invalid JSON")
    assert rows[2].error == "expected a JSON object, got list"
    with pytest.raises(UserError, match=f"^{re.escape(str(f))}:3: invalid JSON"):
        load_text_documents(f, text_key="a")


def test_read_jsonl_splits_on_newlines_only(tmp_path: Path) -> None:
    # U+2028 / U+0085 are legal inside JSON strings; str.splitlines() would cut the record there
    f = tmp_path / "u.jsonl"
    f.write_text(json.dumps({"text": "a\u2028b\x85c"}, ensure_ascii=False) + "\n", encoding="utf-8")
    assert [r.value for r in read_jsonl(f)] == [{"text": "a\u2028b\x85c"}]
    assert load_text_documents(f) == ["a\u2028b\x85c"]


def test_bom_does_not_lose_the_first_document(tmp_path: Path) -> None:
    f = tmp_path / "bom.jsonl"
    f.write_bytes("\ufeff".encode() + b'{"text": "one"}\n{"text": "two"}\n')
    assert load_text_documents(f) == ["one", "two"]
