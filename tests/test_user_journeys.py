"""A TRL user's first hour with trainlab: the inputs a user really types, checked as a user sees them.

Each case is a regression found by acting as that user (tiny local transformers models from
``_hf_tiny``, TRL's data formats, bad input of every kind). The contract checked is the CLI's:
exit 0 and a folder ``transformers`` loads as it was given (tokenizer files unchanged); exit 2 with
ONE line on stderr that names the key, file or option and what was expected; never a traceback.
Commands run in-process (``trainlab.cli.run_cli``) so the file stays fast.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from _hf_tiny import hf_model_dir

from trainlab.cli import run_cli


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("journey-models")
    return {arch: hf_model_dir(root / arch, arch, positions=64) for arch in ("gpt2", "qwen3")}


@pytest.fixture(scope="module")
def pairs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("journey-data") / "pairs.jsonl"
    rows = [{"prompt": f"What is {i}+3?", "chosen": f" The answer is {i + 3}.", "rejected": " I do not know."}
            for i in range(8)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _cli(capfd: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = run_cli([str(a) for a in args])
    out, err = capfd.readouterr()
    return code, out, err


def _one_line_error(code: int, err: str, *needles: str) -> None:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2, (code, err)
    assert "Traceback" not in err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


# ------------------------------------------------------------------------------ values no run can use

@pytest.mark.parametrize(("override", "key"), [
    ("train.lr=inf", "train.lr"),            # was accepted: lr nan at step 1, a NaN model saved, exit 0
    ("train.eps=inf", "train.eps"),          # was accepted: every update 0, exit 0
    ("align.beta=inf", "align.beta"),        # was accepted: diverged at step 1 (exit 1)
])
def test_infinite_numbers_are_bad_values(capfd: pytest.CaptureFixture[str], tmp_path: Path,
                                         models: dict[str, Path], pairs: Path, override: str, key: str) -> None:
    code, _, err = _cli(capfd, "dpo", "--model", models["gpt2"], "--data", pairs, "--out", tmp_path / "out",
                        "--max-steps", "1", override)
    _one_line_error(code, err, key, "finite")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("yaml_text", "needles"), [
    ("trainn:\n  lr: 1e-3\n", ("cfg.yaml:1", "trainn", "did you mean train?")),  # was: 'did you mean train.lr?'
    ("align:\n  betta: 0.2\n", ("cfg.yaml:2", "align.betta", "did you mean align.beta?")),
])
def test_config_file_typos_suggest_what_was_meant(capfd: pytest.CaptureFixture[str], tmp_path: Path,
                                                  models: dict[str, Path], pairs: Path, yaml_text: str,
                                                  needles: tuple[str, ...]) -> None:
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml_text, encoding="utf-8")
    code, _, err = _cli(capfd, "dpo", "--model", models["gpt2"], "--data", pairs, "--out", tmp_path / "out",
                        "-c", cfg)
    _one_line_error(code, err, *needles)


# ---------------------------------------------------------------------------------------- output folder

@pytest.mark.parametrize("where", ["file", "under-a-file"])
def test_out_that_cannot_be_a_folder(capfd: pytest.CaptureFixture[str], tmp_path: Path,
                                     models: dict[str, Path], pairs: Path, where: str) -> None:
    """Was a FileExistsError/NotADirectoryError traceback (exit 1) after loading model and data."""
    afile = tmp_path / "notes.txt"
    afile.write_text("keep me\n", encoding="utf-8")
    out = afile if where == "file" else afile / "run"
    for command in ("dpo", "sft"):
        code, _, err = _cli(capfd, command, "--model", models["gpt2"], "--data", pairs, "--out", out,
                            "--max-steps", "1")
        _one_line_error(code, err, "--out", str(afile), "not a folder")
    assert afile.read_text(encoding="utf-8") == "keep me\n"


# ----------------------------------------------------------------------------------------- generation

@pytest.mark.parametrize(("words", "new_tokens", "needles"), [
    (40, 4, ("prompt 1", "64 positions")),         # the prompt alone is longer than the position table
    (10, 60, ("--max-new-tokens", "64 positions")),  # prompt + new tokens run past it
])
def test_generate_past_learned_positions(capfd: pytest.CaptureFixture[str], models: dict[str, Path], words: int,
                                         new_tokens: int, needles: tuple[str, ...]) -> None:
    """GPT-2 has a learned table of n_positions: indexing past it was an IndexError traceback (exit 1)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(models["gpt2"]))
    prompt = " ".join(["fox"] * words)
    assert (len(tok(prompt)["input_ids"]) > 64) == (words == 40)
    code, _, err = _cli(capfd, "generate", "--model", models["gpt2"], "-p", "hi", "-p", prompt,
                        "--max-new-tokens", str(new_tokens))
    needles = tuple(n.replace("prompt 1", "prompt 2") for n in needles)
    _one_line_error(code, err, "GPT2LMHeadModel", *needles)


