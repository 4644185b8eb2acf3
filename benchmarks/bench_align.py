"""trainlab's DPO, ORPO and SimPO trainers vs TRL's DPOTrainer, ORPOTrainer and CPOTrainer (SimPO).

    python benchmarks/bench_align.py                       # CPU here, or the GPU when there is one
    python benchmarks/bench_align.py --shape long          # ~530-token pairs: the logits dominate
    python benchmarks/bench_align.py --shape medium --malloc-mmap-threshold 131072
    python benchmarks/bench_align.py --steps 12 --batch 8 --vocab 50257
    python benchmarks/bench_align.py --model gpt2 qwen3 llama               # small and real vocabularies
    python benchmarks/bench_align.py --model qwen3 --vocab real --repeats 3 # interleaved repeats, medians
    python benchmarks/bench_align.py --summary                              # the tables of BENCHMARKS.md

``--model gpt2|qwen3|llama``: the transformers architecture as a user loads it (its config class's
defaults: GPT-2's dropout 0.1, Qwen3's tied embeddings, Llama's untied head) at a small body, with a
small vocabulary (1,024) or the real one (GPT-2 50,257, Qwen 151,936, Llama 3 128,256), built from
the config (no hub) with a word-level tokenizer of exactly that many entries, trained on random token
ids (``--shape medium``: 128-token prompts, 64-token completions); trainlab as ``trainlab <method>
--model DIR`` configures it (TRL's defaults for a transformers folder: dropout off, activation checkpointing
on), and once more with ``model.checkpointing=none``. One result file per (model, vocabulary).

The default model (``embedded``); the same model, data, batch, sequence length and β for both, in
one run: a Llama-architecture model built from a config (no download) with a GPT-2-sized vocabulary
(50,257 tokens, so the output layer and the log-softmax matter as they do in real models) and a
small body; the embedded preference pairs of the verifiable tasks (prompt ~10 tokens, answers 2-10
tokens; ``--shape medium``/``long`` add ~128/256 tokens of story context before the question and
~64/256 after each answer) tokenized by the embedded tokenizer; fp32. Each trainer runs in its own
subprocess (a clean heap, its own peak), with the same allocator settings
(``--malloc-mmap-threshold``: glibc's mmap threshold fixed for both, so freed tensors are returned to
the system instead of staying resident):

* **samples/s**: preference pairs per second over the optimizer steps after two warm-up steps
  (median step time). For DPO the one-off reference pass trainlab makes before training (cached
  reference log-probs) is also reported amortized over the run ("end to end"): the data holds
  exactly ``steps × batch`` pairs, each trained on once, which is the least favourable case for
  caching.
* **peak memory**: on CPU the peak resident set size during the optimizer steps, above the
  process's size before any model was loaded (so weights, the reference model, optimizer states,
  gradients, activations and logits all count; loading and checkpoint writing do not); on CUDA the
  allocator's peak. Also the exact bytes
  autograd saves for backward in one step (activations, logits), counted with
  ``saved_tensors_hooks`` for both.

TRL's trainers run as a user would, with their defaults (DPOTrainer: a frozen reference model run
each step, fused chunked log-probs; the Trainer's unfused AdamW). TRL's DPOTrainer runs once more
tuned with the two tricks trainlab uses by default: ``precompute_ref_log_probs=True`` and
``optim="adamw_torch_fused"``. Besides wall time, each step's process CPU time is recorded: on a
shared machine it is the steadier measure of the work a trainer does.

``--repeats N`` runs the case list N times, interleaved (A, B, C, A, B, C, ...), and keeps the median of
each number; each run records the load average around it (a shared machine).

Results: ``benchmarks/results/align_<device>[_<model>_v<vocab>].json`` and ``.md`` (also printed);
BENCHMARKS.md collects them (``--summary``).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
# "-ckpt": trainlab with activation checkpointing (model.checkpointing=full): trainlab's default for a transformers
# folder, as TRL's configs default to gradient_checkpointing=True; the plain case: model.checkpointing=none.
ARCH_CASES = ("trainlab-dpo", "trainlab-dpo-ckpt", "trl-dpo", "trainlab-orpo", "trainlab-orpo-ckpt", "trl-orpo",
              "trainlab-simpo", "trainlab-simpo-ckpt", "trl-simpo")
CASES = ("trainlab-dpo", "trainlab-dpo-ckpt", "trl-dpo", "trl-dpo-tuned", "trainlab-orpo", "trainlab-orpo-ckpt",
         "trl-orpo", "trainlab-simpo", "trainlab-simpo-ckpt", "trl-simpo")


# ------------------------------------------------------------------------------------- the setup


def build_model_dir(folder: Path, vocab: int, hidden: int, layers: int) -> Path:
    """A Llama-architecture causal LM with a GPT-2-sized vocabulary, saved with the embedded tokenizer."""
    import torch
    import transformers

    from trainlab.data.tokenizer import embedded_tokenizer

    tok = embedded_tokenizer(2048, 1234)
    cfg = transformers.LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=hidden * 8 // 3 // 32 * 32,
                                   num_hidden_layers=layers, num_attention_heads=max(1, hidden // 64),
                                   num_key_value_heads=max(1, hidden // 64), max_position_embeddings=256,
                                   tie_word_embeddings=False, pad_token_id=tok.pad_token_id,
                                   bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(cfg)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


# Transformers architectures as a user loads them (``--model``): the config class's defaults (GPT-2's
# dropout 0.1 in three places, Qwen3's tied embeddings and q/k norms, Llama's untied head) at a small
# body (``--hidden``, ``--layers``), with a small vocabulary or the real one. No hub: the model is built
# from its config, and a word-level tokenizer of exactly ``vocab`` entries (``t0 t1 ...`` plus the
# architecture's special tokens) maps the random token ids of the data one to one, for both trainers.
ARCHS: dict[str, int] = {"gpt2": 50257, "qwen3": 151936, "llama": 128256}
SMALL_VOCAB = 1024
_SPECIALS: dict[str, dict[str, str | None]] = {
    "gpt2": {"bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>",
             "pad_token": "<|endoftext|>"},  # GPT-2 has no pad: TRL's examples set pad = eos
    "qwen3": {"bos_token": None, "eos_token": "<|im_end|>", "unk_token": None, "pad_token": "<|endoftext|>"},
    "llama": {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "</s>"},
}


def _special_list(arch: str) -> list[str]:
    extra = ["<|im_start|>"] if arch == "qwen3" else []
    return list(dict.fromkeys([v for v in _SPECIALS[arch].values() if v] + extra))


def word_tokenizer(arch: str, vocab: int) -> Any:
    """A `PreTrainedTokenizerFast` with exactly ``vocab`` entries: the architecture's special tokens, then
    ``t0``, ``t1``, ... (whitespace-separated words, one id each; Llama style adds ``<s>`` in front)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    specials = _special_list(arch)
    words = {w: i for i, w in enumerate(specials)}
    words.update({f"t{j}": len(specials) + j for j in range(vocab - len(specials))})
    tk = Tokenizer(models.WordLevel(words, unk_token=_SPECIALS[arch]["unk_token"] or specials[0]))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tk.add_special_tokens(specials)
    if arch == "llama":
        tk.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                          special_tokens=[("<s>", words["<s>"])])
    return PreTrainedTokenizerFast(tokenizer_object=tk, **{k: v for k, v in _SPECIALS[arch].items() if v})


