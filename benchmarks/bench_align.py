"""trainlab's DPO, ORPO and SimPO trainers vs TRL's DPOTrainer, ORPOTrainer and CPOTrainer (SimPO).

    python benchmarks/bench_align.py                       # CPU here, or the GPU when there is one
    python benchmarks/bench_align.py --shape long          # ~530-token pairs: the logits dominate
    python benchmarks/bench_align.py --shape medium --malloc-mmap-threshold 131072
    python benchmarks/bench_align.py --steps 12 --batch 8 --vocab 50257

Same model, data, batch, sequence length and β for both, in one run: a Llama-architecture model
built from a config (no download) with a GPT-2-sized vocabulary (50,257 tokens, so the output
layer and the log-softmax matter as they do in real models) and a small body; the embedded
preference pairs of the verifiable tasks (prompt ~10 tokens, answers 2-10 tokens; ``--shape
medium``/``long`` add ~128/256 tokens of story context before the question and ~64/256 after each
answer) tokenized by the embedded tokenizer; fp32. Each trainer runs in its own subprocess (a clean
heap, its own peak), with the same allocator settings (``--malloc-mmap-threshold``: glibc's mmap
threshold fixed for both, so freed tensors are returned to the system instead of staying resident):

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

Results: ``benchmarks/results/align_<device>.json`` and ``.md`` (also printed); BENCHMARKS.md
collects them.
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
# "-ckpt": trainlab with activation checkpointing (model.checkpointing=full), as TRL's trainers do by default
# (their configs default to gradient_checkpointing=True): the like-for-like memory comparison.
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


def worker(case: str, model_dir: Path, n_steps: int, batch: int, beta: float, device_name: str,
           shape: str = "tasks") -> dict[str, Any]:
    import torch

    from trainlab.memory.measure import PeakMemory

    warnings.filterwarnings("ignore")
    os.environ.setdefault("TQDM_DISABLE", "1")
    device = torch.device(device_name)
    from trainlab.data.tokenizer import load_tokenizer

    extra_prompt, extra_completion = SHAPES[shape][:2]
    records = pairs(n_steps * batch, load_tokenizer(model_dir), extra_prompt, extra_completion)
    max_prompt, max_completion = 64 + extra_prompt, 32 + extra_completion  # no pair is truncated
    out: dict[str, Any] = {"case": case, "pairs": len(records), "batch": batch, "steps": n_steps}
    lib = case.split("-")[0]
    method = case.split("-")[1]
    with PeakMemory(device) as mem:
        clock = _StepClock(device, mem, n_steps)
        t0 = time.perf_counter()
        if lib == "trainlab":
            from trainlab.align.config import align_config
            from trainlab.align.datasets import collate_preference
            from trainlab.recipes.align import build_alignment_data, build_objective, run_alignment

            overrides = [f"train.max_steps={n_steps}", f"train.batch_size={batch}", f"train.device={device_name}",
                         "train.eval_every=0", "train.lr=1e-5", "train.warmup_steps=0", "train.log_every=1",
                         "train.save_every=0", "align.eval_kl=false", f"align.max_prompt_len={max_prompt}",
                         f"align.max_completion_len={max_completion}", "align_data.n_eval_pairs=0"]
            if method == "dpo":
                overrides += [f"align.beta={beta}", "align.rpo_alpha=0"]
            elif method == "orpo":  # TRL's ORPO puts the prompt in the NLL: do the same work
                overrides += [f"align.orpo_lambda={beta}", "align.orpo_mask_prompt=false"]
            else:
                overrides += ["align.beta=2.0", "align.simpo_gamma=0.5"]
            if case.endswith("-ckpt"):
                overrides.append("model.checkpointing=full")
            cfg = align_config(method, preset="quick", overrides=overrides)
            data = build_alignment_data(method, cfg, load_tokenizer(model_dir), source=records)
            with tempfile.TemporaryDirectory() as tmp:
                run = run_alignment(method, cfg, model_dir, tmp, quiet=True, save=False, evaluate_oracle=False,
                                    callbacks=[clock], data=data)
            out["reference_pass_s"] = float(run.summary["reference"].get("seconds", 0.0))
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
    lines = [f"Device: {result['device']}. Model: Llama architecture, vocabulary {result['vocab']:,}, hidden "
             f"{result['hidden']}, {result['layers']} layers ({result['parameters'] / 1e6:.1f}M parameters), fp32; "
             f"batch {result['batch']} pairs, {result['steps']} steps, β {result['beta']}; shape "
             f"`{result.get('shape', 'tasks')}`: embedded task pairs (mean {result['mean_tokens']:.0f} tokens per "
             f"sequence, {result.get('mean_completion_tokens', 0):.0f} of them completion)"
             + (f"; glibc mmap threshold fixed at {result['malloc_mmap_threshold']:,} bytes for both"
                if result.get("malloc_mmap_threshold") else "") + f". {result['created_at']}.",
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


def summary(files: list[Path]) -> str:
    """One row per (shape, allocator, method) from result files: trainlab vs TRL's defaults."""
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
                         f"{method.upper() if method != 'simpo' else 'SimPO'} | {ratio(ours)} | {extra} |")
    return "\n".join(lines) + "\n"


