"""The README says only what runs: planned parts are called planned, and its timing sentence and
results table come from the same run (scripts/readme_results.py generates both)."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from types import ModuleType

import pytest

from trainlab.results import Claim, LabResult, SuiteResult

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PLANNED = ("RLHF", "PEFT", "distributed training")


def _script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("readme_results", ROOT / "scripts" / "readme_results.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _intro() -> str:
    text = README.read_text(encoding="utf-8")
    return text[:text.index("\n## ")]


def _sentence_seconds(text: str) -> int:
    m = re.search(r"<!-- demo-time:begin -->\n.*?(\d+) min (\d+) s.*?<!-- demo-time:end -->", text, flags=re.S)
    assert m, "no generated timing sentence"
    return int(m.group(1)) * 60 + int(m.group(2))


def _table_total(text: str) -> int:
    m = re.search(r"<!-- results:begin -->.*?\| total \| (\d+) \|.*?<!-- results:end -->", text, flags=re.S)
    assert m, "no total row in the results table"
    return int(m.group(1))


def test_the_intro_lists_planned_parts_as_planned() -> None:
    """RLHF, PEFT and distributed training do not exist yet: every intro sentence naming one says so."""
    sentences = re.split(r"(?<=\.)\s+", " ".join(_intro().split()))
    for term in PLANNED:
        naming = [s for s in sentences if term.lower() in s.lower()]
        assert naming, term
        for s in naming:
            assert re.search(r"planned|not implemented", s, flags=re.I), (term, s)


def test_readme_timing_sentence_matches_its_table() -> None:
    text = README.read_text(encoding="utf-8")
    assert _sentence_seconds(text) == _table_total(text)


def _suite(times: list[float]) -> SuiteResult:
    labs = [LabResult(lab=f"lab{i}", title=f"Lab {i}", wall_time_s=t,
                      claims=[Claim(claim="c", source="s", measured="m", verdict="consistent")])
            for i, t in enumerate(times)]
    return SuiteResult(command="trainlab run all --preset quick", labs=labs,
                       env={"device": "cpu", "cpu_name": "Test CPU", "cpu_count": 2, "memory_bytes": 8 * 2**30,
                            "torch_version": "2.13.0"})


@pytest.mark.parametrize("times", [[77.4, 54.2, 30.3, 58.1, 79.0], [0.4, 59.6], [461.0], [89.5, 0.5]])
def test_the_script_writes_table_and_sentence_from_the_same_run(times: list[float]) -> None:
    script = _script()
    before = README.read_text(encoding="utf-8")
    after = script.update(before, _suite(times))
    assert _sentence_seconds(after) == _table_total(after) == round(sum(times))
    assert "Test CPU" in after
    # everything outside the generated regions is untouched
    strip = re.compile(r"<!-- (results|demo-time):begin -->.*?<!-- \1:end -->", flags=re.S)
    assert strip.sub("", after) == strip.sub("", before)


def test_the_script_refuses_a_readme_without_its_regions() -> None:
    with pytest.raises(SystemExit, match="demo-time"):
        _script().update("<!-- results:begin -->\n<!-- results:end -->\n", _suite([1.0]))
