"""Configuration of the alignment methods: SFT, DPO (sigmoid, IPO, hinge, robust), ORPO, SimPO, KTO.

An alignment run is a `trainlab.config.RunConfig` (``model``, ``data``, ``train``, so the presets
keep working) plus two sections of its own:

* ``align``: the method's loss knobs (β, loss type, label smoothing, SimPO's γ, ORPO's λ, KTO's
  weights), the length budget (TRL's ``max_length``, ``truncation_mode``, ``max_prompt_length``,
  ``max_completion_length``), how the reference log-probs are obtained (``reference: cached |
  frozen``, ``ref_model``), the logit chunking, dropout and the saved dtype;
* ``align_data``: where preference / SFT records come from (``source: embedded`` or a file or
  ``datasets`` folder), ``strict`` validation, and the embedded task data's knobs.

Like every trainlab config, unknown keys are errors. `align_config(method, preset, model=...)`
builds one: preset < the method's defaults < ``--config`` file < ``key=value``. The method's
defaults depend on the model (`defaults_profile`):

* our decoder (the embedded base model, or a folder trainlab saved: it has ``trainlab.json``):
  the settings tuned on the embedded tasks (`method_defaults`), which ``configs/<method>.yaml``
  spell out for the ``quick`` preset;
* any other transformers folder: TRL 1.16's defaults (`trl_defaults`) on top of those:
  DPOConfig / KTOConfig / ORPOConfig / CPOConfig(loss_type="simpo") lr 1e-6 and β 0.1 (pure
  sigmoid DPO), SFTConfig lr 2e-5, ``max_length`` 1024 capped by the model's positions,
  ``disable_dropout`` for the preference methods, TrainingArguments' Adam β₂ 0.999, batch 8 and
  no warm-up, and no evaluation hold-out (TRL evaluates only an ``eval_dataset`` it is given:
  ``--eval-data``).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from trainlab.config import RunConfig, StrictModel, deep_merge, load_config
from trainlab.errors import UserError

Method = Literal["sft", "dpo", "orpo", "simpo", "kto"]
METHODS: tuple[str, ...] = ("sft", "dpo", "orpo", "simpo", "kto")
SaveDtype = Literal["auto", "fp32", "bf16", "fp16"]
DefaultsProfile = Literal["trainlab", "trl"]
DPOLossType = Literal["sigmoid", "ipo", "hinge", "robust"]
DPO_LOSS_TYPES: tuple[str, ...] = ("sigmoid", "ipo", "hinge", "robust")
ReferenceMode = Literal["cached", "frozen"]
TruncationMode = Literal["keep_start", "keep_end"]
_RENAMED = {"max_len": "max_length", "max_prompt_len": "max_prompt_length",
            "max_completion_len": "max_completion_length"}


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
    share_prefix: bool = Field(True, description="preference pairs (and reward-model pairs, GRPO/RLOO groups): "
                               "compute each pair's common prompt once (one packed row, the completions masked from "
                               "each other; same log-probs) where the model takes a custom attention mask; false: "
                               "one row per completion, as TRL")
    chunk_size: int = Field(-1, ge=-1, description="completion tokens per log-softmax chunk (every method, SFT "
                            "too); 0: all at once; -1: automatic (at most 32 MiB of fp32 logits at a time)")
    max_length: int | None = Field(None, gt=1, description="TRL's max_length: tokens of prompt + completion "
                                  "per sequence (capped by the model's positions); None: no cap")
    truncation_mode: TruncationMode = Field("keep_start", description="TRL's truncation_mode: keep the first "
                                            "max_length tokens (keep_end: the last; SFT only)")
    max_prompt_length: int | None = Field(64, gt=0, description="prompt tokens kept (the last ones); None: no cap")
    max_completion_length: int | None = Field(32, gt=0, description="completion tokens kept (the first ones); "
                                              "None: no cap")
    eval_kl: bool = Field(True, description="evaluate KL(policy‖reference) on held-out pairs (keeps the "
                          "reference weights in memory during training)")
    disable_dropout: bool = Field(True, description="set every dropout probability of the policy (and "
                                  "reference) to 0, as TRL's disable_dropout")
    ref_model: str | None = Field(None, description="DPO/KTO: the reference model's folder (same tokenizer); "
                                  "None: the starting policy")
    save_dtype: SaveDtype = Field("auto", description="dtype of the saved weights; auto: the dtype the input "
                                  "model was stored in")

    @model_validator(mode="before")
    @classmethod
    def _renamed(cls, data: Any) -> Any:
        # the names before TRL's (max_len, max_prompt_len, max_completion_len) still work; they win
        # over a default given under the new name, as a user's explicit setting should
        if isinstance(data, dict) and any(old in data for old in _RENAMED):
            data = dict(data)
            for old, new in _RENAMED.items():
                if old in data:
                    data[new] = data.pop(old)
        return data

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
    n_eval_pairs: int = Field(120, ge=0, description="held-out pairs for reward accuracy and KL (at most a tenth "
                              "of the user's records; none with eval_source)")
    eval_source: str | None = Field(None, description="evaluation pairs from this file/folder (any preference "
                                    "format) instead of a hold-out of the training records")
    chat_template: str | None = Field(None, description="conversational data on a model without a chat "
                                      "template: 'builtin' or a Jinja template file; set on the tokenizer and "
                                      "saved with the model")
    completion_only_loss: bool | None = Field(None, description="SFT prompt/completion: loss on the completion only "
                                              "(None: yes, as TRL); false: on the whole sequence")
    assistant_only_loss: bool = Field(True, description="SFT messages: loss on every assistant turn (TRL's "
                                      "assistant_only_loss); false: on every token (TRL's default)")
    seed: int = 1234


class AlignRunConfig(RunConfig):
    """A whole alignment run: the usual sections plus ``align`` and ``align_data``."""

    align: AlignConfig = AlignConfig()
    align_data: AlignDataConfig = AlignDataConfig()


# Per method and preset: the optimization settings that differ from pre-training. Alignment
# fine-tunes a trained model, so there is no weight decay (it would pull the weights toward zero,
# away from the pre-trained model) and the warm-up is short. The numbers were tuned on the embedded
# tasks with the quick base model (lab 1.7/1.8); for other models `trl_defaults` applies.
# Checkpointing follows train.save_every like every training command.
_COMMON: dict[str, Any] = {"train": {"weight_decay": 0.0, "warmup_steps": 5, "grad_clip": 1.0, "min_lr_ratio": 0.1,
                                     "log_every": 5, "grad_accum": 1}}
_METHOD: dict[str, dict[str, Any]] = {
    # SFT on noisy task data learns the tasks abruptly after a few hundred steps at this rate;
    # SFT keeps dropout as TRL's SFTConfig does (it has no disable_dropout)
    "sft": {"train": {"lr": 2e-3, "warmup_steps": 20}, "align": {"disable_dropout": False}},
    # pure DPO (sigmoid, no NLL term). Oracle accuracy from the quick SFT model (46.3%), quick
    # preset, seeds 0/1: lr 3e-4 25.7%, 1e-4 43.3/40.7%, 3e-5 52.0/51.3%, 1e-5 50.0/49.0%, 3e-6 47.7%
    # (RPO, α = 1, at 3e-4: 56.3%); the rate tuned for RPO moves pure DPO too far
    "dpo": {"train": {"lr": 3e-5}, "align": {"beta": 0.1, "rpo_alpha": 0.0}},
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
    """The settings a method starts from on our decoder, on top of ``preset`` (nested config sections)."""
    if method not in METHODS:
        raise UserError(f"unknown alignment method {method!r}; expected one of {', '.join(METHODS)}")
    if preset not in _SCHEDULE:
        raise UserError(f"unknown preset {preset!r}; expected one of {', '.join(_SCHEDULE)}")
    steps, batch, eval_every, n_train = _SCHEDULE[preset][method]
    out = deep_merge(_COMMON, _METHOD[method])
    out = deep_merge(out, {"train": {"max_steps": steps, "batch_size": batch, "eval_every": eval_every},
                           "align_data": {"n_train": n_train}})
    # a deep copy: load_config writes overrides into the nested dicts it is given
    return copy.deepcopy(deep_merge(out, _DATA[preset]))


# TRL 1.16's defaults (trl/trainer/{dpo,sft,kto}_config.py, trl/experimental/{orpo,cpo}/*_config.py,
# and the transformers.TrainingArguments they extend), in trainlab's keys. SimPO is CPOConfig with
# loss_type="simpo" and cpo_alpha=0 (pure SimPO: trainlab's SimPO has no behaviour-cloning term).
TRL_MAX_LENGTH = 1024
_TRL_COMMON: dict[str, Any] = {
    # TRL's configs default to gradient_checkpointing=True (trl/trainer/base_config.py): a model that fits under
    # TRL fits here too; `model.checkpointing=none` trades that memory for speed
    "model": {"checkpointing": "full"},
    "train": {"batch_size": 8, "grad_accum": 1, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8, "weight_decay": 0.0,
              "warmup_steps": 0, "min_lr_ratio": 0.0, "grad_clip": 1.0, "log_every": 10},
    "align": {"disable_dropout": True},
    "align_data": {"n_eval_pairs": 0},
}
_TRL: dict[str, dict[str, Any]] = {
    "sft": {"train": {"lr": 2e-5}, "align": {"disable_dropout": False}},
    "dpo": {"train": {"lr": 1e-6}, "align": {"beta": 0.1, "loss_type": "sigmoid", "label_smoothing": 0.0,
                                             "rpo_alpha": 0.0}},
    "orpo": {"train": {"lr": 1e-6}, "align": {"orpo_lambda": 0.1}},
    "simpo": {"train": {"lr": 1e-6}, "align": {"beta": 0.1, "simpo_gamma": 0.5, "label_smoothing": 0.0}},
    "kto": {"train": {"lr": 1e-6}, "align": {"beta": 0.1, "kto_desirable_weight": 1.0,
                                             "kto_undesirable_weight": 1.0}},
}
POSITION_KEYS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length", "n_ctx",
                 "max_seq_len")


def model_max_positions(model_dir: str | Path) -> int | None:
    """The longest sequence a model folder's ``config.json`` allows (``max_position_embeddings``,
    GPT-2's ``n_positions``, ...; a multimodal config's ``text_config``), or None if it names none."""
    path = Path(model_dir) / "config.json"
    if not path.is_file():
        return None
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    for node in (cfg, cfg.get("text_config") or {}):
        for key in POSITION_KEYS:
            value = node.get(key)
            if isinstance(value, int) and value > 0:
                return value
    return None


PROVENANCE_FILE = "trainlab_alignment.json"


def defaults_profile(model_dir: str | Path | None) -> DefaultsProfile:
    """Which defaults a run from ``model_dir`` starts from: ``trainlab`` for the embedded base model
    (None) and our decoders (a ``trainlab.json``), ``trl`` for any other model folder. A folder an
    alignment run saved carries the profile it was trained with (`PROVENANCE_FILE`), so a
    transformers Llama that went through ``trainlab sft`` (saved by our decoder, with a
    ``trainlab.json``) still gets TRL's defaults in ``trainlab dpo``."""
    if model_dir is None:
        return "trainlab"
    folder = Path(model_dir)
    try:
        saved = json.loads((folder / PROVENANCE_FILE).read_text(encoding="utf-8")).get("defaults")
    except (OSError, ValueError, AttributeError):
        saved = None
    if saved in ("trainlab", "trl"):
        return saved  # type: ignore[return-value]
    return "trainlab" if (folder / "trainlab.json").is_file() else "trl"


