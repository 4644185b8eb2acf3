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


def _cpu_bf16_fast() -> bool:
    """True when the CPU has native bf16 matmul instructions (AVX512-BF16 or AMX)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            flags = fh.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


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
        if not bf16_native:
            notes.append("bf16 is emulated on GPUs before Ampere (sm_80): expect it to be slow")
    else:
        # On CPU both low-precision types compute correctly through autocast; they are only
        # fast where the CPU has native instructions (AVX512-BF16 / AMX, AVX512-FP16).
        bf16 = True
        fp16 = True
        bf16_native = _cpu_bf16_fast()
        notes.append("no CUDA device: CUDA memory statistics, Triton GPU kernels and flash-attn cannot run")
        if not bf16_native:
            notes.append("this CPU has no native bf16 matmul: bf16/fp16 run but are not faster than fp32")
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
    )
