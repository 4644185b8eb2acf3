"""The shared case table: architectures × data formats × methods, every case through the same checks.

As PEFT's ``testing_common``: one table of cases (`CASES`), and one test per check, parametrized over
the table. A case is a tiny transformers model built locally (`tests/_hf_tiny.py`: GPT-2 with its
dropout 0.1, Llama with untied embeddings, Qwen2, Qwen3, Mistral, with the GPT-2 / Llama / Qwen
tokenizer styles), a data format TRL's trainers accept, and a method; it is trained with the library
API (`trainlab.align.config.align_config` + `trainlab.recipes.align.run_alignment`) for a few full-batch
steps at a high learning rate on eight learnable records. The checks:

* **loss**: every logged loss is finite and the last is below the first; at the first step the policy
  *is* the reference, so DPO's loss is exactly ln 2 and KTO's exactly 0.5 (which also fails when
  dropout is left on: the policy's forward then differs from the reference's);
* **prompt masked**: every training row equals what TRL 1.16 builds for the record (TRL's prompt
  extraction and chat template, `trl.data_utils`; its tokenization: the prompt alone, then
  prompt + completion with eos appended to plain-text completions), labels are -100 exactly on the
  prompt and trained on the completion; ``messages``: trained exactly on the assistant turns (the
  template's ``{% generation %}`` mask, TRL's ``assistant_only_loss``);
* **saved folder**: ``out/model`` loads with ``transformers.AutoModelForCausalLM`` and gives the
  in-memory model's logits; the tokenizer is saved unchanged; the model keeps its dtype;
* **generate**: our greedy `generate` gives transformers' greedy ``generate`` tokens, and
  `trainlab.recipes.generation.generate_texts` (``trainlab generate``) its decoded text.

Every (architecture, method) pair is in the table at least once and every format at least once; a
few cases run the ``trainlab`` command line in a subprocess instead. Conversational data on GPT-2
(no chat template) is an error that names ``chat_template``.
"""

from __future__ import annotations

import copy
import json
import math
import os
import subprocess
import sys
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import torch
from _hf_tiny import ARCH_TOKENIZER, hf_model_dir, make_tokenizer

ROOT = Path(__file__).resolve().parents[1]

# --------------------------------------------------------------------------------------------
# Data: eight learnable records in every format (chosen and rejected differ from the first letter,
# so TRL's character-level implicit-prompt extraction and any token-level one agree)
# --------------------------------------------------------------------------------------------

_BASE = [("What comes after one?", "two", "seven"), ("What comes after two?", "three", "nine"),
         ("What comes after three?", "four", "eight"), ("What comes after four?", "five", "one"),
         ("Reverse the word abc.", "cba", "bac"), ("Sort the list 3 1 2.", "1 2 3", "3 2 1"),
         ("What is 2+3?", "5", "7"), ("Say hello.", "hello", "goodbye")]


def _user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def _assistant(text: str) -> list[dict[str, str]]:
    return [{"role": "assistant", "content": text}]


