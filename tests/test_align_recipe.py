"""The alignment recipe: the method registry, TRL's defaults for transformers models, pure DPO,
--eval-data, --ref-model, dropout off, and the saved dtype."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from _hf_tiny import hf_model_dir
from safetensors import safe_open
from torch import nn

from trainlab.align.config import METHODS, align_config, defaults_profile, trl_defaults
from trainlab.align.datasets import PreferenceDataset
from trainlab.align.evaluate import pair_logps
from trainlab.align.objectives import DPOObjective, KTOObjective, ORPOObjective, SimPOObjective
from trainlab.errors import UserError
from trainlab.recipes.align import build_objective, load_policy, run_alignment
from trainlab.recipes.methods import get_method, method_names
from trainlab.train.objectives import CausalLMObjective

_PAIRS = [("What is 2+3? The answer is", " 5.", " 6."), ("Sort the list: 3 1 2 ->", " 1 2 3", " 3 2 1"),
          ("Reverse the word: abc ->", " cba", " abc"), ("The quick brown fox", " jumps.", " sleeps."),
          ("Hello, how are you", " today?", " yesterday?"), ("Once upon a time", " there was", " nothing")]


def _write_pairs(path: Path, n: int, offset: int = 0) -> Path:
    rows = [dict(zip(("prompt", "chosen", "rejected"), _PAIRS[(i + offset) % len(_PAIRS)], strict=True))
            for i in range(n)]
    for i, r in enumerate(rows):
        r["prompt"] = f"{i + offset}. {r['prompt']}"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _write_sft(path: Path, n: int) -> Path:
    path.write_text("".join(json.dumps({"prompt": p, "completion": c}) + "\n" for p, c, _ in _PAIRS[:n]),
                    encoding="utf-8")
    return path


def _cfg(method: str, model: Path, data: Path, *extra: str):  # type: ignore[no-untyped-def]
    return align_config(method, preset="tiny", model=model,
                        overrides=["train.device=cpu", "train.max_steps=2", "train.batch_size=4",
                                   "train.eval_every=0", "train.log_every=1", f"align_data.source={data}", *extra])


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return hf_model_dir(tmp_path_factory.mktemp("gpt2") / "model", "gpt2", positions=64)


@pytest.fixture(scope="module")
def pairs_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _write_pairs(tmp_path_factory.mktemp("data") / "pairs.jsonl", 12)


# ---- the registry -------------------------------------------------------------------------------


def test_registry_covers_the_configured_methods_and_refuses_unknown_ones() -> None:
    assert set(method_names()) == set(METHODS)
    with pytest.raises(UserError, match="unknown alignment method 'dpoo'"):
        get_method("dpoo")
    with pytest.raises(UserError, match="dpoo"):
        align_config("dpoo", preset="tiny")
    with pytest.raises(UserError, match="dpoo"):
        run_alignment("dpoo", align_config("dpo", preset="tiny"), "no-such-model", "/nonexistent/out")


@pytest.mark.parametrize(("method", "cls", "data", "unit", "reference"), [
    ("sft", CausalLMObjective, "sft", "tokens", False),
    ("dpo", DPOObjective, "preference", "pairs", True),
    ("orpo", ORPOObjective, "preference", "pairs", False),
    ("simpo", SimPOObjective, "preference", "pairs", False),
    ("kto", KTOObjective, "unpaired", "examples", True),
])
def test_each_method_entry_drives_its_run(method: str, cls: type, data: str, unit: str, reference: bool,
                                          gpt2_dir: Path, pairs_file: Path, tmp_path: Path) -> None:
    spec = get_method(method)
    assert (spec.data, spec.unit, spec.reference) == (data, unit, reference)
    cfg = _cfg(method, gpt2_dir, pairs_file)
    assert isinstance(build_objective(method, cfg), cls)
    run = run_alignment(method, cfg, gpt2_dir, tmp_path / method, quiet=True)
    s = run.summary
    assert s["unit"] == unit and s["steps"] == 2 and np_isfinite(s["final_loss"])
    assert s["reference"]["mode"] == ("cached" if reference else "none")
    # the collate of the entry built the batches: preference batches hold both sides
    n_train = s["data"]["train"].get("pairs", s["data"]["train"].get("examples"))
    assert n_train == (12 if data == "preference" else 24 if data == "unpaired" else 12)
    assert (tmp_path / method / "model" / "config.json").is_file()
    assert not (tmp_path / method / "checkpoint.pt").exists()  # released after the model was saved


def np_isfinite(x: float) -> bool:
    return x == x and abs(x) != float("inf")


# ---- defaults that fit the model ------------------------------------------------------------------


def _trl_default(cls: type, name: str) -> object:
    """The default TRL's config dataclass declares for ``name`` (its own source of truth)."""
    field = cls.__dataclass_fields__[name]  # type: ignore[attr-defined]
    return field.default_factory() if field.default is dataclasses.MISSING else field.default