def test_generate_within_learned_positions_still_matches_transformers(capfd: pytest.CaptureFixture[str],
                                                                      models: dict[str, Path]) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(models["gpt2"]))
    prompt = " ".join(["fox"] * 10)
    n = len(tok(prompt)["input_ids"])
    code, out, err = _cli(capfd, "generate", "--model", models["gpt2"], "-p", prompt, "--max-new-tokens",
                          str(64 - n), "--json")
    assert code == 0, err
    hf = AutoModelForCausalLM.from_pretrained(str(models["gpt2"])).eval()
    with torch.no_grad():
        ids = hf.generate(**tok(prompt, return_tensors="pt"), max_new_tokens=64 - n, do_sample=False,
                          pad_token_id=tok.eos_token_id)
    want = tok.decode(ids[0, n:], skip_special_tokens=True)
    assert json.loads(out)[0]["completion"] == want


# ------------------------------------------------------------------------------------- the saved folder

@pytest.mark.parametrize("arch", ["gpt2", "qwen3"])
def test_saved_tokenizer_files_are_the_input_files(capfd: pytest.CaptureFixture[str], tmp_path: Path,
                                                   models: dict[str, Path], pairs: Path, arch: str) -> None:
    """transformers 5 writes its load arguments (``is_local``, ``local_files_only``) into a re-saved
    tokenizer_config.json; a folder trainlab saves has the user's tokenizer config, unchanged."""
    code, _, err = _cli(capfd, "dpo", "--model", models[arch], "--data", pairs, "--out", tmp_path / "out",
                        "--max-steps", "1")
    assert code == 0, err
    saved = tmp_path / "out" / "model"
    for name in ("tokenizer_config.json", "tokenizer.json", "chat_template.jinja"):
        src = models[arch] / name
        assert (saved / name).is_file() == src.is_file(), name
        if src.is_file():
            got, want = (saved / name).read_text(encoding="utf-8"), src.read_text(encoding="utf-8")
            if name.endswith(".json"):
                got, want = json.loads(got), json.loads(want)
            assert got == want, name


# ------------------------------------------------------------------------------------------ data files

def test_kto_labels_as_ones_and_zeros(tmp_path: Path) -> None:
    """TRL reads ``label`` as ``torch.as_tensor(label, dtype=torch.bool)``: an int64 0/1 column (pandas,
    parquet, CSV) is a KTO dataset there; every record was rejected here ('got int')."""
    import datasets

    from trainlab.align.records import load_records

    rows = [{"prompt": f"{i}+1=", "completion": f" {i + 1 + (i % 2)}", "label": int(i % 2 == 0)} for i in range(6)]
    path = tmp_path / "kto.parquet"
    datasets.Dataset.from_list(rows).to_parquet(str(path))
    report = load_records(path, "unpaired")
    assert report.skipped == 0
    assert [r.label for r in report.records] == [True, False] * 3
    bad = load_records([*rows, dict(rows[0], label=2)], "unpaired")
    assert bad.skipped == 1 and "expected true or false (or 1/0) under 'label', got 2" in str(bad.issues[0])


