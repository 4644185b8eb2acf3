"""The byte-level BPE: exact round trips, single-digit tokens, fixed special ids, cached embedded build."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from transformers import PreTrainedTokenizerFast

from trainlab.data import tokenizer as tokmod
from trainlab.data.corpus import generate_corpus
from trainlab.data.tasks import make_task_records
from trainlab.data.tokenizer import (
    BOS_ID,
    EOS_ID,
    PAD_ID,
    embedded_tokenizer,
    embedded_tokenizer_dir,
    load_tokenizer,
    save_tokenizer,
    train_tokenizer,
)
from trainlab.errors import UserError

TEXTS = [
    "Tom went to the park. He saw 12 red balls.",
    "  leading spaces, trailing spaces  ",
    "tabs\tand\nnew lines\n\n\nand a carriage return\r\n",
    "unicode: héllo wörld — naïve café 🙂 日本語",
    "12+35=47\nsort 5 2 9 1=1 2 5 9\nreverse c a t=t a c",
    "<bos> is text here, not a token <eos>",
    "",
]


@pytest.fixture(scope="module")
def tok() -> PreTrainedTokenizerFast:
    texts = generate_corpus(300, 0) + [r.text for r in make_task_records(600, 0)]
    return train_tokenizer(texts, 500)


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private trainlab home, and a smaller embedded training set so builds take a fraction of a second."""
    monkeypatch.setenv("TRAINLAB_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(tokmod, "EMBEDDED_TOKENIZER_DOCUMENTS", 400)
    monkeypatch.setattr(tokmod, "EMBEDDED_TOKENIZER_TASK_RECORDS", 200)
    return tmp_path / "home"


def test_special_token_ids(tok: PreTrainedTokenizerFast) -> None:
    assert (tok.pad_token, tok.bos_token, tok.eos_token) == ("<pad>", "<bos>", "<eos>")
    assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id) == (PAD_ID, BOS_ID, EOS_ID) == (0, 1, 2)
    assert 300 < len(tok) <= 500
    text = "Tom went home."
    bare = tok.encode(text, add_special_tokens=False)
    assert bare[0] not in (PAD_ID, BOS_ID, EOS_ID)
    assert tok(text)["input_ids"] == [BOS_ID, *bare]  # the tokenizer itself adds <bos> (its post-processor)


@pytest.mark.parametrize("text", TEXTS)
def test_decode_round_trips_exactly(tok: PreTrainedTokenizerFast, text: str) -> None:
    ids = tok.encode(text, add_special_tokens=False)
    assert tok.decode(ids) == text
    assert not {PAD_ID, BOS_ID, EOS_ID} & set(ids)  # "<bos>" in text is not the special token


def test_every_digit_is_its_own_token(tok: PreTrainedTokenizerFast) -> None:
    text = "12+35=4700 and 2024 or 999999"
    pieces = [tok.decode([i]) for i in tok.encode(text, add_special_tokens=False)]
    digits = [p for p in pieces if any(c.isdigit() for c in p)]
    assert all(len(p) == 1 for p in digits), digits
    assert "".join(digits) == "".join(c for c in text if c.isdigit())


def test_common_words_are_single_tokens(tok: PreTrainedTokenizerFast) -> None:
    for word in (" went", " the", "Once", " capital"):
        assert len(tok.encode(word, add_special_tokens=False)) == 1, word


def test_save_and_load(tok: PreTrainedTokenizerFast, tmp_path: Path) -> None:
    out = save_tokenizer(tok, tmp_path / "tok")
    assert (out / "tokenizer.json").is_file() and (out / "tokenizer_config.json").is_file()
    for loaded in (PreTrainedTokenizerFast.from_pretrained(str(out)), load_tokenizer(out),
                   load_tokenizer(out / "tokenizer.json")):
        assert (loaded.pad_token_id, loaded.bos_token_id, loaded.eos_token_id) == (0, 1, 2)
        for text in TEXTS:
            ids = loaded.encode(text, add_special_tokens=False)
            assert ids == tok.encode(text, add_special_tokens=False)
            assert loaded.decode(ids) == text


def test_load_errors_name_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(UserError, match=f"^{re.escape(str(missing))}: tokenizer not found"):
        load_tokenizer(missing)
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match=r"empty: folder has no tokenizer\.json"):
        load_tokenizer(tmp_path / "empty")
    bad = tmp_path / "tokenizer.json"
    bad.write_text("{not json", encoding="utf-8")
    with pytest.raises(UserError, match=f"^{re.escape(str(bad))}: not a valid tokenizer"):
        load_tokenizer(bad)