@pytest.mark.filterwarnings("ignore::UserWarning")  # trl.experimental announces itself
def test_transformers_folder_gets_trl_defaults(gpt2_dir: Path) -> None:
    from trl import DPOConfig, KTOConfig, SFTConfig
    from trl.experimental.cpo import CPOConfig
    from trl.experimental.orpo import ORPOConfig

    assert defaults_profile(gpt2_dir) == "trl" and defaults_profile(None) == "trainlab"
    dpo = align_config("dpo", preset="tiny", model=gpt2_dir)
    assert dpo.train.lr == _trl_default(DPOConfig, "learning_rate") == 1e-6
    assert dpo.align.beta == _trl_default(DPOConfig, "beta") == 0.1
    assert [dpo.align.loss_type] == _trl_default(DPOConfig, "loss_type") == ["sigmoid"]
    assert dpo.align.rpo_alpha == 0.0 and dpo.align.label_smoothing == _trl_default(DPOConfig, "label_smoothing")
    assert dpo.align.disable_dropout is _trl_default(DPOConfig, "disable_dropout") is True
    # max_length 1024, capped by the model's 64 positions; no separate prompt/completion caps
    assert _trl_default(DPOConfig, "max_length") == 1024
    assert (dpo.align.max_length, dpo.align.max_prompt_length, dpo.align.max_completion_length) == (64, None, None)
    assert dpo.align.truncation_mode == _trl_default(DPOConfig, "truncation_mode")
    assert dpo.align_data.n_eval_pairs == 0  # TRL evaluates only an eval_dataset it is given
    # activation checkpointing on, as every TRL config (a model that fits under TRL fits here); ours keeps none
    for method, trl_cfg in (("dpo", DPOConfig), ("sft", SFTConfig), ("kto", KTOConfig), ("orpo", ORPOConfig),
                            ("simpo", CPOConfig)):
        ckpt = align_config(method, preset="tiny", model=gpt2_dir).model.checkpointing
        assert (ckpt == "full") is _trl_default(trl_cfg, "gradient_checkpointing") is True
    assert align_config("dpo", preset="tiny").model.checkpointing == "none"
    assert align_config("dpo", preset="tiny", model=gpt2_dir,
                        overrides=["model.checkpointing=none"]).model.checkpointing == "none"
    assert align_config("sft", preset="tiny", model=gpt2_dir).train.lr == _trl_default(SFTConfig, "learning_rate")
    kto = align_config("kto", preset="tiny", model=gpt2_dir)
    assert (kto.train.lr, kto.align.beta) == (_trl_default(KTOConfig, "learning_rate"), _trl_default(KTOConfig, "beta"))
    assert (kto.align.kto_desirable_weight, kto.align.kto_undesirable_weight) == (
        _trl_default(KTOConfig, "desirable_weight"), _trl_default(KTOConfig, "undesirable_weight"))
    orpo = align_config("orpo", preset="tiny", model=gpt2_dir)
    assert (orpo.train.lr, orpo.align.orpo_lambda) == (_trl_default(ORPOConfig, "learning_rate"),
                                                       _trl_default(ORPOConfig, "beta"))
    simpo = align_config("simpo", preset="tiny", model=gpt2_dir)
    assert (simpo.train.lr, simpo.align.beta, simpo.align.simpo_gamma) == (
        _trl_default(CPOConfig, "learning_rate"), _trl_default(CPOConfig, "beta"),
        _trl_default(CPOConfig, "simpo_gamma"))
    # what the user sets still wins
    assert align_config("dpo", preset="tiny", model=gpt2_dir, overrides=["train.lr=5e-6"]).train.lr == 5e-6
    assert trl_defaults("dpo", None)["align"]["max_length"] == 1024


def test_embedded_model_keeps_its_tuned_preset_and_dpo_is_pure_everywhere(gpt2_dir: Path) -> None:
    embedded = align_config("dpo", preset="quick")
    assert embedded.train.lr == 3e-5 and embedded.align.max_prompt_length == 64
    for cfg in (embedded, align_config("dpo", preset="tiny", model=gpt2_dir)):
        assert cfg.align.rpo_alpha == 0.0 and cfg.align.loss_type == "sigmoid"
        objective = build_objective("dpo", cfg)
        assert isinstance(objective, DPOObjective) and objective.rpo_alpha == 0.0
    assert align_config("sft", preset="quick").train.lr == 2e-3
    # the checkpoint cadence is the training default (no more save_every 0 for alignment)
    assert embedded.train.save_every > 0
    # the old length names still work
    old = align_config("dpo", preset="tiny", overrides=["align.max_len=40", "align.max_prompt_len=8"])
    assert (old.align.max_length, old.align.max_prompt_length) == (40, 8)