def test_a_folder_of_parquet_files_as_the_hub_lays_them_out(tmp_path: Path) -> None:
    """``data/train-00000-of-00001.parquet`` + ``data/test-...``: a dataset downloaded from the hub, which
    ``load_dataset(folder)`` reads; it was 'folder has no .jsonl files'."""
    import datasets

    from trainlab.align.records import load_records

    rows = [{"prompt": f"{i}+1=", "chosen": f" {i + 1}", "rejected": f" {i + 2}"} for i in range(8)]
    (tmp_path / "data").mkdir()
    datasets.Dataset.from_list(rows[:6]).to_parquet(str(tmp_path / "data" / "train-00000-of-00001.parquet"))
    datasets.Dataset.from_list(rows[6:]).to_parquet(str(tmp_path / "data" / "test-00000-of-00001.parquet"))
    assert [r.prompt for r in load_records(tmp_path, "preference").records] == [r["prompt"] for r in rows[:6]]
    assert [r.prompt for r in load_records(tmp_path, "preference", split="test").records] == ["6+1=", "7+1="]


@pytest.mark.parametrize(("name", "content", "needle"), [
    ("broken.json", '[{"prompt": "a", "chosen": "b", "rejected": "c"}, {"prompt": ', "cannot read as a dataset"),
    ("broken.csv", 'prompt,chosen,rejected\n"a,b\n', "cannot read as a dataset"),
    ("broken.parquet", "PAR1garbagePAR1", "cannot read as a dataset: Parquet file size"),
])
def test_unreadable_dataset_files_are_one_line(capfd: pytest.CaptureFixture[str], tmp_path: Path,
                                               models: dict[str, Path], name: str, content: str, needle: str) -> None:
    """Was: a 'Generating train split' progress bar and the reader's own log line on stderr before the
    error, which said only 'An error occurred while generating the dataset'."""
    data = tmp_path / name
    data.write_text(content, encoding="utf-8")
    code, _, err = _cli(capfd, "dpo", "--model", models["gpt2"], "--data", data, "--out", tmp_path / "out",
                        "--max-steps", "1")
    _one_line_error(code, err, str(data), needle)
    assert "error occurred while generating" not in err


def test_a_good_parquet_file_trains_without_progress_bars(capfd: pytest.CaptureFixture[str], tmp_path: Path,
                                                          models: dict[str, Path], pairs: Path) -> None:
    import datasets

    data = tmp_path / "pairs.parquet"
    datasets.Dataset.from_json(str(pairs)).to_parquet(str(data))
    capfd.readouterr()
    code, _, err = _cli(capfd, "dpo", "--model", models["gpt2"], "--data", data, "--out", tmp_path / "out",
                        "--max-steps", "1")
    assert code == 0, err
    assert "Generating" not in err and "examples/s" not in err
    assert "training data: 8 pairs" in err


# ---------------------------------------------------------------------------------------------- resume

def test_resume_with_another_method_is_refused(capfd: pytest.CaptureFixture[str], tmp_path: Path,
                                               models: dict[str, Path], pairs: Path) -> None:
    """`trainlab orpo --resume` on a DPO run's checkpoint (same model, same pairs) continued it as ORPO."""
    out = tmp_path / "run"
    base = ("--model", models["gpt2"], "--data", pairs, "--out", out)
    code, _, err = _cli(capfd, "dpo", *base, "--max-steps", "1", "train.keep_checkpoint=true")
    assert code == 0 and (out / "checkpoint.pt").is_file(), err
    code, _, err = _cli(capfd, "orpo", *base, "--max-steps", "2", "--resume")
    _one_line_error(code, err, "cannot resume", "method dpo != orpo", "--force")
    code, _, err = _cli(capfd, "dpo", *base, "--max-steps", "2", "--resume")
    assert code == 0, err


@pytest.mark.parametrize(("override", "needle"), [
    ("learning_rate=1e-6", "TRL's learning_rate is train.lr in trainlab"),
    ("train.learning_rate=1e-6", "TRL's learning_rate is train.lr"),  # was: 'did you mean train.min_lr_ratio?'
    ("beta=0.2", "TRL's beta is align.beta"),
    ("align.max_grad_norm=1", "TRL's max_grad_norm is train.grad_clip"),
    ("train.per_device_train_batch_size=4", "TRL's per_device_train_batch_size is train.batch_size"),
    ("bf16=true", "TRL's bf16 is train.precision=bf16"),
])
def test_trl_argument_names_point_to_trainlab_keys(capfd: pytest.CaptureFixture[str], tmp_path: Path,
                                                   models: dict[str, Path], pairs: Path, override: str,
                                                   needle: str) -> None:
    from trainlab.align.config import AlignRunConfig
    from trainlab.config import TRL_NAMES, known_keys

    keys = known_keys(AlignRunConfig)
    assert all(v.split("=")[0] in keys for v in TRL_NAMES.values())  # every target is a real key
    code, _, err = _cli(capfd, "dpo", "--model", models["gpt2"], "--data", pairs, "--out", tmp_path / "out",
                        override)
    _one_line_error(code, err, override.split("=")[0], "unknown key", needle)


