"""`trainlab generate` gives transformers' greedy tokens: same prompt ids, same stops, same batches.

For each architecture of tests/_hf_tiny.py (three tokenizer styles: GPT-2 no BOS, Llama `<s>` added by
the tokenizer, Qwen no BOS with eos `<|im_end|>`) and for our own decoder exported to the HF Llama
format, the reference is `AutoModelForCausalLM.from_pretrained(folder).generate(do_sample=False)` on
`tokenizer(prompts, padding_side="left")`. Each model is edited so that its eos becomes the greedy
choice where some token X was, so rows stop at different steps and stopping is compared too.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from _hf_tiny import ARCHS, hf_model_dir, make_tokenizer
from typer.testing import CliRunner

from trainlab.config import ModelConfig
from trainlab.model import Decoder, encode_prompts, generate_ids, load_model, save_pretrained
from trainlab.model.text import chat_end_of_turn_id, stop_token_ids

MAX_NEW = 16
PROMPTS = ["The quick brown fox", "What is 2+3? The answer", "Hello, how are you today? I am"]
CASES = (*ARCHS, "decoder")


def _chat_prompt(tok) -> str | None:
    if not tok.chat_template:
        return None
    return tok.apply_chat_template([{"role": "user", "content": "Sort the list: 3 1 2"}], tokenize=False,
                                   add_generation_prompt=True)


def _prompts(tok) -> list[str]:
    chat = _chat_prompt(tok)
    return PROMPTS + ([chat] if chat else [])


def _reference(folder: Path, prompts: list[str], max_new: int = MAX_NEW) -> list[list[int]]:
    """transformers' greedy new tokens per prompt, cut after the first eos of its generation config."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    enc = tok(prompts, padding=True, padding_side="left", return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=max_new, do_sample=False, pad_token_id=tok.pad_token_id)
    eos = model.generation_config.eos_token_id
    eos = {eos} if isinstance(eos, int) else set(eos or [])
    rows = []
    for row in out[:, enc["input_ids"].shape[1]:].tolist():
        cut = next((j + 1 for j, t in enumerate(row) if t in eos), len(row))
        rows.append(row[:cut])
    return rows


def _tokenizer_for(case: str):
    return make_tokenizer({"gpt2": "gpt2", "llama": "llama", "mistral": "llama", "decoder": "llama"}.get(case, "qwen"))


def _build(case: str, folder: Path) -> Path:
    """A tiny model whose greedy output depends on the prompt, and whose eos comes up in row 0 only."""
    from transformers import AutoModelForCausalLM

    tok = _tokenizer_for(case)
    if case == "decoder":
        torch.manual_seed(0)
        ours = Decoder(ModelConfig(vocab_size=len(tok), dim=32, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=64,
                                   max_seq_len=256, init_std=0.3, tie_embeddings=False))
        save_pretrained(ours, folder, tokenizer=tok)
        head = ours.output_embedding()
    else:
        hf_model_dir(folder, case)
        hf = AutoModelForCausalLM.from_pretrained(folder)
        torch.manual_seed(0)
        with torch.no_grad():  # the default init (std 0.02) gives near prompt-independent outputs
            for p in hf.parameters():
                if p.dim() >= 2:
                    p.normal_(0.0, 0.3)
        hf.save_pretrained(folder)
        head = hf.get_output_embeddings().weight

    def save() -> None:
        if case == "decoder":
            save_pretrained(ours, folder, tokenizer=tok)
        else:
            hf.save_pretrained(folder)

    # eos's logit becomes 1.05x that of a token row 0 emits: greedy then stops where that token was
    # (and nowhere else, for a token whose lead over the others is large): try tokens until it is so
    free = _reference(folder, _prompts(tok))
    original = head[tok.eos_token_id].detach().clone()
    for step in range(1, 10):
        with torch.no_grad():
            head[tok.eos_token_id] = head[free[0][step]] * 1.05
        save()
        ref = _reference(folder, _prompts(tok))
        if 2 <= len(ref[0]) < MAX_NEW and ref[0][-1] == tok.eos_token_id and any(len(r) == MAX_NEW for r in ref):
            return folder
        with torch.no_grad():
            head[tok.eos_token_id] = original
    raise AssertionError(f"{case}: found no token to turn into a stop")


@pytest.fixture(scope="module", params=CASES)
def case(request, tmp_path_factory) -> tuple[str, Path]:
    return request.param, _build(request.param, tmp_path_factory.mktemp(request.param) / "model")