def test_pure_dpo_run_has_no_nll_term_and_dropout_is_off(gpt2_dir: Path, pairs_file: Path, tmp_path: Path) -> None:
    before, _ = load_policy(gpt2_dir)
    assert any(isinstance(m, nn.Dropout) and m.p > 0 for m in before.modules())  # GPT-2's config: 0.1
    run = run_alignment("dpo", _cfg("dpo", gpt2_dir, pairs_file), gpt2_dir, tmp_path / "dpo", quiet=True)
    assert "nll_loss" not in run.summary["history"][-1]
    assert run.summary["dropout_disabled"].get("resid_pdrop") == pytest.approx(0.1)
    assert run.summary["defaults"] == "trl"
    drops = [m for m in run.model.modules() if isinstance(m, nn.Dropout)]
    assert drops and all(m.p == 0.0 for m in drops)
    run.model.train()
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    with torch.no_grad():
        assert torch.equal(run.model(ids), run.model(ids))  # train mode, yet deterministic
    # the length policy used the model's positions (64) as TRL's max_length cap
    assert run.summary["data"]["train"]["max_length"] == 64
    # the saved config still has GPT-2's dropout (only the training run turns it off)
    saved = json.loads((tmp_path / "dpo" / "model" / "config.json").read_text())
    assert saved["resid_pdrop"] == pytest.approx(0.1)


def test_rpo_alpha_adds_the_nll_term(gpt2_dir: Path, pairs_file: Path, tmp_path: Path) -> None:
    run = run_alignment("dpo", _cfg("dpo", gpt2_dir, pairs_file, "align.rpo_alpha=1.0"), gpt2_dir, tmp_path / "rpo",
                        quiet=True)
    assert "nll_loss" in run.summary["history"][-1]


# ---- --eval-data and hold-outs ---------------------------------------------------------------------


def test_eval_data_replaces_the_hold_out(gpt2_dir: Path, tmp_path: Path) -> None:
    train = _write_pairs(tmp_path / "train.jsonl", 20)
    held = run_alignment("dpo", _cfg("dpo", gpt2_dir, train, "align_data.n_eval_pairs=5"), gpt2_dir,
                         tmp_path / "held", quiet=True)
    assert held.summary["data"]["eval"] == held.summary["data"]["eval"] | {"source": "held out", "held_out": 2}
    assert held.summary["data"]["train"]["pairs"] == 18
    evals = _write_pairs(tmp_path / "eval.jsonl", 7, offset=100)
    run = run_alignment("dpo", _cfg("dpo", gpt2_dir, train, "align_data.n_eval_pairs=5",
                                    f"align_data.eval_source={evals}"), gpt2_dir, tmp_path / "file", quiet=True)
    data = run.summary["data"]
    assert data["train"]["pairs"] == 20 and data["eval"]["held_out"] == 0  # nothing held out
    assert data["eval"]["source"] == str(evals) and data["eval_pairs"] == 7
    assert 0.0 <= run.summary["final_eval"]["rewards/accuracies"] <= 1.0 and "kl" in run.summary["final_eval"]
    from trainlab.recipes.align import describe_data

    lines = describe_data(data)
    assert any("7 from" in ln and str(evals) in ln for ln in lines), lines
    assert any("20 pairs" in ln and "truncated" in ln and "dropped" in ln for ln in lines), lines


def test_sft_eval_data_is_judged_by_its_loss(gpt2_dir: Path, tmp_path: Path) -> None:
    train, evals = _write_sft(tmp_path / "train.jsonl", 6), _write_sft(tmp_path / "eval.jsonl", 3)
    run = run_alignment("sft", _cfg("sft", gpt2_dir, train, f"align_data.eval_source={evals}"), gpt2_dir,
                        tmp_path / "sft", quiet=True)
    assert run.summary["final_eval"]["eval_loss"] > 0
    assert run.summary["data"]["eval"]["examples"]["examples"] == 3


# ---- --ref-model -------------------------------------------------------------------------------------


