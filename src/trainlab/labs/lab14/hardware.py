"""Why 16-bit compute is (or is not) faster here: matmul speeds measured, then explained.

Whether bf16/fp16 beat fp32 depends on the hardware *and* on the matrix size: native 16-bit
instructions (GPU tensor cores, AMX / AVX512-BF16 on a CPU) win on large matmuls, while on small
ones the conversions autocast adds (each input and weight cast to 16 bits) and the kernels' fixed
costs can make 16-bit slower than fp32. So the lab times a small and a large square matmul in each
precision on this device (`measure_matmul_speeds`) and `why_hardware` explains the lab's speed-up
from those numbers and the lab models' width, never from a capability flag alone.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from trainlab.bench import time_fn
from trainlab.env import EnvInfo

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def measure_matmul_speeds(device: torch.device, sizes: Sequence[int] = (64, 1024), *, repeats: int = 3,
                          max_time_s: float = 1.0, seed: int = 0) -> dict[str, Any]:
    """Median seconds of an ``n x n @ n x n`` matmul per precision and size, and the speed-up over fp32.

    Small sizes are timed as a loop of matmuls (so one timed call is long enough to measure); the
    reported time is per matmul. ``speedup[dtype][n] = t_fp32 / t_dtype`` (> 1: faster than fp32).
    """
    g = torch.Generator().manual_seed(seed)
    seconds: dict[str, dict[int, float]] = {k: {} for k in DTYPES}
    for n in sizes:
        a32, b32 = torch.randn(n, n, generator=g), torch.randn(n, n, generator=g)
        inner = max(1, (256 // n) ** 3)
        for name, dtype in DTYPES.items():
            a, b = a32.to(device=device, dtype=dtype), b32.to(device=device, dtype=dtype)

            def loop(a: torch.Tensor = a, b: torch.Tensor = b, inner: int = inner) -> None:
                for _ in range(inner):
                    torch.mm(a, b)

            seconds[name][n] = time_fn(loop, device=device, warmup=1, repeats=repeats,
                                         max_time_s=max_time_s).median_s / inner
    speedup = {k: {n: seconds["fp32"][n] / v[n] for n in sizes} for k, v in seconds.items() if k != "fp32"}
    return {"device": str(device), "sizes": list(sizes), "seconds": seconds, "speedup": speedup}


def _ratio(x: float, vs: str = "") -> str:
    """A speed-up as prose: "3.1x faster (than fp32)", "2.0x slower", "about as fast (as fp32)"."""
    if not math.isfinite(x) or x <= 0:
        return "n/a"
    if 0.9 <= x <= 1.1:
        return "about as fast" + (f" as {vs}" if vs else "")
    word = f"{x:.1f}x faster" if x > 1 else f"{1 / x:.1f}x slower"
    return word + (f" than {vs}" if vs else "")


def native_support(env: EnvInfo) -> str:
    """What the hardware reports about native 16-bit matmuls (a fact beside the measurement)."""
    if env.device == "cuda":
        return (f"{env.gpu_name} (sm_{env.compute_capability}): native bf16 "
                f"{'yes' if env.bf16_native else 'no'}, native fp16 {'yes' if env.fp16_native else 'no'}")
    return (f"this CPU reports native bf16 matmul instructions: {'yes' if env.bf16_native else 'no'} "
            f"(AVX512-BF16/AMX), native fp16: {'yes' if env.fp16_native else 'no'} (AMX-FP16/AVX512-FP16)")


def why_hardware(env: EnvInfo, speeds: dict[str, Any] | None, width: int) -> str:
    """Why 16-bit training is (not) faster here, from the measured matmul speeds.

    ``speeds`` is `measure_matmul_speeds`' result (keys may be str after JSON); ``width`` the lab
    models' hidden size, which decides which of the measured sizes their matmuls resemble.
    """
    head = f"measured on {env.short()}"
    if not speeds:
        return f"{head}; {native_support(env)}"
    sizes = sorted(int(n) for n in speeds["sizes"])
    small, large = sizes[0], sizes[-1]

    def get(dtype: str, n: int) -> float:
        per = speeds["speedup"][dtype]
        return float(per.get(n, per.get(str(n), float("nan"))))

    facts = [f"a {large}² {d} matmul runs {_ratio(get(d, large), 'fp32')}, a {small}² one {_ratio(get(d, small))}"
             for d in ("bf16", "fp16")]
    # The lab's matmuls resemble the measured size closest to its width (on a log scale).
    near = min(sizes, key=lambda n: abs(math.log(n) - math.log(max(width, 1))))
    fast = [d for d in ("bf16", "fp16") if get(d, near) > 1.1]
    slow = [d for d in ("bf16", "fp16") if get(d, near) < 0.9]
    lab = f"the lab's width-{width} models multiply matrices like the {near}² ones"
    if fast:
        verdict = f"{lab}, where {' and '.join(fast)} {'is' if len(fast) == 1 else 'are'} faster than fp32"
    elif slow:
        verdict = f"{lab}, where {' and '.join(slow)} {'is' if len(slow) == 1 else 'are'} slower than fp32"
    else:
        verdict = f"{lab}, where 16-bit and fp32 run at about the same speed"
    reasons = []
    for d in slow:
        if near != large and get(d, large) > 1.1:
            reasons.append(f"{d} is faster only on large matrices, so the lab's small models, not the hardware, "
                           f"make {d} slow here")
        elif get(d, large) < 0.9:
            reasons.append(f"{d} is slower at every size measured: this device has no fast {d} matmul")
    return f"{head}: {'; '.join(facts)} ({native_support(env)}); {verdict}" + \
        ("" if not reasons else ": " + "; ".join(reasons))


__all__ = ["measure_matmul_speeds", "native_support", "why_hardware"]
