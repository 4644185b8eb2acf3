"""Lab 1.6: multi-head, grouped-query and multi-query attention with a KV cache.

Four parts, each a function usable on its own (the notebooks ``lab16_01..04`` call them):

1. `kv_bytes_part`: the KV-cache formula for published shapes (Llama-2-7B/70B, Mistral-7B) and our
   dynamic and static caches measured during generation against it (`kv_bytes`).
2. `decode_part`: prefill latency, per-token latency and tokens/s over batch size and context length for
   the cached base model (MHA) and its GQA/MQA conversions, ours (dynamic and static cache) beside
   transformers' ``generate`` on the exported folders, same greedy tokens checked (`decode`).
3. `quality_part`: MHA/GQA/MQA decoders trained from scratch with one budget: validation loss, oracle
   accuracy, parameters (`training.quality`).
4. `uptraining_part`: the base model converted to GQA with mean/first/random k/v init, validation loss
   after 0, 1, 5, 10% of its pre-training steps of uptraining, against MHA and GQA from scratch.

Presets: ``tiny`` (tests, seconds), ``quick`` (a 2-core CPU, under a minute, reusing the cached quick base
model), ``full`` (larger grids and longer training). Claims: `claims`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from trainlab.labs import LabContext
from trainlab.labs.common import Part, merge_parts, pinned_threads, show
from trainlab.labs.lab16.claims import kv_claims, quality_claims, speed_claims, uptraining_claims
from trainlab.labs.lab16.decode import decode_speed, ratios
from trainlab.labs.lab16.kv_bytes import TOKENS, analytic_rows, measured_rows
from trainlab.labs.lab16.presets import PRESETS, TITLE, Preset, get_preset, kv_variants, to_kv_heads, variant_name
from trainlab.labs.lab16.training import quality, uptraining
from trainlab.report.plots_lab16 import decode_figures, quality_figure, uptraining_figure
from trainlab.results import LabResult, Table

Rel = Callable[[Path], str]


def _kib(n: float) -> float:
    return round(n / 1024, 1)


def load_base(preset: Preset) -> tuple[Any, Any]:
    """The cached base model of ``preset.base_preset`` (trained once if missing) and its run config."""
    from trainlab.model import load_model
    from trainlab.recipes.base_model import base_model_config, embedded_base_model

    return load_model(embedded_base_model(preset.base_preset)).eval(), base_model_config(preset.base_preset)


def kv_bytes_part(preset: Preset, base: Any, *, seed: int = 0) -> Part:
    analytic, measured = analytic_rows(), measured_rows(preset, base, seed=seed)
    t1 = Table(title=f"KV cache of published shapes (fp16, {TOKENS:,} tokens, batch 1)",
               columns=["model", "attention", "layers", "heads", "KV heads", "head dim", "KiB/token",
                        f"MiB/{TOKENS} tokens", "x smaller than MHA"],
               rows=[[r["model"], r["attention"], r["layers"], r["heads"], r["kv_heads"], r["head_dim"],
                      _kib(r["bytes_per_token"]), round(r["bytes_per_sequence"] / 2**20, 1),
                      round(r["reduction_vs_mha"], 1)] for r in analytic],
               note="2 · layers · kv_heads · head_dim · 2 bytes per token; Llama-2-70B: 320 KiB/token, 1.25 GiB "
                    "at 4,096 tokens (10 GiB as MHA)")
    t2 = Table(title="Our KV caches measured during generation vs the formula",
               columns=["variant", "KV heads", "cache", "batch", "tokens", "measured bytes", "formula bytes",
                        "equal", "buffer bytes (capacity)"],
               rows=[[r["variant"], r["kv_heads"], r["cache"], r["batch"], r["tokens"], r["measured_bytes"],
                      r["formula_bytes"], r["equal"], r["buffer_bytes"]] for r in measured])
    return Part(key="kv_bytes", title="KV-cache bytes", claims=kv_claims(analytic, measured), tables=[t1, t2],
                summary=[f"KV cache measured = formula in {sum(r['equal'] for r in measured)}/{len(measured)} cases."],
                data={"analytic": analytic, "measured": measured})


def decode_tables(decode: dict[str, Any]) -> list[Table]:
    pts = decode["points"]
    rows = [[p["variant"], p["sweep"], p["batch"], p["context"], p["impl"], round(p["prefill_s"] * 1e3, 2),
             round(p["per_token_s"] * 1e3, 3), round(p["tokens_per_s"], 1), round(p["decode_tokens_per_s"], 1),
             round(p["cpu_tokens_per_s"], 1), p["same_tokens"]] for p in pts]
    t1 = Table(title="Decode speed (best of the rounds)",
               columns=["variant", "sweep", "batch", "context", "implementation",
               "prefill ms", "ms/token", "tokens/s end to end", "decode tokens/s", "CPU-time tokens/s",
               "same greedy tokens"], rows=rows,
               note=f"{decode['new_tokens']} new tokens per row, {decode['repeats']} rounds, "
                    f"{decode['threads']} thread(s); end to end includes the prefill")
    comp = []
    for num in ("ours-dynamic", "ours-static"):
        for r in ratios(pts, num, "transformers", "decode_tokens_per_s"):
            e2e = next(x for x in ratios(pts, num, "transformers", "tokens_per_s")
                       if (x["variant"], x["batch"], x["context"]) == (r["variant"], r["batch"], r["context"]))
            cpu = next(x for x in ratios(pts, num, "transformers", "cpu_tokens_per_s")
                       if (x["variant"], x["batch"], x["context"]) == (r["variant"], r["batch"], r["context"]))
            comp.append([num, r["variant"], r["batch"], r["context"], round(r["ratio"], 2), round(e2e["ratio"], 2),
                         round(cpu["ratio"], 2)])
    t2 = Table(title="Ours / transformers' generate (same model, same greedy tokens)",
               columns=["ours", "variant", "batch", "context", "decode tokens/s ratio", "end-to-end ratio",
                        "CPU-time ratio"], rows=comp)
    return [t1, t2, anchor_table(decode)]


#: Ainslie et al. 2023 (arXiv 2305.13245), table 1: T5-XXL inference time per sample (TPUv4)
GQA_PAPER_SECONDS = {"MHA": 1.51, "GQA-8": 0.28, "MQA": 0.24}


def anchor_table(decode: dict[str, Any]) -> Table:
    """The GQA paper's T5-XXL speed-ups beside ours (static cache, the point with the largest KV cache)."""
    from trainlab.labs.lab16.decode import variant_speedups

    sp = variant_speedups(decode["points"], "ours-static")
    rows = [["MHA", GQA_PAPER_SECONDS["MHA"], 1.0, 1.0, ""]]
    for name in ("GQA-8", "MQA"):
        ours_name = "MQA" if name == "MQA" else next((s["variant"] for s in sp if s["variant"].startswith("GQA")), None)
        vals = [s for s in sp if s["variant"] == ours_name]
        big = max(vals, key=lambda s: (s["batch"] * s["context"], s["context"])) if vals else None
        rows.append([name, GQA_PAPER_SECONDS[name], round(GQA_PAPER_SECONDS["MHA"] / GQA_PAPER_SECONDS[name], 2),
                     round(big["speedup"], 2) if big else None,
                     f"{ours_name} at B={big['batch']}, T={big['context']}" if big else "not measured"])
    return Table(title="Published anchor: the GQA paper's T5-XXL (s per sample) beside our decode speed-ups",
                 columns=["attention", "paper s/sample", "paper speed-up vs MHA", "ours: decode speed-up vs MHA",
                          "ours: where"], rows=rows,
                 note="T5-XXL (11B, 64 heads) on TPUv4 in the paper; here a small model on this machine, so the "
                      "weights, not the KV cache, are most of the bytes a step reads")


