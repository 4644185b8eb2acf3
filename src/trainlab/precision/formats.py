"""Floating-point formats used in training: what each can represent, derived from its bit layout.

A binary floating-point number with ``e`` exponent bits and ``m`` stored mantissa bits, exponent
bias ``b = 2^(e-1) - 1``, is (IEEE 754-2008)::

    normal:     (-1)^s · 1.f · 2^(E - b),   1 <= E <= E_max      (f: the m stored bits)
    subnormal:  (-1)^s · 0.f · 2^(1 - b),   E = 0

so, with ``E_max = 2^e - 2`` when the all-ones exponent is reserved for inf/NaN (IEEE):

    largest finite      (2 - 2^-m) · 2^(E_max - b)
    smallest normal     2^(1 - b)
    smallest subnormal  2^(1 - b - m)
    machine epsilon     2^-m                       (the gap between 1 and the next number)
    decimal digits      (m + 1) · log10(2)          (the significand has m + 1 bits)

fp32 (e8 m23), fp16 (e5 m10) and bf16 (e8 m7; Kalamkar et al., 2019, "A Study of BFLOAT16 for Deep
Learning Training") follow that rule. Of the two fp8 formats (Micikevicius et al., 2022, "FP8
Formats for Deep Learning"), e5m2 is IEEE-like, while e4m3 ("fn": finite, no inf) gives the
all-ones exponent to ordinary numbers and keeps only mantissa ``111`` of it for NaN, so its largest
value is ``1.75 · 2^8 = 448``.

Why it matters for training (Micikevicius et al., 2018, "Mixed Precision Training"): fp16 has the
same number of significand bits as it needs, but its 5-bit exponent cannot reach the small
magnitudes of many gradients; everything below half the smallest subnormal (2^-25 ≈ 3e-8) rounds
to zero. Multiplying the loss by a scale ``S`` shifts every gradient up by ``log2 S`` binades
before the cast, which is what `underflow_report` measures on a real gradient. bf16 keeps fp32's
exponent, so it needs no scaling, at the price of 3 fewer significand bits than fp16.

The tests check every derived value against ``torch.finfo`` and against actual casts.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from trainlab.errors import UserError


@dataclass(frozen=True)
class FloatFormat:
    """A binary floating-point format given by its bit layout (see the module docstring)."""

    name: str
    exponent_bits: int
    mantissa_bits: int
    torch_dtype: str  # attribute of ``torch`` holding the dtype, e.g. "float16"
    ieee_special: bool = True  # all-ones exponent reserved for inf/NaN (False for fp8 e4m3fn)
    note: str = ""

    @property
    def bits(self) -> int:
        return 1 + self.exponent_bits + self.mantissa_bits

    @property
    def bias(self) -> int:
        return 2 ** (self.exponent_bits - 1) - 1

    @property
    def max_exponent(self) -> int:
        """The unbiased exponent of the largest finite number."""
        top = 2**self.exponent_bits - (2 if self.ieee_special else 1)
        return top - self.bias

    @property
    def max(self) -> float:
        # e4m3fn: the all-ones exponent holds numbers, but mantissa 1...1 there is NaN, so the
        # largest significand is 2 - 2^(1-m) instead of 2 - 2^-m.
        frac = 2.0 - 2.0 ** -self.mantissa_bits if self.ieee_special else 2.0 - 2.0 ** (1 - self.mantissa_bits)
        return math.ldexp(frac, self.max_exponent)

    @property
    def min_normal(self) -> float:
        return math.ldexp(1.0, 1 - self.bias)

    @property
    def min_subnormal(self) -> float:
        return math.ldexp(1.0, 1 - self.bias - self.mantissa_bits)

    @property
    def eps(self) -> float:
        return math.ldexp(1.0, -self.mantissa_bits)

    @property
    def decimal_digits(self) -> float:
        return (self.mantissa_bits + 1) * math.log10(2.0)

    @property
    def has_inf(self) -> bool:
        return self.ieee_special

    @property
    def dtype(self) -> torch.dtype | None:
        """The torch dtype, or None when this torch build lacks it."""
        return getattr(torch, self.torch_dtype, None)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "bits": self.bits, "exponent_bits": self.exponent_bits,
            "mantissa_bits": self.mantissa_bits, "bias": self.bias, "max": self.max,
            "min_normal": self.min_normal, "min_subnormal": self.min_subnormal, "eps": self.eps,
            "decimal_digits": round(self.decimal_digits, 2), "has_inf": self.has_inf,
            "torch_dtype": f"torch.{self.torch_dtype}", "note": self.note,
        }


FORMATS: dict[str, FloatFormat] = {f.name: f for f in [
    FloatFormat("fp32", 8, 23, "float32", note="the reference; master weights and optimizer states"),
    FloatFormat("fp16", 5, 10, "float16", note="needs loss scaling: small gradients underflow"),
    FloatFormat("bf16", 8, 7, "bfloat16", note="fp32's range, 3 decimal digits fewer; no loss scaling"),
    FloatFormat("fp8_e4m3", 4, 3, "float8_e4m3fn", ieee_special=False,
                note="no inf; forward activations/weights in FP8 training (Micikevicius et al. 2022)"),
    FloatFormat("fp8_e5m2", 5, 2, "float8_e5m2", note="fp16's range with 2 mantissa bits; gradients in FP8 training"),
]}

_ALIASES = {"float32": "fp32", "float": "fp32", "float16": "fp16", "half": "fp16", "bfloat16": "bf16",
            "e4m3": "fp8_e4m3", "fp8": "fp8_e4m3", "e5m2": "fp8_e5m2"}


def get_format(name: str) -> FloatFormat:
    """A format by name (``fp32``, ``fp16``, ``bf16``, ``fp8_e4m3``, ``fp8_e5m2`` or an alias)."""
    key = _ALIASES.get(name.lower(), name.lower())
    if key not in FORMATS:
        raise UserError(f"unknown number format {name!r}; expected one of {', '.join(FORMATS)}")
    return FORMATS[key]


def format_table(names: Iterable[str] | None = None) -> list[dict[str, Any]]:
    """The facts of each format, as dicts (what ``trainlab calc formats --json`` prints)."""
    return [get_format(n).to_dict() for n in (names or FORMATS)]


def underflow_report(values: Tensor, *, fmt: str = "fp16",
                     scales: Iterable[float] = (1.0, 2.0**8, 2.0**16, 2.0**24)) -> list[dict[str, Any]]:
    """What happens to the nonzero entries of ``values`` when ``values · S`` is cast to ``fmt``.

    For each loss scale ``S``: the share of entries that flush to zero, that land in the
    subnormal range (kept, with fewer significant bits), that overflow (inf), and the share kept as
    normal numbers. The multiply happens in float64, so only the cast loses anything. Entries that
    are zero already are left out of the shares.
    """
    f = get_format(fmt)
    dtype = f.dtype
    if dtype is None:
        raise UserError(f"this torch build has no {fmt} dtype")
    v = values.detach().reshape(-1).double()
    v = v[v != 0]
    n = int(v.numel())
    rows: list[dict[str, Any]] = []
    for s in scales:
        scaled = v * float(s)
        cast = scaled.to(dtype).double()
        mag = cast.abs()
        zero = int((mag == 0).sum())
        inf = int((~torch.isfinite(cast)).sum())
        sub = int(((mag > 0) & (mag < f.min_normal)).sum())
        normal = n - zero - inf - sub
        # Relative error of what survived (median), after undoing the scale: the precision cost.
        ok = torch.isfinite(cast) & (mag > 0)
        rel = ((cast[ok] / float(s) - v[ok]).abs() / v[ok].abs()) if bool(ok.any()) else torch.zeros(1)
        rows.append({"scale": float(s), "log2_scale": math.log2(s) if s > 0 else float("-inf"), "n": n,
                     "flushed_to_zero": zero / n if n else 0.0, "subnormal": sub / n if n else 0.0,
                     "overflow": inf / n if n else 0.0, "normal": normal / n if n else 0.0,
                     "median_rel_error": float(rel.median()) if n else 0.0})
    return rows


def magnitude_histogram(values: Tensor, *, bins: int = 60, lo: float = -40.0, hi: float = 10.0
                        ) -> tuple[list[float], list[int]]:
    """Histogram of ``log2 |v|`` over the nonzero entries of ``values`` (bin edges, counts).

    The picture of Micikevicius et al. (2018), Fig. 3: where a gradient's magnitudes sit relative
    to a format's smallest subnormal and largest value.
    """
    v = values.detach().reshape(-1).double().abs()
    v = v[v > 0]
    logs = torch.log2(v).clamp(lo, hi)
    counts = torch.histc(logs, bins=bins, min=lo, max=hi)
    width = (hi - lo) / bins
    return [lo + i * width for i in range(bins + 1)], [int(c) for c in counts.tolist()]


__all__ = ["FORMATS", "FloatFormat", "format_table", "get_format", "magnitude_histogram", "underflow_report"]