# ------------------------------------------------------------------------------------------------ PEFT

def test_peft_on_a_saved_folder_and_an_adapter_given_as_model(capfd: pytest.CaptureFixture[str], tmp_path: Path,
                                                              models: dict[str, Path], pairs: Path) -> None:
    """A folder trainlab saved is a plain transformers folder: peft.get_peft_model trains it, and the
    adapter saves and loads. The adapter folder itself given as --model was 'no config.json: not a model
    folder'; it is named as a PEFT adapter with the fix."""
    peft = pytest.importorskip("peft")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    code, _, err = _cli(capfd, "dpo", "--model", models["qwen3"], "--data", pairs, "--out", tmp_path / "run",
                        "--max-steps", "1")
    assert code == 0, err
    saved = tmp_path / "run" / "model"
    lora = peft.get_peft_model(AutoModelForCausalLM.from_pretrained(str(saved)),
                               peft.LoraConfig(r=4, target_modules="all-linear", task_type="CAUSAL_LM"))
    batch = AutoTokenizer.from_pretrained(str(saved))("What is 2+3?", return_tensors="pt")
    lora(**batch, labels=batch["input_ids"]).loss.backward()
    lora.save_pretrained(str(tmp_path / "adapter"))
    capfd.readouterr()  # transformers' own loading bars above
    for command in (("dpo", "--data", pairs, "--out", tmp_path / "out2", "--max-steps", "1"), ("generate", "-p", "hi")):
        code, _, err = _cli(capfd, command[0], "--model", tmp_path / "adapter", *command[1:])
        _one_line_error(code, err, "PEFT adapter", "merge_and_unload")
    # the run folder itself (the model is in run/model): named as a run folder, with the model's path
    code, _, err = _cli(capfd, "generate", "--model", tmp_path / "run", "-p", "hi")
    _one_line_error(code, err, "a run folder, not a model folder", str(saved))


def test_a_max_length_past_the_models_positions_is_capped_out_loud(capfd: pytest.CaptureFixture[str],
                                                                   tmp_path: Path, models: dict[str, Path],
                                                                   pairs: Path) -> None:
    """align.max_length=100000 on a 64-position GPT-2 was silently trained at 64."""
    args = ("dpo", "--model", models["gpt2"], "--data", pairs, "--max-steps", "1", "align.max_length=100000")
    code, _, err = _cli(capfd, *args, "--out", tmp_path / "a")
    assert code == 0, err
    assert "align.max_length=100000 is longer than the model's 64 positions: capped at 64" in err
    code, out, err = _cli(capfd, *args, "--out", tmp_path / "b", "--json")
    assert code == 0, err
    train = json.loads(out)["data"]["train"]
    assert (train["max_length"], train["max_length_capped_from"]) == (64, 100000)


def test_skipped_records_are_said_once_with_the_first_reason(capfd: pytest.CaptureFixture[str], tmp_path: Path,
                                                             models: dict[str, Path], pairs: Path) -> None:
    """A malformed line was reported twice: a log warning and the summary line."""
    data = tmp_path / "pairs.jsonl"
    data.write_text(pairs.read_text(encoding="utf-8") + '{"prompt": "1+1=", "chosen": "2"}\n', encoding="utf-8")
    code, _, err = _cli(capfd, "dpo", "--model", models["gpt2"], "--data", data, "--max-steps", "1",
                        "--out", tmp_path / "out")
    assert code == 0, err
    said = [ln for ln in err.splitlines() if "malformed" in ln]
    assert len(said) == 1, err
    assert "skipped 1 malformed record(s) of 9; first: " in said[0] and f"{data}:9" in said[0], said
    assert "rejected: missing key 'rejected'" in said[0], said


