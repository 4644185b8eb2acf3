"""The lab 1.7/1.8 notebooks (jupytext percent scripts) run top to bottom in smoke mode (tiny preset)."""

from __future__ import annotations

import runpy
from pathlib import Path

import pytest

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


@pytest.mark.parametrize("name", ["lab17_02_dpo_loss.py", "lab18_01_orpo_loss.py", "lab18_04_export_and_serve.py"])
def test_notebook_smoke(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("TRAINLAB_NOTEBOOK_PRESET", "tiny")
    monkeypatch.setenv("TRAINLAB_NOTEBOOK_OUT", str(tmp_path / "out"))
    monkeypatch.chdir(tmp_path)
    runpy.run_path(str(NOTEBOOKS / name), run_name="__main__")
    out = capsys.readouterr().out
    assert out.strip()
    if name.startswith("lab17_02"):
        assert (tmp_path / "dpo_losses.png").is_file()
        assert "max |Δ logp|" in out
    if name.startswith("lab18_04"):
        diffs = [float(line.rsplit(" ", 1)[1]) for line in out.splitlines() if "max |logit diff|" in line]
        assert len(diffs) == 3 and max(diffs) < 1e-4


def test_every_notebook_is_a_percent_script() -> None:
    names = sorted(p.name for p in NOTEBOOKS.glob("lab1[78]_0*.py"))
    assert [n[:8] for n in names] == ["lab17_01", "lab17_02", "lab17_03", "lab17_04",
                                      "lab18_01", "lab18_02", "lab18_03", "lab18_04"]
    for name in names:
        text = (NOTEBOOKS / name).read_text(encoding="utf-8")
        assert "format_name: percent" in text and "# %% [markdown]" in text, name
        compile(text, name, "exec")
