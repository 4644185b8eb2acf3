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
# what the intro says trainlab implements -> the module that implements it (it must import)
IMPLEMENTED = {"reward model": "trainlab.rl.reward_model", "PPO": "trainlab.rl.ppo", "GRPO": "trainlab.rl.advantages",
               "LoRA": "trainlab.peft.lora", "QLoRA": "trainlab.peft.qlora", "AdaLoRA": "trainlab.peft.adalora",
               "BitFit": "trainlab.peft.bitfit", "FSDP2": "trainlab.distributed.fsdp",
               "pipeline parallel": "trainlab.distributed.pp", "DeepSpeed": "trainlab.distributed.deepspeed",
               "OpenAI-compatible server": "trainlab.serve.app", "FlashAttention": "trainlab.attention.flash_torch",
               "preallocated": "trainlab.model.static_cache"}

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


def test_the_intro_names_what_exists_and_nothing_as_planned() -> None:
    """The intro lists what trainlab implements: each named part has its module; none is called planned (the
    README says only what runs)."""
    intro = " ".join(_intro().split())
    for term, module in IMPLEMENTED.items():
        assert term in intro, term
        assert importlib.util.find_spec(module) is not None, (term, module)
    assert not re.search(r"planned|not implemented yet", intro, flags=re.I)

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
