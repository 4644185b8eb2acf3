"""The Triton FlashAttention kernels compile for Hopper (sm_90) with our tile configs and fit its limits.

No GPU needed: ``triton.compile`` with an explicit target and Triton's bundled ptxas (see
:mod:`trainlab.attention.triton_compile`). On CPU the suite runs with TRITON_INTERPRET=1 (conftest.py),
so these tests also check that the compile takes the GPU configs and leaves the interpreter working.
Skipped when triton, its NVIDIA backend or ptxas is missing.
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

from trainlab.attention import triton_compile as tc

try:
    tc.check_toolchain(90)
except tc.TritonToolchainError as e:  # pragma: no cover - depends on the install
    pytest.skip(f"cannot compile for sm_90 here: {e}", allow_module_level=True)

from trainlab.attention import flash_triton

H100 = tc.ARCH_LIMITS[90]
CASES = [(kernel, dtype, d) for kernel in ("fwd", "bwd_dkdv") for dtype in ("bfloat16", "float16") for d in (64, 128)]


@pytest.fixture(scope="module")
def compiled() -> dict[tuple[str, str, int], tc.KernelCompileInfo]:
    """Causal (the variant with the most code: three inlined key loops in the forward), ~2-4 s per kernel."""
    return {(k, dt, d): tc.compile_kernel(k, 90, dt, d, causal=True) for k, dt, d in CASES}


@pytest.mark.parametrize(("kernel", "dtype", "head_dim"), CASES)
def test_fits_sm90_without_spills(compiled: dict, kernel: str, dtype: str, head_dim: int) -> None:
    info = compiled[kernel, dtype, head_dim]
    assert info.arch == 90 and info.causal is True
    assert info.shared_bytes <= H100.shared_per_block, f"{info.shared_bytes / 1024:.1f} KiB shared memory"
    assert 0 < info.registers <= H100.regs_per_thread
    assert info.spill_bytes == 0, f"{info.spill_bytes} bytes of register spills"
    assert info.stack_bytes == 0
    assert info.blocks_per_sm >= 1 and info.fits


@pytest.mark.parametrize(("kernel", "dtype", "head_dim"), CASES)
def test_compiled_with_the_gpu_configs(compiled: dict, kernel: str, dtype: str, head_dim: int) -> None:
    """Even under TRITON_INTERPRET=1 (tiny interpreter tiles), the compile uses what a GPU launch would."""
    info = compiled[kernel, dtype, head_dim]
    pick = flash_triton.forward_config if kernel == "fwd" else flash_triton.backward_config
    cfg = pick(head_dim, getattr(torch, dtype), interpret=False)
    assert (info.block_m, info.block_n, info.num_warps, info.num_stages) == (
        cfg.block_m, cfg.block_n, cfg.num_warps, cfg.num_stages)


def test_launch_arguments_match_the_launch_code() -> None:
    """Constexpr flags come from _forward/_backward: causal -> HAS_RIGHT only, the atomic dQ path, fp32 IEEE dots."""
    launches = tc.record_launches(torch.bfloat16, 96, causal=True)
    fwd, dkdv, dq = launches["fwd"].kwargs, launches["bwd_dkdv"].kwargs, launches["bwd_dq"].kwargs
    assert (fwd["HEAD_DIM"], fwd["D_PAD"]) == (96, 128)
    for kw in (fwd, dkdv, dq):
        assert (kw["HAS_LEFT"], kw["HAS_RIGHT"], kw["HAS_KPM"], kw["IS_VARLEN"]) == (False, True, False, False)
    assert dkdv["COMPUTE_DQ"] is True
    assert launches["bwd_preprocess"].kwargs["BLOCK_M"] == 64  # the GPU block, not the interpreter's 16
    assert (dq["BLOCK_M"], dq["BLOCK_N"]) == (dkdv["BLOCK_N"], dkdv["BLOCK_M"])
    plain = tc.record_launches(torch.float32, 64, causal=False)["fwd"].kwargs
    assert (plain["HAS_LEFT"], plain["HAS_RIGHT"], plain["DOT_PREC"]) == (False, False, "ieee")


def test_interpreter_left_intact(compiled: dict) -> None:
    """After compiling, the interpreted kernels (and triton.language's helpers) are back in place."""
    import triton.language as tl
    from triton.runtime.jit import JITFunction

    if flash_triton.INTERPRET:
        assert not isinstance(flash_triton._attn_fwd, JITFunction)
        assert not isinstance(tl.max, JITFunction)
        out = flash_triton.flash_attention_triton(*(torch.randn(1, 1, 8, 16) for _ in range(3)), causal=True)
        assert torch.isfinite(out).all()


def test_compiles_after_the_interpreter_ran() -> None:
    """Interpreted kernels leave triton.language.core patched (Triton 3.9); the compile must see through that."""
    if flash_triton.INTERPRET:
        q, k, v = (torch.randn(1, 2, 8, 16, requires_grad=True) for _ in range(3))
        flash_triton.flash_attention_triton(q, k, v, causal=True).sum().backward()
    info = tc.compile_kernel("bwd_preprocess", 90, "bfloat16", 64, causal=False)
    assert info.fits and info.spill_bytes == 0 and info.causal is None and info.block_n is None


def test_blocks_per_sm() -> None:
    assert tc.blocks_per_sm(H100, 255, 4, 64 * 1024) == 2  # 4 warps x 32 x 256 registers = half the file
    assert tc.blocks_per_sm(H100, 128, 8, 200 * 1024) == 1  # shared memory bound
    assert tc.blocks_per_sm(H100, 32, 4, 0) == 16  # 2048 threads per SM
    assert tc.blocks_per_sm(H100, 255, 8, 0) == 1


def test_clear_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match="sm_75"):
        tc.check_toolchain(75)
    with pytest.raises(ValueError, match="dtype"):
        tc.compile_kernel("fwd", 90, "float64", 64, False)

    import triton.backends.nvidia.compiler as nv

    def no_ptxas(arch: int) -> None:
        raise RuntimeError("Cannot find ptxas")

    monkeypatch.setattr(nv, "get_ptxas", no_ptxas)
    with pytest.raises(tc.TritonToolchainError, match="no usable ptxas for sm_90"):
        tc.check_toolchain(90)
