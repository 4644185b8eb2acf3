"""The shared lab scaffolding: presets fail loudly, slugs are folder-safe, parts merge."""

from __future__ import annotations

import pytest
import torch

from trainlab.errors import UserError
from trainlab.labs.common import Part, merge_parts, part_markdown, pinned_threads, resolve_preset, slug
from trainlab.results import Claim, Table


def test_unknown_preset_is_an_error_not_a_fallback() -> None:
    table = {"tiny": 1, "quick": 2}
    assert resolve_preset(table, "tiny") == 1
    with pytest.raises(UserError, match=r"unknown preset 'quik' for lab99; expected one of: tiny, quick"):
        resolve_preset(table, "quik", lab="lab99")


@pytest.mark.parametrize(("label", "expected"), [
    ("sigmoid, no NLL, lr/10", "sigmoid-no-nll-lr-10"), ("DPO", "dpo"), ("  β=0.1 ", "0-1"),
    ("a__b--c", "a-b-c")])
def test_slug_is_lowercase_alnum_and_dashes(label: str, expected: str) -> None:
    assert slug(label) == expected


def test_slug_of_nothing_is_an_error() -> None:
    with pytest.raises(UserError):
        slug(" ,/ ")


def test_pinned_threads_restores() -> None:
    before = torch.get_num_threads()
    with pinned_threads("cpu", 1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before


def test_merge_parts_and_markdown() -> None:
    claim = Claim(claim="c", source="s", measured="m", verdict="consistent")
    a = Part("a", "A", summary=["x"], claims=[claim], tables=[Table(title="t", columns=["k"], rows=[[1]])],
             wall_time_s=1.0)
    b = Part("b", "B", summary=["y"], data={"v": 2})
    merged = merge_parts([a, b])
    assert merged["summary"] == ["x", "y"] and merged["claims"] == [claim]
    assert [t.title for t in merged["tables"]] == ["t", "Part wall times"]
    assert merged["data"] == {"a": {"wall_time_s": 1.0}, "b": {"v": 2, "wall_time_s": 0.0}}
    text = part_markdown(a)
    assert "| c | s | m | consistent |  |" in text and "**t**" in text
