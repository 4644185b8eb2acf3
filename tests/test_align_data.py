"""Alignment data: validation (file:line reasons, skip-and-count vs --strict), formats, token boundary."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from trainlab.align.config import AlignDataConfig, align_config
from trainlab.align.datasets import LengthPolicy, PreferenceDataset, SFTDataset, collate_preference
from trainlab.align.records import (
    CompletionRecord,
    PreferenceRecord,
    embedded_alignment_data,
    load_records,
    render_conversation,
    use_chat_template,
)
from trainlab.data.tasks import score
from trainlab.data.tokenizer import train_tokenizer
from trainlab.errors import UserError

REPO = Path(__file__).resolve().parents[1]

GOOD_1 = {"prompt": "12+3=", "chosen": "15", "rejected": "16"}
GOOD_2 = {"prompt": "sort 3 1 2=", "chosen": "1 2 3", "rejected": "3 2 1", "extra": "ignored"}
BAD_LINES = [
    ('{"prompt": "1+1=", "chosen": "2", ', "invalid JSON", None),
    (json.dumps({"prompt": "1+1=", "rejected": "3"}), "missing key 'chosen'", "chosen"),
    (json.dumps({"prompt": "1+1=", "chosen": 2, "rejected": "3"}), "expected a string or a list of messages", "chosen"),
    (json.dumps({"prompt": "1+1=", "chosen": "  ", "rejected": "3"}), "empty completion", "chosen"),
    (json.dumps({"prompt": "1+1=", "chosen": "2", "rejected": "2"}), "identical", "rejected"),
    (json.dumps(["not", "an", "object"]), "expected a JSON object", None),
]


@pytest.fixture(scope="module")
def tok():  # type: ignore[no-untyped-def]
    texts = ["the cat sat on the mat", "12+35=47", "sort 3 1 2=1 2 3", "<|user|> hello <|assistant|> hi"] * 30
    return train_tokenizer(texts, 320)


def _write_bad_file(path: Path) -> None:
    lines = [json.dumps(GOOD_1)] + [line for line, _, _ in BAD_LINES] + ["", json.dumps(GOOD_2)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def test_malformed_lines_are_skipped_counted_and_located(tmp_path: Path) -> None:
    path = tmp_path / "prefs.jsonl"
    _write_bad_file(path)
    report = load_records(path, "preference")
    assert [r.chosen for r in report.records] == ["15", "1 2 3"]
    assert report.n_read == 8 and report.skipped == 6
    for issue, (_, reason, key), line in zip(report.issues, BAD_LINES, range(2, 8), strict=True):
        text = str(issue)
        assert text.startswith(f"{path}:{line}: "), text
        assert reason in text, (reason, text)
        if key is not None:
            assert f"{key}:" in text
    assert report.records[1].where == f"{path}:9"  # the blank line 8 is skipped, numbering kept


def test_strict_stops_at_the_first_malformed_line(tmp_path: Path) -> None:
    path = tmp_path / "prefs.jsonl"
    _write_bad_file(path)
    with pytest.raises(UserError) as err:
        load_records(path, "preference", strict=True)
    assert str(err.value).startswith(f"{path}:2: invalid JSON")


def test_nothing_valid_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"prompt": "x", "chosen": "a", "rejected": "a"}) + "\n")
    with pytest.raises(UserError, match=r"no valid preference records .* identical"):
        load_records(path, "preference")
    with pytest.raises(UserError, match="not found"):
        load_records(tmp_path / "missing.jsonl")


def test_datasets_folder_and_parquet(tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")
    ds = datasets.Dataset.from_list([GOOD_1, {"prompt": "a", "chosen": "b", "rejected": "b"}, GOOD_1])
    ds.save_to_disk(str(tmp_path / "ds"))
    report = load_records(tmp_path / "ds", "preference")
    assert len(report.records) == 2 and report.skipped == 1
    assert str(report.issues[0]).startswith(f"{tmp_path / 'ds'}[row 1]: rejected: ")
    datasets.DatasetDict({"train": ds}).save_to_disk(str(tmp_path / "dd"))
    assert len(load_records(tmp_path / "dd", "preference").records) == 2
    ds.to_parquet(str(tmp_path / "p.parquet"))
    assert len(load_records(tmp_path / "p.parquet", "preference").records) == 2
    assert len(load_records(ds, "preference").records) == 2  # in memory


def test_conversational_records(tok) -> None:  # type: ignore[no-untyped-def]
    user = [{"role": "user", "content": "2+2?"}]
    row = {"prompt": user, "chosen": [{"role": "assistant", "content": "4"}],
           "rejected": [{"role": "assistant", "content": "5"}]}
    # no chat template: an error that names the fix (never a silent built-in template)
    with pytest.raises(UserError, match=r"need a chat template .* align_data\.chat_template=FILE .*builtin"):
        load_records([row], "preference", tokenizer=tok)
    try:
        use_chat_template(tok, "builtin")  # set on the tokenizer: saved with the model
        rec = load_records([row], "preference", tokenizer=tok).records[0]
        assert rec.prompt == "<|user|>\n2+2?\n<|assistant|>\n"
        assert (rec.chosen, rec.rejected) == ("4<eos>\n", "5<eos>\n")
        assert rec.chat
        ds = PreferenceDataset(tok, [rec])  # the template's eos is the eos token, not its characters
        assert ds.chosen[0][-2] == tok.eos_token_id and ds.chosen[0].count(tok.eos_token_id) == 1
        assert tok.bos_token_id not in ds.prompts[0]  # a rendered conversation gets no special token added
        # implicit prompt: the shared leading messages
        implicit = {"chosen": user + row["chosen"], "rejected": user + row["rejected"]}
        assert load_records([implicit], "preference", tokenizer=tok).records[0] == PreferenceRecord(
            rec.prompt, rec.chosen, rec.rejected, "dataset[row 0]", chat=True)
        # the tokenizer's own chat template
        tok.chat_template = ("{% for m in messages %}[{{ m.role }}] {{ m.content }}\n{% endfor %}"
                             "{% if add_generation_prompt %}[assistant] {% endif %}")
        p, c = render_conversation(tok, user, row["chosen"])
        assert (p, c) == ("[user] 2+2?\n[assistant] ", "4\n")
        sft = load_records([{"prompt": user, "completion": row["chosen"]}], "sft", tokenizer=tok).records[0]
        assert (sft.prompt, sft.completion) == (p, c)
        bad = {"prompt": user, "chosen": [{"role": "assistant"}], "rejected": row["rejected"]}
        report = load_records([bad, row], "preference", tokenizer=tok)
        assert "chosen[0]: message has no 'content'" in str(report.issues[0])
        mixed = {"prompt": "2+2?", "chosen": "4", "rejected": row["rejected"]}
        assert "mix plain text and messages" in str(load_records([mixed, row], "preference", tokenizer=tok).issues[0])
    finally:
        tok.chat_template = None


def test_unpaired_records() -> None:
    rows = [{"prompt": "1+1=", "completion": "2", "label": True}, {"prompt": "1+1=", "completion": "3", "label": 3},
            GOOD_1, GOOD_2]
    report = load_records(rows, "unpaired")
    assert report.skipped == 1 and "expected true or false (or 1/0) under 'label', got 3" in str(report.issues[0])
    # pairs are unpaired as TRL's unpair_preference_dataset: every chosen, then every rejected
    assert [(r.completion, r.label) for r in report.records] == [("2", True), ("15", True), ("1 2 3", True),
                                                                 ("16", False), ("3 2 1", False)]


def test_token_boundary_eos_and_truncation(tok) -> None:  # type: ignore[no-untyped-def]
    prompt, chosen, rejected = "the cat sat on the", " mat", " cat sat"
    ds = PreferenceDataset(tok, [PreferenceRecord(prompt, chosen, rejected)])
    p_ids = tok(prompt)["input_ids"]
    assert p_ids[0] == tok.bos_token_id  # trainlab's tokenizer adds its <bos> itself
    # the completion is what tokenizing prompt+completion adds after the prompt's ids (TRL), eos appended
    assert ds.prompts[0] == p_ids
    assert ds.chosen[0] == [*tok(prompt + chosen)["input_ids"][len(p_ids):], tok.eos_token_id]
    batch = collate_preference([ds[0]], pad_id=tok.pad_token_id)
    assert batch["input_ids"].shape[0] == 2  # chosen row, then rejected row, one forward
    sup = batch["labels"][0][batch["labels"][0] != -100].tolist()
    assert sup == ds.chosen[0]
    # keep_start: the completion is cut from the end (eos lost, counted), a prompt filling max_length drops
    long = PreferenceRecord("sort 3 1 2=" * 4, "1 2 3 1 2 3", "3 2 1")
    n_p = len(tok(long.prompt)["input_ids"])
    cut = PreferenceDataset(tok, [long], LengthPolicy(max_length=n_p + 3))
    assert cut.prompts[0] == tok(long.prompt)["input_ids"] and len(cut.chosen[0]) == 3
    assert tok.eos_token_id not in cut.chosen[0] and cut.truncated == 1 and cut.dropped == 0
    assert cut.stats()["truncated"] == 1 and cut.stats()["max_length"] == n_p + 3
    # the optional prompt/completion caps (older TRL's max_prompt_length): prompt keeps its last tokens
    caps = PreferenceDataset(tok, [long], LengthPolicy(max_prompt_length=5, max_completion_length=3))
    assert caps.prompts[0] == tok(long.prompt)["input_ids"][-5:] and len(caps.chosen[0]) == 3
    dropped = PreferenceDataset(tok, [long, PreferenceRecord("1+1=", "2", "3")], LengthPolicy(max_length=n_p))
    assert dropped.dropped == 1 and len(dropped) == 1 and dropped.kept_indices == [1]
    sft = SFTDataset(tok, [CompletionRecord("12+35=", "47")])
    item = sft[0]
    n_prompt = len(tok("12+35=")["input_ids"])
    assert item["labels"][:n_prompt].eq(-100).all() and item["labels"][n_prompt:].ne(-100).all()
    assert item["labels"][-1] == tok.eos_token_id


def test_embedded_data_is_verifiable() -> None:
    cfg = AlignDataConfig(n_train=120, sft_wrong_share=0.25, n_eval_per_task=2, n_eval_pairs=10, seed=3)
    data = embedded_alignment_data(cfg)
    assert data.n_wrong_sft == 30 and len(data.sft) == len(data.pairs) == 120
    records = {r.prompt: r for r in data.eval_records}
    assert len(data.eval_records) == 12 and len(data.eval_pairs) == 10
    from trainlab.data.tasks import make_task_records

    truth = {r.prompt: r for r in make_task_records(120, 3, split="train")}
    wrong_sft = sum(not score(truth[s.prompt], s.completion) for s in data.sft)
    assert wrong_sft == 30
    for pair in data.pairs:
        assert score(truth[pair.prompt], pair.chosen) and not score(truth[pair.prompt], pair.rejected)
    assert not set(records) & set(truth)  # held-out prompts are on the eval side of the split
    again = embedded_alignment_data(cfg)
    assert again.pairs == data.pairs  # deterministic


def test_unknown_align_key_is_an_error() -> None:
    with pytest.raises(UserError, match=r"align\.betta: unknown key \(did you mean align\.beta\?\)"):
        align_config("dpo", preset="tiny", overrides=["align.betta=0.2"])
    with pytest.raises(UserError, match="robust needs label_smoothing"):
        align_config("dpo", preset="tiny", overrides=["align.loss_type=robust"])


@pytest.mark.parametrize("method", ["sft", "dpo", "orpo", "simpo", "kto"])
def test_shipped_configs_load(method: str) -> None:
    cfg = align_config(method, preset="quick", config_file=REPO / "configs" / f"{method}.yaml")
    assert cfg == align_config(method, preset="quick"), "configs/<method>.yaml must spell out the quick defaults"


# ------------------------------------------------------------------------------------- the CLI


def _tiny_model_dir(tmp_path: Path, tok) -> Path:  # type: ignore[no-untyped-def]
    from trainlab.config import ModelConfig
    from trainlab.model.decoder import Decoder

    torch.manual_seed(0)
    model = Decoder(ModelConfig(vocab_size=len(tok), dim=16, n_layers=1, n_heads=2, max_seq_len=64))
    return model.save_pretrained(tmp_path / "model", tokenizer=tok)


def _cli(*args: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, TRAINLAB_HOME=str(tmp_path / "home"), PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1")
    env.pop("TRAINLAB_DEBUG", None)
    return subprocess.run([sys.executable, "-m", "trainlab.cli", *args], capture_output=True, text=True, env=env,
                          cwd=tmp_path, timeout=300)


def test_cli_skips_and_counts_or_stops_with_strict(tmp_path: Path, tok) -> None:  # type: ignore[no-untyped-def]
    model = _tiny_model_dir(tmp_path, tok)
    data = tmp_path / "prefs.jsonl"
    _write_bad_file(data)
    rng = random.Random(0)
    with data.open("a", encoding="utf-8") as fh:  # enough valid pairs to train a couple of steps
        for _ in range(12):
            a, b = rng.randint(1, 50), rng.randint(1, 50)
            fh.write(json.dumps({"prompt": f"{a}+{b}=", "chosen": str(a + b), "rejected": str(a + b + 1)}) + "\n")
    strict = _cli("dpo", "--model", str(model), "--data", str(data), "--preset", "tiny", "--strict",
                  tmp_path=tmp_path)
    assert strict.returncode == 2, strict.stderr
    lines = [ln for ln in strict.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"error: {data}:2: invalid JSON"), strict.stderr
    ok = _cli("dpo", "--model", str(model), "--data", str(data), "--preset", "tiny", "--max-steps", "2",
              "--out", str(tmp_path / "out"), "--json", tmp_path=tmp_path)
    assert ok.returncode == 0, ok.stderr
    result = json.loads(ok.stdout)
    assert result["data"]["load"]["skipped"] == 6 and result["data"]["load"]["records"] == 14
    assert result["steps"] == 2 and (tmp_path / "out" / "model" / "config.json").is_file()


def test_kto_run_and_eval_in_process(tmp_path: Path, tok) -> None:  # type: ignore[no-untyped-def]
    """KTO from user pairs (unpaired on load) through the loop, then `trainlab eval`'s function."""
    from trainlab.recipes.align import run_alignment, run_eval

    model = _tiny_model_dir(tmp_path, tok)
    data = tmp_path / "prefs.jsonl"
    rows = [{"prompt": f"{a}+{a}=", "chosen": str(2 * a), "rejected": str(2 * a + 1)} for a in range(1, 13)]
    data.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    cfg = align_config("kto", preset="tiny", overrides=["train.device=cpu", "train.max_steps=2",
                                                        f"align_data.source={data}"])
    run = run_alignment("kto", cfg, model, tmp_path / "kto", quiet=True)
    assert run.summary["unit"] == "examples" and run.summary["reference"]["mode"] == "cached"
    assert run.summary["data"]["train"]["examples"] == 24 and run.summary["data"]["train"]["desirable"] == 12
    assert {"kl", "rewards/chosen", "rewards/rejected"} <= set(run.summary["history"][-1])
    out = run_eval(run.summary["model_dir"], align_config("dpo", preset="tiny"), reference=model, data=str(data))
    pairs = out["pairs"]
    assert 0.0 <= pairs["rewards/accuracies"] <= 1.0 and pairs["kl"] >= 0.0
    same = run_eval(model, align_config("dpo", preset="tiny"), reference=model, data=str(data))
    assert same["pairs"]["kl"] == pytest.approx(0.0, abs=1e-6)  # a model against itself
    assert same["pairs"]["rewards/margins"] == pytest.approx(0.0, abs=1e-6)