def records(fmt: str) -> list[dict[str, Any]]:
    """The eight records of ``fmt`` (KTO's unpaired formats: sixteen, desirable and undesirable)."""
    out: list[dict[str, Any]] = []
    for q, good, bad in _BASE:
        if fmt == "text":
            out.append({"text": f"{q} {good}."})
        elif fmt == "pc_plain":
            out.append({"prompt": q, "completion": f" {good}."})
        elif fmt == "pc_conv":
            out.append({"prompt": _user(q), "completion": _assistant(f"{good}.")})
        elif fmt == "messages":
            out.append({"messages": [{"role": "system", "content": "Answer briefly."}, *_user(q),
                                     *_assistant(f"{good}."), *_user("Again?"), *_assistant(f"{good}, again.")]})
        elif fmt == "pref_plain":
            out.append({"prompt": q, "chosen": f" {good}.", "rejected": f" {bad}."})
        elif fmt == "pref_conv":
            out.append({"prompt": _user(q), "chosen": _assistant(f"{good}."), "rejected": _assistant(f"{bad}.")})
        elif fmt == "implicit_plain":
            out.append({"chosen": f"{q} {good}.", "rejected": f"{q} {bad}."})
        elif fmt == "implicit_conv":
            out.append({"chosen": _user(q) + _assistant(f"{good}."), "rejected": _user(q) + _assistant(f"{bad}.")})
        elif fmt == "ultrafeedback":  # a prompt string beside full conversations
            out.append({"prompt": q, "chosen": _user(q) + _assistant(f"{good}."),
                        "rejected": _user(q) + _assistant(f"{bad}.")})
        elif fmt == "unpaired_plain":
            out += [{"prompt": q, "completion": f" {good}.", "label": True},
                    {"prompt": q, "completion": f" {bad}.", "label": False}]
        elif fmt == "unpaired_conv":
            out += [{"prompt": _user(q), "completion": _assistant(f"{good}."), "label": True},
                    {"prompt": _user(q), "completion": _assistant(f"{bad}."), "label": False}]
        else:
            raise ValueError(fmt)
    return out


CONVERSATIONAL = {"pc_conv", "messages", "pref_conv", "implicit_conv", "ultrafeedback", "unpaired_conv"}
FORMATS = {"sft": ("text", "pc_plain", "pc_conv", "messages"),
           "dpo": ("pref_plain", "pref_conv", "implicit_plain", "implicit_conv", "ultrafeedback"),
           "kto": ("unpaired_plain", "unpaired_conv", "pref_plain")}
FORMATS["orpo"] = FORMATS["simpo"] = FORMATS["dpo"]

# --------------------------------------------------------------------------------------------
# The reference: what TRL 1.16 trains on for a record
# --------------------------------------------------------------------------------------------


def _ids(tok: Any, x: str | list[dict[str, str]], **kw: Any) -> list[int]:
    """TRL's ``_tokenize``: plain text through the tokenizer (its special tokens), messages through the template."""
    if isinstance(x, str):
        return list(tok(x)["input_ids"])
    return list(tok.apply_chat_template(x, tokenize=True, return_dict=True, **kw)["input_ids"])


def _prompt_completion(tok: Any, prompt: Any, completion: Any) -> tuple[list[int], list[int]]:
    if isinstance(prompt, str):
        completion = completion if completion.endswith(tok.eos_token) else completion + tok.eos_token
        p, full = _ids(tok, prompt), _ids(tok, prompt + completion)
    else:
        p, full = _ids(tok, prompt, add_generation_prompt=True), _ids(tok, prompt + completion)
    assert full[: len(p)] == p, "test data: the prompt must end on a token boundary"
    return p, full[len(p):]


def expected_rows(tok: Any, fmt: str) -> list[tuple[list[int], list[int]]]:
    """(input ids, labels) of every training row, in the order our batches hold them (preference:
    all chosen rows, then all rejected rows)."""
    from trl.data_utils import maybe_extract_prompt

    rows: list[tuple[list[int], list[int]]] = []
    if fmt == "text":
        for r in records(fmt):
            ids = _ids(tok, r["text"] + tok.eos_token)
            rows.append((ids, ids))
        return rows
    if fmt == "messages":
        for r in records(fmt):
            enc = tok.apply_chat_template(r["messages"], tokenize=True, return_dict=True,
                                          return_assistant_tokens_mask=True)
            ids = list(enc["input_ids"])
            rows.append((ids, [i if m else -100 for i, m in zip(ids, enc["assistant_masks"], strict=True)]))
        return rows
    recs = records(fmt)
    if "completion" in recs[0]:
        pairs = [_prompt_completion(tok, r["prompt"], r["completion"]) for r in recs]
        return [(p + c, [-100] * len(p) + c) for p, c in pairs]
    chosen, rejected = [], []
    for r in recs:
        r = maybe_extract_prompt(dict(r))
        for side, out in (("chosen", chosen), ("rejected", rejected)):
            p, c = _prompt_completion(tok, r["prompt"], r[side])
            out.append((p + c, [-100] * len(p) + c))
    # KTO: each pair becomes a desirable and an undesirable example, in TRL's order
    # (`unpair_preference_dataset`: every chosen, then every rejected), as the preference batches
    return chosen + rejected


