"""The pretraining data a run gets: embedded mix, user documents, the token cache, unigram entropy."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from trainlab.config import DataConfig
from trainlab.data import embedded as embmod
from trainlab.data import tokenizer as tokmod
from trainlab.data.embedded import (
    build_pretraining_data,
    embedded_data_cache_path,
    embedded_pretraining_texts,
    split_token_lists,
    task_documents,
    unigram_entropy_nats,
)
from trainlab.data.tasks import TASKS, make_task_records, problem_split, score
from trainlab.data.tokenizer import BOS_ID, EOS_ID, save_tokenizer, train_tokenizer
from trainlab.errors import UserError

SMALL = {"n_documents": 300, "vocab_size": 400, "seq_len": 32, "seed": 3}


@pytest.fixture(autouse=True)
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("TRAINLAB_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(tokmod, "EMBEDDED_TOKENIZER_DOCUMENTS", 400)
    monkeypatch.setattr(tokmod, "EMBEDDED_TOKENIZER_TASK_RECORDS", 200)
    return tmp_path / "home"


def _is_task_doc(doc: str) -> bool:
    return all(line.endswith(tuple("0123456789abcdefghijklmnopqrstuvwxyz")) and "=" in line
               for line in doc.split("\n"))


def test_embedded_texts_mix_split_and_determinism() -> None:
    cfg = DataConfig(n_documents=1000, task_fraction=0.3, val_fraction=0.1, seed=1)
    train, val = embedded_pretraining_texts(cfg)
    assert (len(train), len(val)) == (900, 100)
    assert (train, val) == embedded_pretraining_texts(cfg)
    assert sum(map(_is_task_doc, train + val)) == 300
    assert embedded_pretraining_texts(cfg.model_copy(update={"seed": 2})) != (train, val)
    only_tasks = embedded_pretraining_texts(cfg.model_copy(update={"task_fraction": 1.0}))
    assert all(map(_is_task_doc, only_tasks[0] + only_tasks[1]))


def test_task_documents_hold_correct_train_split_lines() -> None:
    docs = task_documents(50, 4)
    lines = [line for d in docs for line in d.split("\n")]
    assert all(4 <= len(d.split("\n")) <= 8 for d in docs)
    assert all(problem_split(line[: line.index("=") + 1]) == "train" for line in lines)
    by_prompt = {r.prompt: r for r in make_task_records(len(lines), 4, split="train")}
    for line in lines:
        prompt, _, answer = line.partition("=")
        record = by_prompt[prompt + "="]
        assert score(record, answer)
    assert {line.split(" ")[0] for line in lines} >= {"max", "sort", "reverse", "count"}


def test_build_embedded_data_and_reuse_the_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = DataConfig(**SMALL)
    data = build_pretraining_data(cfg)
    info = data.info
    assert info["source"] == "embedded" and info["tokenizer"].startswith("embedded:bpe400-seed3-")
    assert info["vocab_size"] == len(data.tokenizer) <= 400
    assert info["n_documents_train"] + info["n_documents_val"] == 300
    assert len(data.train) == info["train_windows"] and data.train[0]["input_ids"].shape == (32,)
    assert info["train_tokens"] == 32 * len(data.train) and len(data.val) >= 1
    assert 0 < info["unigram_entropy_nats"] < math.log(len(data.tokenizer))
    tokens = data.train.tokens
    assert tokens[0] == BOS_ID and (tokens == EOS_ID).sum() > 100
    assert embedded_data_cache_path(cfg).is_file()

    monkeypatch.setattr(embmod, "embedded_pretraining_texts", lambda c: pytest.fail("cache not used"))
    again = build_pretraining_data(cfg)
    assert torch.equal(again.train.windows, data.train.windows) and again.info == info
    repacked = build_pretraining_data(cfg.model_copy(update={"seq_len": 16}))  # same cache, new windows
    assert repacked.train[0]["input_ids"].shape == (16,) and torch.equal(repacked.train.tokens[:64], tokens[:64])


def test_damaged_cache_is_rebuilt() -> None:
    cfg = DataConfig(**SMALL)
    first = build_pretraining_data(cfg)
    embedded_data_cache_path(cfg).write_bytes(b"not a torch file")
    second = build_pretraining_data(cfg)
    assert torch.equal(first.train.windows, second.train.windows)


def test_user_documents_with_a_given_tokenizer(tmp_path: Path) -> None:
    docs = [f"Document {i}: the quick brown fox jumps over the lazy dog {i} times." for i in range(60)]
    source = tmp_path / "corpus.txt"
    source.write_text("\n\n".join(docs), encoding="utf-8")
    tok_dir = save_tokenizer(train_tokenizer(docs, 300), tmp_path / "tok")
    cfg = DataConfig(source=str(source), tokenizer=str(tok_dir), seq_len=16, val_fraction=0.1)
    data = build_pretraining_data(cfg)
    assert data.info["split"] == "documents" and data.info["tokenizer"] == str(tok_dir)
    assert data.info["n_documents_train"] + data.info["n_documents_val"] == 60
    assert "cache" not in data.info
    decoded = data.tokenizer.decode(data.train.tokens.tolist(), skip_special_tokens=True)
    assert "quick brown fox" in decoded


def test_one_long_user_document_is_split_by_tokens(tmp_path: Path) -> None:
    source = tmp_path / "book.txt"
    source.write_text("Tom went to the park and saw a cow. " * 200, encoding="utf-8")
    data = build_pretraining_data(DataConfig(source=str(source), seq_len=32, vocab_size=400, seed=3))
    assert data.info["split"] == "tokens" and len(data.train) > 10 * len(data.val) > 0


def test_too_little_user_data_is_a_user_error(tmp_path: Path) -> None:
    source = tmp_path / "tiny.txt"
    source.write_text("Just a few words.", encoding="utf-8")
    with pytest.raises(UserError, match="fewer than two windows of seq_len=128"):
        build_pretraining_data(DataConfig(source=str(source), vocab_size=400, seed=3))
    with pytest.raises(UserError, match="not found"):
        build_pretraining_data(DataConfig(source=str(tmp_path / "missing.jsonl"), vocab_size=400, seed=3))


def test_split_token_lists_keeps_every_token() -> None:
    lists = [[i] * (i + 3) for i in range(40)]
    train, val, how = split_token_lists(lists, 0.1, seq_len=8, seed=0)
    assert how == "documents"
    assert sorted(map(tuple, train + val)) == sorted(map(tuple, lists))
    total = sum(map(len, lists))
    assert 0.1 * total <= sum(map(len, val)) < 0.2 * total


def test_unigram_entropy() -> None:
    assert unigram_entropy_nats(torch.arange(8).repeat(10)) == pytest.approx(math.log(8))
    assert unigram_entropy_nats(torch.full((50,), 7)) == pytest.approx(0.0)
    assert unigram_entropy_nats(torch.tensor([0, 0, 0, 1])) == pytest.approx(
        -(0.75 * math.log(0.75) + 0.25 * math.log(0.25)))


def test_every_task_appears_in_the_pretraining_mix() -> None:
    train, _ = embedded_pretraining_texts(DataConfig(n_documents=400, seed=5))
    text = "\n".join(train)
    markers = {"add": "+", "mul": "*", "compare": "max ", "sort": "sort ", "reverse": "reverse ",
               "count": "count "}
    assert set(markers) == set(TASKS)
    assert all(m in text for m in markers.values())
