"""trainlab LoRA SFT vs TRL's SFTTrainer with a PEFT LoraConfig, on the same transformers model and data.

    python benchmarks/bench_peft.py                          # gpt2 and qwen3, small and real vocabularies
    python benchmarks/bench_peft.py --model qwen3 --vocab real --steps 8 --batch 8 --rank 16
    python benchmarks/bench_peft.py --summary                # the table of BENCHMARKS.md

The model is a transformers architecture as a user loads it, built from its config class (no hub) at a small
body (``--hidden``, ``--layers``) with a small vocabulary (1,024) or the real one (GPT-2 50,257, Qwen 151,936),
and a word-level tokenizer of exactly that many entries (`bench_align.build_arch_dir`). The data: prompt /
completion records of random ordinary tokens (``--prompt-tokens`` 128, ``--completion-tokens`` 64), the loss on
the completion only (TRL's default for prompt-completion data and trainlab's). Both train LoRA on every linear
layer but the LM head (``all-linear``) with the same rank, α = 2r, dropout 0, fp32, the same batch, steps and a
constant learning rate:

* ``trainlab-lora``: ``trainlab sft --model DIR peft.method=lora peft.r=R peft.alpha=2R`` as configured for a
  transformers folder (TRL's defaults: activation checkpointing on, fused AdamW where there is one);
* ``trainlab-lora-nockpt``: the same with ``model.checkpointing=none``;
* ``trl-lora``: ``SFTTrainer(model, args=SFTConfig(...), peft_config=LoraConfig(r=R, lora_alpha=2R,
  target_modules="all-linear"))`` with TRL 1.16's defaults (gradient checkpointing on, fused AdamW).

Each case runs in its own subprocess, ``--repeats`` times interleaved (A, B, C, A, B, C: a load change on a
shared machine hits every case alike), keeping the medians. **tokens/s**: real (non-padding) tokens of a step
over the median step time after two warm-up steps (and per CPU-second of the process: on a shared machine the
steadier measure of the work a trainer does); **peak memory**: CPU: the resident-set peak during the optimizer
steps above the process before the model was loaded; CUDA: the allocator's peak. Goal (issue 12):
≥ 1.5x TRL's tokens/s at ≤ 0.7x its memory.
Results: ``benchmarks/results/peft_<device>_<model>_v<vocab>.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_align import ARCHS, SMALL_VOCAB, _special_list, _StepClock, build_arch_dir

RESULTS = Path(__file__).resolve().parent / "results"
CASES = ("trainlab-lora", "trainlab-lora-nockpt", "trl-lora")


def sft_records(n: int, arch: str, vocab: int, prompt_tokens: int, completion_tokens: int, seed: int = 0
                ) -> list[dict[str, str]]:
    rng = random.Random(seed)
    n_words = vocab - len(_special_list(arch))

    def words(k: int) -> str:
        return " ".join(f"t{rng.randrange(n_words)}" for _ in range(k))

    return [{"prompt": words(prompt_tokens), "completion": " " + words(completion_tokens)} for _ in range(n)]


def worker(case: str, model_dir: Path, steps: int, batch: int, rank: int, device_name: str) -> dict[str, Any]:
    import torch

    from trainlab.memory.rss import PeakMemory

    warnings.filterwarnings("ignore")
    os.environ.setdefault("TQDM_DISABLE", "1")
    device = torch.device(device_name)
    records = [json.loads(x) for x in (model_dir / "sft.jsonl").read_text(encoding="utf-8").splitlines()]
    # both libraries imported before the memory baseline: the peak counts training, not code
    import datasets
    import peft
    import transformers
    import trl

    import trainlab.recipes.align  # noqa: F401

    out: dict[str, Any] = {"case": case, "steps": steps, "batch": batch, "rank": rank}
    with PeakMemory(device) as mem:
        clock = _StepClock(device, mem, steps)
        if case.startswith("trainlab"):
            from trainlab.align.config import align_config
            from trainlab.data.tokenizer import load_tokenizer
            from trainlab.recipes.align import build_alignment_data, run_alignment

            overrides = [f"train.max_steps={steps}", f"train.batch_size={batch}", f"train.device={device_name}",
                         "train.eval_every=0", "train.lr=1e-4", "train.warmup_steps=0", "train.log_every=1",
                         "train.save_every=0", "train.save_every_minutes=0", "train.report_to=none",
                         "train.min_lr_ratio=1.0", "train.weight_decay=0.0", "align_data.n_eval_pairs=0",
                         "peft.method=lora", f"peft.r={rank}", f"peft.alpha={2 * rank}", "peft.targets=all-linear"]
            if case.endswith("nockpt"):
                overrides.append("model.checkpointing=none")
            cfg = align_config("sft", preset="quick", overrides=overrides, model=model_dir)
            data = build_alignment_data("sft", cfg, load_tokenizer(model_dir), source=records)
            with tempfile.TemporaryDirectory() as tmp:
                run = run_alignment("sft", cfg, model_dir, tmp, quiet=True, save=False, evaluate_oracle=False,
                                    callbacks=[clock], data=data)
            out["trainable"] = run.summary["peft"]["trainable_params"]
            out["checkpointing"] = cfg.model.checkpointing
        else:
            tok = transformers.AutoTokenizer.from_pretrained(str(model_dir))
            model = transformers.AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)

            class Clock(transformers.TrainerCallback):
                def on_step_begin(self, *a: Any, **k: Any) -> None:
                    clock.on_step_begin()

                def on_step_end(self, *a: Any, **k: Any) -> None:
                    clock.on_step_end()

            args = trl.SFTConfig(output_dir=tempfile.mkdtemp(), per_device_train_batch_size=batch, max_steps=steps,
                                 learning_rate=1e-4, warmup_steps=0, lr_scheduler_type="constant", weight_decay=0.0,
                                 report_to=[], logging_steps=1, save_strategy="no", use_cpu=device.type == "cpu",
                                 bf16=False, dataloader_num_workers=0, disable_tqdm=True)
            lora = peft.LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=0.0, target_modules="all-linear",
                                   task_type="CAUSAL_LM")
            trainer = trl.SFTTrainer(model=model, args=args, train_dataset=datasets.Dataset.from_list(records),
                                     processing_class=tok, peft_config=lora, callbacks=[Clock()])
            trainer.train()
            out["trainable"] = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
            out["checkpointing"] = "full" if args.gradient_checkpointing else "none"
    timed = clock.times[2:] if len(clock.times) > 4 else clock.times
    out["step_times_s"] = clock.times
    out["median_step_s"] = statistics.median(timed)
    out["median_step_cpu_s"] = statistics.median(clock.cpu_times[2:] if len(clock.cpu_times) > 4 else clock.cpu_times)
    out["peak_bytes"] = mem.window_peak_bytes if mem.result()["kind"] == "cpu_rss" else mem.peak_bytes
    out["memory_kind"] = mem.result()["kind"]
    return out


def _mib(x: float) -> str:
    return f"{x / 2**20:,.1f}"


def markdown(result: dict[str, Any]) -> str:
    rows = {r["case"]: r for r in result["runs"]}
    theirs = rows.get("trl-lora")
    lines = [f"Device: {result['device']}. Model: {result['model']} ({result['model_class']}), vocabulary "
             f"{result['vocab']:,}, hidden {result['hidden']}, {result['layers']} layers "
             f"({result['parameters'] / 1e6:.1f}M parameters), fp32; LoRA r {result['rank']} (α {2 * result['rank']}) "
             f"on all linear layers; batch {result['batch']}, {result['steps']} steps, {result['tokens_per_step']:,} "
             f"tokens per step; median of {result.get('repeats', 1)} interleaved repeats; load average "
             f"{result['load_average']:.1f} on {os.cpu_count()} CPUs (shared machine). "
             f"{result['created_at']}.", "",
             "| trainer | checkpointing | trainable | tokens/s | tokens per CPU-s | peak memory (MiB) | "
             "tokens/s vs TRL | CPU work vs TRL | memory vs TRL | goal (≥ 1.5x, ≤ 0.7x) |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for case in CASES:
        r = rows.get(case)
        if r is None:
            continue
        tps = result["tokens_per_step"] / r["median_step_s"]
        cpu_tps = result["tokens_per_step"] / r["median_step_cpu_s"]
        if theirs is not None and case != "trl-lora":
            speed = theirs["median_step_s"] / r["median_step_s"]
            work = theirs["median_step_cpu_s"] / r["median_step_cpu_s"]
            mem = r["peak_bytes"] / max(theirs["peak_bytes"], 1)
            ratio = f"{speed:.2f}x | {work:.2f}x | {mem:.2f}x | " + (
                "met" if speed >= 1.5 and mem <= 0.7 else "speed met" if speed >= 1.5 else
                "memory met" if mem <= 0.7 else "not met")
        else:
            ratio = "1 | 1 | 1 | —"
        lines.append(f"| {case} | {r['checkpointing']} | {r['trainable']:,} | {tps:,.0f} | {cpu_tps:,.0f} | "
                     f"{_mib(r['peak_bytes'])} | {ratio} |")
    return "\n".join(lines) + "\n"


def summary(files: list[Path]) -> str:
    """One row per (model, vocabulary): trainlab's default and no-checkpointing rows against TRL."""
    lines = ["| model | vocabulary | parameters | tokens/step | trainlab tokens/s | TRL tokens/s | speed vs TRL | "
             "CPU work vs TRL | memory vs TRL | no checkpointing: speed, memory vs TRL | goal |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for f in files:
        d = json.loads(f.read_text(encoding="utf-8"))
        rows = {r["case"]: r for r in d["runs"]}
        ours, theirs, plain = rows.get("trainlab-lora"), rows.get("trl-lora"), rows.get("trainlab-lora-nockpt")
        if ours is None or theirs is None:
            continue
        speed, mem = theirs["median_step_s"] / ours["median_step_s"], ours["peak_bytes"] / max(theirs["peak_bytes"], 1)
        extra = (f"{theirs['median_step_s'] / plain['median_step_s']:.2f}x, "
                 f"{plain['peak_bytes'] / max(theirs['peak_bytes'], 1):.2f}x" if plain else "not run")
        goal = "met" if speed >= 1.5 and mem <= 0.7 else "not met"
        tps = d["tokens_per_step"]
        lines.append(f"| {d['model']} | {d['vocab']:,} | {d['parameters'] / 1e6:.1f}M | {tps:,} | "
                     f"{tps / ours['median_step_s']:,.0f} | {tps / theirs['median_step_s']:,.0f} | {speed:.2f}x | "
                     f"{theirs['median_step_cpu_s'] / ours['median_step_cpu_s']:.2f}x | {mem:.2f}x | {extra} | "
                     f"{goal} |")
    return "\n".join(lines) + "\n"


def _aggregate(results: list[dict[str, Any]]) -> dict[str, Any]:
    """One case's repeats: the median step time and peak (each repeat kept under ``repeats``)."""
    out = dict(results[-1])
    for key in ("median_step_s", "median_step_cpu_s", "peak_bytes", "load_average"):
        out[key] = statistics.median(r[key] for r in results)
    out["repeats"] = [{k: r[k] for k in ("median_step_s", "peak_bytes", "load_average")} for r in results]
    return out


def run_benchmark(args: argparse.Namespace, arch: str, vocab: int, device: str, device_name: str) -> Path:
    import torch
    import transformers

    from trainlab.data.tokenizer import load_tokenizer

    runs = []
    loads = []
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = build_arch_dir(Path(tmp) / "model", arch, vocab, args.hidden, args.layers)
        loaded = transformers.AutoModelForCausalLM.from_pretrained(str(model_dir))
        n_params, model_class = sum(p.numel() for p in loaded.parameters()), type(loaded).__name__
        del loaded
        recs = sft_records(args.steps * args.batch, arch, vocab, args.prompt_tokens, args.completion_tokens)
        (model_dir / "sft.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs), encoding="utf-8")
        tok = load_tokenizer(model_dir)
        per_seq = [len(tok(r["prompt"] + r["completion"])["input_ids"]) + 1 for r in recs]  # + eos
        for rep, case in [(r, c) for r in range(args.repeats) for c in args.cases]:  # interleaved repeats
            cmd = [sys.executable, __file__, "--worker", case, "--model-dir", str(model_dir), "--steps",
                   str(args.steps), "--batch", str(args.batch), "--rank", str(args.rank), "--device", device]
            t0, load_before = time.perf_counter(), os.getloadavg()[0]
            proc = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, PYTHONWARNINGS="ignore"))
            line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
            if proc.returncode != 0 or line is None:
                sys.stderr.write(f"{case} failed:\n{proc.stderr[-3000:]}\n")
                continue
            res = json.loads(line[len("RESULT "):])
            res["load_average"] = (load_before + os.getloadavg()[0]) / 2
            loads.append(res["load_average"])
            runs.append(res)
            sys.stderr.write(f"{arch} {vocab:,} {case} [{rep + 1}/{args.repeats}]: {res['median_step_s']:.3f} "
                             f"s/step, peak {_mib(res['peak_bytes'])} MiB ({time.perf_counter() - t0:.0f} s)\n")
    result = {"device": device_name, "created_at": datetime.now(UTC).isoformat(timespec="seconds"), "model": arch,
              "model_class": model_class, "vocab": vocab, "hidden": args.hidden, "layers": args.layers,
              "parameters": n_params, "batch": args.batch, "steps": args.steps, "rank": args.rank,
              "tokens_per_step": round(args.batch * statistics.mean(per_seq)), "torch_threads": torch.get_num_threads(),
              "repeats": args.repeats, "load_average": statistics.median(loads) if loads else 0.0,
              "runs": [_aggregate([r for r in runs if r["case"] == c]) for c in args.cases
                       if any(r["case"] == c for r in runs)]}
    args.out.mkdir(parents=True, exist_ok=True)
    slug = re.sub(r"[^a-z0-9]+", "_", device_name.lower()).strip("_")[:60]
    path = args.out / f"peft_{slug}_{arch}_v{vocab}.json"
    path.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    md = markdown(result)
    path.with_suffix(".md").write_text(md, encoding="utf-8")
    sys.stdout.write(md)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", nargs="+", choices=list(ARCHS), default=["gpt2", "qwen3"])
    parser.add_argument("--vocab", nargs="+", default=["small", "real"], help="small (1,024), real, or a number")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--prompt-tokens", type=int, default=128)
    parser.add_argument("--completion-tokens", type=int, default=64)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--device", default=None)
    parser.add_argument("--cases", nargs="*", default=list(CASES))
    parser.add_argument("--repeats", type=int, default=2, help="interleaved repeats per case; medians are kept")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--summary", nargs="*", type=Path, default=None, metavar="JSON")
    parser.add_argument("--render", nargs="*", type=Path, default=None, metavar="JSON", help=argparse.SUPPRESS)
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--model-dir", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.render:  # rewrite the .md of result files (after a change of the table)
        for f in args.render:
            f.with_suffix(".md").write_text(markdown(json.loads(f.read_text(encoding="utf-8"))), encoding="utf-8")
        return 0
    if args.summary is not None:
        sys.stdout.write(summary(args.summary or sorted(args.out.glob("peft_*.json"))))
        return 0
    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if args.worker:
        res = worker(args.worker, args.model_dir, args.steps, args.batch, args.rank, device)
        sys.stdout.write("RESULT " + json.dumps(res) + "\n")
        return 0
    from trainlab.env import detect_env

    env = detect_env()
    device_name = env.short() if device == "cpu" else f"{env.gpu_name}, torch {env.torch_version}"
    for arch in args.model:
        for name in args.vocab:
            vocab = SMALL_VOCAB if name == "small" else ARCHS[arch] if name == "real" else int(name)
            run_benchmark(args, arch, vocab, device, device_name)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