@pytest.mark.parametrize("style", ["gpt2", "llama", "qwen"])
def test_prompt_ids_are_the_tokenizers(style):
    tok = make_tokenizer(style)
    prompts = _prompts(tok)
    ids, mask = encode_prompts(tok, prompts)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    ref = tok(prompts, padding=True, padding_side="left", return_tensors="pt")
    assert torch.equal(ids, ref["input_ids"]) and torch.equal(mask, ref["attention_mask"])
    first = [row[m.bool()][0].item() for row, m in zip(ids, mask, strict=True)]
    if style == "llama":  # the tokenizer's post-processor adds <s>
        assert set(first) == {tok.convert_tokens_to_ids("<s>")}
    else:  # GPT-2 and Qwen add nothing: no <|endoftext|>, no <|im_end|> in front
        assert tok.convert_tokens_to_ids("<|endoftext|>") not in first
        assert tok.convert_tokens_to_ids("<|im_end|>") not in first


def test_qwen_prompt_is_not_prefixed_even_with_a_bos_attribute():
    tok = make_tokenizer("qwen")
    tok.bos_token = "<|im_end|>"  # what some loaders fill in for a tokenizer without bos
    ids, _ = encode_prompts(tok, ["Hello"])
    assert ids[0].tolist() == tok("Hello")["input_ids"]
    assert ids[0, 0].item() != tok.convert_tokens_to_ids("<|im_end|>")


@pytest.mark.parametrize("style,end", [("llama", "</s>"), ("qwen", "<|im_end|>"), ("gpt2", None)])
def test_chat_end_of_turn(style, end):
    tok = make_tokenizer(style)
    expected = None if end is None else tok.convert_tokens_to_ids(end)
    assert chat_end_of_turn_id(tok) == expected


def test_library_greedy_matches_transformers(case):
    name, folder = case
    model = load_model(folder)
    assert isinstance(model, Decoder) == (name in ("llama", "decoder"))  # Llama folders load as our decoder
    tok = getattr(model, "tokenizer", None) or _tokenizer_for(name)
    prompts = _prompts(tok)
    ours = generate_ids(model, tok, prompts, max_new_tokens=MAX_NEW)
    ref = _reference(folder, prompts)
    assert ours == ref
    assert tok.eos_token_id in stop_token_ids(model, tok)
    assert ref[0][-1] == tok.eos_token_id and len(ref[0]) < MAX_NEW  # row 0 stops early ...
    assert any(len(r) == MAX_NEW for r in ref)  # ... while another row runs to the end


def test_cli_greedy_matches_transformers(case):
    from transformers import AutoTokenizer

    from trainlab.cli import app

    _, folder = case
    tok = AutoTokenizer.from_pretrained(folder)
    prompts = _prompts(tok)
    args = ["generate", "--model", str(folder), "--max-new-tokens", str(MAX_NEW), "--json"]
    for p in prompts:
        args += ["--prompt", p]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    got = json.loads(result.stdout)
    expected = [tok.decode([t for t in row if t != tok.eos_token_id], skip_special_tokens=True)
                for row in _reference(folder, prompts)]
    assert [g["completion"] for g in got] == expected


def test_static_cache_greedy_matches_transformers(case):
    """`trainlab generate` decodes our decoder with the preallocated cache by default (--cache auto): the same
    tokens; a transformers model asked for it explicitly is one error line."""
    from trainlab.errors import UserError
    from trainlab.model.static_cache import supports_static

    name, folder = case
    model = load_model(folder)
    tok = getattr(model, "tokenizer", None) or _tokenizer_for(name)
    prompts = _prompts(tok)
    auto = generate_ids(model, tok, prompts, max_new_tokens=MAX_NEW, cache="auto")
    assert auto == _reference(folder, prompts)
    if supports_static(model):
        assert generate_ids(model, tok, prompts, max_new_tokens=MAX_NEW, cache="static") == auto
    else:
        with pytest.raises(UserError):
            generate_ids(model, tok, prompts, max_new_tokens=MAX_NEW, cache="static")


def test_cli_cache_option_is_checked(capsys):
    from trainlab.cli import run_cli

    assert run_cli(["generate", "--cache", "paged", "-p", "hi"]) == 2
    assert "--cache 'paged': expected auto, static or dynamic" in capsys.readouterr().err
