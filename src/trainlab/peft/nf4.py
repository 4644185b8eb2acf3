"""4-bit NormalFloat (NF4) with double quantization, the frozen-base format of QLoRA (Dettmers et al., 2023,
"QLoRA: Efficient Finetuning of Quantized LLMs", arXiv:2305.14314), written in plain torch.

**NF4.** Pretrained weights are roughly N(0, σ): a 4-bit code whose 16 values are quantiles of N(0, 1), so each
bin holds about the same probability mass, is information-theoretically optimal for them. The paper builds an
asymmetric code with an exact zero: 8 positive quantiles ``Φ⁻¹(linspace(δ, ½, 9))[:-1]`` and 7 negative ones
``−Φ⁻¹(linspace(δ, ½, 8))[:-1]``, ``δ = ½(1/32 + 1/30)`` ≈ 0.9677 (bitsandbytes' ``create_normal_map``), plus 0,
normalised to [−1, 1] (`NF4_CODE`; `nf4_code_from_normal` recomputes it).

**Blockwise absmax.** The flattened weight is cut into blocks of 64; each block is divided by its absmax ``c``
(into [−1, 1]) and every value is rounded to the nearest code value (4-bit index; two per byte, the first in the
high nibble, as bitsandbytes packs them). ``dequantize: w ≈ NF4_CODE[idx] · c``.

**Double quantization.** The absmax constants cost 32/64 = 0.5 bit per weight. They are quantized again: minus
their mean (they are positive), in blocks of 256, to 8 bits with the signed dynamic (tree) code of Dettmers
(2016, "8-Bit Approximations for Parallelism in Deep Learning", bitsandbytes' ``create_dynamic_map``), which
leaves ``8/64 + 32/(64·256)`` ≈ 0.127 bit per weight: a saving of ≈ 0.373 bit/param (the paper's 0.37).
Storage per weight: 4 + 0.127 = 4.127 bits with double quantization, 4.5 bits without (fp32: 32).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cache

import torch
from torch import Tensor

#: The NF4 code of the QLoRA paper (appendix E; bitsandbytes' ``get_4bit_type("nf4")``).
NF4_CODE: tuple[float, ...] = (
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
    -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
    0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0,
)
NF4_OFFSET = 0.9677083  # δ = ½(1/32 + 1/30): the outermost quantile used


def nf4_code_from_normal(offset: float = NF4_OFFSET) -> Tensor:
    """NF4's 16 values from the normal quantile function (module docstring), float64."""
    normal = torch.distributions.Normal(torch.tensor(0.0, dtype=torch.float64), torch.tensor(1.0, dtype=torch.float64))
    pos = normal.icdf(torch.linspace(offset, 0.5, 9, dtype=torch.float64)[:-1])
    neg = -normal.icdf(torch.linspace(offset, 0.5, 8, dtype=torch.float64)[:-1])
    values = torch.cat([pos, torch.zeros(1, dtype=torch.float64), neg]).sort().values
    return values / values.abs().max()


def dynamic_code(max_exponent_bits: int = 7, total_bits: int = 8) -> Tensor:
    """The signed 8-bit dynamic (tree) code: a sign, a run of exponent bits (powers of 10), a linear fraction."""
    data: list[float] = []
    non_sign_bits = total_bits - 1
    for i in range(max_exponent_bits):
        items = 2 ** (i + non_sign_bits - max_exponent_bits) + 1
        bounds = torch.linspace(0.1, 1, items, dtype=torch.float32)
        means = (bounds[:-1] + bounds[1:]) / 2.0
        scale = 10.0 ** (-(max_exponent_bits - 1) + i)
        data += (scale * means).tolist() + (-scale * means).tolist()  # float32 products, as bitsandbytes
    data += [0.0, 1.0]
    data += [0.0] * (2 ** total_bits - len(data))
    return torch.tensor(sorted(data), dtype=torch.float32)


@cache
def _codes(device: str) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    nf4 = torch.tensor(NF4_CODE, dtype=torch.float32, device=device)
    dyn = dynamic_code().to(device)
    return nf4, (nf4[1:] + nf4[:-1]) / 2, dyn, (dyn[1:] + dyn[:-1]) / 2


