"""``scripts/gpu_check.sh``'s summary.json -> the GPU rows of BENCHMARKS.md, with the device's name.

    python scripts/gpu_results.py OUT/summary.json                      # print the Markdown
    python scripts/gpu_results.py OUT/summary.json --write BENCHMARKS.md --results-dir docs/results

``--write`` replaces what lies between ``<!-- gpu_check:begin -->`` and ``<!-- gpu_check:end -->`` in the
file (the section is added at the end when the markers are missing); ``--results-dir`` keeps a copy of the
summary as ``gpu_check_<device>.json``. A dry run's summary (``--dry-run``: the CPU, Triton's interpreter) is
refused unless ``--allow-dry-run`` (the tests use it): its numbers are no GPU's.

Rendered: the headline the issue asks for (our Triton kernel beside SDPA's FlashAttention-2 backend, bf16,
d=128, causal, N=8K, forward and forward+backward, with the goal: >= its forward and >= 0.9x its
forward+backward), the reduced grid (every backend, d 64/128, causal or not, N 1K-16K), correctness (the
pytest file on the device and the float64 checks per dtype), the tile sweep (default vs best), the labs and
the alignment benchmark, and every step's status and wall time.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

BEGIN, END = "<!-- gpu_check:begin -->", "<!-- gpu_check:end -->"
HEADLINE = {"dtype": "bfloat16", "head_dim": 128, "causal": True, "seq": 8192}


def _f(x: Any, digits: int = 3) -> str:
    return f"{x:.{digits}g}" if isinstance(x, int | float) else "—"


def _row(rows: list[dict[str, Any]], backend: str, **match: Any) -> dict[str, Any] | None:
    for r in rows:
        if r.get("backend") == backend and all(r.get(k) == v for k, v in match.items()) and r.get("kv_heads") \
                == r.get("heads"):
            return r
    return None


def headline(rows: list[dict[str, Any]]) -> list[str]:
    ours, flash = _row(rows, "triton", **HEADLINE), _row(rows, "sdpa:flash", **HEADLINE)
    fa = _row(rows, "flash_attn", **HEADLINE)
    if ours is None or flash is None:
        return ["Headline (bf16, d=128, causal, N=8K): not in this run's grid."]
    lines = ["| bf16, d=128, causal, N=8K | fwd TFLOP/s | fwd+bwd TFLOP/s | fwd vs SDPA flash | "
             "fwd+bwd vs SDPA flash |", "| --- | --- | --- | --- | --- |"]
    for name, r in (("trainlab Triton", ours), ("SDPA flash (FlashAttention-2)", flash), ("flash-attn", fa)):
        if r is None or "skipped" in r:
            continue
        rf = r.get("fwd_tflops", 0) / flash["fwd_tflops"] if flash.get("fwd_tflops") else None
        rb = r.get("fwd_bwd_tflops", 0) / flash["fwd_bwd_tflops"] if flash.get("fwd_bwd_tflops") else None
        lines.append(f"| {name} | {_f(r.get('fwd_tflops'))} | {_f(r.get('fwd_bwd_tflops'))} | "
                     f"{_f(rf)}x | {_f(rb)}x |")
    if "fwd_tflops" in ours and "fwd_tflops" in flash and "fwd_bwd_tflops" in ours and "fwd_bwd_tflops" in flash:
        fwd_ok = ours["fwd_tflops"] >= flash["fwd_tflops"]
        bwd_ok = ours["fwd_bwd_tflops"] >= 0.9 * flash["fwd_bwd_tflops"]
        lines += ["", f"Goal (>= SDPA flash forward, >= 0.9x its forward+backward): forward "
                      f"{'met' if fwd_ok else 'not met'}, forward+backward {'met' if bwd_ok else 'not met'}."]
    return lines


def grid(rows: list[dict[str, Any]]) -> list[str]:
    backends = list(dict.fromkeys(r["backend"] for r in rows))
    shown = [b for b in backends if any("skipped" not in r for r in rows if r["backend"] == b)]
    skipped = {b: next(r["skipped"] for r in rows if r["backend"] == b) for b in backends if b not in shown}
    lines = [f"- skipped `{b}`: {why}" for b, why in skipped.items()]
    lines += ["", "fwd / fwd+bwd TFLOP/s:", "",
              "| D | causal | N | " + " | ".join(shown) + " |", "| --- | --- | --- |" + " --- |" * len(shown)]
    keys = sorted({(r["head_dim"], r["causal"], r["seq"]) for r in rows})
    for d, causal, n in keys:
        cells = []
        for b in shown:
            r = _row(rows, b, head_dim=d, causal=causal, seq=n)
            if r is None:
                cells.append("")
            elif "skipped" in r:
                cells.append("skipped")
            else:
                cells.append(f"{_f(r.get('fwd_tflops'))} / {_f(r.get('fwd_bwd_tflops'))}")
        lines.append(f"| {d} | {'yes' if causal else 'no'} | {n} | " + " | ".join(cells) + " |")
    return lines


def correctness(res: dict[str, Any]) -> list[str]:
    lines = []
    tests = res.get("attention_tests")
    if tests:
        lines.append(f"- `tests/test_flash_triton.py` on the device: {tests['passed']} passed, {tests['failures']} "
                     f"failed, {tests['errors']} errors, {tests['skipped']} skipped"
                     + (f" (failed: {', '.join(tests['failed_tests'])})" if tests["failed_tests"] else ""))
    check = res.get("attention_check")
    if check:
        by: dict[str, list[bool]] = {}
        for r in check["rows"]:
            by.setdefault(str(r["dtype"]), []).append(bool(r["ok"]))
        parts = [f"{dt} {sum(v)}/{len(v)}" for dt, v in by.items()]
        failed = [f"{r['case']} {r['dtype']}" for r in check["rows"] if not r["ok"]]
        lines.append("- `benchmarks/attention_check.py` (forward and backward vs float64, within 2x the naive "
                     "formula's error in the same dtype): " + ", ".join(parts)
                     + (f"; failed: {', '.join(failed)}" if failed else ""))
    return lines


def sweep(res: dict[str, Any]) -> list[str]:
    doc = res.get("tile_sweep")
    if not doc:
        return []
    lines = ["| shape | kind | default (block_m, block_n, warps, stages) | TFLOP/s | best | TFLOP/s |",
             "| --- | --- | --- | --- | --- | --- |"]
    for s in doc.get("shapes", []):
        sh = s["shape"]
        label = f"{sh['dtype']} d={sh['head_dim']} N={sh['seq']} B×H={sh['batch']}×{sh['heads']}"
        for kind in ("fwd", "fwd_bwd"):
            default = next((r for r in s["rows"] if r["kind"] == kind and r.get("default")), None)
            best = s.get(f"best_{kind}")
            key = "fwd_config" if kind == "fwd" else "bwd_config"
            lines.append(f"| {label} | {kind} | {default and default[key]} | {_f(default and default.get('tflops'))} | "
                         f"{best and best[key]} | {_f(best and best.get('tflops'))} |")
    return lines


def align(res: dict[str, Any]) -> list[str]:
    doc = res.get("bench_align")
    if not doc:
        return []
    lines = [f"Shape `{doc.get('shape')}`, batch {doc.get('batch')}, {doc.get('steps')} steps, vocabulary "
             f"{doc.get('vocab')}:", "", "| case | pairs/s | peak memory (MiB) |", "| --- | --- | --- |"]
    for r in doc.get("runs", []):
        peak = r.get("peak_bytes")
        lines.append(f"| {r['case']} | {_f(r.get('samples_per_s'))} | "
                     f"{_f(peak / 2**20 if isinstance(peak, int | float) else None)} |")
    return lines


def render(summary: dict[str, Any]) -> str:
    res = summary.get("results", {})
    env = res.get("env", {})
    device = env.get("device", summary.get("device", "?"))
    what = "dry run on the CPU (Triton interpreter): not GPU numbers" if summary.get("dry_run") else "GPU run"
    out = [BEGIN, f"### {device} (`scripts/gpu_check.sh`, {summary.get('started_at', '?')}; {what})", "",
           f"torch {env.get('torch', '?')}, CUDA {env.get('cuda')}, Triton {env.get('triton', '?')}, flash-attn "
           f"{env.get('flash_attn', '?')}" + (f"; {env['nvidia_smi']}" if env.get("nvidia_smi") else "") + ".", ""]
    bench = res.get("bench_attention")
    if bench:
        out += [*headline(bench["rows"]), "", *grid(bench["rows"]), ""]
    out += ["Correctness on the device:", "", *correctness(res), ""]
    if res.get("tile_sweep"):
        out += ["Tile sweep (`benchmarks/tile_sweep.py`):", "", *sweep(res), ""]
    if res.get("labs"):
        out += ["Labs: " + ", ".join(f"{r['lab']} {r['status']} in {_f(r.get('wall_time_s'))} s" for r in res["labs"]),
                ""]
    if res.get("bench_align"):
        out += ["Alignment trainers (`benchmarks/bench_align.py`):", "", *align(res), ""]
    out += ["| step | status | wall s |", "| --- | --- | --- |"]
    out += [f"| {s['name']} | {s['status']} | {_f(s.get('wall_s'))} |" for s in summary.get("steps", [])]
    out.append(END)
    return "\n".join(out) + "\n"


def write(path: Path, block: str) -> None:
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        text = head + block.rstrip("\n") + rest.split(END, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + block
    path.write_text(text, encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("summary", type=Path)
    parser.add_argument("--write", type=Path, default=None, help="the Markdown file whose gpu_check block to replace")
    parser.add_argument("--results-dir", type=Path, default=None, help="keep a copy of the summary there")
    parser.add_argument("--allow-dry-run", action="store_true")
    args = parser.parse_args(argv)
    summary = json.loads(args.summary.read_text(encoding="utf-8"))
    if summary.get("dry_run") and not args.allow_dry_run and (args.write or args.results_dir):
        parser.error("this summary is a dry run (CPU, Triton interpreter): its numbers are not a GPU's")
    block = render(summary)
    if args.write:
        write(args.write, block)
    if args.results_dir:
        device = summary.get("results", {}).get("env", {}).get("device", "unknown")
        slug = re.sub(r"[^a-z0-9]+", "_", str(device).lower()).strip("_")[:60]
        args.results_dir.mkdir(parents=True, exist_ok=True)
        (args.results_dir / f"gpu_check_{slug}.json").write_text(json.dumps(summary, indent=2) + "\n",
                                                                   encoding="utf-8")
    sys.stdout.write(block)
    return 0


if __name__ == "__main__":
    sys.exit(main())