def trl_defaults(method: str, model_dir: str | Path | None = None) -> dict[str, Any]:
    """TRL 1.16's defaults for ``method`` in trainlab's keys (to merge over `method_defaults`).

    TRL's ``max_length`` (1024, prompt + completion, ``truncation_mode="keep_start"``), capped by
    the model's positions; no separate prompt or completion cap, as in TRL 1.16.
    """
    if method not in _TRL:
        raise UserError(f"unknown alignment method {method!r}; expected one of {', '.join(METHODS)}")
    cap = TRL_MAX_LENGTH
    positions = model_max_positions(model_dir) if model_dir is not None else None
    if positions is not None:
        cap = min(cap, positions)
    lengths = {"align": {"max_length": cap, "truncation_mode": "keep_start", "max_prompt_length": None,
                         "max_completion_length": None}}
    return copy.deepcopy(deep_merge(deep_merge(_TRL_COMMON, _TRL[method]), lengths))


def align_config(method: str, *, preset: str = "quick", config_file: str | Path | None = None,
                 overrides: list[str] | None = None, extra: dict[str, Any] | None = None,
                 model: str | Path | None = None) -> AlignRunConfig:
    """preset < method defaults < ``extra`` < ``config_file`` < ``overrides``, validated strictly.

    ``model``: the folder the run starts from; the method defaults are TRL's for a transformers
    folder (`defaults_profile`), the tuned ones for our decoder (None: the embedded base model).
    """
    base = method_defaults(method, preset)
    if defaults_profile(model) == "trl":
        base = deep_merge(base, trl_defaults(method, model))
    if extra:
        base = deep_merge(base, copy.deepcopy(extra))
    cfg: AlignRunConfig = load_config(config_file, preset=preset, overrides=overrides, model=AlignRunConfig,
                                      base=base)
    return cfg