def _prompt_text(tok: Any, fmt: str) -> str:
    """The first record's prompt as text (rendered with the template when conversational)."""
    from trl.data_utils import maybe_apply_chat_template, maybe_extract_prompt

    r = records(fmt)[0]
    if fmt == "text":
        return r["text"].split("?")[0] + "?"
    if fmt == "messages":
        return tok.apply_chat_template(r["messages"][:2], tokenize=False, add_generation_prompt=True)
    if "completion" in r:
        r = {"prompt": r["prompt"], "completion": r["completion"]}
    return maybe_apply_chat_template(maybe_extract_prompt(r), tok)["prompt"]


# --------------------------------------------------------------------------------------------
# The table
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    arch: str
    method: str
    fmt: str
    extra: tuple[str, ...] = ()  # config overrides beyond the common ones
    dtype: str = "float32"  # the input model's dtype

    @property
    def id(self) -> str:
        tail = "".join(f"-{o.split('.')[-1]}" for o in self.extra)
        tail += "" if self.dtype == "float32" else f"-{self.dtype}"
        return f"{self.arch}-{self.method}-{self.fmt}{tail}"


# (arch, method, format): every (arch, method) pair once, each method with each of its formats, the
# three tokenizer styles with plain and conversational data (GPT-2 has no chat template: plain only)
_TABLE = """
gpt2 sft text          llama sft messages          qwen2 sft pc_conv        qwen3 sft messages     mistral sft pc_plain
gpt2 dpo pref_plain    llama dpo pref_conv         qwen2 dpo implicit_conv  qwen3 dpo ultrafeedback
mistral dpo implicit_plain
gpt2 orpo implicit_plain  llama orpo ultrafeedback qwen2 orpo pref_plain    qwen3 orpo pref_conv
mistral orpo implicit_conv
gpt2 simpo pref_plain  llama simpo implicit_conv   qwen2 simpo ultrafeedback  qwen3 simpo implicit_plain
mistral simpo pref_conv
gpt2 kto unpaired_plain  llama kto unpaired_conv   qwen2 kto pref_plain     qwen3 kto unpaired_conv
mistral kto unpaired_plain
qwen3 sft text
"""


def _table() -> list[Case]:
    words = _TABLE.split()
    cases = [Case(*words[i:i + 3]) for i in range(0, len(words), 3)]
    return [*cases,  # configuration variants
            Case("llama", "dpo", "pref_conv", ("align.reference=frozen",)),
            Case("mistral", "sft", "pc_conv", ("train.grad_accum=2",)),
            Case("qwen3", "dpo", "pref_plain", (), "bfloat16")]


CASES = _table()
_STEPS = 8
_LR = {"sft": 5e-3, "dpo": 5e-3, "orpo": 5e-3, "simpo": 5e-3, "kto": 5e-3}


@cache
def _model_dir(root: str, arch: str, dtype: str) -> Path:
    return hf_model_dir(Path(root) / f"{arch}-{dtype}", arch, dtype=getattr(torch, dtype))


@cache
def _run(root: str, case: Case) -> Any:
    """Train ``case`` once (shared by all checks); returns the `AlignRun`, its output folder and input model."""
    from trainlab.align.config import align_config
    from trainlab.recipes.align import run_alignment

    model_dir = _model_dir(root, case.arch, case.dtype)
    data = Path(root) / f"{case.fmt}.jsonl"
    if not data.exists():
        data.write_text("".join(json.dumps(r) + "\n" for r in records(case.fmt)), encoding="utf-8")
    n = len(records(case.fmt))
    cfg = align_config(case.method, preset="tiny", model=model_dir, overrides=[  # the CLI's: TRL's defaults
        f"align_data.source={data}", f"train.max_steps={_STEPS}", f"train.batch_size={n}", "train.device=cpu",
        f"train.lr={_LR[case.method]}", "train.warmup_steps=0", "train.log_every=1", "train.eval_every=0",
        "align_data.n_eval_pairs=0", "align.eval_kl=false", *case.extra])
    out = Path(root) / "runs" / case.id
    run = run_alignment(case.method, cfg, model_dir, out, quiet=True, evaluate_oracle=False)
    return run, out, model_dir


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(tmp_path_factory.mktemp("case_table"))


