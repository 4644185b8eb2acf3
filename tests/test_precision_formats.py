"""Number formats derived from bit layouts, checked against torch.finfo and actual casts."""

from __future__ import annotations

import math

import pytest
import torch

from trainlab.errors import UserError
from trainlab.precision.formats import FORMATS, format_table, get_format, magnitude_histogram, underflow_report

ALL = list(FORMATS)


@pytest.mark.parametrize("name", ALL)
def test_derived_values_match_torch_finfo(name: str) -> None:
    f = get_format(name)
    fi = torch.finfo(f.dtype)
    assert f.bits == fi.bits
    assert f.max == fi.max
    assert f.min_normal == fi.smallest_normal
    assert f.eps == fi.eps


@pytest.mark.parametrize("name", ALL)
def test_smallest_subnormal_is_representable_and_half_of_it_flushes(name: str) -> None:
    f = get_format(name)
    tiny = torch.tensor([f.min_subnormal, f.min_subnormal / 2, f.min_subnormal * 0.75], dtype=torch.float64)
    cast = tiny.to(f.dtype).double()
    assert cast[0].item() == f.min_subnormal
    assert cast[1].item() == 0.0  # exactly half rounds to even, i.e. to zero
    assert cast[2].item() == f.min_subnormal


@pytest.mark.parametrize("name", ["fp32", "fp16", "bf16", "fp8_e5m2"])
def test_ieee_formats_overflow_to_inf_past_max(name: str) -> None:
    f = get_format(name)
    # The next binade step above max (max + one ulp at the top) rounds to inf.
    ulp = math.ldexp(1.0, f.max_exponent - f.mantissa_bits)
    x = torch.tensor([f.max, f.max + ulp], dtype=torch.float64)
    cast = x.to(f.dtype).double()
    assert cast[0].item() == f.max
    assert math.isinf(cast[1].item())


def test_seed_table_ranges_and_digits() -> None:
    # Seed 003: FP32 ±3.4e38 ~7 digits, FP16 ±6.5e4 ~3 digits, BF16 ±3.4e38 ~2 digits.
    rows = {r["name"]: r for r in format_table()}
    assert f"{rows['fp32']['max']:.2g}" == "3.4e+38" and 7 <= rows["fp32"]["decimal_digits"] < 8
    assert f"{rows['fp16']['max']:.2g}" == "6.6e+04" and 3 <= rows["fp16"]["decimal_digits"] < 4
    assert f"{rows['bf16']['max']:.2g}" == "3.4e+38" and 2 <= rows["bf16"]["decimal_digits"] < 3
    assert rows["fp8_e4m3"]["max"] == 448.0 and not rows["fp8_e4m3"]["has_inf"]


def test_underflow_report_counts_each_fate() -> None:
    v = torch.tensor([2.0**-26, 2.0**-20, 1e-3, 7e4, 0.0])
    s1, s10 = underflow_report(v, scales=[1.0, 2.0**10])
    assert s1["n"] == 4  # the zero is left out
    assert s1["flushed_to_zero"] == 0.25  # 2^-26 < 2^-25
    assert s1["subnormal"] == 0.25  # 2^-20 < 2^-14
    assert s1["overflow"] == 0.25  # 7e4 > 65504
    assert s1["normal"] == 0.25
    # Scaling by 2^10: 2^-26 -> 2^-16 (subnormal), 2^-20 -> 2^-10 (normal), 7e4·1024 still overflows.
    assert s10["flushed_to_zero"] == 0.0
    assert s10["subnormal"] == 0.25
    assert s10["overflow"] == 0.25  # 7e4·1024 still overflows
    assert s10["normal"] == 0.5  # 2^-10 and 1e-3·1024 ≈ 1


def test_magnitude_histogram_sums_to_nonzero_count() -> None:
    g = torch.tensor([1e-9, 1e-3, 0.0, -2.0])
    edges, counts = magnitude_histogram(g, bins=10)
    assert len(edges) == 11 and sum(counts) == 3


def test_unknown_format_is_a_user_error() -> None:
    with pytest.raises(UserError, match="unknown number format"):
        get_format("fp12")
    assert get_format("half").name == "fp16" and get_format("bfloat16").name == "bf16"
