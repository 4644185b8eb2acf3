"""Token-id parity with TRL 1.16: our datasets give the ids TRL's trainers prepare for the same records.

TRL's own ``SFTTrainer`` / ``DPOTrainer`` / ``KTOTrainer`` are built on the same tiny model and
tokenizer (tests/_hf_tiny.py: GPT-2-style without a chat template, Llama-style with BOS and a
template, Qwen-style without BOS and ``<|im_end|>``) and their prepared ``train_dataset`` is the
reference: prompt ids, completion ids (chosen/rejected), and for SFT the input ids and labels
(completion-only, full-sequence and assistant-only). The records include a completion whose first
characters merge with the end of the prompt in BPE, and one that already ends with eos.
"""

from __future__ import annotations

import copy
import warnings
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("trl")
datasets = pytest.importorskip("datasets")

from _hf_tiny import make_model, make_tokenizer  # noqa: E402

from trainlab.align.datasets import IGNORE_INDEX, LengthPolicy, PreferenceDataset, SFTDataset, UnpairedDataset  # noqa: E402
from trainlab.align.records import load_records  # noqa: E402

STYLES = ("gpt2", "llama", "qwen")
ARCH = {"gpt2": "gpt2", "llama": "llama", "qwen": "qwen2"}

PLAIN_PAIRS = [
    {"prompt": "What is 2+3?", "chosen": " The answer is 5.", "rejected": " The answer is 6."},
    {"prompt": "Tell me the ans", "chosen": "wer: 5.", "rejected": "wer: 6."},  # " answer" merges across the boundary
    {"prompt": "Sort the list: 3 1 2 ->", "chosen": " 1 2 3", "rejected": " 3 2 1"},
]
CONV_PAIRS = [
    {"prompt": [{"role": "user", "content": "What is 2+3?"}],
     "chosen": [{"role": "assistant", "content": "The answer is 5."}],
     "rejected": [{"role": "assistant", "content": "The answer is 6."}]},
    {"prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Reverse the word: abc"}],
     "chosen": [{"role": "assistant", "content": "cba"}], "rejected": [{"role": "assistant", "content": "abc"}]},
]
MESSAGES = [
    {"messages": [{"role": "user", "content": "Hello, how are you today?"},
                  {"role": "assistant", "content": "I am fine, thank you."},
                  {"role": "user", "content": "What is 2+3?"},
                  {"role": "assistant", "content": "The answer is 5."}]},
    {"messages": [{"role": "system", "content": "Count."}, {"role": "user", "content": "one two"},
                  {"role": "assistant", "content": "three four five"}]},
]
TEXTS = [{"text": "Once upon a time there was a small model."}, {"text": "Hello, how are you today?"}]


def _args(cls: Any, tmp_path: Path, **kw: Any) -> Any:
    return cls(output_dir=str(tmp_path / "trl"), report_to="none", use_cpu=True, per_device_train_batch_size=2,
               dataset_num_proc=None, **kw)


def _trl_dataset(kind: str, style: str, rows: list[dict[str, Any]], tmp_path: Path, **kw: Any) -> Any:
    """TRL's prepared train_dataset for ``rows`` (a fresh tokenizer: TRL may set a pad token on it)."""
    import trl

    tok = make_tokenizer(style)
    model = make_model(ARCH[style], tok)
    ds = datasets.Dataset.from_list(rows)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if kind == "sft":
            trainer = trl.SFTTrainer(model=model, args=_args(trl.SFTConfig, tmp_path, **kw), train_dataset=ds,
                                     processing_class=tok)
        elif kind == "dpo":
            trainer = trl.DPOTrainer(model=model, ref_model=make_model(ARCH[style], tok),
                                     args=_args(trl.DPOConfig, tmp_path, **kw), train_dataset=ds, processing_class=tok)
        else:
            trainer = trl.KTOTrainer(model=model, ref_model=make_model(ARCH[style], tok),
                                     args=_args(trl.KTOConfig, tmp_path, **kw), train_dataset=ds, processing_class=tok)
    return trainer.train_dataset