def _params(cases: list[Case]) -> list[Any]:
    return [pytest.param(c, id=c.id) for c in cases]


def _batch(run: Any, method: str) -> dict[str, torch.Tensor]:
    from trainlab.recipes.align import collate_for

    ds = run.data.train
    return collate_for(method, run.data.pad_id)([ds[i] for i in range(len(ds))])


# --------------------------------------------------------------------------------------------
# The checks
# --------------------------------------------------------------------------------------------


def test_table_covers_every_arch_method_and_format() -> None:
    from _hf_tiny import ARCHS

    assert {(c.arch, c.method) for c in CASES} >= {(a, m) for a in ARCHS for m in FORMATS}
    assert {c.fmt for c in CASES} == {f for fmts in FORMATS.values() for f in fmts}
    assert {(c.method, c.fmt) for c in CASES} >= {(m, f) for m, fmts in FORMATS.items() for f in fmts}
    assert not any(c.arch == "gpt2" and c.fmt in CONVERSATIONAL for c in CASES)


@pytest.mark.parametrize("case", _params(CASES))
def test_loss_finite_and_falling(root: str, case: Case) -> None:
    run, _, _ = _run(root, case)
    losses = [h["loss"] for h in run.summary["history"]]
    assert len(losses) == _STEPS
    assert all(math.isfinite(x) for x in losses), losses
    assert losses[-1] < losses[0] - 0.01, losses
    if case.method in ("dpo", "orpo", "simpo"):  # each pair's prompt computed once (sdpa attention)
        assert run.summary["prefix_sharing"]["enabled"] is True, run.summary["prefix_sharing"]
    if case.method == "dpo":  # policy = reference at step 1: -log σ(0); pure DPO, dropout off
        assert losses[0] == pytest.approx(math.log(2), abs=1e-5), losses
    if case.method == "kto":  # 1 - σ(β·(0 - z₀)) with z₀ = 0
        assert losses[0] == pytest.approx(0.5, abs=1e-5), losses


@pytest.mark.parametrize("case", _params(CASES))
def test_prompt_masked(root: str, case: Case) -> None:
    run, _, _ = _run(root, case)
    tok = make_tokenizer(ARCH_TOKENIZER[case.arch])
    expected = expected_rows(tok, case.fmt)
    batch = _batch(run, case.method)
    assert batch["input_ids"].shape[0] == len(expected)
    for r, (ids, labels) in enumerate(expected):
        real = batch["attention_mask"][r].bool()
        got_ids = batch["input_ids"][r][real].tolist()
        got_labels = batch["labels"][r][real].tolist()
        assert got_ids == ids, f"row {r}: {tok.decode(got_ids)!r} != TRL's {tok.decode(ids)!r}"
        # position 0 is never predicted (labels shift by one): either label is fine there
        assert got_labels[1:] == labels[1:], f"row {r}: trained on {[tok.decode([i]) for i in got_labels if i >= 0]}"
        assert batch["labels"][r][~real].eq(-100).all()