def test_reference_model_scores_the_cached_reference_logps(gpt2_dir: Path, pairs_file: Path, tmp_path: Path) -> None:
    other = hf_model_dir(tmp_path / "other", "gpt2", seed=7, positions=64)  # same tokenizer, other weights
    cfg = _cfg("dpo", gpt2_dir, pairs_file, f"align.ref_model={other}", "train.max_steps=1")
    run = run_alignment("dpo", cfg, gpt2_dir, tmp_path / "cached", quiet=True)
    assert run.summary["reference"]["model"] == str(other) and run.summary["reference"]["mode"] == "cached"
    data = run.data
    assert data is not None and isinstance(data.train, PreferenceDataset)
    ref_model, _ = load_policy(other)
    expected = pair_logps(ref_model, data.train, pad_id=data.pad_id)[0]
    policy0, _ = load_policy(gpt2_dir)
    own = pair_logps(policy0, data.train, pad_id=data.pad_id)[0]
    assert (expected - own).abs().max() > 1e-2  # the two models do differ
    torch.testing.assert_close(data.train.ref_logps, expected, rtol=1e-4, atol=1e-4)
    with pytest.raises(UserError, match="uses no reference model"):
        run_alignment("orpo", _cfg("orpo", gpt2_dir, pairs_file, f"align.ref_model={other}"), gpt2_dir,
                      tmp_path / "orpo", quiet=True)


def test_frozen_reference_model_is_the_other_model(gpt2_dir: Path, pairs_file: Path, tmp_path: Path) -> None:
    from trainlab.align.datasets import collate_preference
    from trainlab.recipes.align import build_alignment_data
    from trainlab.recipes.align_model import prepare_reference

    other = hf_model_dir(tmp_path / "other", "gpt2", seed=7, positions=64)
    cfg = _cfg("dpo", gpt2_dir, pairs_file, f"align.ref_model={other}", "align.reference=frozen",
               f"align_data.eval_source={pairs_file}")
    policy, tok = load_policy(gpt2_dir)
    data = build_alignment_data("dpo", cfg, tok)
    ref = prepare_reference(get_method("dpo"), cfg, policy, tok, data, torch.device("cpu"))
    assert ref.frozen is not None and data.train.ref_logps is None  # scored per batch, nothing cached
    assert ref.model is ref.frozen.model  # KL is measured against the same reference
    assert ref.eval_logps is not None  # and the implicit rewards of the evaluation pairs too
    batch = collate_preference([data.train[i] for i in range(4)], data.pad_id)
    ref_model, _ = load_policy(other)
    expected = pair_logps(ref_model, data.train, pad_id=data.pad_id)[0][:4]
    got = ref.frozen.logps(batch)
    torch.testing.assert_close(got, torch.cat([expected[:, 0], expected[:, 1]]), rtol=1e-4, atol=1e-4)
    objective = get_method("dpo").objective(cfg.align, ref.frozen)
    assert isinstance(objective, DPOObjective) and objective.reference is ref.frozen


def test_reference_model_with_another_tokenizer_is_refused(gpt2_dir: Path, pairs_file: Path, tmp_path: Path) -> None:
    other = hf_model_dir(tmp_path / "qwen", "qwen2")
    with pytest.raises(UserError, match="tokenizer differs"):
        run_alignment("dpo", _cfg("dpo", gpt2_dir, pairs_file, f"align.ref_model={other}"), gpt2_dir,
                      tmp_path / "out", quiet=True)


# ---- the saved dtype --------------------------------------------------------------------------------


def _dtypes(folder: Path) -> set[str]:
    with safe_open(str(folder / "model.safetensors"), "pt") as f:
        return {str(f.get_slice(k).get_dtype()) for k in f.keys()}  # noqa: SIM118


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_a_model_keeps_its_dtype_on_save(arch: str, tmp_path: Path) -> None:
    src = hf_model_dir(tmp_path / "bf16", arch, dtype=torch.bfloat16, positions=64)
    data = _write_pairs(tmp_path / "pairs.jsonl", 8)
    run = run_alignment("orpo", _cfg("orpo", src, data, "train.max_steps=1"), src, tmp_path / "out", quiet=True)
    out = tmp_path / "out" / "model"
    assert run.summary["save_dtype"] == "bfloat16" and _dtypes(out) == {"BF16"}
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
    assert next(run.model.parameters()).dtype == torch.float32  # trained on fp32 master weights
    reloaded, _ = load_policy(out)  # and it loads back
    assert reloaded is not None
    as32 = run_alignment("orpo", _cfg("orpo", src, data, "train.max_steps=1", "align.save_dtype=fp32"), src,
                         tmp_path / "out32", quiet=True)
    assert as32.summary["save_dtype"] == "float32" and _dtypes(tmp_path / "out32" / "model") == {"F32"}