def _ours(kind: str, style: str, rows: list[dict[str, Any]]) -> tuple[Any, Any]:
    tok = make_tokenizer(style)
    before = copy.deepcopy(tok.init_kwargs), tok.chat_template
    records = load_records(rows, kind, tokenizer=tok, strict=True).records  # type: ignore[arg-type]
    assert (tok.init_kwargs, tok.chat_template) == before  # the tokenizer is used as it is
    return tok, records


@pytest.mark.parametrize("style", STYLES)
@pytest.mark.parametrize("conversational", [False, True])
def test_dpo_ids_equal_trl(style: str, conversational: bool, tmp_path: Path) -> None:
    if conversational and style == "gpt2":
        pytest.skip("no chat template (tested in test_formats: an error naming the fix)")
    rows = CONV_PAIRS if conversational else PLAIN_PAIRS
    ref = _trl_dataset("dpo", style, rows, tmp_path)
    tok, records = _ours("preference", style, rows)
    ours = PreferenceDataset(tok, records, LengthPolicy())
    assert len(ours) == len(ref) == len(rows)
    for i in range(len(rows)):
        assert ours.prompts[i] == ref[i]["prompt_ids"], (style, i)
        assert ours.chosen[i] == ref[i]["chosen_ids"], (style, i)
        assert ours.rejected[i] == ref[i]["rejected_ids"], (style, i)
    if style == "llama" and not conversational:
        assert ours.prompts[0][0] == tok.bos_token_id  # the tokenizer adds its BOS, once
    if style == "qwen":
        assert all(p[:1] != [tok.eos_token_id] for p in ours.prompts)  # <|im_end|> is no BOS
        if conversational:  # the template's "<|im_end|>\n" ends the completion: no second eos
            assert all(c[-2:] == [tok.eos_token_id, tok("\n", add_special_tokens=False)["input_ids"][0]]
                       for c in ours.chosen)
    if not conversational:
        assert ours.stats()["boundary_merges"] >= 1


def test_dpo_implicit_prompt_and_existing_eos_equal_trl(tmp_path: Path) -> None:
    rows = [{"chosen": "What is 2+3? The answer is 5.", "rejected": "What is 2+3? The answer is 6."},
            {"chosen": "Sort the list: 3 1 2 -> 1 2 3<|im_end|>", "rejected": "Sort the list: 3 1 2 -> 3 2 1"}]
    ref = _trl_dataset("dpo", "qwen", rows, tmp_path)
    tok, records = _ours("preference", "qwen", rows)
    assert records[0].prompt == "What is 2+3? The answer is" and records[0].chosen == " 5."  # TRL's extract_prompt
    ours = PreferenceDataset(tok, records)
    for i in range(len(rows)):
        assert (ours.prompts[i], ours.chosen[i], ours.rejected[i]) == (
            ref[i]["prompt_ids"], ref[i]["chosen_ids"], ref[i]["rejected_ids"])
    assert ours.chosen[1].count(tok.eos_token_id) == 1  # already ended with eos: none added


@pytest.mark.parametrize("style", STYLES)
@pytest.mark.parametrize("conversational", [False, True])
def test_kto_ids_equal_trl(style: str, conversational: bool, tmp_path: Path) -> None:
    if conversational and style == "gpt2":
        pytest.skip("no chat template")
    pairs = CONV_PAIRS if conversational else PLAIN_PAIRS
    rows = [{"prompt": r["prompt"], "completion": r["chosen"], "label": True} for r in pairs]
    rows += [{"prompt": r["prompt"], "completion": r["rejected"], "label": False} for r in pairs]
    ref = _trl_dataset("kto", style, rows, tmp_path)
    tok, records = _ours("unpaired", style, rows)
    ours = UnpairedDataset(tok, records, LengthPolicy(), kl_block=2)
    assert len(ours) == len(ref) == len(rows)
    for i in range(len(rows)):
        assert ours.prompts[i] == ref[i]["prompt_ids"] and ours.completions[i] == ref[i]["completion_ids"]
        assert ours.labels[i] == ref[i]["label"]
        assert ours[i]["kl_completion"].tolist() == ref[i]["KL_completion_ids"]  # TRL's rotation in batches of 2