@pytest.mark.parametrize("case", _params(CASES))
def test_saved_folder_loads_in_transformers(root: str, case: Case) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    run, out, model_dir = _run(root, case)
    saved = out / "model"
    hf = AutoModelForCausalLM.from_pretrained(saved).eval()
    assert hf.dtype == getattr(torch, case.dtype)
    # the in-memory policy (our decoder for Llama-layout folders, else the wrapped transformers model) in
    # the saved dtype, through the CausalLM protocol's forward (logits)
    ours = copy.deepcopy(run.model).to(hf.dtype).eval()
    batch = _batch(run, case.method)
    with torch.no_grad():
        want = ours(batch["input_ids"], batch["attention_mask"])
        got = hf(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    real = batch["attention_mask"].bool()
    # fp32: to rounding; bf16: a few units of bf16's last place (kernels may sum in other orders)
    tol = {} if hf.dtype == torch.float32 else {"rtol": 2e-2, "atol": 2e-2}
    torch.testing.assert_close(got[real], want[real], **tol)
    original, reloaded = AutoTokenizer.from_pretrained(model_dir), AutoTokenizer.from_pretrained(saved)
    for attr in ("bos_token", "eos_token", "pad_token", "chat_template"):
        assert getattr(reloaded, attr) == getattr(original, attr), attr
    text = _prompt_text(original, case.fmt)
    assert reloaded(text)["input_ids"] == original(text)["input_ids"]


def _hf_greedy(hf: Any, enc: Any, n: int, pad: int, *, eos: bool) -> list[int]:
    """transformers' greedy ``generate``: the new tokens (with ``eos=False`` no stop at eos: all ``n``)."""
    config = copy.deepcopy(hf.generation_config)
    config.update(do_sample=False, max_new_tokens=n, pad_token_id=pad)
    if not eos:
        config.eos_token_id = []  # (None falls back to the model config's eos)
    with torch.no_grad():
        out = hf.generate(**enc, generation_config=config)
    return out[0, enc["input_ids"].shape[1]:].tolist()


@pytest.mark.parametrize("case", _params(CASES))
def test_generate_parity(root: str, case: Case) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trainlab.recipes.generation import generate_texts

    run, out, _ = _run(root, case)
    saved = out / "model"
    tok = AutoTokenizer.from_pretrained(saved)
    hf = AutoModelForCausalLM.from_pretrained(saved).eval()
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    prompts = [_prompt_text(tok, case.fmt), "Sort the list 3 1 2. The", "Hello, how are"]
    # every decoding step (cache, positions): 8 tokens, no stop at eos, in-memory model vs the saved folder
    model = copy.deepcopy(run.model).to(hf.dtype).eval()  # the saved weights are what transformers runs
    for prompt in prompts[:2]:
        enc = tok(prompt, return_tensors="pt")
        ref = _hf_greedy(hf, enc, 8, pad, eos=False)
        with torch.no_grad():
            ours = model.generate(enc["input_ids"], enc["attention_mask"], max_new_tokens=8, eos_token_id=None,
                                  pad_token_id=pad)[0, enc["input_ids"].shape[1]:].tolist()
        assert ours == ref, (prompt, tok.decode(ours), tok.decode(ref))
    # `trainlab generate` on the folder: the prompt tokenized as the tokenizer does, stop at eos
    want = []
    for prompt in prompts:
        ref = _hf_greedy(hf, tok(prompt, return_tensors="pt"), 8, pad, eos=True)
        want.append(tok.decode(ref[: ref.index(tok.eos_token_id)] if tok.eos_token_id in ref else ref,
                               skip_special_tokens=True))
    got = generate_texts(saved, prompts, max_new_tokens=8, temperature=0.0, top_k=0, top_p=1.0, seed=0,
                         device="cpu")
    assert got == want


def test_conversational_data_without_chat_template_is_an_error(root: str) -> None:
    from trainlab.align.config import align_config
    from trainlab.errors import UserError
    from trainlab.recipes.align import run_alignment

    data = Path(root) / "conv-for-gpt2.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in records("pref_conv")), encoding="utf-8")
    cfg = align_config("dpo", preset="tiny", overrides=[f"align_data.source={data}", "train.max_steps=1",
                                                        "train.device=cpu", "align_data.n_eval_pairs=0"])
    out = Path(root) / "runs" / "gpt2-conv"
    with pytest.raises(UserError, match="chat_template"):
        run_alignment("dpo", cfg, _model_dir(root, "gpt2", "float32"), out, quiet=True, evaluate_oracle=False)
    assert not (out / "model").exists()


# --------------------------------------------------------------------------------------------
# The command line: a few cases end to end in a subprocess
# --------------------------------------------------------------------------------------------

CLI_CASES = [Case("qwen3", "sft", "messages"), Case("llama", "dpo", "ultrafeedback"),
             Case("gpt2", "kto", "unpaired_plain")]


def _why(proc: subprocess.CompletedProcess[str]) -> str:
    lines = [ln for ln in proc.stderr.splitlines() if "rror" in ln or "Traceback" in ln]
    return "\n".join(lines[-5:]) or proc.stderr[-2000:]


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "trainlab.cli", *args], capture_output=True, text=True, env=env,
                          cwd=ROOT, timeout=300)


