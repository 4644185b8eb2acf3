"""What this machine can do: device, dtypes, GPU, kernels, CPU and memory.

Every lab result embeds this, so a number in a report always says which hardware produced it.
"""

from __future__ import annotations

import importlib.util
import os
import platform
from dataclasses import asdict, dataclass, field

import torch


def _total_memory_bytes() -> int | None:
    try:
        pages = os.sysconf("SC_PHYS_PAGES")
        page_size = os.sysconf("SC_PAGE_SIZE")
        return int(pages * page_size)
    except (ValueError, OSError, AttributeError):
        return None


def _package_version(name: str) -> str | None:
    if importlib.util.find_spec(name) is None:
        return None
    try:
        from importlib.metadata import version

        return version(name.replace("_", "-"))
    except Exception:
        return "installed"


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def _torch_probe(fn: object) -> bool | None:
    """Call one of torch's private capability probes; None where this torch has no such probe."""
    try:
        return bool(fn())  # type: ignore[operator]
    except Exception:
        return None


def cpu_precision_facts() -> dict[str, bool | None]:
    """What this CPU and torch say about 16-bit matmuls (None: this torch cannot tell).

    ``mkldnn_bf16`` / ``mkldnn_fp16``: oneDNN's own checks (``torch.ops.mkldnn._is_mkldnn_bf16_supported``
    / ``_is_mkldnn_fp16_supported``) that it has native kernels for the type on this CPU;
    ``avx512_bf16``, ``amx_bf16``, ``amx_fp16``, ``avx512_fp16``: the instruction sets (``torch.cpu``
    probes, else /proc/cpuinfo flags). Whether 16-bit is *faster* also depends on the matrix sizes:
    measure it (lab 1.4 times matmuls of two sizes).
    """
    flags = _cpu_flags()
    mkldnn = getattr(torch.ops, "mkldnn", None)
    cpu = getattr(torch, "cpu", None)

    def probe(obj: object, name: str, flag: str) -> bool | None:
        got = _torch_probe(getattr(obj, name)) if obj is not None and hasattr(obj, name) else None
        return got if got is not None else (flag in flags if flags else None)

    return {
        "mkldnn_bf16": probe(mkldnn, "_is_mkldnn_bf16_supported", "avx512_bf16"),
        "mkldnn_fp16": probe(mkldnn, "_is_mkldnn_fp16_supported", "avx512_fp16"),
        "avx512_bf16": probe(cpu, "_is_avx512_bf16_supported", "avx512_bf16"),
        "amx_bf16": probe(cpu, "_is_amx_tile_supported", "amx_bf16"),
        "amx_fp16": probe(cpu, "_is_amx_fp16_supported", "amx_fp16"),
        "avx512_fp16": ("avx512_fp16" in flags) if flags else None,
    }


def _cpu_bf16_fast(facts: dict[str, bool | None] | None = None) -> bool:
    """True when the CPU has native bf16 matmul instructions (AVX512-BF16 or AMX)."""
    facts = facts if facts is not None else cpu_precision_facts()
    return bool(facts["avx512_bf16"] or facts["amx_bf16"] or facts["mkldnn_bf16"])


def _cpu_fp16_fast(facts: dict[str, bool | None] | None = None) -> bool:
    """True when the CPU has native fp16 matmul instructions (AMX-FP16 or AVX512-FP16)."""
    facts = facts if facts is not None else cpu_precision_facts()
    return bool(facts["amx_fp16"] or facts["avx512_fp16"] or facts["mkldnn_fp16"])


@dataclass
class EnvInfo:
    torch_version: str
    python_version: str
    platform: str
    device: str
    cuda_available: bool
    cuda_version: str | None
    gpu_name: str | None
    gpu_count: int
    gpu_memory_bytes: int | None
    compute_capability: str | None
    bf16_supported: bool
    fp16_supported: bool
    bf16_native: bool
    triton_available: bool
    triton_version: str | None
    flash_attn_available: bool
    flash_attn_version: str | None
    transformers_version: str | None
    cpu_name: str
    cpu_count: int
    memory_bytes: int | None
    notes: list[str] = field(default_factory=list)
    fp16_native: bool = False  # native fp16 matmul: tensor cores (sm_70+) or AMX-FP16 / AVX512-FP16 on a CPU
    precision_facts: dict[str, bool | None] = field(default_factory=dict)  # CPU: `cpu_precision_facts()`

    def to_dict(self) -> dict:
        return asdict(self)

    def short(self) -> str:
        """One line naming the hardware, for report headers."""
        if self.device == "cuda":
            return f"{self.gpu_name} (sm_{self.compute_capability}), torch {self.torch_version}"
        gib = (self.memory_bytes or 0) / 2**30
        return f"CPU {self.cpu_name}, {self.cpu_count} cores, {gib:.0f} GiB, torch {self.torch_version}"


def detect_env() -> EnvInfo:
    cuda = torch.cuda.is_available()
    notes: list[str] = []
    gpu_name = cc = cuda_version = None
    gpu_mem = None
    gpu_count = 0
    if cuda:
        gpu_count = torch.cuda.device_count()
        props = torch.cuda.get_device_properties(0)
        gpu_name = props.name
        gpu_mem = int(props.total_memory)
        cc = f"{props.major}.{props.minor}"
        cuda_version = torch.version.cuda
        bf16 = bool(torch.cuda.is_bf16_supported())
        bf16_native = props.major >= 8
        fp16 = True
        fp16_native = props.major >= 7
        facts: dict[str, bool | None] = {}
        if not bf16_native:
            notes.append("bf16 is emulated on GPUs before Ampere (sm_80): expect it to be slow")
    else:
        # On CPU both low-precision types compute correctly through autocast; they are only
        # fast where the CPU has native instructions (AVX512-BF16 / AMX, AVX512-FP16).
        bf16 = True
        fp16 = True
        facts = cpu_precision_facts()
        bf16_native = _cpu_bf16_fast(facts)
        fp16_native = _cpu_fp16_fast(facts)
        notes.append("no CUDA device: CUDA memory statistics, Triton GPU kernels and flash-attn cannot run")
        if not bf16_native:
            notes.append("this CPU has no native bf16 matmul instructions: bf16 runs through conversions")
        if not fp16_native:
            notes.append("this CPU has no native fp16 matmul instructions: fp16 runs through conversions")
    triton_version = _package_version("triton")
    flash_version = _package_version("flash_attn")
    return EnvInfo(
        torch_version=torch.__version__,
        python_version=platform.python_version(),
        platform=platform.platform(),
        device="cuda" if cuda else "cpu",
        cuda_available=cuda,
        cuda_version=cuda_version,
        gpu_name=gpu_name,
        gpu_count=gpu_count,
        gpu_memory_bytes=gpu_mem,
        compute_capability=cc,
        bf16_supported=bf16,
        fp16_supported=fp16,
        bf16_native=bf16_native,
        triton_available=triton_version is not None,
        triton_version=triton_version,
        flash_attn_available=flash_version is not None and cuda,
        flash_attn_version=flash_version,
        transformers_version=_package_version("transformers"),
        cpu_name=_cpu_name(),
        cpu_count=os.cpu_count() or 1,
        memory_bytes=_total_memory_bytes(),
        notes=notes,
        fp16_native=fp16_native,
        precision_facts=facts,
    )