def build_arch_dir(folder: Path, arch: str, vocab: int, hidden: int, layers: int) -> Path:
    """``arch`` (gpt2, qwen3, llama) from its transformers config class, ``vocab`` entries, saved with
    `word_tokenizer`."""
    import torch
    import transformers

    tok = word_tokenizer(arch, vocab)
    assert len(tok) == vocab
    heads = max(1, hidden // 64)
    ids = {"bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id, "pad_token_id": tok.pad_token_id}
    if arch == "gpt2":  # resid/embd/attn dropout 0.1: GPT2Config's defaults, as in the hub's gpt2
        cfg: Any = transformers.GPT2Config(vocab_size=vocab, n_embd=hidden, n_layer=layers, n_head=heads,
                                           n_positions=1024, **ids)
        model: Any = transformers.GPT2LMHeadModel(cfg)
    elif arch == "qwen3":  # Qwen3-0.6B's proportions: GQA 2:1, head_dim 64 here, tied embeddings
        cfg = transformers.Qwen3Config(vocab_size=vocab, hidden_size=hidden, intermediate_size=3 * hidden,
                                       num_hidden_layers=layers, num_attention_heads=heads,
                                       num_key_value_heads=max(1, heads // 2), head_dim=64,
                                       max_position_embeddings=1024, tie_word_embeddings=True, **ids)
        model = transformers.Qwen3ForCausalLM(cfg)
    elif arch == "llama":  # Llama-3-8B's layout: GQA, untied output layer
        cfg = transformers.LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=hidden * 7 // 2,
                                       num_hidden_layers=layers, num_attention_heads=heads,
                                       num_key_value_heads=max(1, heads // 2), max_position_embeddings=1024,
                                       tie_word_embeddings=False, **ids)
        model = transformers.LlamaForCausalLM(cfg)
    else:
        raise ValueError(f"unknown architecture {arch!r}; expected one of {', '.join(ARCHS)}")
    torch.manual_seed(0)
    model.init_weights()
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


# Random-token data for the architectures: (prompt tokens, tokens per completion) of each shape.
RANDOM_SHAPES: dict[str, tuple[int, int]] = {"tasks": (12, 6), "medium": (128, 64), "long": (256, 256)}


def random_pairs(n: int, arch: str, vocab: int, prompt_tokens: int, completion_tokens: int, seed: int = 0
                 ) -> list[dict[str, str]]:
    """``n`` preference pairs of uniformly random ordinary tokens (``t<j>`` words of `word_tokenizer`):
    a prompt of ``prompt_tokens``, chosen and rejected of ``completion_tokens`` each, all different."""
    import random

    rng = random.Random(seed)
    n_words = vocab - len(_special_list(arch))

    def words(k: int) -> str:
        return " ".join(f"t{rng.randrange(n_words)}" for _ in range(k))

    return [{"prompt": words(prompt_tokens), "chosen": " " + words(completion_tokens),
             "rejected": " " + words(completion_tokens)} for _ in range(n)]


# Sequence shapes: (extra prompt tokens, extra completion tokens, batch, steps). ``tasks`` is the embedded
# task pairs as they are (~12 tokens per sequence: the training state dominates memory); ``medium`` and
# ``long`` put story text from the embedded corpus before the task question (a context, as in real
# preference data) and after each answer (a longer completion), so that the [batch, seq, 50K] logits
# dominate, as they do for real models (UltraFeedback-style DPO runs use up to 1,024 tokens).
SHAPES: dict[str, tuple[int, int, int, int]] = {"tasks": (0, 0, 16, 10), "medium": (128, 64, 8, 8),
                                               "long": (256, 256, 4, 6)}


def _story_tokens(tok: Any, docs: list[str], start: int, n: int) -> tuple[str, int]:
    """About ``n`` tokens of corpus text (whole words), taken from ``docs`` from document ``start`` on."""
    words: list[str] = []
    i = start
    while len(tok.encode(" ".join(words), add_special_tokens=False)) < n:
        words.extend(docs[i % len(docs)].split()[: max(8, n // 2)])
        i += 1
    while len(words) > 1 and len(tok.encode(" ".join(words), add_special_tokens=False)) > n:
        words.pop()
    return " ".join(words), i


def pairs(n: int, tok: Any = None, prompt_tokens: int = 0, completion_tokens: int = 0) -> list[dict[str, str]]:
    """``n`` preference pairs of the embedded tasks; with ``prompt_tokens``/``completion_tokens``, a story
    context of about that many tokens before the question and a continuation after each answer
    (different text for chosen and rejected, the same length)."""
    from trainlab.align.config import AlignDataConfig
    from trainlab.align.records import embedded_alignment_data
    from trainlab.data.corpus import generate_corpus

    data = embedded_alignment_data(AlignDataConfig(n_train=n, tasks=["compare", "sort", "reverse", "count"],
                                                   n_eval_per_task=1, n_eval_pairs=0))
    out = [{"prompt": p.prompt, "chosen": p.chosen, "rejected": p.rejected} for p in data.pairs]
    if not (prompt_tokens or completion_tokens):
        return out
    docs = generate_corpus(3 * n + 8, seed=99)
    j = 0
    for rec in out:
        if prompt_tokens:
            context, j = _story_tokens(tok, docs, j, prompt_tokens)
            rec["prompt"] = f"{context}\n\n{rec['prompt']}"
        if completion_tokens:
            more, j = _story_tokens(tok, docs, j, completion_tokens)
            rec["chosen"] = f"{rec['chosen']} {more}"
            more, j = _story_tokens(tok, docs, j, completion_tokens)
            rec["rejected"] = f"{rec['rejected']} {more}"
    return out


# ------------------------------------------------------------------------------------- one worker


class _StepClock:
    """Wall time of each optimizer step (works as a TRL TrainerCallback and a trainlab Callback)."""

    def __init__(self, device: Any, memory: Any = None, n_steps: int = 0) -> None:
        self.device = device
        self.memory = memory  # a PeakMemory whose window is the training steps
        self.n_steps = n_steps
        self.times: list[float] = []
        self.cpu_times: list[float] = []
        self._t = time.perf_counter()
        self._c = time.process_time()

    def _sync(self) -> None:
        import torch

        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    # TRL / transformers
    def on_step_begin(self, *args: Any, **kwargs: Any) -> None:
        self._sync()
        if self.memory is not None:
            self.memory.open_window()
        self._t = time.perf_counter()
        self._c = time.process_time()

    def on_fit_start(self, *args: Any, **kwargs: Any) -> None:  # trainlab has no step-begin hook
        self.on_step_begin()



    def on_step_end(self, *args: Any, **kwargs: Any) -> None:
        self._sync()
        self.times.append(time.perf_counter() - self._t)
        self.cpu_times.append(time.process_time() - self._c)
        if self.memory is not None and len(self.times) >= self.n_steps:
            self.memory.close_window()  # before any final evaluation or checkpoint
        self._t = time.perf_counter()
        self._c = time.process_time()

    def __getattr__(self, name: str) -> Any:  # every other TrainerCallback / Callback hook: no-op
        if name.startswith("on_"):
            return lambda *a, **k: None
        raise AttributeError(name)


def _saved_bytes(fn: Any, params: Any) -> int:
    from trainlab.memory.measure import SavedTensorBytes

    with SavedTensorBytes(exclude=params) as st:
        out = fn()
    del out
    return st.bytes


def worker(case: str, model_dir: Path, n_steps: int, batch: int, beta: float, device_name: str) -> dict[str, Any]:
    import torch

    from trainlab.memory.measure import PeakMemory

    warnings.filterwarnings("ignore")
    os.environ.setdefault("TQDM_DISABLE", "1")
    device = torch.device(device_name)
    from trainlab.data.tokenizer import load_tokenizer

    # the records and length limits the driver wrote next to the model (`_write_data`)
    records = [json.loads(line) for line in (model_dir / "pairs.jsonl").read_text(encoding="utf-8").splitlines()]
    limits = json.loads((model_dir / "bench.json").read_text(encoding="utf-8"))
    max_prompt, max_completion = limits["max_prompt"], limits["max_completion"]  # no pair is truncated
    out: dict[str, Any] = {"case": case, "pairs": len(records), "batch": batch, "steps": n_steps}
    lib = case.split("-")[0]
    method = case.split("-")[1]
    # both trainers' libraries imported before the memory baseline: the peak counts training, not code
    import datasets  # noqa: F401
    import transformers  # noqa: F401
    import trl
    import trl.experimental.cpo
    import trl.experimental.orpo  # noqa: F401

    import trainlab.recipes.align  # noqa: F401
    with PeakMemory(device) as mem:
        clock = _StepClock(device, mem, n_steps)
        t0 = time.perf_counter()
        if lib == "trainlab":
            from trainlab.align.config import align_config
            from trainlab.align.datasets import collate_preference
            from trainlab.recipes.align import build_alignment_data, build_objective, run_alignment

            overrides = [f"train.max_steps={n_steps}", f"train.batch_size={batch}", f"train.device={device_name}",
                         "train.eval_every=0", "train.lr=1e-5", "train.warmup_steps=0", "train.log_every=1",
                         "train.save_every=0", "train.save_every_minutes=0", "train.report_to=none",
                         "align.eval_kl=false", f"align.max_prompt_length={max_prompt}",
                         f"align.max_completion_length={max_completion}",
                         f"align.max_length={max_prompt + max_completion}", "align_data.n_eval_pairs=0"]
            if method == "dpo":
                overrides += [f"align.beta={beta}", "align.rpo_alpha=0"]
            elif method == "orpo":  # TRL's ORPO puts the prompt in the NLL: do the same work
                overrides += [f"align.orpo_lambda={beta}", "align.orpo_mask_prompt=false"]
            else:
                overrides += ["align.beta=2.0", "align.simpo_gamma=0.5"]
            # trainlab's default for a transformers folder is TRL's (checkpointing on): "-ckpt" is that default,
            # the plain case turns it off (the speed-first setting)
            overrides.append("model.checkpointing=" + ("full" if case.endswith("-ckpt") else "none"))
            # as `trainlab <method> --model DIR` builds it: TRL's defaults for a transformers folder
            cfg = align_config(method, preset="quick", overrides=overrides, model=model_dir)
            data = build_alignment_data(method, cfg, load_tokenizer(model_dir), source=records)
            with tempfile.TemporaryDirectory() as tmp:
                run = run_alignment(method, cfg, model_dir, tmp, quiet=True, save=False, evaluate_oracle=False,
                                    callbacks=[clock], data=data)
            out["reference_pass_s"] = float(run.summary["reference"].get("seconds", 0.0))
            out["dropout_disabled"] = run.summary.get("dropout_disabled")
            model = run.model
            batch_t = collate_preference([data.train[i] for i in range(batch)], 0)
            batch_t = {k: v.to(device) for k, v in batch_t.items()}
            objective = build_objective(method, cfg)
            if method == "dpo":
                batch_t["ref_logps"] = torch.zeros(2 * batch, device=device)
            out["saved_for_backward_bytes"] = _saved_bytes(lambda: objective(model, batch_t),
                                                           list(model.parameters()))
        else:
            out.update(_trl(method, case, model_dir, records, n_steps, batch, beta, device, clock,
                            max_prompt + max_completion, max_completion))
        out["total_s"] = time.perf_counter() - t0
    timed = clock.times[2:] if len(clock.times) > 4 else clock.times
    cpu = clock.cpu_times[2:] if len(clock.cpu_times) > 4 else clock.cpu_times
    step = statistics.median(timed)
    out["step_times_s"] = clock.times
    out["step_cpu_s"] = clock.cpu_times
    out["median_step_s"] = step
    out["median_step_cpu_s"] = statistics.median(cpu)
    out["samples_per_s"] = batch / step
    out["samples_per_cpu_s"] = batch / out["median_step_cpu_s"]
    ref = out.get("reference_pass_s", 0.0)
    out["samples_per_s_end_to_end"] = n_steps * batch / (step * n_steps + ref)
    # CPU: the RSS peak during the optimizer steps (weights, reference model, optimizer states,
    # gradients, activations), above the process before any model was loaded; CUDA: allocator peak
    out["peak_bytes"] = mem.window_peak_bytes if mem.result()["kind"] == "cpu_rss" else mem.peak_bytes
    out["peak_bytes_whole_run"] = mem.peak_bytes
    out["memory_kind"] = mem.result()["kind"]
    return out


def _trl(method: str, case: str, model_dir: Path, records: list[dict[str, str]], n_steps: int, batch: int,
         beta: float, device: Any, clock: _StepClock, max_length: int, max_completion: int) -> dict[str, Any]:
    import datasets
    import torch
    import transformers
    import trl
    from transformers import TrainerCallback

    class Clock(TrainerCallback):
        def on_step_begin(self, *a: Any, **k: Any) -> None:
            clock.on_step_begin()

        def on_step_end(self, *a: Any, **k: Any) -> None:
            clock.on_step_end()


    tok = transformers.AutoTokenizer.from_pretrained(str(model_dir))
    model = transformers.AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    ds = datasets.Dataset.from_list(records)
    common = dict(output_dir=tempfile.mkdtemp(), per_device_train_batch_size=batch, max_steps=n_steps,
                  learning_rate=1e-5, warmup_steps=0, report_to=[], logging_steps=1, save_strategy="no",
                  use_cpu=device.type == "cpu", bf16=False, dataloader_num_workers=0, disable_tqdm=True,
                  weight_decay=0.0, lr_scheduler_type="constant")
    if method == "dpo":
        tuned = case.endswith("tuned")
        if tuned:
            common["optim"] = "adamw_torch_fused"
        args = trl.DPOConfig(**common, beta=beta, max_length=max_length,
                               precompute_ref_log_probs=tuned)
        trainer: Any = trl.DPOTrainer(model=model, args=args, train_dataset=ds, processing_class=tok,
                                      callbacks=[Clock()])
    elif method == "orpo":
        from trl.experimental.orpo import ORPOConfig, ORPOTrainer

        args = ORPOConfig(**common, beta=beta, max_length=max_length, max_completion_length=max_completion)
        trainer = ORPOTrainer(model=model, args=args, train_dataset=ds, processing_class=tok, callbacks=[Clock()])
    else:
        from trl.experimental.cpo import CPOConfig, CPOTrainer

        args = CPOConfig(**common, loss_type="simpo", cpo_alpha=0.0, beta=2.0, simpo_gamma=0.5, max_length=max_length,
                         max_completion_length=max_completion)
        trainer = CPOTrainer(model=model, args=args, train_dataset=ds, processing_class=tok, callbacks=[Clock()])
    t0 = time.perf_counter()
    trainer.train()
    out: dict[str, Any] = {"train_call_s": time.perf_counter() - t0}
    # activations saved for backward in one step of TRL's own loss on a batch from its own collator
    loader = trainer.get_train_dataloader()
    one = next(iter(loader))
    one = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in one.items()}
    trainer.model.train()
    out["saved_for_backward_bytes"] = _saved_bytes(lambda: trainer.compute_loss(trainer.model, one),
                                                   list(trainer.model.parameters()))
    return out


# ------------------------------------------------------------------------------------- the driver


def _mib(x: float) -> str:
    return f"{x / 2**20:,.1f}"


def markdown(result: dict[str, Any]) -> str:
    rows = {r["case"]: r for r in result["runs"]}
    arch = result.get("model", "embedded")
    model = ("Llama architecture" if arch == "embedded" else f"{arch} ({result.get('model_class', arch)}, its "
             "config's defaults)")
    data = ("embedded task pairs" if arch == "embedded" else "random token ids")
    repeats = result.get("repeats", 1)
    lines = [f"Device: {result['device']}. Model: {model}, vocabulary {result['vocab']:,}, hidden "
             f"{result['hidden']}, {result['layers']} layers ({result['parameters'] / 1e6:.1f}M parameters), fp32; "
             f"batch {result['batch']} pairs, {result['steps']} steps, β {result['beta']}; shape "
             f"`{result.get('shape', 'tasks')}`: {data} (mean {result['mean_tokens']:.0f} tokens per "
             f"sequence, {result.get('mean_completion_tokens', 0):.0f} of them completion)"
             + (f"; glibc mmap threshold fixed at {result['malloc_mmap_threshold']:,} bytes for both"
                if result.get("malloc_mmap_threshold") else "")
             + (f"; median of {repeats} interleaved repeats" if repeats > 1 else "")
             + (f"; load average {_load_text(result['load_average'])}" if result.get("load_average") else "")
             + f". {result['created_at']}.",
             "",
             "| method | trainer | pairs/s | pairs/s end to end | pairs per CPU-s | peak memory (MiB) | saved for "
             "backward (MiB) | speed vs TRL | CPU work vs TRL | memory vs TRL |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    shown: set[str] = set()
    for method, ours, theirs in (("DPO", "trainlab-dpo", "trl-dpo"), ("DPO", "trainlab-dpo-ckpt", "trl-dpo"),
                                 ("DPO", "trainlab-dpo", "trl-dpo-tuned"),
                                 ("ORPO", "trainlab-orpo", "trl-orpo"), ("ORPO", "trainlab-orpo-ckpt", "trl-orpo"),
                                 ("SimPO", "trainlab-simpo", "trl-simpo"),
                                 ("SimPO", "trainlab-simpo-ckpt", "trl-simpo")):
        if ours not in rows or theirs not in rows:
            continue
        a, b = rows[ours], rows[theirs]
        label_b = theirs + (" (precompute + fused AdamW)" if theirs.endswith("tuned") else
                            " (defaults: gradient checkpointing on)")
        pair = ((b, label_b), (a, ours)) if theirs not in shown else ((a, ours),)
        shown.add(theirs)
        for r, label in pair:
            if r is a and theirs.endswith("tuned"):
                label = f"{ours} (vs tuned TRL)"
            elif r is a and ours.endswith("-ckpt"):
                label = f"{ours} (activation checkpointing, like TRL)"
            mine = r is a
            speed = f"{a['samples_per_s'] / b['samples_per_s']:.2f}x" if mine else ""
            cpu = f"{b['median_step_cpu_s'] / a['median_step_cpu_s']:.2f}x less" if mine else ""
            memory = f"{a['peak_bytes'] / max(b['peak_bytes'], 1):.2f}x" if mine else ""
            lines.append(f"| {method} | {label} | {r['samples_per_s']:.2f} | {r['samples_per_s_end_to_end']:.2f} | "
                         f"{r['samples_per_cpu_s']:.2f} | {_mib(r['peak_bytes'])} | "
                         f"{_mib(r['saved_for_backward_bytes'])} | {speed} | {cpu} | {memory} |")
    return "\n".join(lines) + "\n"


def _load_text(load: dict[str, float]) -> str:
    return f"{load['min']:.1f}-{load['max']:.1f} (median {load['median']:.1f}) on {load.get('cpus', '?')} CPUs"


def _method_name(method: str) -> str:
    return "SimPO" if method == "simpo" else method.upper()


def arch_summary(docs: list[dict[str, Any]]) -> str:
    """One row per (architecture, vocabulary, method): trainlab with its defaults for a transformers folder
    (TRL's: activation checkpointing on) vs TRL with its defaults, absolute numbers, and trainlab with
    ``model.checkpointing=none`` beside it. Goal: at least TRL's pairs/s and at most its peak memory; where
    the logits dominate (a real vocabulary), 2x and half. Files from before checkpointing was trainlab's
    default (no "-ckpt" case) show the plain case as the default."""
    lines = ["| model | vocabulary | parameters | tokens/seq | batch | method | pairs/s trainlab | pairs/s TRL | "
             "speed vs TRL | CPU work: pairs per CPU-s vs TRL | peak MiB trainlab | peak MiB TRL | memory vs TRL | "
             "with model.checkpointing=none: speed (CPU work), memory vs TRL | goal |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    order = {a: i for i, a in enumerate(ARCHS)}
    for d in sorted(docs, key=lambda d: (order.get(d["model"], 9), d["vocab"], d.get("shape", ""))):
        rows = {r["case"]: r for r in d["runs"]}
        want = (2.0, 0.5) if d["vocab"] >= 32000 else (1.0, 1.0)
        for method in ("dpo", "orpo", "simpo"):
            theirs = rows.get(f"trl-{method}")
            ours, ckpt = rows.get(f"trainlab-{method}-ckpt"), rows.get(f"trainlab-{method}")
            if ours is None:
                ours, ckpt = ckpt, None
            if ours is None or theirs is None:
                continue

            def ratios(r: dict[str, Any], b: dict[str, Any] = theirs) -> tuple[float, float]:
                return r["samples_per_s"] / b["samples_per_s"], r["peak_bytes"] / b["peak_bytes"]

            speed, memory = ratios(ours)
            goal = f"≥{want[0]:g}x, ≤{want[1]:g}x: "
            if speed >= want[0] and memory <= want[1]:
                goal += "met"
            elif ckpt is not None and ratios(ckpt)[0] >= want[0] and ratios(ckpt)[1] <= want[1]:
                goal += "met with checkpointing=none"
            else:
                goal += "not met"
            def cpu(r: dict[str, Any], b: dict[str, Any] = theirs) -> float:
                return r["samples_per_cpu_s"] / b["samples_per_cpu_s"]

            extra = (f"{ratios(ckpt)[0]:.2f}x ({cpu(ckpt):.2f}x), {ratios(ckpt)[1]:.2f}x" if ckpt
                     else "not run")
            lines.append(f"| {d['model']} | {d['vocab']:,} | {d['parameters'] / 1e6:.1f}M | {d['mean_tokens']:.0f} | "
                         f"{d['batch']} | {_method_name(method)} | {ours['samples_per_s']:.2f} | "
                         f"{theirs['samples_per_s']:.2f} | {speed:.2f}x | {cpu(ours):.2f}x | "
                         f"{_mib(ours['peak_bytes'])} | {_mib(theirs['peak_bytes'])} | {memory:.2f}x | {extra} | "
                         f"{goal} |")
    return "\n".join(lines) + "\n"


def summary(files: list[Path]) -> str:
    """One row per (shape, allocator, method) from result files: trainlab vs TRL's defaults; then the
    architectures (`arch_summary`) if any file is of one."""
    head = ("| shape (tokens/seq) | batch | allocator | method | pairs/s vs TRL | memory vs TRL | "
            "with activation checkpointing: pairs/s, memory vs TRL |")
    lines = [head, "| --- | --- | --- | --- | --- | --- | --- |"]
    order = {"tasks": 0, "medium": 1, "long": 2}
    docs = []
    for f in files:
        d = json.loads(f.read_text(encoding="utf-8"))
        # a rerun of some cases (e.g. `..._dpo_rerun.json`, after a disturbed run) replaces their rows
        for rerun in sorted(f.parent.glob(f.stem + "_*rerun.json")):
            again = {r["case"]: r for r in json.loads(rerun.read_text(encoding="utf-8"))["runs"]}
            d["runs"] = [again.get(r["case"], r) for r in d["runs"]]
        docs.append(d)
    archs = [d for d in docs if d.get("model", "embedded") != "embedded"]
    docs = [d for d in docs if d.get("model", "embedded") == "embedded"]
    docs.sort(key=lambda d: (order.get(d.get("shape", "tasks"), 9), d.get("malloc_mmap_threshold") or 0))
    for d in docs:
        rows = {r["case"]: r for r in d["runs"]}
        mmap = d.get("malloc_mmap_threshold")
        alloc = f"mmap ≥ {mmap // 1024} KiB" if mmap else "glibc default"
        for method in ("dpo", "orpo", "simpo"):
            theirs, ours, ckpt = rows.get(f"trl-{method}"), rows.get(f"trainlab-{method}"), \
                rows.get(f"trainlab-{method}-ckpt")
            if theirs is None or ours is None:
                continue

            def ratio(a: dict[str, Any], b: dict[str, Any] = theirs) -> str:  # type: ignore[assignment]
                return f"{a['samples_per_s'] / b['samples_per_s']:.2f}x | {a['peak_bytes'] / b['peak_bytes']:.2f}x"

            extra = ratio(ckpt).replace(" | ", ", ") if ckpt else "not run"
            lines.append(f"| {d.get('shape', 'tasks')} ({d['mean_tokens']:.0f}) | {d['batch']} | {alloc} | "
                         f"{_method_name(method)} | {ratio(ours)} | {extra} |")
    if not docs:
        lines = []
    if archs:
        lines += ["", arch_summary(archs)] if lines else [arch_summary(archs)]
    return "\n".join(lines).rstrip("\n") + "\n"


def _merge_earlier(result: dict[str, Any], path: Path) -> None:
    """Keep the runs of cases not run now from an earlier file with the same settings (so that
    ``--cases`` can add or redo some cases of a table)."""
    if not path.exists():
        return
    old = json.loads(path.read_text(encoding="utf-8"))
    same = ("device", "model", "vocab", "hidden", "layers", "batch", "steps", "beta", "shape", "malloc_mmap_threshold",
            "repeats")
    if any(old.get(k) != result.get(k) for k in same):
        return
    now = {r["case"] for r in result["runs"]}
    result["runs"] = [r for r in old.get("runs", []) if r["case"] not in now] + result["runs"]
    result["merged_from"] = old.get("created_at")


def _vocab_size(arch: str, name: str) -> int:
    if name == "small":
        return SMALL_VOCAB
    if name == "real":
        if arch == "embedded":
            return 50257
        return ARCHS[arch]
    return int(name)


def _write_data(model_dir: Path, arch: str, vocab: int, n: int, shape: str) -> dict[str, Any]:
    """The records every case trains on (``pairs.jsonl``) and the length limits (``bench.json``), next to
    the model; returns the mean sequence and completion lengths."""
    from trainlab.data.tokenizer import load_tokenizer

    tok = load_tokenizer(model_dir)
    if arch == "embedded":
        extra_prompt, extra_completion = SHAPES[shape][:2]
        recs = pairs(n, tok, extra_prompt, extra_completion)
        limits = {"max_prompt": 64 + extra_prompt, "max_completion": 32 + extra_completion}
    else:
        prompt_tokens, completion_tokens = RANDOM_SHAPES[shape]
        recs = random_pairs(n, arch, vocab, prompt_tokens, completion_tokens)
        limits = {"max_prompt": prompt_tokens + 2, "max_completion": completion_tokens + 2}
    (model_dir / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs), encoding="utf-8")
    (model_dir / "bench.json").write_text(json.dumps(limits), encoding="utf-8")
    lengths = [len(tok(r["prompt"] + r["chosen"])["input_ids"]) + 1 for r in recs]
    completion = [len(tok(r["chosen"], add_special_tokens=False)["input_ids"]) + 1 for r in recs]
    return {"mean_tokens": sum(lengths) / len(lengths), "mean_completion_tokens": sum(completion) / len(completion)}


def _aggregate(results: list[dict[str, Any]]) -> dict[str, Any]:
    """One case's repeats: the median of every number (each repeat kept under ``repeats``)."""
    if len(results) == 1:
        return results[0]
    out = dict(results[-1])
    for key, value in results[-1].items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            out[key] = statistics.median(r[key] for r in results)
    out["repeats"] = [{k: r[k] for k in ("samples_per_s", "peak_bytes", "median_step_s", "median_step_cpu_s",
                                         "load_average") if k in r} for r in results]
    return out


def run_benchmark(args: argparse.Namespace, arch: str, vocab: int, device: str, device_name: str) -> Path:
    """Every case of ``args.cases`` on ``arch`` at ``vocab``, ``args.repeats`` times interleaved (case A,
    B, ..., then A, B, ... again: a load change on a shared machine hits every case alike); one JSON + MD."""
    import torch
    import transformers

    runs: dict[str, list[dict[str, Any]]] = {}
    loads: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "model"
        if arch == "embedded":
            model_dir = build_model_dir(folder, vocab, args.hidden, args.layers)
        else:
            model_dir = build_arch_dir(folder, arch, vocab, args.hidden, args.layers)
        loaded = transformers.AutoModelForCausalLM.from_pretrained(str(model_dir))
        n_params, model_class = sum(p.numel() for p in loaded.parameters()), type(loaded).__name__
        del loaded
        lengths = _write_data(model_dir, arch, vocab, args.steps * args.batch, args.shape)
        for rep in range(args.repeats):
            for case in args.cases:
                cmd = [sys.executable, __file__, "--worker", case, "--model-dir", str(model_dir), "--steps",
                       str(args.steps), "--batch", str(args.batch), "--beta", str(args.beta), "--device", device]
                t0 = time.perf_counter()
                env_vars = dict(os.environ, PYTHONWARNINGS="ignore")
                if args.malloc_mmap_threshold:
                    env_vars["MALLOC_MMAP_THRESHOLD_"] = str(args.malloc_mmap_threshold)
                load_before = os.getloadavg()[0]
                proc = subprocess.run(cmd, capture_output=True, text=True, env=env_vars)
                line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
                if proc.returncode != 0 or line is None:
                    sys.stderr.write(f"{case} failed:\n{proc.stderr[-3000:]}\n")
                    continue
                res = json.loads(line[len("RESULT "):])
                res["load_average"] = (load_before + os.getloadavg()[0]) / 2
                loads.append(res["load_average"])
                runs.setdefault(case, []).append(res)
                sys.stderr.write(f"{arch} {vocab:,} {case} [{rep + 1}/{args.repeats}]: {res['samples_per_s']:.2f} "
                                 f"pairs/s, peak {_mib(res['peak_bytes'])} MiB, load {res['load_average']:.1f} "
                                 f"({time.perf_counter() - t0:.0f} s)\n")
    created = datetime.now(UTC).isoformat(timespec="seconds")
    result = {"device": device_name, "device_type": device, "created_at": created, "model": arch,
              "model_class": model_class, "vocab": vocab, "hidden": args.hidden, "layers": args.layers,
              "parameters": n_params, "batch": args.batch, "steps": args.steps, "beta": args.beta,
              "shape": args.shape, "malloc_mmap_threshold": args.malloc_mmap_threshold, "repeats": args.repeats,
              **lengths, "torch_threads": torch.get_num_threads(),
              "load_average": ({"min": min(loads), "median": statistics.median(loads), "max": max(loads),
                                "cpus": os.cpu_count()} if loads else None),
              "runs": [_aggregate(rs) for rs in runs.values()]}
    args.out.mkdir(parents=True, exist_ok=True)
    slug = re.sub(r"[^a-z0-9]+", "_", device_name.lower()).strip("_")[:60]
    slug += "" if arch == "embedded" else f"_{arch}_v{vocab}"
    slug += "" if args.shape == ("tasks" if arch == "embedded" else "medium") else f"_{args.shape}"
    slug += f"_mmap{args.malloc_mmap_threshold // 1024}k" if args.malloc_mmap_threshold else ""
    path = args.out / f"align_{slug}.json"
    _merge_earlier(result, path)
    md = markdown(result)
    path.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    path.with_suffix(".md").write_text(md, encoding="utf-8")
    sys.stdout.write(md)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", nargs="+", choices=["embedded", *ARCHS], default=["embedded"],
                        help="embedded: a Llama with the embedded tokenizer (task text); gpt2, qwen3, llama: the "
                             "transformers architecture with random token ids (one result file per model and "
                             "vocabulary)")
    parser.add_argument("--vocab", nargs="+", default=None, metavar="V",
                        help=f"small ({SMALL_VOCAB:,}), real (the architecture's: "
                             + ", ".join(f"{a} {v:,}" for a, v in ARCHS.items())
                             + ") or a number; default: 50257 for embedded, small and real for the architectures")
    parser.add_argument("--shape", choices=list(SHAPES), default=None,
                        help="sequence shape: tasks (~12 tokens), medium (~210), long (~530); sets batch and steps "
                             "(default: tasks for embedded, medium for the architectures)")
    parser.add_argument("--steps", type=int, default=None, help="optimizer steps (default: the shape's)")
    parser.add_argument("--batch", type=int, default=None, help="pairs per step (default: the shape's)")
    parser.add_argument("--repeats", type=int, default=1,
                        help="run every case this many times, interleaved; the JSON keeps the medians")
    parser.add_argument("--beta", type=float, default=0.1)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--cases", nargs="*", default=None,
                        help="default: every case for embedded; trainlab and TRL's defaults per method for the "
                             "architectures")
    parser.add_argument("--malloc-mmap-threshold", type=int, default=None, metavar="BYTES",
                        help="run both trainers with glibc's mmap threshold fixed at BYTES (MALLOC_MMAP_THRESHOLD_), "
                             "so freed tensors leave the resident set; default: glibc's dynamic threshold")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--summary", nargs="*", type=Path, default=None, metavar="JSON",
                        help="print the summary table of result files (default: all align_*.json in --out)")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--model-dir", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.summary is not None:
        files = args.summary or sorted(f for f in args.out.glob("align_*.json") if "rerun" not in f.name)
        sys.stdout.write(summary(files))
        return 0

    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if args.worker:
        res = worker(args.worker, args.model_dir, args.steps, args.batch, args.beta, device)
        sys.stdout.write("RESULT " + json.dumps(res) + "\n")
        return 0

    from trainlab.env import detect_env

    env = detect_env()
    device_name = env.short() if device == "cpu" else f"{env.gpu_name}, torch {env.torch_version}"
    given_shape, given_cases = args.shape, args.cases
    for arch in args.model:
        args.shape = given_shape or ("tasks" if arch == "embedded" else "medium")
        args.cases = given_cases or (list(CASES) if arch == "embedded" else list(ARCH_CASES))
        batch, steps = args.batch, args.steps
        args.batch, args.steps = batch or SHAPES[args.shape][2], steps or SHAPES[args.shape][3]
        for name in args.vocab or (["real"] if arch == "embedded" else ["small", "real"]):
            run_benchmark(args, arch, _vocab_size(arch, name), device, device_name)
        args.batch, args.steps = batch, steps
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