def _merge_earlier(result: dict[str, Any], path: Path) -> None:
    """Keep the runs of cases not run now from an earlier file with the same settings (so that
    ``--cases`` can add or redo some cases of a table)."""
    if not path.exists():
        return
    old = json.loads(path.read_text(encoding="utf-8"))
    same = ("device", "vocab", "hidden", "layers", "batch", "steps", "beta", "shape", "malloc_mmap_threshold")
    if any(old.get(k) != result.get(k) for k in same):
        return
    now = {r["case"] for r in result["runs"]}
    result["runs"] = [r for r in old.get("runs", []) if r["case"] not in now] + result["runs"]
    result["merged_from"] = old.get("created_at")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=list(SHAPES), default="tasks",
                        help="sequence shape: tasks (~12 tokens), medium (~210), long (~530); sets batch and steps")
    parser.add_argument("--steps", type=int, default=None, help="optimizer steps (default: the shape's)")
    parser.add_argument("--batch", type=int, default=None, help="pairs per step (default: the shape's)")
    parser.add_argument("--beta", type=float, default=0.1)
    parser.add_argument("--vocab", type=int, default=50257)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--cases", nargs="*", default=list(CASES))
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
    args.batch = args.batch or SHAPES[args.shape][2]
    args.steps = args.steps or SHAPES[args.shape][3]

    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if args.worker:
        res = worker(args.worker, args.model_dir, args.steps, args.batch, args.beta, device, args.shape)
        sys.stdout.write("RESULT " + json.dumps(res) + "\n")
        return 0

    from trainlab.env import detect_env

    env = detect_env()
    device_name = env.short() if device == "cpu" else f"{env.gpu_name}, torch {env.torch_version}"
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = build_model_dir(Path(tmp) / "model", args.vocab, args.hidden, args.layers)
        import transformers

        n_params = sum(p.numel() for p in transformers.AutoModelForCausalLM.from_pretrained(str(model_dir))
                       .parameters())
        from trainlab.data.tokenizer import load_tokenizer

        tok = load_tokenizer(model_dir)
        recs = pairs(args.steps * args.batch, tok, *SHAPES[args.shape][:2])
        lengths = [len(tok.encode(r["prompt"] + r["chosen"])) + 1 for r in recs]
        completion_lengths = [len(tok.encode(r["chosen"], add_special_tokens=False)) + 1 for r in recs]
        for case in args.cases:
            cmd = [sys.executable, __file__, "--worker", case, "--model-dir", str(model_dir), "--steps",
                   str(args.steps), "--batch", str(args.batch), "--beta", str(args.beta), "--device", device,
                   "--shape", args.shape]
            t0 = time.perf_counter()
            env_vars = dict(os.environ, PYTHONWARNINGS="ignore")
            if args.malloc_mmap_threshold:
                env_vars["MALLOC_MMAP_THRESHOLD_"] = str(args.malloc_mmap_threshold)
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env_vars)
            line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
            if proc.returncode != 0 or line is None:
                sys.stderr.write(f"{case} failed:\n{proc.stderr[-3000:]}\n")
                continue
            res = json.loads(line[len("RESULT "):])
            runs.append(res)
            sys.stderr.write(f"{case}: {res['samples_per_s']:.2f} pairs/s, peak {_mib(res['peak_bytes'])} MiB "
                             f"({time.perf_counter() - t0:.0f} s)\n")
    created = datetime.now(UTC).isoformat(timespec="seconds")
    result = {"device": device_name, "device_type": device, "created_at": created,
              "vocab": args.vocab, "hidden": args.hidden, "layers": args.layers, "parameters": n_params,
              "batch": args.batch, "steps": args.steps, "beta": args.beta, "shape": args.shape,
              "malloc_mmap_threshold": args.malloc_mmap_threshold,
              "mean_completion_tokens": sum(completion_lengths) / len(completion_lengths),
              "mean_tokens": sum(lengths) / len(lengths), "torch_threads": torch.get_num_threads(), "runs": runs}
    args.out.mkdir(parents=True, exist_ok=True)
    slug = re.sub(r"[^a-z0-9]+", "_", device_name.lower()).strip("_")[:60]
    slug += "" if args.shape == "tasks" else f"_{args.shape}"
    slug += f"_mmap{args.malloc_mmap_threshold // 1024}k" if args.malloc_mmap_threshold else ""
    _merge_earlier(result, args.out / f"align_{slug}.json")
    md = markdown(result)
    (args.out / f"align_{slug}.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    (args.out / f"align_{slug}.md").write_text(md, encoding="utf-8")
    sys.stdout.write(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