def decode_summary(decode: dict[str, Any]) -> list[str]:
    pts = decode["points"]
    out = []
    for num in ("ours-dynamic", "ours-static"):
        rs = sorted(r["ratio"] for r in ratios(pts, num, "transformers", "tokens_per_s"))
        if rs:
            out.append(f"{num} vs transformers' generate, end-to-end tokens/s: {rs[0]:.2f}-{rs[-1]:.2f}x "
                       f"(median {rs[len(rs) // 2]:.2f}x over {len(rs)} points).")
    same = [p["same_tokens"] for p in pts if p["same_tokens"] is not None]
    out.append(f"Greedy tokens equal to ours-dynamic's in {sum(same)}/{len(same)} runs.")
    return out


def decode_part(preset: Preset, base: Any, out_dir: Path, rel: Rel, hw: str, *, seed: int = 0,
                device: torch.device | str = "cpu") -> Part:
    with pinned_threads(device, preset.cpu_threads):
        decode = decode_speed(preset, base, seed=seed)
    return Part(key="decode", title="Decode speed: MHA vs GQA vs MQA, ours vs transformers",
                summary=decode_summary(decode), claims=speed_claims(decode, hw), tables=decode_tables(decode),
                figures=decode_figures(out_dir, rel, decode), data=decode)


