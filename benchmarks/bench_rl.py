"""GRPO: trainlab (`trainlab grpo`'s recipe) vs TRL 1.16 GRPOTrainer, same model, prompts, group, lengths, reward.

    python benchmarks/bench_rl.py                 # both sides, one run each, BENCHMARKS.md section with --write-md
    python benchmarks/bench_rl.py --steps 6 --prompts 8 --group 8 --new-tokens 32

The model is a randomly initialised Llama (4 layers, width 256, GQA 8/2, the embedded tokenizer's
vocabulary) saved once in a temporary folder: random weights never emit EOS, so every completion has
exactly ``--new-tokens`` tokens on both sides and the work is the same. Prompts: held-out task prompts of
the embedded tasks (``--prompts`` distinct ones per step, each sampled ``--group`` times, temperature 1).
Reward: `count_digits` (the share of digit characters in the completion), the same Python function on
both sides. Both: β = 0 (no reference model), the DAPO token-mean loss (TRL 1.16's default ``loss_type``),
lr 1e-6, one update per rollout, one micro-batch per step, fp32, the CPU.

Each side runs in its own process (fresh RSS), ``--steps`` optimizer steps; the first step is a warm-up and
is left out of the times. Measured per side: completions per second (steps 2..N), the time split between
generating (sampling + scoring: TRL's ``_generate_and_score_completions``, timed by wrapping it; ours: the
rollout) and updating (the rest of the step), and peak memory (process RSS high-water mark, ``ru_maxrss``, above the RSS
once the model has been loaded: TRL's side keeps that model, ours loads it once, drops it and measures there, so the
loaders' imports and lazy initialisation, ~170 MiB for ours in a fresh process, are outside on both sides).

Output: ``benchmarks/results/rl_<device>.json`` and ``.md``; ``--write-md`` replaces the BENCHMARKS.md
section between ``<!-- bench_rl:begin -->`` and ``<!-- bench_rl:end -->``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from trainlab.report.render import write_region

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
BENCH_MD = ROOT / "BENCHMARKS.md"


def count_digits(completions: list[str], **_: Any) -> list[float]:
    """The reward of both sides: the share of digit characters in each completion."""
    return [sum(ch.isdigit() for ch in c) / max(len(c), 1) for c in completions]


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _peak_rss() -> int:
    import resource

    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def build_model(folder: Path) -> Path:
    import torch
    import transformers as tf

    from trainlab.config import DataConfig
    from trainlab.data.tokenizer import embedded_tokenizer

    dc = DataConfig()
    tok = embedded_tokenizer(dc.vocab_size, dc.seed)
    torch.manual_seed(0)
    config = tf.LlamaConfig(vocab_size=len(tok), hidden_size=256, intermediate_size=768, num_hidden_layers=4,
                            num_attention_heads=8, num_key_value_heads=2, max_position_embeddings=512,
                            eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id,
                            pad_token_id=tok.pad_token_id, tie_word_embeddings=True)
    tf.LlamaForCausalLM(config).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def prompts(n: int) -> list[str]:
    from trainlab.data.tasks import make_task_records

    return [r.prompt for r in make_task_records(n, seed=0, split="eval")]


def side_trainlab(model: Path, a: argparse.Namespace, out: Path) -> dict[str, Any]:
    import gc

    from trainlab.recipes.align_model import load_policy
    from trainlab.rl.config import rl_config
    from trainlab.rl.recipe import run_grpo

    # the baseline after one load of the model (then dropped): the loader's imports and lazy initialisation are
    # paid before it, as TRL's side has its model loaded before its baseline
    warm, _ = load_policy(model, "cpu")
    del warm
    gc.collect()

    data = out / "prompts.jsonl"
    data.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts(a.prompts * a.steps)), encoding="utf-8")
    cfg = rl_config(preset="quick", model=model, overrides=[
        f"align_data.source={data}", f"train.max_steps={a.steps}", f"rl.prompts_per_step={a.prompts}",
        f"rl.group_size={a.group}", f"rl.max_new_tokens={a.new_tokens}", "rl.temperature=1.0", "rl.beta=0",
        "rl.loss_agg=dapo", "train.lr=1e-6", f"train.batch_size={a.prompts * a.group}", "train.device=cpu",
        "train.eval_every=0", "train.save_every=0", "train.log_every=1000"])
    base = _rss()
    s = run_grpo(cfg, model, out / "run", quiet=True, save=False, evaluate_oracle=False,
                 reward_fn=lambda p, c, items, **kw: __import__("torch").tensor(count_digits(c)))
    ro = s["rollouts"]
    step_times = s["step_times_s"]
    gen = [r["generate_s"] + r["reward_s"] for r in ro]
    return {"step_s": step_times, "rollout_s": gen, "completions_per_step": a.prompts * a.group,
            "completion_tokens": [r["completion_length"] for r in ro], "peak_rss_above_load": _peak_rss() - base}


def side_trl(model: Path, a: argparse.Namespace, out: Path) -> dict[str, Any]:
    import datasets
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    tok = AutoTokenizer.from_pretrained(model)
    policy = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32)
    base = _rss()  # after loading the model (imports and lazy initialisation paid), as on our side
    ds = datasets.Dataset.from_list([{"prompt": p} for p in prompts(a.prompts * a.steps)])
    cfg = GRPOConfig(output_dir=str(out / "trl"), per_device_train_batch_size=a.prompts * a.group,
                     num_generations=a.group, max_completion_length=a.new_tokens, temperature=1.0, beta=0.0,
                     loss_type="dapo", learning_rate=1e-6, max_steps=a.steps, use_cpu=True, report_to="none",
                     logging_steps=1000, save_strategy="no", bf16=False, fp16=False, shuffle_dataset=False,
                     dataloader_num_workers=0, disable_tqdm=True)
    step_s: list[float] = []

    class Steps(TrainerCallback):
        def on_step_begin(self, *args: Any, **kw: Any) -> None:
            self.t0 = time.perf_counter()

        def on_step_end(self, *args: Any, **kw: Any) -> None:
            step_s.append(time.perf_counter() - self.t0)

    trainer = GRPOTrainer(model=policy, reward_funcs=count_digits, args=cfg, train_dataset=ds,
                          processing_class=tok, callbacks=[Steps()])
    rollout_s: list[float] = []
    lengths: list[float] = []
    inner = trainer._generate_and_score_completions

    def timed(*args: Any, **kw: Any) -> Any:
        t0 = time.perf_counter()
        out_ = inner(*args, **kw)
        rollout_s.append(time.perf_counter() - t0)
        lengths.append(float(out_["completion_mask"].sum(1).float().mean()))
        return out_

    trainer._generate_and_score_completions = timed
    trainer.train()
    return {"step_s": step_s, "rollout_s": rollout_s, "completions_per_step": a.prompts * a.group,
            "completion_tokens": lengths, "peak_rss_above_load": _peak_rss() - base}


def summarize(raw: dict[str, Any]) -> dict[str, Any]:
    step, roll = raw["step_s"][1:], raw["rollout_s"][1:]  # the first step warms up
    total = sum(step)
    gen = sum(roll)
    n = raw["completions_per_step"] * len(step)
    return {"steps_timed": len(step), "completions_per_s": n / total if total else float("nan"),
            "step_s": total / max(len(step), 1), "generate_s": gen / max(len(roll), 1),
            "update_s": (total - gen) / max(len(step), 1), "generate_share": gen / total if total else float("nan"),
            "completion_tokens": sum(raw["completion_tokens"]) / max(len(raw["completion_tokens"]), 1),
            "peak_rss_mib": raw["peak_rss_above_load"] / 2**20}


def section(res: dict[str, Any]) -> str:
    s = res["settings"]
    ours, trl = res["trainlab"], res["trl"]
    lines = [f"One run each, {res['device']}, {res['machine']} ({res.get('load', '')}). Model: random Llama "
             f"({s['params']:,} parameters), {s['prompts']} prompts × {s['group']} completions per step, "
             f"{s['new_tokens']} new tokens, {s['steps']} steps (the first left out).", "",
             "| | completions/s | step (s) | generation (s) | update (s) | generation share | "
             "completion tokens | peak RSS above the loaded model (MiB) |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name, r in (("trainlab grpo", ours), ("TRL 1.16 GRPOTrainer", trl)):
        lines.append(f"| {name} | {r['completions_per_s']:.1f} | {r['step_s']:.2f} | {r['generate_s']:.2f} | "
                     f"{r['update_s']:.2f} | {r['generate_share']:.0%} | {r['completion_tokens']:.1f} | "
                     f"{r['peak_rss_mib']:.0f} |")
    lines += ["", f"trainlab / TRL: {ours['completions_per_s'] / trl['completions_per_s']:.2f}x completions/s, "
              f"{ours['peak_rss_mib'] / max(trl['peak_rss_mib'], 1e-9):.2f}x peak RSS (the issue's goal: ≥ 2x "
              "throughput at the same or lower memory)."]
    return "\n".join(lines) + "\n"


def write_md(text: str) -> None:
    write_region(
        BENCH_MD, "bench_rl", text,
        heading="## GRPO (`benchmarks/bench_rl.py`)\n\n" + (
            "trainlab's GRPO (KV-cache sampling, one training loop) against TRL 1.16's GRPOTrainer on the same "
            "random Llama, prompts, group size, completion length and reward function, each side in its own "
            "process. `python benchmarks/bench_rl.py --write-md` regenerates this section.\n\n"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--group", type=int, default=8)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--side", choices=["trainlab", "trl"], help=argparse.SUPPRESS)
    parser.add_argument("--model", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--load", default="", help="a note on the machine's load, printed with the results")
    parser.add_argument("--write-md", action="store_true", help="replace the section in BENCHMARKS.md")
    parser.add_argument("--summary", action="store_true", help="only rebuild the section from the saved JSON")
    a = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    if a.side:
        import torch

        torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
        with tempfile.TemporaryDirectory() as tmp:
            fn = side_trainlab if a.side == "trainlab" else side_trl
            print(json.dumps(fn(a.model, a, Path(tmp))))
        return
    from trainlab.env import detect_env

    env = detect_env()
    slug = re.sub(r"[^a-z0-9]+", "_", env.short().lower()).strip("_")[:60]
    path = RESULTS / f"rl_{slug}.json"
    if a.summary:
        res = json.loads(path.read_text(encoding="utf-8"))
    else:
        with tempfile.TemporaryDirectory() as tmp:
            model = build_model(Path(tmp) / "model")
            res = {"device": "cpu", "machine": env.short(), "load": a.load,
                   "settings": {"steps": a.steps, "prompts": a.prompts, "group": a.group,
                                "new_tokens": a.new_tokens}}
            import transformers as tf

            res["settings"]["params"] = sum(p.numel() for p in tf.AutoModelForCausalLM.from_pretrained(
                model).parameters())
            for side in ("trainlab", "trl"):
                cmd = [sys.executable, __file__, "--side", side, "--model", str(model), "--steps", str(a.steps),
                       "--prompts", str(a.prompts), "--group", str(a.group), "--new-tokens", str(a.new_tokens)]
                proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
                if proc.returncode != 0:
                    raise SystemExit(f"{side} side failed:\n{proc.stderr[-3000:]}")
                raw = json.loads(proc.stdout.strip().splitlines()[-1])
                res[side] = summarize(raw) | {"raw": raw}
        RESULTS.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(res, indent=2) + "\n", encoding="utf-8")
    text = section(res)
    path.with_suffix(".md").write_text(text, encoding="utf-8")
    print(text)
    if a.write_md:
        write_md(text)


if __name__ == "__main__":
    main()
