"""Compile the Triton FlashAttention kernels ahead of time for NVIDIA GPUs, on a machine without one.

Why: the kernels in :mod:`trainlab.attention.flash_triton` are tested on CPU in Triton's interpreter,
which checks the arithmetic but not that the kernels, with our tile choices
(:func:`~trainlab.attention.flash_triton.forward_config` / ``backward_config``), compile for a real
target and fit its hardware limits. Triton can compile for a named target without a CUDA driver: the
front end and LLVM run in-process and its bundled ``ptxas`` turns the PTX into a cubin. This module
does that for Hopper (``sm_90``) and Ampere (``sm_80``) and reads back what matters:

* shared memory per block (Triton's allocation: pipelined K/V tiles, layout conversions), against
  the per-block opt-in limit: H100 has 228 KiB per SM with at most 227 KiB per block, A100 164 KiB
  per SM and 163 KiB per block (1 KiB per resident block is reserved by the system);
* registers per thread and spills: 65,536 32-bit registers per SM, at most 255 per thread. A kernel
  that needs more than 255 does not fail to compile, ``ptxas`` spills to local memory (slow), so
  spills are reported separately from ``fits``;
* an estimate of resident blocks per SM (registers, shared memory, threads).

Each kernel is compiled with the arguments the launch code really passes: ``_forward`` and
``_backward`` run on ``meta`` tensors with the kernels swapped for recorders, and the recorded calls
go through Triton's own argument specialization (stride 1 becomes a constant, 16-divisible integers
and pointers get divisibility hints), exactly what the JIT would compile on a GPU for that problem.

The compile ignores ``TRITON_INTERPRET``: the GPU tile configs are asked for with ``interpret=False``,
and when the kernels were loaded in the interpreter (the test suite sets ``TRITON_INTERPRET=1`` on CPU),
compilable ``JITFunction`` twins of them, and of ``triton.language``'s own jitted helpers, are put in
place for the duration of the compile and the interpreted ones restored afterwards.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import io
import math
import re
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

#: Kernels compiled per (dtype, head_dim, causal): short name -> Triton function in flash_triton.
KERNELS = {
    "fwd": "_attn_fwd",
    "bwd_preprocess": "_bwd_preprocess",
    "bwd_dkdv": "_attn_bwd_dkdv",  # COMPUTE_DQ=True: the default backward, dQ by fp32 atomics
    "bwd_dq": "_attn_bwd_dq",  # the deterministic backward's separate dQ kernel
}
DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


class TritonToolchainError(RuntimeError):
    """Triton, its NVIDIA backend or the bundled ``ptxas`` is missing."""


@dataclass(frozen=True)
class ArchLimits:
    """Per-SM resources of one GPU generation (CUDA programming guide, compute capabilities table)."""

    name: str
    shared_per_sm: int
    shared_per_block: int  # opt-in maximum for one block
    regs_per_sm: int = 65536
    regs_per_thread: int = 255
    threads_per_sm: int = 2048
    blocks_per_sm: int = 32
    reserved_shared_per_block: int = 1024


ARCH_LIMITS = {
    90: ArchLimits("H100 (sm_90)", 228 * 1024, 227 * 1024),
    80: ArchLimits("A100 (sm_80)", 164 * 1024, 163 * 1024),
}


@dataclass(frozen=True)
class Problem:
    """The call the kernels are specialized for (strides and 16-divisibility of sizes enter the compile).

    Default: GQA (4 query heads per kv head: the dK/dV kernel keeps its loop over the group) and a
    16-divisible sequence length, as in training.
    """

    batch: int = 2
    n_heads: int = 16
    n_kv_heads: int = 4
    seqlen_q: int = 4096
    seqlen_k: int = 4096


@dataclass(frozen=True)
class KernelCompileInfo:
    """What one compiled kernel needs from the hardware."""

    kernel: str  # a key of KERNELS
    arch: int
    dtype: str
    head_dim: int
    causal: bool | None  # None: the kernel does not depend on it (bwd_preprocess)
    block_m: int
    block_n: int | None
    num_warps: int
    num_stages: int
    shared_bytes: int
    registers: int  # per thread
    spill_bytes: int | None  # spill stores + loads (ptxas -v); None when not known
    stack_bytes: int  # stack frame per thread (local memory): where the spilled registers go
    blocks_per_sm: int  # estimated resident blocks per SM (0: does not fit)
    fits: bool  # shared memory, registers and threads within the per-block limits
    compile_s: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# --------------------------------------------------------------------------------------------
# Toolchain
# --------------------------------------------------------------------------------------------


def check_toolchain(arch: int = 90) -> str:
    """The ``ptxas`` Triton uses for ``sm_<arch>`` (name and CUDA release); TritonToolchainError when unusable."""
    if arch not in ARCH_LIMITS:
        raise ValueError(f"unsupported arch sm_{arch}; known: {sorted(ARCH_LIMITS)}")
    try:
        import triton  # noqa: F401
    except ImportError as e:
        raise TritonToolchainError(f"triton is not installed ({e}); pip install triton") from e
    try:
        from triton.backends import backends
        from triton.backends.nvidia.compiler import get_ptxas
    except ImportError as e:
        raise TritonToolchainError(f"triton's NVIDIA backend is not available ({e})") from e
    if "nvidia" not in backends:
        raise TritonToolchainError(f"triton's NVIDIA backend is not registered (backends: {sorted(backends)})")
    try:
        tool = get_ptxas(arch)
        return f"{Path(tool.path).name} (CUDA {tool.version})"
    except RuntimeError as e:  # knobs raise "Cannot find ptxas" when neither TRITON_PTXAS_PATH nor the bundled one runs
        raise TritonToolchainError(f"no usable ptxas for sm_{arch}: {e}") from e


def _cuobjdump_usage(cubin: bytes) -> tuple[int, int]:
    """(registers, stack frame bytes) from ``cuobjdump --dump-resource-usage`` (when ptxas did not run).

    The stack frame holds the spilled registers (``LOCAL`` counts only other local arrays, 0 here).
    """
    from triton import knobs

    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        text = subprocess.run([knobs.nvidia.cuobjdump.path, "--dump-resource-usage", f.name], check=True,
                              capture_output=True, text=True).stdout
    regs = re.search(r"REG:(\d+)", text)
    stack = re.search(r"STACK:(\d+)", text)
    if regs is None or stack is None:
        raise RuntimeError(f"could not read the resource usage from cuobjdump: {text.strip()[:200]}")
    return int(regs.group(1)), int(stack.group(1))


def _parse_ptxas_log(log: str) -> tuple[int, int, int] | None:
    """(registers, spill bytes, stack bytes) from a ``ptxas -v`` log, None if it has none."""
    regs = re.findall(r"Used (\d+) registers", log)
    spills = re.findall(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", log)
    if not regs or not spills:
        return None
    stack, stores, loads = (int(x) for x in spills[-1])
    return int(regs[-1]), stores + loads, stack


def blocks_per_sm(limits: ArchLimits, registers: int, num_warps: int, shared_bytes: int) -> int:
    """Resident blocks per SM, as the occupancy calculator counts them (registers in 256-per-warp units)."""
    regs_per_warp = math.ceil(max(registers, 1) * 32 / 256) * 256
    by_regs = (limits.regs_per_sm // regs_per_warp) // num_warps
    by_shared = limits.shared_per_sm // (shared_bytes + limits.reserved_shared_per_block)
    by_threads = limits.threads_per_sm // (num_warps * 32)
    return min(by_regs, by_shared, by_threads, limits.blocks_per_sm)


# --------------------------------------------------------------------------------------------
# What the launch code passes
# --------------------------------------------------------------------------------------------


@dataclass
class _Launch:
    name: str  # Triton function name
    kernel: Any  # the JITFunction / InterpretedFunction that would have been launched
    args: tuple[Any, ...]
    kwargs: dict[str, Any]


class _Recorder:
    """Stands in for a kernel: ``kernel[grid](*args, **kwargs)`` records the call instead of launching."""

    def __init__(self, kernel: Any, sink: list[_Launch]) -> None:
        self.kernel = kernel
        self.sink = sink

    def __getitem__(self, grid: Any) -> Callable[..., None]:
        def launch(*args: Any, **kwargs: Any) -> None:
            self.sink.append(_Launch(self.kernel.fn.__name__, self.kernel, args, kwargs))

        return launch


def record_launches(dtype: torch.dtype, head_dim: int, causal: bool, problem: Problem | None = None,
                    fwd_config: Any = None, bwd_config: Any = None) -> dict[str, _Launch]:
    """Run ``_forward`` and both ``_backward`` paths on meta tensors and return their kernel calls by KERNELS key.

    ``fwd_config`` / ``bwd_config`` (``KernelConfig``) replace our GPU tile choices, to try others.
    """
    from trainlab.attention import flash_triton as ft

    p = problem or Problem()
    names = list(KERNELS.values())
    saved = {n: getattr(ft, n) for n in names}
    saved_interpret = ft.INTERPRET
    launches: list[_Launch] = []
    try:
        for n in names:
            setattr(ft, n, _Recorder(saved[n], launches))
        # _backward picks the preprocess block size inline from INTERPRET: take the GPU branch there too.
        ft.INTERPRET = False
        meta = torch.device("meta")
        q = torch.empty(p.batch, p.n_heads, p.seqlen_q, head_dim, dtype=dtype, device=meta)
        k = torch.empty(p.batch, p.n_kv_heads, p.seqlen_k, head_dim, dtype=dtype, device=meta)
        v = torch.empty_like(k)
        left, right = ft._band(causal, None)
        c = ft._Call(p.batch, p.n_heads, p.n_kv_heads, p.seqlen_q, p.seqlen_k, head_dim, 1.0 / math.sqrt(head_dim),
                     left, right, False)
        fwd_cfg = fwd_config or ft.forward_config(head_dim, dtype, interpret=False)
        bwd_cfg = bwd_config or ft.backward_config(head_dim, dtype, interpret=False)
        out, lse = ft._forward(q, k, v, None, None, None, c, fwd_cfg)
        dout = torch.empty_like(out)
        ft._backward(dout, q, k, v, out, lse, None, None, None, c, False, bwd_cfg)
        ft._backward(dout, q, k, v, out, lse, None, None, None, c, True, bwd_cfg)
    finally:
        ft.INTERPRET = saved_interpret
        for n, kernel in saved.items():
            setattr(ft, n, kernel)
    found: dict[str, _Launch] = {}
    for key, name in KERNELS.items():
        calls = [x for x in launches if x.name == name]
        if key == "bwd_dkdv":
            calls = [x for x in calls if x.kwargs.get("COMPUTE_DQ")]
        if not calls:
            raise RuntimeError(f"the launch code did not call {name}")
        found[key] = calls[0]
    return found


# --------------------------------------------------------------------------------------------
# Compiling
# --------------------------------------------------------------------------------------------

_JIT_TWINS: dict[Callable[..., Any], Any] = {}


@contextlib.contextmanager
def _jit_kernels(kernels: Sequence[Any]) -> Iterator[list[Any]]:
    """Compilable ``JITFunction`` s for ``kernels``, even when Triton was loaded in interpreter mode.

    Under ``TRITON_INTERPRET=1`` ``triton.jit`` returns ``InterpretedFunction`` s, for our kernels and for
    ``triton.language``'s jitted helpers (``tl.max``, ``tl.sum``, ``tl.cdiv``, ...). The code generator only
    inlines ``JITFunction`` s (calling an interpreted one would run it in Python), so for the duration of
    the block every interpreted function in ``triton.language.*`` and the kernels' modules is replaced by
    a ``JITFunction`` of the same Python function (the callees are looked up in those module dicts at
    compile time), and put back afterwards.

    Running interpreted kernels also leaves ``triton.language.core`` patched (Triton 3.9: a nested
    interpreted call patches the language for the interpreter and never restores it), which would make
    the code generator call NumPy-backed builtins; those patches are undone for the block as well.
    """
    from triton.runtime.jit import JITFunction

    if all(isinstance(k, JITFunction) for k in kernels):
        yield list(kernels)
        return
    import triton.language as tl
    from triton.runtime.interpreter import InterpretedFunction

    def twin(f: Any) -> Any:
        if f.fn not in _JIT_TWINS:
            _JIT_TWINS[f.fn] = JITFunction(f.fn, **f.kwargs)
        return _JIT_TWINS[f.fn]

    modules = [m for name, m in list(sys.modules.items())
               if m is not None and (name == "triton.language" or name.startswith("triton.language."))]
    modules += [sys.modules[k.fn.__module__] for k in kernels]
    changes: list[tuple[Any, str, Any]] = []
    try:
        for obj, name, original in _interpreter_leftovers():
            changes.append((obj, name, getattr(obj, name)))
            setattr(obj, name, original)
        for m in modules:
            for name, value in list(vars(m).items()):
                if isinstance(value, InterpretedFunction):
                    changes.append((m, name, value))
                    setattr(m, name, twin(value))
        # tensor methods (x.sum(), ...) wrap the interpreted function in a closure; jit mode binds it directly
        for name, value in list(vars(tl.core.tensor).items()):
            for cell in getattr(value, "__closure__", None) or ():
                with contextlib.suppress(ValueError):  # empty cell
                    if isinstance(cell.cell_contents, InterpretedFunction):
                        changes.append((tl.core.tensor, name, value))
                        setattr(tl.core.tensor, name, twin(cell.cell_contents))
                        break
        yield [twin(k) if isinstance(k, InterpretedFunction) else k for k in kernels]
    finally:
        for obj, name, value in reversed(changes):
            setattr(obj, name, value)


def _made_by_interpreter(value: Any) -> bool:
    """A function the interpreter put in (``InterpretedFunction`` s, the jitted helpers, are handled apart)."""
    f = value.func if isinstance(value, functools.partial) else value.fget if isinstance(value, property) else value
    return inspect.isfunction(f) and f.__module__ == "triton.runtime.interpreter"


def _interpreter_leftovers() -> list[tuple[Any, str, Any]]:
    """(object, attribute, original) for each interpreter patch left in ``triton.language``.

    A patched builtin is a lambda keeping the original as its ``member`` default; the other patched names
    (``range``, ``multiple_of``, ...) are re-exported unpatched by ``triton.language``, where a kernel launch
    restores them.
    """
    import triton.language as tl

    found: list[tuple[Any, str, Any]] = []
    for obj in (tl, tl.core, tl.math, tl.core.tensor, tl.core.dtype, tl.core.condition,
                tl.core.tensor_descriptor_base):
        for name, value in list(vars(obj).items()):
            if not _made_by_interpreter(value):
                continue
            original = (getattr(value, "__kwdefaults__", None) or {}).get("member")
            if original is None and obj is not tl and not _made_by_interpreter(getattr(tl, name, value)):
                original = getattr(tl, name)
            if original is None:
                raise RuntimeError(f"triton.language is left patched by Triton's interpreter ({obj.__name__}.{name}); "
                                   "compile in a fresh process (python benchmarks/compile_triton.py)")
            found.append((obj, name, original))
    return found


def _specialize(jit_fn: Any, launch: _Launch, backend: Any) -> tuple[dict[str, Any], dict[Any, Any], dict[Any, Any],
                                                                     dict[str, Any]]:
    """(signature, constexprs, attrs, options) as ``JITFunction.run`` derives them, minus the driver."""
    from triton import knobs
    from triton.runtime.jit import create_function_from_signature

    # Only a tensor's dtype and 16-byte alignment enter the specialization: CUDA allocations are 256-byte
    # aligned and host buffers (standing in for the meta tensors here) at least 64-byte aligned.
    args = [torch.empty(16, dtype=a.dtype) if isinstance(a, torch.Tensor) else a for a in launch.args]
    kwargs = dict(launch.kwargs)
    kwargs["debug"] = kwargs.get("debug", jit_fn.debug) or knobs.runtime.debug
    kwargs["instrumentation_mode"] = knobs.compilation.instrumentation_mode
    kwargs["fpsan_homomorphic_casts"] = knobs.compilation.fpsan_homomorphic_casts
    binder = create_function_from_signature(jit_fn.signature, jit_fn.params, backend)
    bound_args, specialization, options = binder(*args, **kwargs)
    options, signature, constexprs, attrs = jit_fn._pack_args(backend, kwargs, bound_args, specialization, options)
    return signature, constexprs, attrs, options.__dict__


def compile_launch(launch: _Launch, arch: int, cache_dir: str | Path | None = None) -> tuple[Any, str, float]:
    """Compile one recorded launch for ``sm_<arch>``: (CompiledKernel, ptxas log, seconds).

    ``cache_dir`` None compiles from scratch in a temporary Triton cache (so ptxas runs and its log is
    there); a directory reuses (and fills) that cache.
    """
    import triton
    from triton import knobs
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource, make_backend

    check_toolchain(arch)
    target = GPUTarget("cuda", arch, 32)
    backend = make_backend(target)
    with contextlib.ExitStack() as stack:
        stack.enter_context(knobs.nvidia.scope())
        stack.enter_context(knobs.cache.scope())
        stack.enter_context(warnings.catch_warnings())
        warnings.filterwarnings("ignore", message=".*TRITON_DEFAULT_FP_FUSION.*")
        knobs.cache.dir = str(cache_dir) if cache_dir is not None else stack.enter_context(
            tempfile.TemporaryDirectory(prefix="trainlab-triton-"))
        knobs.nvidia.dump_ptxas_log = True  # make_cubin prints ptxas -v output to stdout
        (jit_fn,) = stack.enter_context(_jit_kernels([launch.kernel]))
        signature, constexprs, attrs, options = _specialize(jit_fn, launch, backend)
        log = io.StringIO()
        start = time.perf_counter()
        with contextlib.redirect_stdout(log):
            compiled = triton.compile(ASTSource(jit_fn, signature, constexprs, attrs), target=target, options=options)
        seconds = time.perf_counter() - start
    return compiled, log.getvalue(), seconds


def compile_kernel(kernel: str, arch: int, dtype: str, head_dim: int, causal: bool, problem: Problem | None = None,
                   cache_dir: str | Path | None = None, fwd_config: Any = None, bwd_config: Any = None
                   ) -> KernelCompileInfo:
    """Compile one kernel (a KERNELS key) with the launch code's arguments and our tile config (or the given one)."""
    if kernel not in KERNELS:
        raise ValueError(f"unknown kernel {kernel!r}; known: {sorted(KERNELS)}")
    if dtype not in DTYPES:
        raise ValueError(f"unsupported dtype {dtype!r}; known: {sorted(DTYPES)}")
    limits = ARCH_LIMITS.get(arch)
    if limits is None:
        raise ValueError(f"unsupported arch sm_{arch}; known: {sorted(ARCH_LIMITS)}")
    check_toolchain(arch)
    launch = record_launches(DTYPES[dtype], head_dim, causal, problem, fwd_config, bwd_config)[kernel]
    compiled, log, seconds = compile_launch(launch, arch, cache_dir)
    md = compiled.metadata
    parsed = _parse_ptxas_log(log)
    if parsed is not None:
        regs, spill, stack = parsed
        spill_bytes: int | None = spill
    else:  # cache hit: ptxas did not run
        regs, stack = _cuobjdump_usage(compiled.asm["cubin"])
        spill_bytes = 0 if stack == 0 else None
    shared = int(md.shared)
    resident = blocks_per_sm(limits, regs, md.num_warps, shared)
    fits = shared <= limits.shared_per_block and regs <= limits.regs_per_thread and resident >= 1
    return KernelCompileInfo(
        kernel=kernel, arch=arch, dtype=dtype, head_dim=head_dim, causal=None if kernel == "bwd_preprocess" else causal,
        block_m=int(launch.kwargs["BLOCK_M"]), block_n=launch.kwargs.get("BLOCK_N"), num_warps=int(md.num_warps),
        num_stages=int(md.num_stages), shared_bytes=shared, registers=regs, spill_bytes=spill_bytes,
        stack_bytes=stack, blocks_per_sm=resident, fits=fits, compile_s=round(seconds, 3),
    )


