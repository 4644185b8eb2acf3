"""Lab 1.5, section 1: every attention backend against a float64 reference in fp32/fp16/bf16.

A backend passes when its error is at most twice the naive implementation's in the same
precision (flash-attn's own test criterion; in fp32 round-off below 1e-5 of the largest value).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from trainlab.attention import AttentionBackendError, naive_attention
from trainlab.labs.lab15.presets import DTYPES, Preset, attention_fn, device_backends, fmt_err, make_inputs
from trainlab.results import Table


def exactness(preset: Preset, device: torch.device, seed: int = 0) -> dict[str, Any]:
    """Max/mean |error| of O, dQ, dK, dV against float64 for each backend and dtype (causal, GQA)."""
    backends, skipped = device_backends(device)
    backends = [b for b in backends if b != "naive"]
    backends.insert(backends.index("flash_torch") + 1, "flash_torch[fa1]")
    rows: list[dict[str, Any]] = []
    for dname, dtype in DTYPES.items():
        q, k, v, do = make_inputs(preset.exact_shape, dtype, device, seed)

        def grads(fn: Callable[..., Tensor], q=q, k=k, v=v, do=do, cast: torch.dtype | None = None,
                  ) -> list[Tensor]:
            qq, kk, vv = (t.detach().to(cast or t.dtype).requires_grad_() for t in (q, k, v))
            out = fn(qq, kk, vv, causal=True)
            out.backward(do.to(out.dtype))
            return [t.detach().double() for t in (out, qq.grad, kk.grad, vv.grad)]

        # The reference sees exactly the rounded low-precision inputs, so only the computation differs.
        ref = grads(naive_attention, cast=torch.float64)
        base = grads(naive_attention)
        base_err = [float((a - r).abs().max()) for a, r in zip(base, ref, strict=True)]
        rows.append(_error_row("naive", dname, base, ref, base_err))
        for name in backends:
            try:
                got = grads(attention_fn(name))
            except AttentionBackendError as exc:  # a dtype this backend does not take (flash-attn in fp32)
                rows.append({"backend": name, "dtype": dname, "unsupported": str(exc).split(": ", 1)[-1][:160]})
                continue
            except RuntimeError as exc:  # a kernel that fails on this device/dtype: recorded, not hidden
                rows.append({"backend": name, "dtype": dname, "error": f"{type(exc).__name__}: {exc}"[:160]})
                continue
            rows.append(_error_row(name, dname, got, ref, base_err))
    return {"shape": dict(zip(("batch", "heads", "kv_heads", "seq", "head_dim"), preset.exact_shape, strict=True)),
            "causal": True, "rows": rows, "skipped": skipped}


FP32_TOLERANCE = 1e-5  # relative to the largest reference value: float32 round-off over a few hundred terms


def _error_row(name: str, dtype: str, got: list[Tensor], ref: list[Tensor], base_err: list[float]) -> dict[str, Any]:
    """Errors of one backend; ``passes`` applies flash-attn's criterion (2x naive's error).

    In float32 both errors are round-off of order 1e-7 relative, and which implementation happens to
    round luckier on one element is noise, so a float32 error below ``FP32_TOLERANCE`` (relative to
    the largest reference value) also passes. The low-precision criterion is applied as stated.
    """
    row: dict[str, Any] = {"backend": name, "dtype": dtype}
    ok = True
    for label, a, r, b in zip(("out", "dq", "dk", "dv"), got, ref, base_err, strict=True):
        err = (a - r).abs()
        row[f"{label}_max"] = float(err.max())
        row[f"{label}_mean"] = float(err.mean())
        floor = FP32_TOLERANCE * float(r.abs().max()) if dtype == "fp32" else 0.0
        ok = ok and row[f"{label}_max"] <= max(2 * b, floor) + 1e-12
    row["passes"] = ok
    return row


def _exact_tables(exact: dict[str, Any]) -> list[Table]:
    rows = []
    for r in exact["rows"]:
        if "unsupported" in r:
            rows.append([r["backend"], r["dtype"], f"not supported: {r['unsupported']}", "", "", "", "", "—"])
            continue
        if "error" in r:
            rows.append([r["backend"], r["dtype"], f"failed: {r['error']}", "", "", "", "", "no"])
            continue
        rows.append([r["backend"], r["dtype"], fmt_err(r["out_max"]), fmt_err(r["out_mean"]), fmt_err(r["dq_max"]),
                     fmt_err(r["dk_max"]), fmt_err(r["dv_max"]), "yes" if r["passes"] else "NO"])
    rows += [[name, "all", f"not run: {why}", "", "", "", "", "—"] for name, why in exact["skipped"]]
    s = exact["shape"]
    return [Table(title="1. Exactness against float64 (causal, GQA)",
                  columns=["backend", "dtype", "max |ΔO|", "mean |ΔO|", "max |ΔdQ|", "max |ΔdK|", "max |ΔdV|",
                           "≤ 2× naive"],
                  rows=rows, note=f"B={s['batch']}, Hq={s['heads']}, Hkv={s['kv_heads']}, N={s['seq']}, "
                  f"D={s['head_dim']}; the reference is naive attention in float64 on the same rounded inputs. A "
                  "backend passes when each max error is at most twice naive's in the same dtype (flash-attn's "
                  f"criterion); in fp32 an error below {FP32_TOLERANCE:g} of the largest value (round-off) also "
                  "passes.")]