# ---- README: Coming from TRL ----------------------------------------------------------------------


def test_coming_from_trl_names_only_keys_and_flags_that_exist() -> None:
    import re

    from typer.main import get_command

    from trainlab.align.config import AlignRunConfig
    from trainlab.cli import app
    from trainlab.config import known_keys

    text = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    section = text[text.index("## Coming from TRL"):]
    section = section[:section.index("\n## ", 3)]
    keys = set(re.findall(r"`((?:train|align|align_data|model)\.[a-z_0-9]+)", section))
    assert {"train.lr", "align.beta", "align.ref_model", "align_data.eval_source", "align.max_length"} <= keys
    assert keys <= set(known_keys(AlignRunConfig)), keys - set(known_keys(AlignRunConfig))
    flags = set(re.findall(r"`(--[a-z-]+)", section))
    command = get_command(app).commands["dpo"]  # type: ignore[attr-defined]
    options = {opt for p in command.params for opt in p.opts}
    assert {"--ref-model", "--eval-data", "--save-dtype", "--resume"} <= flags
    assert flags <= options, flags - options


def test_cli_flags_eval_data_ref_model_save_dtype(gpt2_dir: Path, pairs_file: Path, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    import sys

    from trainlab import cli

    other = hf_model_dir(tmp_path / "other", "gpt2", seed=7, positions=64)
    evals = _write_pairs(tmp_path / "eval.jsonl", 5, offset=50)
    out = tmp_path / "out"
    argv = ["trainlab", "dpo", "--model", str(gpt2_dir), "--data", str(pairs_file), "--eval-data", str(evals),
            "--ref-model", str(other), "--save-dtype", "bf16", "--preset", "tiny", "--max-steps", "1",
            "--device", "cpu", "--out", str(out), "--json"]
    monkeypatch.setattr(sys, "argv", argv)
    monkeypatch.delenv("TRAINLAB_DEBUG", raising=False)
    with pytest.raises(SystemExit) as exc:
        cli.main()
    captured = capsys.readouterr()
    assert (exc.value.code or 0) == 0, captured.err
    result = json.loads(captured.out)
    assert result["defaults"] == "trl" and result["save_dtype"] == "bfloat16"
    assert result["reference"]["model"] == str(other)
    assert result["data"]["eval"]["source"] == str(evals) and result["data"]["eval_pairs"] == 5
    assert result["data"]["train"]["pairs"] == 12 and "truncated" in result["data"]["train"]
    assert _dtypes(out / "model") == {"BF16"}
    # plain output: the data counts are printed
    monkeypatch.setattr(sys, "argv", [a for a in argv if a != "--json"] + ["--resume-or-start"])
    with pytest.raises(SystemExit):
        cli.main()
    err = capsys.readouterr().err
    assert "training data: 12 pairs" in err and f"evaluation: 5 from {evals}" in err, err


def test_a_transformers_model_keeps_trl_defaults_through_stages(pairs_file: Path, tmp_path: Path) -> None:
    """A Llama folder is trained as our decoder and saved with a trainlab.json; the next stage from it is
    still a transformers model's run (TRL's defaults), as the saved folder says."""
    llama = hf_model_dir(tmp_path / "llama", "llama", positions=64)
    assert defaults_profile(llama) == "trl"
    sft = run_alignment("sft", _cfg("sft", llama, pairs_file, "train.max_steps=1"), llama, tmp_path / "sft",
                        quiet=True)
    out = Path(sft.summary["model_dir"])
    assert (out / "trainlab.json").is_file()  # saved by our decoder
    assert defaults_profile(out) == "trl"
    assert align_config("dpo", preset="tiny", model=out).train.lr == 1e-6
    (tmp_path / "ours").mkdir()
    (tmp_path / "ours" / "trainlab.json").write_text("{}")
    assert defaults_profile(tmp_path / "ours") == "trainlab"  # our own decoder, e.g. the embedded base model


def test_a_bad_reference_model_writes_nothing(gpt2_dir: Path, pairs_file: Path, tmp_path: Path) -> None:
    other = hf_model_dir(tmp_path / "qwen", "qwen2")
    for method, ref in (("dpo", other), ("simpo", gpt2_dir)):
        with pytest.raises(UserError):
            run_alignment(method, _cfg(method, gpt2_dir, pairs_file, f"align.ref_model={ref}"), gpt2_dir,
                          tmp_path / "out", quiet=True)
        assert not (tmp_path / "out").exists()
