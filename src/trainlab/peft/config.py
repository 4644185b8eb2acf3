"""The ``peft`` config section: which parameter-efficient fine-tuning method, and its settings.

``trainlab sft peft.method=lora peft.r=16 peft.alpha=32 peft.targets=q_proj,v_proj`` sets it from the
command line. ``method: none`` (the default) trains every parameter. Field names follow Hugging Face
PEFT's ``LoraConfig`` where one exists (``r``; ``alpha`` = ``lora_alpha``; ``dropout`` = ``lora_dropout``;
``targets`` = ``target_modules``; ``rslora`` = ``use_rslora``); defaults are PEFT's (r=8, alpha=8, dropout 0).

Methods add their own fields here, prefixed by the method where they are not shared (``adalora_*``,
``qlora_*``, ...).
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

PeftMethodName = Literal["none", "lora", "dora", "qlora", "adalora", "ia3", "bottleneck", "prefix", "prompt",
                         "ptuning", "bitfit"]

#: ``targets`` shorthand: every Linear (and GPT-2 Conv1D) layer except the LM head, as PEFT's "all-linear".
ALL_LINEAR = "all-linear"
#: ``targets`` as a regular expression: ``re:<pattern>`` full-matched against the (HF) module path, as PEFT does
#: with a string ``target_modules``
REGEX_PREFIX = "re:"


class PeftConfig(BaseModel):
    """Parameter-efficient fine-tuning (``peft`` section)."""

    # trainlab.config.StrictModel's settings; not its subclass, because trainlab.config imports this module
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    method: PeftMethodName = Field("none", description="none: full fine-tuning")
    r: int = Field(8, gt=0, description="LoRA rank (AdaLoRA: the target average rank)")
    alpha: float = Field(8.0, gt=0, description="LoRA alpha: the update is scaled by alpha/r (rslora: alpha/sqrt(r))")
    dropout: float = Field(0.0, ge=0, lt=1, description="dropout on the adapter's input (lora_dropout)")
    targets: str | list[str] = Field(
        ALL_LINEAR, description="'all-linear' (every Linear/Conv1D but the LM head) or module names "
        "(comma-separated or a list), matched as PEFT does: the full module path or its last components; "
        "'re:<pattern>': a regular expression full-matching the transformers module path (PEFT's string form)")
    rslora: bool = Field(False, description="rank-stabilized LoRA: scale alpha/sqrt(r) (Kalajdzievski, 2023)")
    merge: bool = Field(False, description="also write out/model: the adapter merged into the base weights")
    init_seed: int | None = Field(None, description="seed of the adapter init; None: train.seed")
    # QLoRA (Dettmers et al., 2023): the frozen base in NF4
    qlora_block: int = Field(64, gt=0, description="NF4 block size (weights per absmax)")
    qlora_double_quant: bool = Field(True, description="quantize the absmax constants to 8 bits (block 256)")
    # AdaLoRA (Zhang et al., 2023): PEFT's AdaLoraConfig names
    adalora_init_r: int = Field(12, gt=0, description="initial rank of every matrix")
    adalora_tinit: int = Field(0, ge=0, description="steps of warm-up before pruning starts")
    adalora_tfinal: int = Field(0, ge=0, description="steps at the end with the final budget (fine-tuning)")
    adalora_delta_t: int = Field(1, gt=0, description="steps between two budget allocations")
    adalora_beta1: float = Field(0.85, ge=0, lt=1, description="EMA of the sensitivity")
    adalora_beta2: float = Field(0.85, ge=0, lt=1, description="EMA of the uncertainty")
    adalora_orth_reg: float = Field(0.5, ge=0, description="weight of the orthogonality regularizer")
    adalora_total_step: int | None = Field(None, gt=0, description="None: train.max_steps")
    adalora_rank_pattern: dict[str, list[bool]] | None = Field(
        None, description="kept triplets per module (PEFT's rank_pattern; set when loading a pruned adapter)")
    # (IA)³ (Liu et al., 2022), prompt tuning, P-tuning, prefix tuning, bottleneck adapters: P2's methods
    ia3_feedforward: str | list[str] | None = Field(
        None, description="(IA)³ modules whose input is scaled (PEFT's feedforward_modules); None: PEFT's default "
        "for the architecture (down_proj, GPT-2's mlp.c_proj)")
    num_virtual_tokens: int = Field(20, gt=0, description="prompt/P-tuning/prefix: virtual tokens")
    prompt_init: Literal["random", "text", "vocab"] = Field(
        "random", description="prompt tuning's init: N(0,1), the embeddings of prompt_init_text, or of random tokens")
    prompt_init_text: str = Field("", description="prompt_init=text: the text whose token embeddings start the prompt")
    encoder_hidden: int | None = Field(None, gt=0, description="P-tuning/prefix encoder hidden size; None: token dim")
    ptuning_encoder: Literal["mlp", "lstm"] = Field("mlp", description="P-tuning's prompt encoder")
    prefix_projection: bool = Field(True, description="prefix tuning: reparameterize the prefix by an MLP while "
                                    "training (saved as the plain prefix)")
    adapter_size: int = Field(16, gt=0, description="bottleneck adapters: the bottleneck width")
    adapter_placement: Literal["houlsby", "pfeiffer"] = Field(
        "houlsby", description="houlsby: after attention and after the MLP; pfeiffer: after the MLP only")
    adapter_act: Literal["relu", "gelu", "silu", "tanh"] = Field("relu", description="bottleneck nonlinearity")

    @field_validator("targets", mode="before")
    @classmethod
    def _split_targets(cls, value: object) -> object:
        if isinstance(value, str) and value.startswith(REGEX_PREFIX):
            try:  # a bad pattern is a config error now, not at apply time
                re.compile(value[len(REGEX_PREFIX):])
            except re.error as exc:
                raise ValueError(f"invalid regular expression: {exc}") from None
            return value
        if isinstance(value, str) and value.strip().lower() != ALL_LINEAR:
            names = [v.strip() for v in value.split(",") if v.strip()]
            if not names:
                raise ValueError("empty target list")
            return names
        if isinstance(value, str):
            return ALL_LINEAR
        return value

    @property
    def enabled(self) -> bool:
        return self.method != "none"

    @property
    def scaling(self) -> float:
        """LoRA's ``alpha / r``, or rsLoRA's ``alpha / sqrt(r)``."""
        return self.alpha / (self.r ** 0.5 if self.rslora else self.r)