# ------------------------------------------------------------------------------------------------ eval

def test_eval_reference_with_another_tokenizer_is_refused(capfd: pytest.CaptureFixture[str],
                                                          models: dict[str, Path], pairs: Path) -> None:
    """`trainlab eval --reference` with a model of another tokenizer (same vocabulary size) printed
    rewards and KL computed on ids that mean other text there; training's --ref-model refuses it."""
    code, _, err = _cli(capfd, "eval", "--model", models["qwen3"], "--reference", models["gpt2"], "--data", pairs)
    _one_line_error(code, err, str(models["gpt2"]), "--reference", "tokenizer differs")
    code, out, err = _cli(capfd, "eval", "--model", models["qwen3"], "--reference", models["qwen3"], "--data", pairs,
                          "--json")
    assert code == 0, err
    assert json.loads(out)["pairs"]["kl"] == pytest.approx(0.0, abs=1e-6)


def test_eval_reads_unpaired_data_with_method_kto(capfd: pytest.CaptureFixture[str], tmp_path: Path,
                                                  models: dict[str, Path]) -> None:
    """`trainlab eval --method kto --data UNPAIRED` refused KTO's own data ('missing key chosen'): it reports the
    implicit rewards of desirable and undesirable completions and how often a desirable one ranks higher."""
    data = tmp_path / "kto.jsonl"
    rows = [{"prompt": f"What is {i}+3?", "completion": f" {i + 3}." if i % 2 else " I do not know.",
             "label": bool(i % 2)} for i in range(10)]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    code, out, err = _cli(capfd, "eval", "--model", models["qwen3"], "--method", "kto", "--data", data,
                          "--reference", models["qwen3"], "--json")
    assert code == 0, err
    ex = json.loads(out)["examples"]
    assert (ex["n_desirable"], ex["n_undesirable"]) == (5, 5)
    # the model is its own reference: every reward is 0, every (desirable, undesirable) pair a tie
    assert ex["rewards/chosen"] == ex["rewards/rejected"] == 0.0 and ex["rewards/ordering"] == 0.5
    code, out, err = _cli(capfd, "eval", "--model", models["qwen3"], "--method", "kto", "--data", data, "--json")
    assert code == 0, err
    ex = json.loads(out)["examples"]

    from trainlab.align.config import align_config
    from trainlab.align.evaluate import unpaired_logps
    from trainlab.recipes.align import build_alignment_data, load_policy

    model, tok = load_policy(models["qwen3"])
    cfg = align_config("kto", preset="quick", model=models["qwen3"])
    aligned = build_alignment_data("kto", cfg, tok, source=data)
    sums, counts, labels = unpaired_logps(model, aligned.train, pad_id=aligned.pad_id)
    r = (cfg.align.beta * sums / counts).tolist()
    good = [x for x, lab in zip(r, labels.tolist(), strict=True) if lab]
    bad = [x for x, lab in zip(r, labels.tolist(), strict=True) if not lab]
    wins = sum((g > b) + 0.5 * (g == b) for g in good for b in bad)  # Mann-Whitney U / (n_good n_bad)
    assert ex["rewards/ordering"] == pytest.approx(wins / (len(good) * len(bad)))
    assert ex["rewards/margins"] == pytest.approx(sum(good) / len(good) - sum(bad) / len(bad), abs=1e-6)  # fp32


def test_eval_against_on_user_data_is_not_silently_skipped(capfd: pytest.CaptureFixture[str],
                                                           models: dict[str, Path], pairs: Path) -> None:
    """--against with --data exited 0 without a win rate (it is judged on the embedded tasks only)."""
    code, _, err = _cli(capfd, "eval", "--model", models["qwen3"], "--against", models["gpt2"], "--data", pairs)
    _one_line_error(code, err, "--against", "--data")