def test_bare_tokenizer_json_gets_special_tokens_by_name(tok: PreTrainedTokenizerFast, tmp_path: Path) -> None:
    tok.backend_tokenizer.save(str(tmp_path / "tokenizer.json"))  # no tokenizer_config.json beside it
    loaded = load_tokenizer(tmp_path)
    assert (loaded.pad_token_id, loaded.bos_token_id, loaded.eos_token_id) == (0, 1, 2)


def test_embedded_tokenizer_is_built_once_then_loaded(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = embedded_tokenizer(400, 5)
    folder = embedded_tokenizer_dir(400, 5)
    assert folder.parent == home / "tokenizers" and (folder / "tokenizer.json").is_file()
    info = json.loads((folder / "build_info.json").read_text())
    assert info["vocab_size"] == len(first) and info["seed"] == 5
    monkeypatch.setattr(tokmod, "train_tokenizer", lambda *a, **k: pytest.fail("rebuilt a cached tokenizer"))
    second = embedded_tokenizer(400, 5)
    text = "The capital of Zorvia is Meltan. 12+35=47"
    assert second.encode(text) == first.encode(text)
    assert second.decode(second.encode(text), skip_special_tokens=True) == text
    assert [p.name for p in folder.parent.iterdir()] == [folder.name]  # no temporary folders left


def test_embedded_tokenizer_is_deterministic(home: Path) -> None:
    a = embedded_tokenizer(400, 9)
    (embedded_tokenizer_dir(400, 9) / "tokenizer.json").unlink()  # damaged cache: rebuilt, same result
    b = embedded_tokenizer(400, 9)
    assert a.get_vocab() == b.get_vocab()


def test_concurrent_builds_end_with_one_complete_tokenizer(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Simulate another process finishing its build while ours is still training."""
    real_train = tokmod.train_tokenizer
    calls = []

    def train_while_another_process_finishes(*args: object, **kwargs: object) -> PreTrainedTokenizerFast:
        calls.append(1)
        if len(calls) == 1:
            embedded_tokenizer(400, 11)  # the "other process": builds and renames into place first
        return real_train(*args, **kwargs)

    monkeypatch.setattr(tokmod, "train_tokenizer", train_while_another_process_finishes)
    tok = embedded_tokenizer(400, 11)
    assert len(calls) == 2
    folder = embedded_tokenizer_dir(400, 11)
    assert [p.name for p in folder.parent.iterdir()] == [folder.name]
    assert tok.decode(tok.encode("Tom saw a cow."), skip_special_tokens=True) == "Tom saw a cow."


def test_legacy_tokenizer_without_post_processor_gets_bos_on_load(tok: PreTrainedTokenizerFast,
                                                                   tmp_path: Path) -> None:
    """Folders saved before the <bos> post-processor existed (cached base models) still start with <bos>."""
    out = save_tokenizer(tok, tmp_path / "old")
    data = json.loads((out / "tokenizer.json").read_text(encoding="utf-8"))
    data["post_processor"] = None
    (out / "tokenizer.json").write_text(json.dumps(data), encoding="utf-8")
    assert PreTrainedTokenizerFast.from_pretrained(str(out))("Tom")["input_ids"][0] != BOS_ID
    assert load_tokenizer(out)("Tom")["input_ids"] == [BOS_ID, *tok.encode("Tom", add_special_tokens=False)]


@pytest.mark.parametrize("style", ["gpt2", "llama", "qwen"])
def test_saved_tokenizers_load_unchanged(style: str, tmp_path: Path) -> None:
    """No bos or pad is invented for a saved tokenizer (a Qwen-style one has no bos: <|im_end|> must not become
    one), its ids are what transformers gives, and saving it again writes the same config."""
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    from _hf_tiny import make_tokenizer

    src = make_tokenizer(style)
    src.save_pretrained(str(tmp_path / "a"))
    loaded = load_tokenizer(tmp_path / "a")
    ref = PreTrainedTokenizerFast.from_pretrained(str(tmp_path / "a"))
    assert (loaded.bos_token, loaded.eos_token, loaded.pad_token) == (ref.bos_token, ref.eos_token, ref.pad_token)
    assert loaded("What is 2+3?")["input_ids"] == ref("What is 2+3?")["input_ids"]
    if style == "qwen":
        assert loaded.bos_token is None and loaded.bos_token_id is None
    loaded.save_pretrained(str(tmp_path / "b"))
    ref.save_pretrained(str(tmp_path / "c"))  # what transformers itself writes for the same folder
    for name in ("tokenizer_config.json", "tokenizer.json"):
        ours, theirs = (tmp_path / d / name for d in ("b", "c"))
        assert ours.read_text(encoding="utf-8") == theirs.read_text(encoding="utf-8")
    assert "bos_token" not in json.loads((tmp_path / "b" / "tokenizer_config.json").read_text()) or style != "qwen"