def _sft_compare(ours: SFTDataset, ref: Any) -> None:
    assert len(ours) == len(ref)
    for i in range(len(ref)):
        item = ours[i]
        assert item["input_ids"].tolist() == ref[i]["input_ids"], i
        # TRL's labels: -100 where not trained (position 0 is never a target after the shift: ignore it)
        assert item["labels"].tolist()[1:] == ref[i]["labels"][1:], i


@pytest.mark.parametrize("style", STYLES)
@pytest.mark.parametrize("conversational", [False, True])
@pytest.mark.parametrize("completion_only", [True, False])
def test_sft_prompt_completion_equal_trl(style: str, conversational: bool, completion_only: bool,
                                         tmp_path: Path) -> None:
    if conversational and style == "gpt2":
        pytest.skip("no chat template")
    pairs = CONV_PAIRS if conversational else PLAIN_PAIRS
    rows = [{"prompt": r["prompt"], "completion": r["chosen"]} for r in pairs]
    ref = _trl_dataset("sft", style, rows, tmp_path, completion_only_loss=completion_only)
    tok, records = _ours("sft", style, rows)
    ours = SFTDataset(tok, records, LengthPolicy(), completion_only_loss=completion_only)
    _sft_compare(ours, ref)
    if completion_only:
        assert all(any(x == IGNORE_INDEX for x in ours[i]["labels"].tolist()) for i in range(len(ours)))


@pytest.mark.parametrize("style", STYLES)
def test_sft_text_equal_trl(style: str, tmp_path: Path) -> None:
    ref = _trl_dataset("sft", style, TEXTS, tmp_path)
    tok, records = _ours("sft", style, TEXTS)
    _sft_compare(SFTDataset(tok, records), ref)


@pytest.mark.parametrize("style", ["llama", "qwen"])
@pytest.mark.parametrize("assistant_only", [True, False])
def test_sft_messages_every_assistant_turn_equal_trl(style: str, assistant_only: bool, tmp_path: Path) -> None:
    ref = _trl_dataset("sft", style, MESSAGES, tmp_path, assistant_only_loss=assistant_only)
    tok, records = _ours("sft", style, MESSAGES)
    ours = SFTDataset(tok, records, assistant_only_loss=assistant_only)
    _sft_compare(ours, ref)
    if assistant_only:  # both assistant turns of the first conversation are trained, the user turns are not
        labels = ours[0]["labels"].tolist()
        ids = ours[0]["input_ids"].tolist()
        trained = tok.decode([t for t, lab in zip(ids, labels, strict=True) if lab != IGNORE_INDEX])
        assert "I am fine, thank you." in trained and "The answer is 5." in trained and "2+3" not in trained


@pytest.mark.parametrize("style", STYLES)
def test_truncation_equal_trl(style: str, tmp_path: Path) -> None:
    """TRL's max_length with keep_start: completions cut per sequence, prompts that fill it dropped."""
    rows = [*PLAIN_PAIRS, {"prompt": "Once upon a time there was a small model that learned to count: one two",
                           "chosen": " three", "rejected": " four"}]
    tok, records = _ours("preference", style, rows)
    ours = PreferenceDataset(tok, records, LengthPolicy(max_length=12))
    ref = _trl_dataset("dpo", style, rows, tmp_path, max_length=12)
    import trl

    collate = trl.trainer.dpo_trainer.DataCollatorForPreference(pad_token_id=0, max_length=12)
    batch = collate([ref[i] for i in range(len(ref))])
    assert len(ours) == len(ref) and ours.dropped == len(rows) - len(ref) >= 1
    for i in range(len(ours)):
        for side, row in ((ours.chosen[i], i), (ours.rejected[i], len(ours) + i)):
            n = int(batch["attention_mask"][row].sum())
            assert batch["input_ids"][row, :n].tolist() == ours.prompts[i] + side
            assert batch["completion_mask"][row, :n].tolist() == [0] * len(ours.prompts[i]) + [1] * len(side)
    assert ours.truncated >= 1
