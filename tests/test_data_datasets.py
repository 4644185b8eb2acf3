"""Token datasets: packing, documents as the tokenizer encodes them, collation, generation prompts."""

from __future__ import annotations

import pytest
import torch
from transformers import PreTrainedTokenizerFast

from trainlab.align.datasets import SFTDataset
from trainlab.align.records import CompletionRecord
from trainlab.data.corpus import generate_corpus
from trainlab.data.datasets import (
    IGNORE_INDEX,
    PackedLMDataset,
    collate_left_padded_prompts,
    collate_padded,
    tokenize_documents,
)
from trainlab.data.tasks import make_task_records
from trainlab.data.tokenizer import BOS_ID, EOS_ID, PAD_ID, train_tokenizer


@pytest.fixture(scope="module")
def tok() -> PreTrainedTokenizerFast:
    return train_tokenizer(generate_corpus(300, 0) + [r.text for r in make_task_records(600, 0)], 500)


def _ids(tok: PreTrainedTokenizerFast, text: str) -> list[int]:
    return tok.encode(text, add_special_tokens=False)


def test_tokenize_documents_wraps_each_in_bos_eos(tok: PreTrainedTokenizerFast) -> None:
    docs = ["Tom went home.", "12+35=47"]
    out = tokenize_documents(tok, docs)
    for doc, ids in zip(docs, out, strict=True):
        assert ids == [BOS_ID, *_ids(tok, doc), EOS_ID]
    assert tokenize_documents(tok, []) == []


def test_packing_cuts_full_windows_of_the_concatenation() -> None:
    lists = [list(range(10, 17)), list(range(20, 25)), list(range(30, 42))]  # 24 tokens
    flat = [t for ids in lists for t in ids]
    ds = PackedLMDataset(lists, seq_len=5)
    assert len(ds) == 4 and ds.n_tokens == 20 and ds.n_tokens_total == 24
    for i in range(len(ds)):
        item = ds[i]
        assert set(item) == {"input_ids", "labels", "attention_mask"}
        assert all(v.dtype == torch.long and v.shape == (5,) for v in item.values())
        assert item["input_ids"].tolist() == flat[5 * i : 5 * i + 5]
        assert torch.equal(item["labels"], item["input_ids"])
        assert item["attention_mask"].tolist() == [1] * 5
    item = ds[0]
    item["labels"][0] = IGNORE_INDEX  # an objective masking labels in place must not corrupt the data
    assert ds[0]["labels"][0] == 10
    assert torch.equal(PackedLMDataset(torch.tensor(flat), 5).windows, ds.windows)
    with pytest.raises(ValueError, match="fewer than one window"):
        PackedLMDataset([[1, 2, 3]], seq_len=5)


def test_collate_padded_pads_right(tok: PreTrainedTokenizerFast) -> None:
    ds = SFTDataset(tok, [CompletionRecord("1+1=", "2"), CompletionRecord("The capital of Zorvia is", " Meltan.")])
    batch = collate_padded([ds[0], ds[1]], pad_id=PAD_ID)
    n0, n1 = len(ds[0]["input_ids"]), len(ds[1]["input_ids"])
    assert n0 < n1 and batch["input_ids"].shape == (2, n1)
    assert batch["input_ids"][0, :n0].tolist() == ds[0]["input_ids"].tolist()
    assert batch["input_ids"][0, n0:].tolist() == [PAD_ID] * (n1 - n0)
    assert batch["labels"][0, n0:].tolist() == [IGNORE_INDEX] * (n1 - n0)
    assert batch["attention_mask"].tolist() == [[1] * n0 + [0] * (n1 - n0), [1] * n1]
    assert torch.equal(batch["labels"][1], ds[1]["labels"])


def test_left_padded_prompts_for_generation(tok: PreTrainedTokenizerFast) -> None:
    prompts = ["1+1=", "The capital of Zorvia is"]
    ids, mask = collate_left_padded_prompts(tok, prompts)
    rows = [[BOS_ID, *_ids(tok, p)] for p in prompts]
    width = max(map(len, rows))
    assert ids.shape == mask.shape == (2, width)
    for i, row in enumerate(rows):
        pad = width - len(row)
        assert ids[i].tolist() == [PAD_ID] * pad + row
        assert mask[i].tolist() == [0] * pad + [1] * len(row)
    no_bos, _ = collate_left_padded_prompts(tok, ["1+1="], add_special_tokens=False)
    assert no_bos[0].tolist() == _ids(tok, "1+1=")


def test_tokenizers_add_what_they_define() -> None:
    """Documents and generation prompts carry exactly the special tokens the tokenizer adds itself:
    a Qwen-style tokenizer (no bos) gets no <|im_end|> in front, a Llama-style one gets its <s>."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from _hf_tiny import make_tokenizer

    for style in ("gpt2", "llama", "qwen"):
        t = make_tokenizer(style)
        own = t("What is 2+3?")["input_ids"]
        assert tokenize_documents(t, ["What is 2+3?"]) == [[*own, t.eos_token_id]]
        ids, mask = collate_left_padded_prompts(t, ["What is 2+3?", "Hi"])
        assert ids[0].tolist() == own and mask[0].tolist() == [1] * len(own)
        assert (own[0] == t.bos_token_id) == (style == "llama")
        if t.pad_token_id is None:  # GPT-2: padding with eos, masked out
            assert ids[1, 0].item() == t.eos_token_id and mask[1, 0].item() == 0
    batch = collate_padded([{"input_ids": torch.tensor([5, 6]), "labels": torch.tensor([5, 6])},
                            {"input_ids": torch.tensor([7]), "labels": torch.tensor([7])}], pad_id=None)
    assert batch["input_ids"].tolist() == [[5, 6], [7, 0]] and batch["labels"].tolist() == [[5, 6], [7, -100]]