def compile_report(
    arch: int = 90,
    dtypes: Sequence[str] = ("float16", "bfloat16", "float32"),
    head_dims: Sequence[int] = (32, 64, 128, 256),
    causal: Sequence[bool] = (False, True),
    kernels: Sequence[str] = tuple(KERNELS),
    problem: Problem | None = None,
    cache_dir: str | Path | None = None,
    progress: Callable[[KernelCompileInfo], None] | None = None,
) -> list[KernelCompileInfo]:
    """Compile every kernel for every (dtype, head_dim, causal) for ``sm_<arch>``; one row per compile.

    ``bwd_preprocess`` does not depend on ``causal`` and is compiled once per (dtype, head_dim).
    """
    check_toolchain(arch)
    rows: list[KernelCompileInfo] = []
    for dtype in dtypes:
        for head_dim in head_dims:
            for kernel in kernels:
                for is_causal in (causal[:1] if kernel == "bwd_preprocess" else causal):
                    info = compile_kernel(kernel, arch, dtype, head_dim, is_causal, problem, cache_dir)
                    rows.append(info)
                    if progress is not None:
                        progress(info)
    return rows


def markdown_table(rows: Sequence[KernelCompileInfo]) -> str:
    """One line per compiled kernel."""
    lines = ["| kernel | dtype | d | causal | BLOCK_M×N | warps | stages | smem KiB | regs | spill B | "
             "blocks/SM | fits | compile s |",
             "|---|---|---:|---|---|---:|---:|---:|---:|---:|---:|---|---:|"]
    for r in rows:
        causal = "-" if r.causal is None else ("yes" if r.causal else "no")
        blocks = f"{r.block_m}×{r.block_n}" if r.block_n is not None else f"{r.block_m}"
        spill = "?" if r.spill_bytes is None else str(r.spill_bytes)
        lines.append(f"| {r.kernel} | {r.dtype} | {r.head_dim} | {causal} | {blocks} | {r.num_warps} | "
                     f"{r.num_stages} | {r.shared_bytes / 1024:.1f} | {r.registers} | {spill} | {r.blocks_per_sm} | "
                     f"{'yes' if r.fits else '**NO**'} | {r.compile_s:.1f} |")
    return "\n".join(lines)


__all__ = [
    "ARCH_LIMITS",
    "DTYPES",
    "KERNELS",
    "ArchLimits",
    "KernelCompileInfo",
    "Problem",
    "TritonToolchainError",
    "blocks_per_sm",
    "check_toolchain",
    "compile_kernel",
    "compile_launch",
    "compile_report",
    "markdown_table",
    "record_launches",
]
