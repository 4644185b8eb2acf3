"""Decode speed of MHA, GQA and MQA variants: ours (dynamic and static KV cache) vs transformers' generate.

One run, side by side on the same weights: the model (default: the cached quick base model, MHA) and its
GQA/MQA conversions (k/v heads mean-pooled, `trainlab.labs.lab16.presets.to_kv_heads`), each decoded
greedily from random prompts of ``context`` tokens for ``--new-tokens`` tokens, eos disabled, by

* ``ours-dynamic``: ``model.generate(ids, mask, max_new_tokens=N)`` (growable `KVCache`);
* ``ours-static``: the same with ``cache="static"`` (`trainlab.model.static_cache`);
* ``transformers``: ``LlamaForCausalLM.generate(do_sample=False)`` on the exported folder.

Measured per point (`trainlab.labs.lab16.decode.measure_point`): prefill latency (start to the first
step), per-token latency (median interval between time-stamped steps), tokens/s end to end and of the
decode steps, tokens/s by process CPU time; greedy tokens of every implementation must equal ours-dynamic's
(asserted). Batch sweep at one context, context sweep at one batch.

    python benchmarks/bench_decode.py                  # default grid (a few minutes on 2 CPU cores)
    python benchmarks/bench_decode.py --grid quick     # batch 1-64, context 128-4096 (CPU quick grid)
    python benchmarks/bench_decode.py --summary        # BENCHMARKS.md section from the saved JSON

Results: benchmarks/results/decode_<device>.json and .md; ``--write-md`` replaces the BENCHMARKS.md section
between ``<!-- bench_decode:begin -->`` and ``<!-- bench_decode:end -->``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

from trainlab.report.render import write_region

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
BENCH_MD = ROOT / "BENCHMARKS.md"
GRIDS = {  # (batches at batch_context, batch_context, contexts at context_batch, context_batch)
    "default": ((1, 8, 32), 128, (128, 512, 2048), 1),
    "quick": ((1, 4, 16, 64), 128, (128, 512, 1024, 2048, 4096), 4),
    "tiny": ((1, 2), 16, (16, 32), 1),
}


def _device_name() -> tuple[str, dict[str, Any]]:
    from trainlab.env import detect_env

    env = detect_env().to_dict()
    return str(env.get("gpu_name") or f"CPU {env.get('cpu_name')}, {env.get('cpu_count')} cores"), env


def run(args: argparse.Namespace) -> dict[str, Any]:
    from trainlab.labs.lab16 import decode, presets
    from trainlab.model import load_model
    from trainlab.recipes.base_model import embedded_base_model

    folder = Path(args.model) if args.model else embedded_base_model("quick")
    base = load_model(folder).eval()
    if args.dtype != "fp32":
        base = base.to({"bf16": torch.bfloat16, "fp16": torch.float16}[args.dtype])
    batches, bctx, contexts, cbatch = GRIDS[args.grid]
    preset = dataclasses.replace(
        presets.get_preset("quick"), batches=tuple(args.batches or batches), batch_context=args.batch_context or bctx,
        contexts=tuple(args.contexts or contexts), context_batch=args.context_batch or cbatch,
        new_tokens=args.new_tokens, repeats=args.repeats, hf_points="all")
    torch.set_num_threads(args.threads)
    heads = base.config.n_heads
    kv_list = args.variants or [k for k in presets.reachable_kv(base) if k in (heads, heads // 2, 1)]
    start = time.perf_counter()
    data = decode.decode_speed(preset, base, kv_list=kv_list,
                               log=lambda s: print(f"[{time.perf_counter() - start:6.1f} s] {s}", file=sys.stderr))
    bad = [p for p in data["points"] if p["same_tokens"] is False]
    if bad:
        where = [(p["variant"], p["impl"], p["batch"], p["context"]) for p in bad]
        raise SystemExit(f"greedy tokens differ from ours-dynamic's: {where}")
    device, env = _device_name()
    return data | {"model": str(folder), "grid": args.grid, "dtype": args.dtype, "label": args.label,
                   "device": device, "torch": env.get("torch_version"), "load_average": list(_loadavg()),
                   "wall_s": time.perf_counter() - start,
                   "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}


def _loadavg() -> tuple[float, ...]:
    try:
        import os

        return tuple(round(x, 2) for x in os.getloadavg())
    except OSError:
        return ()


def summary_markdown(data: dict[str, Any]) -> str:
    """The BENCHMARKS.md section body, from a saved result."""
    from trainlab.labs.lab16.decode import ratios, variant_speedups

    pts = data["points"]
    label = f" ({data['label']})" if data.get("label") else ""
    v = ", ".join(f"{x['variant']} {x['kv_heads']} KV heads {x['params'] / 1e6:.2f} M" for x in data["variants"])
    lines = [f"Measured {data['date']} on {data['device']}, torch {data['torch']}, {data['threads']} thread(s), "
             f"{data['dtype']}{label}; load average at the end {data.get('load_average')}. Model: "
             f"{data['layers']} layers, width {data['dim']}, {data['heads']} query heads; variants: {v}. "
             f"{data['new_tokens']} new tokens, {data['repeats']} rounds, greedy tokens of all three equal at "
             "every point (asserted).", "",
             "**Ours / transformers' `generate`** (ratio of tokens/s; > 1: ours faster):", "",
             "| ours | variant | decode steps: min-max (median) | end to end: min-max (median) | CPU time: median |",
             "| --- | --- | --- | --- | --- |"]

    def rng(xs: list[float]) -> str:
        xs = sorted(xs)
        return f"{xs[0]:.2f}-{xs[-1]:.2f}x ({statistics.median(xs):.2f}x)" if xs else "—"

    for num in ("ours-dynamic", "ours-static"):
        for var in [x["variant"] for x in data["variants"]]:
            dec = [r["ratio"] for r in ratios(pts, num, "transformers", "decode_tokens_per_s") if r["variant"] == var]
            e2e = [r["ratio"] for r in ratios(pts, num, "transformers", "tokens_per_s") if r["variant"] == var]
            cpu = [r["ratio"] for r in ratios(pts, num, "transformers", "cpu_tokens_per_s") if r["variant"] == var]
            lines.append(f"| {num} | {var} | {rng(dec)} | {rng(e2e)} | "
                         f"{statistics.median(cpu):.2f}x |" if cpu else f"| {num} | {var} | — | — | — |")
    lines += [""]
    for num in ("ours-dynamic", "ours-static"):
        dec = ratios(pts, num, "transformers", "decode_tokens_per_s")
        e2e = ratios(pts, num, "transformers", "tokens_per_s")
        cpu = ratios(pts, num, "transformers", "cpu_tokens_per_s")
        lines.append(f"Goal (at least transformers' speed): {num} at or above it in {sum(r['ratio'] >= 1 for r in dec)}"
                     f"/{len(dec)} points by decode-step tokens/s, {sum(r['ratio'] >= 1 for r in e2e)}/{len(e2e)} end "
                     f"to end (wall), {sum(r['ratio'] >= 1 for r in cpu)}/{len(cpu)} end to end by CPU time.")
    lines += ["", "**GQA/MQA over MHA** (decode tokens/s, same implementation, same point):", "",
              "| implementation | variant | min-max (median) | at the largest batch x context |",
              "| --- | --- | --- | --- |"]
    for impl in ("ours-static", "ours-dynamic", "transformers"):
        sp = variant_speedups(pts, impl)
        for var in sorted({s["variant"] for s in sp}):
            vals = [s for s in sp if s["variant"] == var]
            big = max(vals, key=lambda s: (s["batch"] * s["context"], s["context"]))
            lines.append(f"| {impl} | {var} | {rng([s['speedup'] for s in vals])} | "
                         f"{big['speedup']:.2f}x (B={big['batch']}, T={big['context']}) |")
    lines += ["", "**Points** (ms per decode step / prefill ms / end-to-end tokens/s):", "",
              "| variant | batch | context | ours-dynamic | ours-static | transformers |",
              "| --- | --- | --- | --- | --- | --- |"]
    index = {(p["variant"], p["batch"], p["context"], p["impl"]): p for p in pts}
    for var, b, t in sorted({(p["variant"], p["batch"], p["context"]) for p in pts},
                            key=lambda k: ([x["variant"] for x in data["variants"]].index(k[0]), k[1], k[2])):
        cells = []
        for impl in ("ours-dynamic", "ours-static", "transformers"):
            p = index.get((var, b, t, impl))
            cells.append("—" if p is None else
                         f"{p['per_token_s'] * 1e3:.2f} / {p['prefill_s'] * 1e3:.0f} / {p['tokens_per_s']:.0f}")
        lines.append(f"| {var} | {b} | {t} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_md(section: str) -> None:
    write_region(
        BENCH_MD, "bench_decode", section,
        heading="## Decoding with a KV cache (`benchmarks/bench_decode.py`)\n\n" + (
            "Ours (the decoder's dynamic cache, and `generate(..., cache=\"static\")`) vs transformers' "
            "`generate` on the exported folder, for MHA and its GQA/MQA conversions of the same size, side by "
            "side in one run. Decode step = the shortest time-stamped step of the best round (one token per "
            "row); end to end = prompt prefill + all new tokens, so long contexts are prefill-bound and the "
            "prefill is the same forward pass in all three. `python benchmarks/bench_decode.py --grid quick "
            "--write-md` regenerates this section.\n\n"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="our decoder's folder (default: the cached quick base model)")
    parser.add_argument("--grid", choices=sorted(GRIDS), default="default")
    parser.add_argument("--batches", type=int, nargs="+")
    parser.add_argument("--batch-context", type=int)
    parser.add_argument("--contexts", type=int, nargs="+")
    parser.add_argument("--context-batch", type=int)
    parser.add_argument("--variants", type=int, nargs="+", help="KV heads of each variant (default: H, H/2, 1)")
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--dtype", choices=["fp32", "bf16", "fp16"], default="fp32")
    parser.add_argument("--label", default="", help='e.g. "under load": printed beside the numbers')
    parser.add_argument("--out", type=Path, help="JSON path (default: benchmarks/results/decode_<device>.json)")
    parser.add_argument("--summary", action="store_true", help="only print (and --write-md) the saved result")
    parser.add_argument("--write-md", action="store_true", help="replace the section in BENCHMARKS.md")
    args = parser.parse_args()
    device, _ = _device_name()
    slug = "".join(c if c.isalnum() else "_" for c in device.lower()).strip("_")[:60]
    out = args.out or RESULTS / f"decode_{slug}.json"
    if args.summary:
        data = json.loads(out.read_text(encoding="utf-8"))
    else:
        data = run(args)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
    section = summary_markdown(data)
    out.with_suffix(".md").write_text(section, encoding="utf-8")
    print(section)
    if args.write_md:
        write_md(section)


if __name__ == "__main__":
    main()
