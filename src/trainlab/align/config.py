"""Configuration of the alignment methods: SFT, DPO (sigmoid, IPO, hinge, robust), ORPO, SimPO, KTO.

An alignment run is a `trainlab.config.RunConfig` (``model``, ``data``, ``train``, so the presets
keep working) plus two sections of its own:

* ``align``: the method's loss knobs (β, loss type, label smoothing, SimPO's γ, ORPO's λ, KTO's
  weights), the length budget (``max_prompt_len``, ``max_completion_len``, ``max_len``), how the
  reference log-probs are obtained (``reference: cached | frozen``) and the logit chunking;
* ``align_data``: where preference / SFT records come from (``source: embedded`` or a file or
  ``datasets`` folder), ``strict`` validation, and the embedded task data's knobs.

Like every trainlab config, unknown keys are errors. `align_config(method, preset, ...)` builds
one: preset < the method's defaults (`method_defaults`) < ``--config`` file < ``key=value``.
The method defaults are what ``configs/<method>.yaml`` spell out for the ``quick`` preset.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from trainlab.config import RunConfig, StrictModel, deep_merge, load_config
from trainlab.errors import UserError

Method = Literal["sft", "dpo", "orpo", "simpo", "kto"]
METHODS: tuple[str, ...] = ("sft", "dpo", "orpo", "simpo", "kto")
DPOLossType = Literal["sigmoid", "ipo", "hinge", "robust"]
DPO_LOSS_TYPES: tuple[str, ...] = ("sigmoid", "ipo", "hinge", "robust")
ReferenceMode = Literal["cached", "frozen"]


class AlignConfig(StrictModel):
    """Loss and sequence settings shared by the alignment methods (each reads the ones it uses)."""

    beta: float = Field(0.1, gt=0, description="DPO/KTO: β of the implicit reward β·log(π/π_ref); "
                        "IPO: τ; SimPO: the reward scale β")
    loss_type: DPOLossType = Field("sigmoid", description="DPO variant: sigmoid, ipo, hinge or robust")
    label_smoothing: float = Field(0.0, ge=0, lt=0.5, description="DPO sigmoid: cDPO's ε; robust: flip rate ε; "
                                   "SimPO: ε")
    rpo_alpha: float = Field(0.0, ge=0, description="DPO: weight α of an NLL term on the chosen completion "
                             "(RPO, Pang et al. 2024); 0: pure DPO")
    simpo_gamma: float = Field(0.5, ge=0, description="SimPO: target reward margin γ")
    orpo_lambda: float = Field(0.1, gt=0, description="ORPO: weight λ of the odds-ratio term")
    orpo_mask_prompt: bool = Field(True, description="ORPO: NLL on the chosen completion only (the paper); "
                                   "false: also on the prompt tokens (what TRL's ORPOTrainer does)")
    kto_desirable_weight: float = Field(1.0, gt=0, description="KTO: λ_D, weight of desirable examples")
    kto_undesirable_weight: float = Field(1.0, gt=0, description="KTO: λ_U, weight of undesirable examples")
    kto_kl: bool = Field(True, description="KTO: estimate the reference point z₀ = KL(π‖π_ref) from "
                         "mismatched pairs; false: z₀ = 0")
    reference: ReferenceMode = Field("cached", description="DPO/KTO: 'cached' computes the reference "
                                     "log-probs once before training; 'frozen' keeps a frozen copy")
    chunk_size: int = Field(-1, ge=-1, description="completion tokens per log-softmax chunk; 0: all at once; "
                            "-1: automatic (at most 32 MiB of fp32 logits at a time)")
    max_prompt_len: int = Field(64, gt=0, description="prompt tokens kept (the last ones)")
    max_completion_len: int = Field(32, gt=0, description="completion tokens kept, eos included (the first ones)")
    max_len: int | None = Field(None, gt=2, description="optional cap on bos + prompt + completion")
    eval_kl: bool = Field(True, description="evaluate KL(policy‖reference) on held-out pairs (keeps the "
                          "reference weights in memory during training)")

    @model_validator(mode="after")
    def _robust_smoothing(self) -> AlignConfig:
        if self.loss_type == "robust" and self.label_smoothing == 0.0:
            # robust DPO with ε = 0 is exactly sigmoid DPO; say so rather than silently run it
            raise ValueError("loss_type robust needs label_smoothing > 0 (the assumed label-flip rate, e.g. 0.1)")
        return self


class AlignDataConfig(StrictModel):
    """Where the records come from, and the embedded task data's knobs."""

    source: str = Field("embedded", description="'embedded', a JSONL file or folder, a `datasets` folder "
                        "(save_to_disk), or a .json/.parquet/.csv file")
    split: str = Field("train", description="split to use when the source is a DatasetDict")
    strict: bool = Field(False, description="stop at the first malformed record (exit 2) instead of "
                         "skipping and counting it")
    tasks: list[str] | None = Field(None, description="embedded: task names (None: all)")
    difficulty: int = Field(1, ge=1, le=3)
    n_train: int = Field(3000, gt=0, description="embedded: training problems (SFT examples / pairs)")
    sft_wrong_share: float = Field(0.3, ge=0, lt=1, description="embedded SFT: share of examples whose "
                                   "completion is a plausible wrong answer, so SFT alone stays imperfect")
    n_eval_per_task: int = Field(40, gt=0, description="embedded: held-out prompts per task (oracle accuracy)")
    n_eval_pairs: int = Field(120, ge=0, description="held-out pairs for reward accuracy and KL")
    seed: int = 1234


