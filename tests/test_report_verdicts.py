"""The report knows every verdict: "reproduced from the formula" is rendered, styled and explained."""

from __future__ import annotations

import typing

import pytest
from pydantic import ValidationError

from trainlab.report.render import VERDICT_NOTES, render_html, render_markdown
from trainlab.results import Claim, LabResult, SuiteResult, Verdict


def _suite(verdict: str) -> SuiteResult:
    claim = Claim(claim="ZeRO-1 saves 4x", source="paper", measured="3.8x", verdict=verdict)  # type: ignore[arg-type]
    return SuiteResult(labs=[LabResult(lab="x", title="X", claims=[claim])])


def test_formula_verdict_is_its_own_verdict() -> None:
    assert "reproduced from the formula" in typing.get_args(Verdict)
    md = render_markdown(_suite("reproduced from the formula"))
    assert "| reproduced from the formula |" in md
    assert VERDICT_NOTES["reproduced from the formula"] in md
    html = render_html(_suite("reproduced from the formula"))
    assert 'class="v-reproduced-from-the-formula"' in html and ".v-reproduced-from-the-formula{" in html
    # The note is only printed where the verdict is used.
    assert VERDICT_NOTES["reproduced from the formula"] not in render_markdown(_suite("consistent"))


def test_every_verdict_has_a_style() -> None:
    html = render_html(_suite("consistent"))
    for v in typing.get_args(Verdict):
        if v != "n/a":
            assert ".v-" + v.replace(" ", "-") + "{" in html, v


def test_an_unknown_verdict_is_refused() -> None:
    with pytest.raises(ValidationError):
        _suite("sort of")
