"""QLoRA: LoRA on a frozen base quantized to 4-bit NormalFloat with double quantization (Dettmers et al., 2023,
"QLoRA: Efficient Finetuning of Quantized LLMs", arXiv:2305.14314)::

    h = dequant_NF4(W₀) x + (α/r) · B A dropout(x)

Every Linear / Conv1D of the base except the LM head is replaced by an `NF4Linear` (`trainlab.peft.nf4`:
blocks of ``peft.qlora_block`` = 64, absmax double-quantized to 8 bits in blocks of 256), as
``load_in_4bit`` + ``bnb_4bit_quant_type="nf4"`` + ``bnb_4bit_use_double_quant=True`` do; LoRA adapters go on
``peft.targets`` (the paper: all linear layers). The weight is dequantized to the input's dtype for each matmul
(the paper's "compute dtype"); gradients flow through it to the input, never into it. The paper's third
ingredient, paged optimizers, only matters on a GPU under memory pressure and is not implemented.

Memory of a base matrix: 4.127 bits/param (4.5 without double quantization) vs 32 in fp32 (16 in bf16).
The adapter is saved as a plain LoRA (``peft_type: LORA``): PEFT applies it to the unquantized or a
bitsandbytes-quantized base. Merging dequantizes: ``W = dequant(W₀) + (α/r) BA`` in float32.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from trainlab.peft.config import ALL_LINEAR, PeftConfig
from trainlab.peft.lora import (
    LoraLinear,
    load_lora_state,
    lora_peft_config,
    lora_state,
    make_generator,
    merge_lora,
)
from trainlab.peft.nf4 import NF4Tensor, dequantize_nf4, quantize_nf4
from trainlab.peft.registry import PeftInfo, PeftMethodSpec, register_peft_method
from trainlab.peft.targets import count_parameters, find_targets, freeze, is_conv1d, linear_shape, replace_module

_FIELDS = ("packed", "absmax", "absmax_q", "absmax2", "offset")


class _NF4Matmul(torch.autograd.Function):
    """``x W̃ᵀ`` with ``W̃ = dequant(W)`` that keeps nothing for the backward but the quantized weight: the gradient
    ``∂L/∂x = ∂L/∂y · W̃`` dequantizes again (as bitsandbytes' ``MatMul4Bit``). Saving ``W̃`` (what autograd does
    for ``F.linear``) would hold every layer's full-precision weight until the backward and undo the saving."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, layer: NF4Linear) -> Tensor:
        ctx.layer = layer
        return F.linear(x, layer.dequantize(x.dtype))

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        return grad @ ctx.layer.dequantize(grad.dtype), None


class NF4Linear(nn.Module):
    """A frozen Linear whose weight is stored in NF4 (``[out, in]``; a Conv1D's is transposed on the way in).

    The quantized tensors are frozen parameters (``requires_grad=False``), so ``.to(device)``, state dicts and
    parameter byte counts see them; they never reach an optimizer.
    """

    def __init__(self, layer: nn.Module, block: int = 64, double_quant: bool = True) -> None:
        super().__init__()
        self.in_features, self.out_features = linear_shape(layer)
        self.from_conv1d = is_conv1d(layer)
        weight = layer.weight.T if self.from_conv1d else layer.weight
        self.weight_dtype = weight.dtype
        q = quantize_nf4(weight.detach(), block, double_quant)
        self.block, self.block2, self.double_quant = q.block, q.block2, double_quant
        for name in _FIELDS:
            t = getattr(q, name)
            setattr(self, name, None if t is None else nn.Parameter(t, requires_grad=False))
        bias = getattr(layer, "bias", None)
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone(), requires_grad=False)

    def quantized(self) -> NF4Tensor:
        return NF4Tensor(shape=(self.out_features, self.in_features), block=self.block, block2=self.block2,
                         **{name: getattr(self, name) for name in _FIELDS})

    def dequantize(self, dtype: torch.dtype | None = None) -> Tensor:
        """The weight ``[out, in]`` in ``dtype`` (default: the original weight's)."""
        return dequantize_nf4(self.quantized(), dtype or self.weight_dtype)

    def forward(self, x: Tensor) -> Tensor:
        bias = None if self.bias is None else self.bias.to(x.dtype)
        if torch.is_grad_enabled() and x.requires_grad:
            out = _NF4Matmul.apply(x, self)
            return out if bias is None else out + bias
        return F.linear(x, self.dequantize(x.dtype), bias)

    def storage_bytes(self) -> int:
        """Bytes of the quantized weight (indices + constants), bias excluded."""
        return self.quantized().nbytes()

    def to_float(self, weight: Tensor) -> nn.Module:
        """A float module of the original kind holding ``weight`` (``[out, in]``): Linear, or Conv1D for GPT-2."""
        with torch.no_grad():
            if self.from_conv1d:
                from transformers.pytorch_utils import Conv1D

                out: nn.Module = Conv1D(self.out_features, self.in_features).to(weight.device, weight.dtype)
                out.weight.copy_(weight.T)
            else:
                out = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None,
                                device=weight.device, dtype=weight.dtype)
                out.weight.copy_(weight)
            if self.bias is not None:
                out.bias.copy_(self.bias)
            elif self.from_conv1d:
                out.bias.zero_()
        return out

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, block={self.block}, "
                f"double_quant={self.double_quant}")


def quantize_model(model: nn.Module, block: int = 64, double_quant: bool = True) -> list[str]:
    """Replace every Linear / Conv1D but the LM head by an `NF4Linear`; returns their paths."""
    paths = []
    for path, module in find_targets(model, ALL_LINEAR):
        replace_module(model, path, NF4Linear(module, block, double_quant))
        paths.append(path)
    return paths


def apply_qlora(model: nn.Module, cfg: PeftConfig) -> PeftInfo:
    targets = [p for p, _ in find_targets(model, cfg.targets)]  # checked on the float model
    freeze(model)
    quantized = quantize_model(model, cfg.qlora_block, cfg.qlora_double_quant)
    generator = None
    for path in targets:
        base = model.get_submodule(path)
        if generator is None:
            generator = make_generator(cfg, next(base.parameters()).device)
        replace_module(model, path, LoraLinear(base, cfg.r, cfg.scaling, cfg.dropout, generator))
    trainable, total = count_parameters(model)
    info = PeftInfo("qlora", trainable, total, targets)
    nf4_bytes = sum(m.storage_bytes() for m in model.modules() if isinstance(m, NF4Linear))
    nf4_params = sum(m.in_features * m.out_features for m in model.modules() if isinstance(m, NF4Linear))
    info.notes.append(f"{len(quantized)} base matrices in NF4: {nf4_bytes:,} bytes for {nf4_params:,} weights "
                      f"({8 * nf4_bytes / max(nf4_params, 1):.3f} bits/weight; fp32: {4 * nf4_params:,} bytes)")
    return info


def merge_qlora(model: nn.Module) -> None:
    """Merge the adapters into their dequantized bases, and dequantize every other NF4 layer: a float model."""
    merge_lora(model)
    for path, m in [(p, m) for p, m in model.named_modules() if isinstance(m, NF4Linear)]:
        replace_module(model, path, m.to_float(m.dequantize()))


register_peft_method(PeftMethodSpec(
    name="qlora", peft_type="LORA", apply=apply_qlora, peft_config=lora_peft_config, state_to_peft=lora_state,
    state_from_peft=load_lora_state, merge=merge_qlora, config_from_peft=None,
    description="QLoRA (Dettmers et al., 2023): LoRA on an NF4 (double-quantized) frozen base"))