class AlignRunConfig(RunConfig):
    """A whole alignment run: the usual sections plus ``align`` and ``align_data``."""

    align: AlignConfig = AlignConfig()
    align_data: AlignDataConfig = AlignDataConfig()


# Per method and preset: the optimization settings that differ from pre-training. Alignment
# fine-tunes a trained model, so there is no weight decay (it would pull the weights toward zero,
# away from the pre-trained model) and the warm-up is short. The numbers were tuned on the embedded
# tasks with the quick base model (lab 1.7/1.8); they are starting points for other models.
_COMMON: dict[str, Any] = {"train": {"weight_decay": 0.0, "warmup_steps": 5, "grad_clip": 1.0, "min_lr_ratio": 0.1,
                                     "save_every": 0, "log_every": 5, "grad_accum": 1}}
_METHOD: dict[str, dict[str, Any]] = {
    # SFT on noisy task data learns the tasks abruptly after a few hundred steps at this rate
    "sft": {"train": {"lr": 2e-3, "warmup_steps": 20}},
    # DPO with an NLL term on the chosen answer (RPO): pure DPO lowers greedy accuracy on these
    # tasks (the likelihood of the correct answers falls with the wrong ones'), see lab 1.7
    "dpo": {"train": {"lr": 3e-4}, "align": {"beta": 0.1, "rpo_alpha": 1.0}},
    "orpo": {"train": {"lr": 2e-3, "warmup_steps": 20}, "align": {"orpo_lambda": 0.1}},
    "simpo": {"train": {"lr": 1e-4}, "align": {"beta": 2.0, "simpo_gamma": 0.5}},
    "kto": {"train": {"lr": 3e-4}, "align": {"beta": 0.1}},
}
# preset -> method -> (max_steps, batch_size, eval_every, embedded training problems)
_SCHEDULE: dict[str, dict[str, tuple[int, int, int, int]]] = {
    "tiny": {"sft": (8, 8, 0, 96), "dpo": (6, 8, 3, 64), "orpo": (8, 8, 4, 96), "simpo": (6, 8, 3, 64),
             "kto": (6, 8, 3, 32)},
    "quick": {"sft": (800, 32, 0, 20000), "dpo": (60, 16, 20, 1000), "orpo": (800, 16, 100, 12800),
              "simpo": (60, 16, 20, 1000), "kto": (60, 16, 20, 500)},
    "full": {"sft": (3000, 64, 0, 100000), "dpo": (400, 32, 50, 13000), "orpo": (3000, 32, 250, 96000),
             "simpo": (400, 32, 50, 13000), "kto": (400, 32, 50, 6500)},
}
# Comparing, sorting and reversing (copy and reorder) are what the ~1M-parameter quick base model
# learns within a few hundred steps; counting, add and mul need far more (they are in the full
# preset). SFT sees 45% plausible wrong answers: SFT alone then stays clearly imperfect, and the
# preference stage has the mistakes it was taught to unlearn (lab 1.7).
_DATA: dict[str, dict[str, Any]] = {
    "tiny": {"align_data": {"tasks": ["compare", "sort", "reverse"], "sft_wrong_share": 0.45,
                            "n_eval_per_task": 4, "n_eval_pairs": 12}},
    "quick": {"align_data": {"tasks": ["compare", "sort", "reverse"], "sft_wrong_share": 0.45,
                             "n_eval_per_task": 100, "n_eval_pairs": 120}},
    "full": {"align_data": {"tasks": None, "sft_wrong_share": 0.45, "n_eval_per_task": 200, "n_eval_pairs": 400}},
}


def method_defaults(method: str, preset: str = "quick") -> dict[str, Any]:
    """The settings a method starts from, on top of ``preset`` (a nested dict of config sections)."""
    if method not in METHODS:
        raise UserError(f"unknown alignment method {method!r}; expected one of {', '.join(METHODS)}")
    schedule = _SCHEDULE.get(preset, _SCHEDULE["quick"])
    steps, batch, eval_every, n_train = schedule[method]
    out = deep_merge(_COMMON, _METHOD[method])
    out = deep_merge(out, {"train": {"max_steps": steps, "batch_size": batch, "eval_every": eval_every},
                           "align_data": {"n_train": n_train}})
    # a deep copy: load_config writes overrides into the nested dicts it is given
    return copy.deepcopy(deep_merge(out, _DATA.get(preset, _DATA["quick"])))


def align_config(method: str, *, preset: str = "quick", config_file: str | Path | None = None,
                 overrides: list[str] | None = None, extra: dict[str, Any] | None = None) -> AlignRunConfig:
    """preset < method defaults < ``extra`` < ``config_file`` < ``overrides``, validated strictly."""
    base = method_defaults(method, preset)
    if extra:
        base = deep_merge(base, copy.deepcopy(extra))
    cfg: AlignRunConfig = load_config(config_file, preset=preset, overrides=overrides, model=AlignRunConfig,
                                      base=base)
    return cfg