def test_eval_against_answers_with_each_models_own_tokenizer(monkeypatch: pytest.MonkeyPatch,
                                                             models: dict[str, Path]) -> None:
    """The win rate decoded --against's answers with the judged model's tokenizer (text of other ids)."""
    from transformers import AutoTokenizer

    import trainlab.recipes.align as recipe
    from trainlab.align.config import align_config

    used: list[dict[str, int]] = []
    real = recipe.task_completions

    def spy(model, tokenizer, records, **kw):  # type: ignore[no-untyped-def]
        used.append(tokenizer.get_vocab())
        return real(model, tokenizer, records, **kw)

    monkeypatch.setattr(recipe, "task_completions", spy)
    cfg = align_config("dpo", preset="tiny", model=models["qwen3"], overrides=["train.device=cpu"])
    out = recipe.run_eval(models["qwen3"], cfg, against=models["gpt2"])
    assert out["win_rate"]["against"] == str(models["gpt2"])
    assert used == [AutoTokenizer.from_pretrained(str(models[a])).get_vocab()
                                            for a in ("qwen3", "gpt2")]


def test_generate_on_a_bf16_folder_runs_in_bf16_as_transformers(capfd: pytest.CaptureFixture[str],
                                                                tmp_path: Path) -> None:
    """A bf16 Llama folder was generated from in float32 (training's master dtype): greedy tokens
    drifted from transformers' generate, which loads and runs it in bf16."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = hf_model_dir(tmp_path / "llama-bf16", "llama", seed=1, dtype=torch.bfloat16)
    prompts = ["hi", "The quick brown fox jumps over", "Sort the list"]
    code, out, err = _cli(capfd, "generate", "--model", folder, *[a for p in prompts for a in ("-p", p)],
                          "--max-new-tokens", "30", "--json")
    assert code == 0, err
    tok = AutoTokenizer.from_pretrained(str(folder))
    hf = AutoModelForCausalLM.from_pretrained(str(folder)).eval()
    assert hf.dtype == torch.bfloat16
    want = []
    for p in prompts:
        enc = tok(p, return_tensors="pt")
        with torch.no_grad():
            ids = hf.generate(**enc, max_new_tokens=30, do_sample=False, pad_token_id=tok.pad_token_id)
        want.append(tok.decode(ids[0, enc["input_ids"].shape[1]:], skip_special_tokens=True))
    assert [r["completion"] for r in json.loads(out)] == want


@pytest.mark.parametrize(("content", "needles"), [
    (b"train:\n  lr: \xff\n", ("cfg.yaml:2", "not valid UTF-8")),        # was a UnicodeDecodeError traceback
    (b"\xef\xbb\xbftrain:\n  lrr: 1\n", ("cfg.yaml:2", "train.lrr", "did you mean train.lr?")),  # BOM: not a key
    (None, ("cfg.yaml", "is a folder; expected a YAML config file")),  # was 'config file not found'
])
def test_config_files_that_are_not_yaml_text(capfd: pytest.CaptureFixture[str], tmp_path: Path,
                                             models: dict[str, Path], pairs: Path, content: bytes | None,
                                             needles: tuple[str, ...]) -> None:
    cfg = tmp_path / "cfg.yaml"
    if content is None:
        cfg.mkdir()
    else:
        cfg.write_bytes(content)
    code, _, err = _cli(capfd, "dpo", "--model", models["gpt2"], "--data", pairs, "--out", tmp_path / "out",
                        "-c", cfg)
    _one_line_error(code, err, *needles)


@pytest.mark.parametrize("command", ["dpo", "sft", "rm", "ppo", "grpo"])
def test_a_bad_data_path_is_refused_before_any_work(monkeypatch: pytest.MonkeyPatch,
                                                    capfd: pytest.CaptureFixture[str], tmp_path: Path,
                                                    command: str) -> None:
    """`trainlab dpo --data EMPTY_FOLDER` trained the embedded base model (minutes) and then said the folder was
    empty; the data path is checked first now."""
    import trainlab.recipes.base_model as base_model

    def no_base(*a: object, **k: object) -> Path:
        raise AssertionError("the base model was built before the data path was checked")

    monkeypatch.setattr(base_model, "embedded_base_model", no_base)
    empty = tmp_path / "empty"
    empty.mkdir()
    code, _, err = _cli(capfd, command, "--data", empty, "--out", tmp_path / "out")
    _one_line_error(code, err, "folder has no data files", str(empty))
    assert not (tmp_path / "out").exists()
