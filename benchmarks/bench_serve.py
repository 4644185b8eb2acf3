"""`trainlab serve` under load: concurrent streaming clients, batched decoding vs one request at a time.

    python benchmarks/bench_serve.py --model runs/orpo          # default: the embedded base model
    python benchmarks/bench_serve.py --clients 32 --max-tokens 16 --max-batch 1 8 32
    python benchmarks/bench_serve.py --random-llama --max-tokens 32   # decode-bound: never stops early

For each ``--max-batch`` the server (uvicorn on a free loopback port, in this process) is started
on the same loaded model, and ``--clients`` threads each send one streaming ``/v1/completions``
request at once (the held-out task prompts of the embedded tasks, greedy, ``--max-tokens`` new
tokens, eos or ``length``). Measured: every request answered (stream ended with ``[DONE]``, no
error), wall time from the first request to the last ``[DONE]``, requests/s and generated tokens/s
(the usage chunk's counts), the prefills ("batches": groups of requests that joined together), the decode
steps, the most rows decoded at once, and the requests that joined a batch already running (continuous
batching). ``--varied`` gives client ``i`` ``max_tokens · (i mod 4 + 1) / 4`` new tokens (short and long
answers mixed: where continuous batching pays, a finished row leaving at once). Loopback only. ``--random-llama``
serves a randomly initialised 3.7 M-parameter Llama (4 layers, width 256, GQA 8/2, the embedded
tokenizer; served by trainlab's decoder) built in a temporary folder: it never emits eos, so every
request decodes ``--max-tokens``.

Output: a Markdown table on stdout and ``benchmarks/results/serve_<model folder>_<device>.md``.
"""

from __future__ import annotations

import argparse
import json
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def _prompts(n: int) -> list[str]:
    """``n`` held-out task prompts (the evaluation side of the fixed split), every task in turn."""
    from trainlab.data.tasks import make_task_records

    return [r.prompt for r in make_task_records(n, seed=0, split="eval")]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run(engine: Any, prompts: list[str], *, max_batch: int, max_tokens: int, varied: bool = False) -> dict[str, Any]:
    import httpx
    import uvicorn

    from trainlab.serve.app import create_app

    app = create_app(engine, max_batch=max_batch, max_queue=len(prompts) + 1)
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.02)
    url = f"http://127.0.0.1:{port}/v1/completions"

    def one(i: int) -> tuple[bool, int]:
        budget = max(1, max_tokens * (i % 4 + 1) // 4) if varied else max_tokens
        body = {"model": engine.name, "prompt": prompts[i], "max_tokens": budget, "temperature": 0, "stream": True,
                "stream_options": {"include_usage": True}}
        with httpx.stream("POST", url, json=body, timeout=600) as r:
            lines = [line for line in r.iter_lines() if line]
        usage = [json.loads(line[6:])["usage"] for line in lines[:-1] if '"usage"' in line]
        ok = r.status_code == 200 and lines[-1] == "data: [DONE]" and bool(usage)
        return ok, int(usage[-1]["completion_tokens"]) if ok else 0

    try:
        start = time.perf_counter()
        with ThreadPoolExecutor(len(prompts)) as pool:
            results = list(pool.map(one, range(len(prompts))))
        wall = time.perf_counter() - start
    finally:
        server.should_exit = True
        thread.join(timeout=30)
    stats = app.state.batcher.stats
    tokens = sum(t for _, t in results)
    return {"max_batch": max_batch, "clients": len(prompts), "answered": sum(ok for ok, _ in results),
            "wall_s": wall, "requests_per_s": len(prompts) / wall, "tokens_per_s": tokens / wall,
            "tokens": tokens, "batches": stats.batches, "steps": stats.steps, "largest": stats.largest,
            "joined": stats.joined, "varied": varied}


def _random_llama(folder: Path) -> Path:
    import torch
    import transformers as tf

    from trainlab.data.tokenizer import load_tokenizer
    from trainlab.recipes.base_model import embedded_base_model

    base = embedded_base_model()
    tok = load_tokenizer(base)
    vocab = json.loads((base / "config.json").read_text(encoding="utf-8"))["vocab_size"]  # the base model's rows
    torch.manual_seed(0)
    config = tf.LlamaConfig(vocab_size=vocab, hidden_size=256, intermediate_size=768, num_hidden_layers=4,
                            num_attention_heads=8, num_key_value_heads=2, max_position_embeddings=512,
                            eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id,
                            pad_token_id=tok.pad_token_id)
    tf.LlamaForCausalLM(config).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=None, help="model or run folder (default: embedded base)")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--max-batch", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--random-llama", action="store_true", help="serve a random 3.7 M-parameter Llama")
    parser.add_argument("--varied", action="store_true", help="mixed answer lengths (see the module docstring)")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()

    import tempfile

    from trainlab.env import detect_env
    from trainlab.recipes.export import load_with_tokenizer, resolve_model_folder
    from trainlab.serve.engine import Engine
    from trainlab.train.device import resolve_device

    scratch = tempfile.TemporaryDirectory(prefix="bench_serve_")
    if args.random_llama:
        args.model = _random_llama(Path(scratch.name) / "random-llama")
    elif args.model is None:
        from trainlab.recipes.base_model import embedded_base_model

        args.model = embedded_base_model()
    folder = resolve_model_folder(args.model)
    name = folder.parent.name if folder.name == "model" else folder.name
    model, tok = load_with_tokenizer(folder, device=str(resolve_device(args.device)))
    engine = Engine(model, tok, name="bench")
    prompts = _prompts(args.clients)
    run(engine, prompts[:2], max_batch=2, max_tokens=2)  # warm-up
    rows = [run(engine, prompts, max_batch=b, max_tokens=args.max_tokens, varied=args.varied) for b in args.max_batch]
    env = detect_env().to_dict()
    device = str(env.get("gpu_name") or f"CPU {env.get('cpu_name')}, {env.get('cpu_count')} cores")
    lines = [f"Serving {name} ({sum(p.numel() for p in model.parameters()) / 1e6:.1f} M parameters) on "
             f"{device}, torch {env.get('torch_version')}: {args.clients} concurrent streaming clients, greedy, "
             f"{args.max_tokens} new tokens at most" + (" (client i: max_tokens·(i mod 4 + 1)/4)" if args.varied
                                                         else "") + ".", "",
             "| max batch | answered | wall s | requests/s | tokens/s | prefills | decode steps | largest batch | "
             "joined a running batch |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        lines.append(f"| {r['max_batch']} | {r['answered']}/{r['clients']} | {r['wall_s']:.2f} | "
                     f"{r['requests_per_s']:.1f} | {r['tokens_per_s']:.0f} | {r['batches']} | {r['steps']} | "
                     f"{r['largest']} | {r['joined']} |")
    text = "\n".join(lines) + "\n"
    scratch.cleanup()
    print(text)
    RESULTS.mkdir(parents=True, exist_ok=True)
    slug = "".join(c if c.isalnum() else "_" for c in device.lower()).strip("_")[:60]
    (RESULTS / f"serve_{name}{'_varied' if args.varied else ''}_{slug}.md").write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
