"""No silent fallback changes what is measured: a mistyped ``eval --method`` is an error, and the
embedded base model a command or lab uses is the one of the preset it was given."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

from trainlab import cli
from trainlab.config import load_config
from trainlab.errors import UserError
from trainlab.recipes import base_model


def _main(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    monkeypatch.setattr(sys, "argv", ["trainlab", *args])
    monkeypatch.delenv("TRAINLAB_DEBUG", raising=False)
    with pytest.raises(SystemExit) as exc:
        cli.main()
    return int(exc.value.code or 0), capsys.readouterr().err


def test_eval_with_an_unknown_method_is_an_error(monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    called: list[Any] = []
    monkeypatch.setattr(base_model, "embedded_base_model", lambda *a, **k: called.append(a) or Path("x"))
    code, err = _main(monkeypatch, capsys, "eval", "--method", "dpoo", "--preset", "tiny")
    assert code == 2, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and "dpoo" in lines[0], err
    for name in ("dpo", "kto", "orpo", "simpo"):
        assert name in lines[0]
    assert not called  # refused before any model is built or loaded


@pytest.mark.parametrize("preset", ["tiny", "quick", "full"])
@pytest.mark.parametrize("command", ["dpo", "eval"])
def test_the_base_model_follows_the_preset(preset: str, command: str, monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    asked: list[str] = []

    class _Stop(Exception):
        pass

    def fake_base(p: str = "quick", **_: Any) -> Path:
        asked.append(p)
        raise _Stop

    monkeypatch.setattr(base_model, "embedded_base_model", fake_base)
    monkeypatch.setenv("TRAINLAB_DEBUG", "1")  # let the marker exception through
    monkeypatch.setattr(sys, "argv", ["trainlab", command, "--preset", preset])
    with pytest.raises(_Stop):
        cli.main()
    assert asked == [preset]


def test_an_unknown_preset_has_no_base_model() -> None:
    with pytest.raises(UserError, match="unknown preset"):
        base_model.embedded_base_model("quik")


def test_publish_accepts_each_presets_base_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The base lab publishes the model it trained for its own preset (tiny and full too, not only quick)."""
    monkeypatch.setenv("TRAINLAB_HOME", str(tmp_path / "home"))
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}", encoding="utf-8")
    for preset in ("tiny", "full"):
        cfg = load_config(preset=preset, overrides=["train.device=cpu"])
        assert base_model.publish_base_model(cfg, model)
        assert (base_model.base_model_dir(cfg) / "model" / "config.json").is_file()
    other = load_config(preset="tiny", overrides=["train.max_steps=3"])
    assert not base_model.publish_base_model(other, model)


def test_base_model_key_ignores_sections_pretraining_does_not_read() -> None:
    """Every config section added (peft, dist, ...) gave each cached base model a new key: retrained."""
    from trainlab.config import load_config
    from trainlab.recipes.base_model import base_model_dir

    cfg = load_config(preset="quick")
    assert base_model_dir(cfg) == base_model_dir(cfg.model_copy(update={"peft": cfg.peft.model_copy(
        update={"method": "lora"})}))
    assert base_model_dir(cfg) != base_model_dir(cfg.model_copy(update={"train": cfg.train.model_copy(
        update={"lr": cfg.train.lr / 2})}))
