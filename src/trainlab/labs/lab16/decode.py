"""Decode speed: prefill latency, per-token latency and tokens/s of MHA, GQA and MQA variants of one model.

For each variant (the cached MHA base model and its GQA/MQA conversions: same width, depth and query
heads, fewer key/value heads), each batch size ``B`` and context length ``T`` (random prompt tokens, no
padding), three implementations continue the same prompts greedily for ``N`` tokens, eos disabled:

* ``ours-dynamic``: ``model.generate(...)``, the decoder's growable :class:`~trainlab.model.cache.KVCache`;
* ``ours-static``: ``model.generate(..., cache="static")`` (:mod:`trainlab.model.static_cache`);
* ``transformers``: ``LlamaForCausalLM.generate(do_sample=False)`` on the exported folder (its default
  dynamic cache and SDPA attention).

Timing: one short warm-up each, then ``repeats`` rounds in which the implementations alternate. A
round is one ``generate`` call of ``N`` tokens whose every step is time-stamped as it happens (our
``on_step`` hook; a logits processor in transformers, called once per step before the token is
chosen): ``prefill`` = start to the first step (the prompt's forward), ``per-token`` = the shortest
interval between steps (one decode step each; ``per_token_median_s`` keeps the median: on a shared
machine the shortest step is the one least disturbed), ``tokens/s = B·N / total`` end to end and
``decode tokens/s = B / per-token``; the process CPU time of the call gives ``cpu tokens/s`` (less
disturbed when other processes share the cores). Over rounds, the best (smallest) of each: the round
least disturbed by other processes on a shared machine. Greedy tokens of every
implementation are compared with ``ours-dynamic``'s (``same_tokens``).
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from trainlab.labs.lab16.presets import Preset, reachable_kv, to_kv_heads, variant_name
from trainlab.model.decoder import Decoder

IMPLS = ("ours-dynamic", "ours-static", "transformers")


def export_to_transformers(model: Decoder, folder: Path) -> Any:
    """``model`` saved in the HF Llama format and loaded by transformers (eos disabled: fixed-length runs)."""
    from transformers import AutoModelForCausalLM

    from trainlab.model import save_pretrained
    from trainlab.model.hf import quiet_transformers

    save_pretrained(model, folder)
    with quiet_transformers():
        hf = AutoModelForCausalLM.from_pretrained(folder, dtype=model.embed.weight.dtype).eval()
    hf.generation_config.eos_token_id = None
    hf.generation_config.pad_token_id = 0
    return hf


class _Stamps:
    """Time of every decode step (a transformers logits processor, and our ``on_step`` hook)."""

    def __init__(self) -> None:
        self.times: list[float] = []

    def __call__(self, *args: Any) -> Any:
        self.times.append(time.perf_counter())
        return args[1] if len(args) == 2 else None  # a logits processor returns the scores


def _runner(impl: str, model: Decoder, hf: Any, ids: torch.Tensor) -> Callable[[int, _Stamps], torch.Tensor]:
    mask = torch.ones_like(ids)
    if impl == "ours-dynamic":
        return lambda n, stamps: model.generate(ids, mask, max_new_tokens=n, on_step=stamps)
    if impl == "ours-static":
        return lambda n, stamps: model.generate(ids, mask, max_new_tokens=n, cache="static", on_step=stamps)
    from transformers import LogitsProcessorList

    return lambda n, stamps: hf.generate(input_ids=ids, attention_mask=mask, max_new_tokens=n, min_new_tokens=n,
                                         do_sample=False, pad_token_id=0,
                                         logits_processor=LogitsProcessorList([stamps]))


def _timed(run: Callable[[int, _Stamps], torch.Tensor], n: int) -> dict[str, Any]:
    stamps = _Stamps()
    c0, t0 = time.process_time(), time.perf_counter()
    with torch.no_grad():
        out = run(n, stamps)
    total, cpu = time.perf_counter() - t0, time.process_time() - c0
    steps = [b - a for a, b in zip(stamps.times, stamps.times[1:], strict=False)]
    return {"out": out, "total": total, "cpu": cpu, "prefill": stamps.times[0] - t0,
            "per_token": min(steps) if steps else float("nan"),
            "per_token_median": statistics.median(steps) if steps else float("nan"), "stamps": len(stamps.times)}


def measure_point(model: Decoder, hf: Any, batch: int, context: int, new_tokens: int, repeats: int, *,
                  impls: tuple[str, ...] = IMPLS, seed: int = 0) -> list[dict[str, Any]]:
    """One (variant, batch, context) point: a row per implementation (see the module docstring)."""
    g = torch.Generator().manual_seed(seed)
    vocab = model.config.vocab_size
    ids = torch.randint(4, vocab, (batch, context), generator=g).to(model.embed.weight.device)
    runs = {name: _runner(name, model, hf, ids) for name in impls if name != "transformers" or hf is not None}
    warm = {name: _runner(name, model, hf, ids[:, -16:]) for name in runs}
    for run in warm.values():  # warm-up (lazy inits, one-time dispatch) on a short prompt: cheap at long contexts
        _timed(run, 2)
    rounds: dict[str, list[dict[str, Any]]] = {n: [] for n in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            rounds[name].append(_timed(run, new_tokens))
    ref = rounds["ours-dynamic"][-1]["out"] if "ours-dynamic" in rounds else None
    rows = []
    for name, rs in rounds.items():
        if rs[-1]["stamps"] != new_tokens:
            raise RuntimeError(f"{name}: {rs[-1]['stamps']} steps time-stamped, expected {new_tokens}")
        med = {k: min(r[k] for r in rs) for k in ("total", "cpu", "prefill", "per_token", "per_token_median")}
        rows.append({"impl": name, "batch": batch, "context": context, "new_tokens": new_tokens,
                     "prefill_s": med["prefill"], "per_token_s": med["per_token"],
                     "per_token_median_s": med["per_token_median"], "total_s": med["total"],
                     "tokens_per_s": batch * new_tokens / med["total"], "decode_tokens_per_s": batch / med["per_token"],
                     "cpu_total_s": med["cpu"], "cpu_tokens_per_s": batch * new_tokens / max(med["cpu"], 1e-9),
                     "same_tokens": None if ref is None else bool(torch.equal(rs[-1]["out"], ref))})
    return rows


def decode_speed(preset: Preset, base: Decoder, *, seed: int = 0, kv_list: list[int] | None = None,
                 log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """The batch sweep (context ``batch_context``) and context sweep (batch ``context_batch``) per variant."""
    heads = base.config.n_heads
    kv_list = kv_list or [k for k in reachable_kv(base) if k in (heads, heads // 2, 1)]
    from trainlab.model.hf import quiet_transformers

    points: list[dict[str, Any]] = []
    variants = []
    with tempfile.TemporaryDirectory(prefix="lab16-hf-") as tmp, quiet_transformers():
        for kv in kv_list:
            model = base if kv == base.config.kv_heads else to_kv_heads(base, kv, "mean", seed=seed)
            name = variant_name(heads, kv)
            variants.append({"variant": name, "kv_heads": kv, "params": model.num_parameters()})
            hf = export_to_transformers(model, Path(tmp) / name) if preset.hf_points != "none" else None
            grid = [(b, preset.batch_context, "batch") for b in preset.batches]
            grid += [(preset.context_batch, t, "context") for t in preset.contexts]
            for b, t, sweep in grid:
                impls = IMPLS if (preset.hf_points == "all" or sweep == "batch") else IMPLS[:2]
                for row in measure_point(model, hf, b, t, preset.new_tokens, preset.repeats, impls=impls, seed=seed):
                    points.append(row | {"variant": name, "kv_heads": kv, "sweep": sweep})
                if log is not None:
                    log(f"decode {name} B={b} T={t}")
            del hf
    return {"variants": variants, "points": points, "new_tokens": preset.new_tokens, "repeats": preset.repeats,
            "threads": torch.get_num_threads(), "heads": heads, "layers": base.config.n_layers,
            "dim": base.config.dim}


def ratios(points: list[dict[str, Any]], num: str, den: str, key: str = "tokens_per_s") -> list[dict[str, Any]]:
    """``num / den`` of ``key`` at every (variant, batch, context) measured for both implementations."""
    index = {(p["variant"], p["batch"], p["context"], p["impl"]): p for p in points}
    out = []
    for (variant, b, t, impl), p in index.items():
        q = index.get((variant, b, t, den))
        if impl == num and q is not None:
            out.append({"variant": variant, "batch": b, "context": t, "ratio": p[key] / q[key]})
    return out


def variant_speedups(points: list[dict[str, Any]], impl: str = "ours-static", key: str = "decode_tokens_per_s"
                     ) -> list[dict[str, Any]]:
    """Each variant's ``key`` over MHA's at the same (batch, context), for ``impl``."""
    index = {(p["variant"], p["batch"], p["context"]): p[key] for p in points if p["impl"] == impl}
    out = []
    for (variant, b, t), v in index.items():
        base = index.get(("MHA", b, t))
        if variant != "MHA" and base:
            out.append({"variant": variant, "batch": b, "context": t, "speedup": v / base})
    return out
