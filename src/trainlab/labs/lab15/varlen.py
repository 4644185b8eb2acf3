"""Lab 1.5, section 6: packed variable-length batches vs padded ones: same outputs and gradients on
real tokens, tokens/s of forward+backward for both layouts.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from trainlab.attention import attention
from trainlab.attention.varlen import pack, unpack, varlen_attention
from trainlab.bench import time_fn
from trainlab.labs.lab15.presets import Preset, flash_backend
from trainlab.results import Table


def packed_vs_padded(preset: Preset, device: torch.device, seed: int = 0) -> dict[str, Any]:
    """Same outputs and gradients on real tokens; tokens/s of forward+backward for both layouts."""
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    lengths = list(preset.varlen_lengths)
    bsz, tmax, h, d = len(lengths), max(lengths), preset.varlen_heads, preset.varlen_head_dim
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(bsz, tmax, 3, h, d, generator=g).to(device=device, dtype=dtype)  # q, k, v per token
    mask = torch.zeros(bsz, tmax, dtype=torch.bool, device=device)
    for i, n in enumerate(lengths):
        mask[i, :n] = True  # right padding
    dout = torch.randn(bsz, tmax, h, d, generator=g).to(device=device, dtype=dtype) * mask[..., None, None]
    flash = flash_backend(device)
    real = int(mask.sum())

    def padded(backend: str) -> Callable[[], tuple[Tensor, Tensor]]:
        def run() -> tuple[Tensor, Tensor]:
            xx = x.detach().requires_grad_()
            q, k, v = (xx[:, :, i].transpose(1, 2) for i in range(3))  # [B, H, T, D]
            out = attention(q, k, v, causal=True, key_padding_mask=mask, backend=backend).transpose(1, 2)
            out.backward(dout)
            return out.detach(), xx.grad  # type: ignore[return-value]
        return run

    packed_x, cu, max_len = pack(x, mask)
    packed_do, _, _ = pack(dout, mask)

    def packed() -> tuple[Tensor, Tensor]:
        xx = packed_x.detach().requires_grad_()
        out = varlen_attention(xx[:, 0], xx[:, 1], xx[:, 2], cu, cu, max_len, max_len, causal=True,
                               backend="flash_torch" if flash == "flash_torch" else "auto")
        out.backward(packed_do)
        return unpack(out.detach(), mask), unpack(xx.grad, mask)  # type: ignore[arg-type]

    runs = {f"padded ({flash})": padded(flash), "padded (sdpa)": padded("sdpa"), f"packed ({flash})": packed}
    ref_out, ref_grad = runs[f"padded ({flash})"]()
    rows = []
    for name, fn in runs.items():
        out, grad = fn()
        timing = time_fn(fn, device=device, warmup=preset.warmup, repeats=preset.repeats, max_time_s=preset.max_time_s)
        rows.append({"layout": name, "fwd_bwd_s": timing.median_s, "tokens_per_s": real / timing.median_s,
                     "max_abs_diff_out": float((out - ref_out)[mask].abs().max()),
                     "max_abs_diff_grad": float((grad - ref_grad)[mask].abs().max())})
    return {"lengths": lengths, "real_tokens": real, "padded_tokens": bsz * tmax, "padding_fraction":
            1 - real / (bsz * tmax), "heads": h, "head_dim": d, "dtype": str(dtype).removeprefix("torch."),
            "rows": rows}


def _varlen_tables(v: dict[str, Any]) -> list[Table]:
    rows = [[r["layout"], r["fwd_bwd_s"] * 1e3, r["tokens_per_s"], f"{r['max_abs_diff_out']:.1e}",
             f"{r['max_abs_diff_grad']:.1e}"] for r in v["rows"]]
    return [Table(title=f"6. Packed variable-length vs padded batch (forward+backward, causal, {v['dtype']})",
                  columns=["layout", "ms", "real tokens/s", "max |Δout| vs padded", "max |Δgrad| vs padded"],
                  rows=rows, note=f"{len(v['lengths'])} sequences of lengths {v['lengths']}: {v['real_tokens']} real "
                  f"tokens in a {v['padded_tokens']}-token padded batch ({v['padding_fraction']:.0%} padding).")]
