"""Every TRL dataset format, JSONL quirks (BOM, CRLF), chat templates, each rejection on one line, truncation counts."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from _hf_tiny import QWEN_TEMPLATE, hf_model_dir, make_tokenizer

from trainlab.align.datasets import IGNORE_INDEX, LengthPolicy, PreferenceDataset, SFTDataset
from trainlab.align.records import (
    BUILTIN_CHAT_TEMPLATE,
    CompletionRecord,
    PreferenceRecord,
    TextRecord,
    load_records,
    use_chat_template,
)
from trainlab.errors import UserError

USER = [{"role": "user", "content": "What is 2+3?"}]
A5 = [{"role": "assistant", "content": "5"}]
A6 = [{"role": "assistant", "content": "6"}]
CHATML_PROMPT = "<|im_start|>user\nWhat is 2+3?<|im_end|>\n<|im_start|>assistant\n"


@pytest.fixture
def qwen():  # type: ignore[no-untyped-def]
    return make_tokenizer("qwen")


def _write(path: Path, rows: list[Any], *, newline: str = "\n", bom: bool = False) -> Path:
    text = newline.join(r if isinstance(r, str) else json.dumps(r) for r in rows) + newline
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + text.encode("utf-8"))
    return path


# ------------------------------------------------------------------------------------- JSONL quirks


@pytest.mark.parametrize("bom", [False, True])
@pytest.mark.parametrize("newline", ["\n", "\r\n"])
def test_bom_and_crlf_keep_every_record(tmp_path: Path, bom: bool, newline: str) -> None:
    rows = [{"prompt": "1+1=", "chosen": "2", "rejected": "3"}, {"prompt": "2+2=", "chosen": "4", "rejected": "5"}]
    path = _write(tmp_path / "p.jsonl", rows, newline=newline, bom=bom)
    report = load_records(path, "preference")
    assert report.n_read == 2 and report.skipped == 0  # the BOM used to cost the first record
    assert [(r.prompt, r.chosen, r.where) for r in report.records] == [("1+1=", "2", f"{path}:1"),
                                                                       ("2+2=", "4", f"{path}:2")]


def test_folder_of_jsonl_files_in_sorted_order(tmp_path: Path) -> None:
    _write(tmp_path / "b.jsonl", [{"text": "second"}])
    _write(tmp_path / "a.jsonl", [{"text": "first"}], bom=True)
    (tmp_path / ".hidden.jsonl").write_text('{"text": "no"}\n')
    assert [r.text for r in load_records(tmp_path, "sft").records] == ["first", "second"]


# ------------------------------------------------------------------------------------- formats


def test_sft_language_modeling_text() -> None:
    (rec,) = load_records([{"text": "Once upon a time."}], "sft").records
    assert rec == TextRecord("Once upon a time.", "dataset[row 0]")


def test_sft_prompt_completion_plain_and_conversational(qwen) -> None:  # type: ignore[no-untyped-def]
    plain, conv = load_records([{"prompt": "2+3=", "completion": "5"}, {"prompt": USER, "completion": A5}], "sft",
                               tokenizer=qwen).records
    assert plain == CompletionRecord("2+3=", "5", where="dataset[row 0]")
    assert conv == CompletionRecord(CHATML_PROMPT, "5<|im_end|>\n", where="dataset[row 1]", chat=True)


def test_sft_messages_keep_every_assistant_turn(qwen) -> None:  # type: ignore[no-untyped-def]
    msgs = [*USER, *A5, {"role": "user", "content": "And 2+4?"}, *A6]
    (rec,) = load_records([{"messages": msgs}], "sft", tokenizer=qwen).records
    assert isinstance(rec, TextRecord) and rec.chat and rec.spans is not None and len(rec.spans) == 2
    assert [rec.text[a:b] for a, b in rec.spans] == ["5<|im_end|>", "6<|im_end|>"]  # the template's markers
    ds = SFTDataset(qwen, [rec])
    ids, labels = ds[0]["input_ids"].tolist(), ds[0]["labels"].tolist()
    trained = [t for t, lab in zip(ids, labels, strict=True) if lab != IGNORE_INDEX]
    assert qwen.decode(trained) == "5<|im_end|>6<|im_end|>"  # both turns, each with its end-of-turn
    full = SFTDataset(qwen, [rec], assistant_only_loss=False)
    assert full[0]["labels"].tolist() == ids  # TRL's default: every token


def test_messages_without_generation_markers_are_found_turn_by_turn(qwen) -> None:  # type: ignore[no-untyped-def]
    qwen.chat_template = QWEN_TEMPLATE.replace("{% generation %}", "").replace("{% endgeneration %}", "")
    msgs = [*USER, *A5, {"role": "user", "content": "And 2+4?"}, *A6]
    (rec,) = load_records([{"messages": msgs}], "sft", tokenizer=qwen).records
    assert rec.spans is not None and [rec.text[a:b] for a, b in rec.spans] == ["5<|im_end|>\n", "6<|im_end|>\n"]
    # a template that renders a turn differently once more follow cannot be split: an error naming the fix
    qwen.chat_template = "{% for m in messages %}{% if loop.last %}LAST {% endif %}{{ m.content }}\n{% endfor %}"
    (odd,) = load_records([{"messages": msgs}], "sft", tokenizer=qwen).records
    assert odd.spans is None
    with pytest.raises(UserError, match=r"assistant turns.*align_data\.assistant_only_loss=false"):
        SFTDataset(qwen, [odd])
    assert len(SFTDataset(qwen, [odd], assistant_only_loss=False)) == 1


def test_preference_explicit_and_implicit_prompts(qwen) -> None:  # type: ignore[no-untyped-def]
    rows = [
        {"prompt": "2+3=", "chosen": "5", "rejected": "6"},  # explicit, plain
        {"chosen": "The sky is blue.", "rejected": "The sky is green."},  # implicit, plain
        {"prompt": USER, "chosen": A5, "rejected": A6},  # explicit, conversational
        {"chosen": USER + A5, "rejected": USER + A6},  # implicit, conversational
        {"prompt": "What is 2+3?", "chosen": USER + A5, "rejected": USER + A6},  # UltraFeedback
    ]
    recs = load_records(rows, "preference", tokenizer=qwen, strict=True).records
    assert (recs[0].prompt, recs[0].chosen, recs[0].rejected, recs[0].chat) == ("2+3=", "5", "6", False)
    # the longest common prefix; the space before the difference goes with the completions (TRL)
    assert (recs[1].prompt, recs[1].chosen, recs[1].rejected) == ("The sky is", " blue.", " green.")
    conv = (CHATML_PROMPT, "5<|im_end|>\n", "6<|im_end|>\n")
    for r in recs[2:]:
        assert (r.prompt, r.chosen, r.rejected, r.chat) == (*conv, True)


def test_content_as_a_list_of_text_parts_is_the_same_conversation(qwen) -> None:  # type: ignore[no-untyped-def]
    """OpenAI-style content parts (the Hugging Face chat format allows them): rendered as the string."""
    def parts(msgs: list[dict[str, str]]) -> list[dict[str, Any]]:
        return [{"role": m["role"], "content": [{"type": "text", "text": m["content"]}]} for m in msgs]

    plain = load_records([{"prompt": USER, "chosen": A5, "rejected": A6}], "preference", tokenizer=qwen,
                         strict=True).records[0]
    listed = load_records([{"prompt": parts(USER), "chosen": parts(A5), "rejected": parts(A6)}], "preference",
                          tokenizer=qwen, strict=True).records[0]
    assert (listed.prompt, listed.chosen, listed.rejected) == (plain.prompt, plain.chosen, plain.rejected)
    two = [{"role": "user", "content": [{"type": "text", "text": "What is"}, {"type": "text", "text": "2+3?"}]}]
    rec = load_records([{"prompt": two, "completion": A5}], "sft", tokenizer=qwen, strict=True).records[0]
    assert "What is\n2+3?" in rec.prompt


def test_unpaired_and_preference_as_unpaired(qwen) -> None:  # type: ignore[no-untyped-def]
    rows = [{"prompt": USER, "completion": A5, "label": True}, {"prompt": "2+3=", "completion": "7", "label": False},
            {"prompt": USER, "chosen": A5, "rejected": A6}]
    recs = load_records(rows, "unpaired", tokenizer=qwen, strict=True).records
    assert [(r.completion, r.label, r.chat) for r in recs] == [
        ("5<|im_end|>\n", True, True), ("7", False, False), ("5<|im_end|>\n", True, True),
        ("6<|im_end|>\n", False, True)]


def test_sft_from_preference_trains_on_chosen() -> None:
    (rec,) = load_records([{"prompt": "2+3=", "chosen": "5", "rejected": "6"}], "sft").records
    assert rec == CompletionRecord("2+3=", "5", where="dataset[row 0]")


# ------------------------------------------------------------------------------------- chat templates


def test_conversational_data_without_a_chat_template_names_the_fix() -> None:
    gpt2 = make_tokenizer("gpt2")
    for kind, row in (("preference", {"prompt": USER, "chosen": A5, "rejected": A6}), ("sft", {"messages": USER + A5}),
                      ("unpaired", {"prompt": USER, "completion": A5, "label": True})):
        with pytest.raises(UserError, match=r"chat template.*align_data\.chat_template=FILE.*builtin"):
            load_records([{"prompt": "1+1=", "completion": "2", "chosen": "2", "rejected": "3", "label": True}, row],
                         kind, tokenizer=gpt2)  # fatal even without strict: skipping every record would hide it


def test_use_chat_template_builtin_and_files(tmp_path: Path) -> None:
    gpt2 = make_tokenizer("gpt2")
    assert use_chat_template(gpt2, None) is None and gpt2.chat_template is None
    assert use_chat_template(gpt2, "builtin") == BUILTIN_CHAT_TEMPLATE == gpt2.chat_template
    (rec,) = load_records([{"prompt": USER, "completion": A5}], "sft", tokenizer=gpt2).records
    assert (rec.prompt, rec.completion) == ("<|user|>\nWhat is 2+3?\n<|assistant|>\n", "5<|endoftext|>\n")
    jinja = tmp_path / "t.jinja"
    jinja.write_text(QWEN_TEMPLATE, encoding="utf-8")
    assert use_chat_template(gpt2, jinja) == QWEN_TEMPLATE
    cfg = tmp_path / "tokenizer_config.json"
    cfg.write_text(json.dumps({"chat_template": "{{ messages[0].content }}"}), encoding="utf-8")
    assert use_chat_template(gpt2, cfg) == "{{ messages[0].content }}"
    with pytest.raises(UserError, match=r"align_data\.chat_template: chat template file not found"):
        use_chat_template(gpt2, tmp_path / "missing.jinja")


# ------------------------------------------------------------------------------------- rejections

REJECTIONS: list[tuple[str, Any, str]] = [
    ("preference", '{"prompt": "1+1=", "chosen": "2", ', "invalid JSON: "),
    ("preference", ["not", "an", "object"], "expected a JSON object, got list"),
    ("preference", {"prompt": "1+1=", "rejected": "3"}, "chosen: missing key 'chosen'"),
    ("preference", {"prompt": "1+1=", "chosen": 2, "rejected": "3"}, "chosen: expected a string or a list of messages"),
    ("preference", {"prompt": "1+1=", "chosen": " ", "rejected": "3"}, "chosen: empty completion"),
    ("preference", {"prompt": "1+1=", "chosen": "2", "rejected": "2"}, "rejected: 'chosen' and 'rejected' are"),
    ("preference", {"prompt": USER, "chosen": [{"role": "assistant"}], "rejected": A6},
     "chosen[0]: message has no 'content'"),
    ("preference", {"prompt": USER, "chosen": [{"role": "assistant", "content": 5}], "rejected": A6},
     "chosen[0].content: expected a string or a list of text parts, got int"),
    ("preference", {"prompt": USER, "chosen": [{"role": "assistant", "content": [{"type": "image_url"}]}],
                    "rejected": A6}, "chosen[0].content[0]: expected a text part {type: text, text: ...}, got "
                                     "'image_url' (a text model reads text parts only)"),
    ("preference", {"prompt": USER, "chosen": "5", "rejected": "6"}, "chosen: 'prompt' and 'chosen' mix plain text"),
    ("preference", {"chosen": "yes", "rejected": "no"}, "prompt: missing key 'prompt' and 'chosen' and"),
    ("preference", {"chosen": "abc", "rejected": "abcd"}, "rejected: 'chosen' and 'rejected' are identical (or one"),
    ("unpaired", {"prompt": "1+1=", "completion": "2", "label": 2}, "label: expected true or false (or 1/0) under"),
    ("unpaired", {"prompt": "1+1=", "completion": "2", "label": "yes"}, "label: expected true or false (or 1/0)"),
    ("unpaired", {"prompt": "1+1=", "completion": "2"}, "label: missing key 'label'"),
    ("sft", {"text": 5}, "text: expected a string under 'text', got int"),
    ("sft", {"text": ""}, "text: empty completion under 'text'"),
    ("sft", {"messages": USER}, "messages: expected at least one non-empty 'assistant' message"),
    ("sft", {"messages": []}, "messages: expected a non-empty list of messages"),
    ("sft", {"input": "x"}, "prompt: expected 'text', 'messages' or 'prompt' and 'completion'"),
    ("sft", {"prompt": "x", "completion": None}, "completion: expected a string or a list of messages under"),
]
GOOD = {"preference": {"prompt": "1+1=", "chosen": "2", "rejected": "3"},
        "unpaired": {"prompt": "1+1=", "completion": "2", "label": True}, "sft": {"prompt": "1+1=", "completion": "2"}}


@pytest.mark.parametrize(("kind", "line", "expected"), REJECTIONS)
def test_each_rejection_is_one_line_with_file_line_key(kind: str, line: Any, expected: str, tmp_path: Path,
                                                       qwen) -> None:  # type: ignore[no-untyped-def]
    path = _write(tmp_path / "d.jsonl", [GOOD[kind], line, GOOD[kind]], newline="\r\n")
    report = load_records(path, kind, tokenizer=qwen)  # type: ignore[arg-type]
    assert report.n_read == 3 and report.skipped == 1 and len(report.records) >= 2
    text = str(report.issues[0])
    assert text.startswith(f"{path}:2: {expected}"), text
    assert "\n" not in text
    with pytest.raises(UserError) as err:
        load_records(path, kind, tokenizer=qwen, strict=True)  # type: ignore[arg-type]
    assert str(err.value) == text


# ------------------------------------------------------------------------------------- truncation counts


def test_sft_truncation_is_counted_keep_start_and_keep_end() -> None:
    tok = make_tokenizer("gpt2")
    recs = [CompletionRecord("What is 2+3?", " The answer is 5."), CompletionRecord("Hi", " yes"),
            CompletionRecord("Hello, how are you today? I am fine, thank you.", " ok")]
    full = SFTDataset(tok, recs, LengthPolicy(max_length=None))
    lens = [len(full[i]["input_ids"]) for i in range(3)]
    n_prompt3 = len(tok(recs[2].prompt)["input_ids"])
    ds = SFTDataset(tok, recs, LengthPolicy(max_length=n_prompt3))
    # the third's prompt fills max_length: nothing left to train on, dropped; the first is cut
    assert ds.dropped == 1 and ds.kept_indices == [0, 1]
    assert ds.truncated == int(lens[0] > n_prompt3) + int(lens[1] > n_prompt3)
    end = SFTDataset(tok, recs, LengthPolicy(max_length=4, truncation_mode="keep_end"))
    assert end.dropped == 0 and end.truncated == sum(n > 4 for n in lens)
    assert end[2]["input_ids"].tolist() == full[2]["input_ids"].tolist()[-4:]
    stats = end.stats()
    assert (stats["truncated"], stats["dropped"], stats["max_length"], stats["truncation_mode"]) == (
        end.truncated, 0, 4, "keep_end")


def test_sft_prompt_and_completion_caps() -> None:
    tok = make_tokenizer("gpt2")
    rec = CompletionRecord("Hello, how are you today?", " I am fine, thank you.")
    ds = SFTDataset(tok, [rec], LengthPolicy(max_length=None, max_prompt_length=3, max_completion_length=2))
    full = SFTDataset(tok, [rec], LengthPolicy(max_length=None))
    n_p = len(tok(rec.prompt)["input_ids"])
    ids, labels = full[0]["input_ids"].tolist(), full[0]["labels"].tolist()
    assert ds[0]["input_ids"].tolist() == ids[n_p - 3:n_p + 2]  # the prompt's last 3, the completion's first 2
    assert ds[0]["labels"].tolist() == [IGNORE_INDEX] * 3 + labels[n_p:n_p + 2]
    assert ds.truncated == 1 and full.truncated == 0


def test_default_policy_cuts_nothing_from_200_token_pairs() -> None:
    tok = make_tokenizer("gpt2")
    words = "The quick brown fox jumps over the lazy dog. " * 12
    pair = PreferenceRecord(words, words + "Yes.", words + "No.")
    ds = PreferenceDataset(tok, [pair], LengthPolicy())
    assert len(ds.prompts[0]) + len(ds.chosen[0]) > 200
    assert ds.stats()["truncated"] == 0 and ds.stats()["dropped"] == 0
    with pytest.raises(UserError, match="keep_end is only supported for SFT"):
        PreferenceDataset(tok, [pair], LengthPolicy(truncation_mode="keep_end"))


def test_policy_from_config_caps_by_model_positions() -> None:
    class Old:  # the names before TRL's
        max_len, max_prompt_len, max_completion_len = None, 64, 32

    class New:
        max_length, truncation_mode, max_prompt_length, max_completion_length = 1024, "keep_start", None, None

    assert LengthPolicy.from_config(New(), 256) == LengthPolicy(256, "keep_start", None, None)
    assert LengthPolicy.from_config(Old()) == LengthPolicy(None, "keep_start", 64, 32)


# ------------------------------------------------------------------------------------- saved with the model


def test_the_tokenizer_is_saved_unchanged_and_a_given_template_with_it(tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    from trainlab.align.config import align_config
    from trainlab.recipes.align import run_alignment

    data = _write(tmp_path / "chat.jsonl", [{"prompt": [{"role": "user", "content": f"{a}+{a}?"}],
                                             "completion": [{"role": "assistant", "content": str(2 * a)}]}
                                            for a in range(1, 9)])
    for arch, template in (("qwen2", None), ("gpt2", "builtin")):
        model = hf_model_dir(tmp_path / f"{arch}-in", arch)
        overrides = ["train.device=cpu", "train.max_steps=1", "train.batch_size=4", "train.eval_every=0",
                     f"align_data.source={data}"] + ([f"align_data.chat_template={template}"] if template else [])
        cfg = align_config("sft", preset="tiny", model=model, overrides=overrides)
        run = run_alignment("sft", cfg, model, tmp_path / f"{arch}-out", quiet=True)
        saved = Path(run.summary["model_dir"])
        got = json.loads((saved / "tokenizer_config.json").read_text(encoding="utf-8"))
        want = json.loads((model / "tokenizer_config.json").read_text(encoding="utf-8"))
        for bookkeeping in ("is_local", "local_files_only"):  # what transformers adds to any re-saved tokenizer
            got.pop(bookkeeping, None)
        assert got == want, arch  # no bos (never <|im_end|>), no pad invented
        assert (saved / "tokenizer.json").read_text(encoding="utf-8") == (model / "tokenizer.json").read_text(
            encoding="utf-8")
        reloaded = AutoTokenizer.from_pretrained(str(saved))
        assert reloaded.chat_template == (BUILTIN_CHAT_TEMPLATE if template else QWEN_TEMPLATE)


def test_a_folder_without_data_files_names_what_it_expected(tmp_path: Path) -> None:
    """An empty --data folder (or one of .txt files) said 'folder has no .jsonl files' though .json, .parquet,
    .csv and `datasets` folders are read too."""
    empty = tmp_path / "empty"
    empty.mkdir()
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "a.txt").write_text("hello", encoding="utf-8")
    for folder in (empty, tmp_path / "notes"):
        with pytest.raises(UserError, match=r"folder has no data files: expected \.jsonl, \.json, \.parquet, \.csv"):
            load_records(folder, "preference")
    with pytest.raises(UserError, match=r"unsupported data file type '\.txt'"):
        load_records(tmp_path / "notes" / "a.txt", "preference")