def _nearest(values: Tensor, midpoints: Tensor) -> Tensor:
    """Index of the nearest code value (``midpoints`` between consecutive sorted code values)."""
    return torch.bucketize(values, midpoints)


def _blocks(x: Tensor, block: int) -> tuple[Tensor, int]:
    """``x`` flattened and zero-padded to whole blocks ``[n_blocks, block]``; the original length."""
    flat = x.reshape(-1).float()
    n = flat.numel()
    pad = (-n) % block
    if pad:
        flat = torch.cat([flat, flat.new_zeros(pad)])
    return flat.view(-1, block), n


@dataclass
class NF4Tensor:
    """A quantized weight: packed 4-bit indices and its (possibly double-quantized) absmax constants."""

    packed: Tensor  # uint8 [ceil(n/2)]
    shape: tuple[int, ...]
    block: int
    absmax: Tensor | None = None  # float32 [n_blocks] (no double quantization)
    absmax_q: Tensor | None = None  # uint8 [n_blocks]: dynamic-code indices of absmax - offset
    absmax2: Tensor | None = None  # float32 [ceil(n_blocks/256)]: the second level's absmax
    offset: Tensor | None = None  # float32 []: the mean subtracted before the second level
    block2: int = 256

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.packed, self.absmax, self.absmax_q, self.absmax2,
                                                          self.offset) if t is not None)

    def bits_per_param(self) -> float:
        return 8 * self.nbytes() / math.prod(self.shape)


def quantize_nf4(weight: Tensor, block: int = 64, double_quant: bool = True, block2: int = 256) -> NF4Tensor:
    """Quantize ``weight`` to NF4 (module docstring)."""
    _, nf4_mid, _, dyn_mid = _codes(str(weight.device))
    blocks, n = _blocks(weight.detach(), block)
    absmax = blocks.abs().amax(dim=1)
    scaled = (blocks * (1.0 / absmax.clamp(min=1e-38))[:, None]).clamp(-1, 1).reshape(-1)[:n]
    idx = _nearest(scaled, nf4_mid).to(torch.uint8)
    if idx.numel() % 2:  # an odd count: the last byte's low nibble holds 0.0 (code index 7), as bitsandbytes
        idx = torch.cat([idx, idx.new_full((1,), NF4_CODE.index(0.0))])
    packed = (idx[0::2] << 4) | idx[1::2]
    out = NF4Tensor(packed=packed, shape=tuple(weight.shape), block=block, block2=block2)
    if not double_quant:
        out.absmax = absmax
        return out
    offset = absmax.mean()
    blocks2, m = _blocks(absmax - offset, block2)
    absmax2 = blocks2.abs().amax(dim=1)
    scaled2 = (blocks2 * (1.0 / absmax2.clamp(min=1e-38))[:, None]).clamp(-1, 1).reshape(-1)[:m]
    out.absmax_q = _nearest(scaled2, dyn_mid).to(torch.uint8)
    out.absmax2, out.offset = absmax2, offset
    return out


def dequantize_absmax(q: NF4Tensor) -> Tensor:
    """The first-level absmax constants (float32), undoing the double quantization if there is one."""
    if q.absmax is not None:
        return q.absmax
    assert q.absmax_q is not None and q.absmax2 is not None and q.offset is not None
    dyn = _codes(str(q.packed.device))[2]
    m = q.absmax_q.numel()
    values = dyn[q.absmax_q.long()]
    pad = (-m) % q.block2
    if pad:
        values = torch.cat([values, values.new_zeros(pad)])
    return (values.view(-1, q.block2) * q.absmax2[:, None]).reshape(-1)[:m] + q.offset


def dequantize_nf4(q: NF4Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
    """``NF4_CODE[idx] · absmax`` in ``dtype`` with the original shape."""
    nf4 = _codes(str(q.packed.device))[0]
    n = math.prod(q.shape)
    idx = torch.stack([q.packed >> 4, q.packed & 0xF], dim=1).reshape(-1)[:n].int()  # int32 indices: half of long
    values = nf4[idx]
    pad = (-n) % q.block
    if pad:
        values = torch.cat([values, values.new_zeros(pad)])
    out = (values.view(-1, q.block) * dequantize_absmax(q)[:, None]).reshape(-1)[:n]
    return out.view(q.shape).to(dtype)