@pytest.mark.parametrize("case", _params(CLI_CASES))
def test_cli_case(root: str, case: Case) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model_dir = _model_dir(root, case.arch, case.dtype)
    data = Path(root) / f"cli-{case.fmt}.jsonl"
    # a file as editors on Windows write it: a UTF-8 BOM and CRLF line ends
    data.write_bytes(b"\xef\xbb\xbf" + "".join(json.dumps(r) + "\r\n" for r in records(case.fmt)).encode())
    out = Path(root) / "cli" / case.id
    n = len(records(case.fmt))
    proc = _cli(case.method, "--model", str(model_dir), "--data", str(data), "--out", str(out), "--json",
                "--max-steps", str(_STEPS), "--device", "cpu", f"train.batch_size={n}",
                f"train.lr={_LR[case.method]}", "train.warmup_steps=0", "train.log_every=1",
                "align_data.n_eval_pairs=0")
    assert proc.returncode == 0, _why(proc)
    summary = json.loads(proc.stdout)
    assert summary["steps"] == _STEPS
    assert summary["data"]["load"]["read"] == n and summary["data"]["load"]["skipped"] == 0
    losses = [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()
              if json.loads(line).get("kind") == "train"]
    assert losses and all(math.isfinite(x) for x in losses) and losses[-1] < losses[0]
    # the folder works in transformers, and `trainlab generate` agrees with its greedy generate
    tok = AutoTokenizer.from_pretrained(out / "model")
    hf = AutoModelForCausalLM.from_pretrained(out / "model").eval()
    prompt = _prompt_text(tok, case.fmt)
    enc = tok(prompt, return_tensors="pt")
    with torch.no_grad():
        ref = hf.generate(**enc, do_sample=False, max_new_tokens=6,
                          pad_token_id=tok.pad_token_id or tok.eos_token_id)[0, enc["input_ids"].shape[1]:].tolist()
    if tok.eos_token_id in ref:
        ref = ref[: ref.index(tok.eos_token_id)]
    gen = _cli("generate", "--model", str(out / "model"), "--prompt", prompt, "--max-new-tokens", "6",
               "--device", "cpu", "--json")
    assert gen.returncode == 0, _why(gen)
    assert json.loads(gen.stdout) == [{"prompt": prompt, "completion": tok.decode(ref, skip_special_tokens=True)}]
    for p in (proc, gen):  # no deprecation warnings from trainlab's own calls into transformers/torch
        assert "Warning" not in p.stderr, [ln for ln in p.stderr.splitlines() if "Warning" in ln]


def test_cli_conversational_on_gpt2_is_one_line_exit_2(root: str) -> None:
    data = Path(root) / "cli-conv-gpt2.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in records("pc_conv")), encoding="utf-8")
    out = Path(root) / "cli" / "gpt2-conv"
    proc = _cli("sft", "--model", str(_model_dir(root, "gpt2", "float32")), "--data", str(data), "--out", str(out),
                "--max-steps", "1", "--device", "cpu")
    assert proc.returncode == 2, _why(proc)
    assert "Traceback" not in proc.stderr and "chat_template" in proc.stderr
    assert not (out / "model").exists()
