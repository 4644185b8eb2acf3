"""Config loading: presets, files, overrides, and one-line errors naming file, line and key."""

from __future__ import annotations

import pytest

from trainlab.config import ModelConfig, RunConfig, load_config, parse_override
from trainlab.errors import UserError


def test_presets_load_and_validate() -> None:
    for name in ("tiny", "quick", "full"):
        cfg = load_config(preset=name)
        assert isinstance(cfg, RunConfig)
    assert load_config(preset="tiny").model.dim == 32


def test_file_then_overrides_win(tmp_path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text("train:\n  lr: 0.01\n  max_steps: 7\nmodel:\n  n_layers: 3\n")
    cfg = load_config(f, preset="tiny", overrides=["train.lr=0.02", "model.n_kv_heads=1"])
    assert cfg.train.lr == 0.02
    assert cfg.train.max_steps == 7
    assert cfg.model.n_layers == 3 and cfg.model.kv_heads == 1


def test_missing_file_is_one_line_user_error(tmp_path) -> None:
    with pytest.raises(UserError) as ei:
        load_config(tmp_path / "does-not-exist.yaml")
    msg = str(ei.value)
    assert "does-not-exist.yaml" in msg and "\n" not in msg


def test_unknown_key_in_file_names_file_line_and_suggestion(tmp_path) -> None:
    f = tmp_path / "bad.yaml"
    f.write_text("model:\n  dim: 64\ntrain:\n  lr_rate: 0.1\n")
    with pytest.raises(UserError) as ei:
        load_config(f)
    msg = str(ei.value)
    assert f"{f}:4:" in msg
    assert "train.lr_rate" in msg and "unknown key" in msg and "train.lr" in msg


def test_bad_value_names_key_value_and_expectation(tmp_path) -> None:
    f = tmp_path / "bad.yaml"
    f.write_text("train:\n  precision: fp8\n")
    with pytest.raises(UserError) as ei:
        load_config(f)
    msg = str(ei.value)
    assert f"{f}:2:" in msg and "train.precision" in msg and "'fp8'" in msg and "fp32" in msg


def test_unknown_override_key() -> None:
    with pytest.raises(UserError) as ei:
        load_config(overrides=["train.lrr=1e-3"])
    msg = str(ei.value)
    assert "train.lrr" in msg and "override train.lrr=1e-3" in msg and "did you mean train.lr" in msg


def test_override_parsing() -> None:
    assert parse_override("train.lr=1e-3") == (["train", "lr"], 1e-3)
    assert parse_override("model.attention=sdpa") == (["model", "attention"], "sdpa")
    with pytest.raises(UserError):
        parse_override("train.lr")


def test_invalid_yaml_reports_line(tmp_path) -> None:
    f = tmp_path / "broken.yaml"
    f.write_text("train:\n  lr: [1, 2\n")
    with pytest.raises(UserError) as ei:
        load_config(f)
    assert str(f) in str(ei.value) and "invalid YAML" in str(ei.value)


def test_model_shape_validation() -> None:
    with pytest.raises(ValueError):
        ModelConfig(dim=130, n_heads=4)
    with pytest.raises(ValueError):
        ModelConfig(dim=128, n_heads=4, n_kv_heads=3)
    with pytest.raises(UserError) as ei:
        load_config(overrides=["model.n_kv_heads=3"])
    assert "n_kv_heads" in str(ei.value)


def test_checkpoint_cadence_defaults_for_every_training_command() -> None:
    """Nothing lost by default: every command checkpoints every save_every steps or 5 minutes."""
    from trainlab.align.config import METHODS, align_config

    cfgs = [load_config(preset=p).train for p in ("tiny", "quick", "full")]
    cfgs += [align_config(m, preset=p).train for m in METHODS for p in ("tiny", "quick", "full")]
    for train in cfgs:
        assert train.save_every > 0 and train.save_every_minutes == 5
        assert train.keep_checkpoint is False and train.report_to == "jsonl" and train.epochs is None


def test_new_train_keys_validate() -> None:
    cfg = load_config(preset="tiny", overrides=["train.epochs=2.5", "train.report_to=none",
                                                "train.keep_checkpoint=true", "train.save_every_minutes=0.5"])
    assert (cfg.train.epochs, cfg.train.report_to, cfg.train.keep_checkpoint, cfg.train.save_every_minutes) == \
        (2.5, "none", True, 0.5)
    with pytest.raises(UserError, match=r"train\.report_to: invalid value = 'wandb'.*'jsonl', 'tensorboard' or "
                                        r"'none'"):
        load_config(preset="tiny", overrides=["train.report_to=wandb"])
    with pytest.raises(UserError, match=r"train\.epochs: invalid value = 0"):
        load_config(preset="tiny", overrides=["train.epochs=0"])