def quality_part(preset: Preset, base_cfg: Any, data: Any, out_dir: Path, rel: Rel, *, seed: int = 0) -> Part:
    q = quality(preset, base_cfg, data, out_dir / "quality", seed=seed)
    t = Table(title=f"Quality with one budget ({q['steps']} steps x {q['batch']} x {q['seq_len']} tokens, "
                    f"dim {q['dim']}, {q['layers']} layers, {q['heads']} query heads)",
              columns=["variant", "KV heads", "parameters", "attention parameters", "KV bytes/token (fp32)",
                       "validation loss", "oracle accuracy", "train s"],
              rows=[[r["variant"], r["kv_heads"], r["params"], r["attention_params"], r["kv_bytes_per_token"],
                     round(r["val_loss"], 4), round(r["accuracy"], 3), round(r["train_time_s"], 1)] for r in q["rows"]],
              note=f"oracle accuracy on {q['eval_problems']} held-out task problems (greedy); one seed")
    return Part(key="quality", title="Quality: MHA, GQA and MQA trained alike", claims=quality_claims(q), tables=[t],
                figures=quality_figure(out_dir, rel, q), data=q)


def uptraining_part(preset: Preset, base_cfg: Any, base: Any, data: Any, out_dir: Path, rel: Rel, *,
                    seed: int = 0) -> Part:
    up = uptraining(preset, base_cfg, base, data, out_dir / "uptraining", seed=seed)
    cols = ["init", *[f"{s} steps ({100 * f:g}%)" for s, f in zip(up["steps"], up["fractions"], strict=True)]]
    rows = [[init, *[round(v, 4) for v in ys]] for init, ys in up["curves"].items()]
    ref = [[f"{up['base_variant']} base model", round(up["mha_val_loss"], 4)]]
    if up["scratch_val_loss"] is not None:
        ref.append([f"{up['variant']} from scratch, {up['scratch_steps']} steps", round(up["scratch_val_loss"], 4)])
    t1 = Table(title=f"Validation loss of {up['base_variant']} -> {up['variant']} ({up['base_kv_heads']} -> "
                     f"{up['kv_heads']} KV heads) by "
                     "uptraining steps", columns=cols, rows=rows,
               note=f"constant lr {up['lr']:.2g}; pre-training had {up['pretrain_steps']} steps")
    t2 = Table(title="Reference models", columns=["model", "validation loss"], rows=ref)
    return Part(key="uptraining", title="MHA -> GQA conversion and uptraining", claims=uptraining_claims(up),
                tables=[t1, t2], figures=uptraining_figure(out_dir, rel, up), data=up)


def _timed_part(fn: Callable[[], Part]) -> Part:
    start = time.perf_counter()
    part = fn()
    part.wall_time_s = time.perf_counter() - start
    return part


def run(ctx: LabContext) -> LabResult:
    from trainlab.data.embedded import build_pretraining_data

    cpu0 = time.process_time()
    preset = get_preset(ctx.preset)
    base, base_cfg = load_base(preset)
    base = base.to(ctx.device)
    hw = ctx.env.short()
    parts = [_timed_part(lambda: kv_bytes_part(preset, base, seed=ctx.seed)),
             _timed_part(lambda: decode_part(preset, base, ctx.out_dir, ctx.rel, hw, seed=ctx.seed, device=ctx.device))]
    data = build_pretraining_data(base_cfg.data)
    parts.append(_timed_part(lambda: quality_part(preset, base_cfg, data, ctx.out_dir, ctx.rel, seed=ctx.seed)))
    parts.append(_timed_part(lambda: uptraining_part(preset, base_cfg, base, data, ctx.out_dir, ctx.rel,
                                                     seed=ctx.seed)))
    merged = merge_parts(parts)
    summary = [f"Base model: {base.config.n_layers} layers, width {base.config.dim}, {base.config.n_heads} heads "
               f"({base.num_parameters():,} parameters), the cached '{preset.base_preset}' base model.",
               *merged["summary"],
               f"CPU time of the lab process: {time.process_time() - cpu0:.1f} s (all threads; on a busy machine the "
               "wall time is longer, on a quiet one about this or less with 2 threads)."]
    return LabResult(lab="lab16", title=TITLE, preset=ctx.preset, device=ctx.device, seed=ctx.seed,
                     config={"preset": asdict(preset)}, summary=summary, claims=merged["claims"],
                     tables=merged["tables"], figures=merged["figures"],
                     data=merged["data"] | {"cpu_time_s": time.process_time() - cpu0})


__all__ = ["PRESETS", "Preset", "decode_part", "decode_speed", "decode_tables", "get_preset", "kv_bytes_part",
           "kv_variants", "load_base", "quality_part", "run", "show", "to_kv_heads", "uptraining_part",
           "variant_name"]
