"""Configuration of reinforcement learning from a policy's own samples: GRPO, Dr. GRPO, RLOO, REINFORCE++.

An RL run is an `trainlab.align.config.AlignRunConfig` (``model``, ``data``, ``train``, ``align``,
``align_data``: the prompts come from the same embedded tasks or files the alignment methods read,
and ``align.disable_dropout`` / ``align.chunk_size`` / ``align.save_dtype`` apply unchanged) plus
one section of its own, ``rl``:

* what is sampled: ``group_size`` completions (TRL's ``num_generations``, default 8) for each of
  ``prompts_per_step`` prompts per optimizer step, ``temperature`` / ``top_p`` / ``top_k``,
  ``max_new_tokens`` (TRL's ``max_completion_length``);
* how it is scored: ``reward`` = ``oracle`` (the embedded task's exact check), ``model`` (a
  learned reward model, ``reward_model`` its folder) or ``module:function`` (a user function of
  prompts and completions); ``eos_penalty`` (subtracted from a completion that never emitted EOS,
  TRL's ``missing_eos_penalty``), ``length_penalty`` (× completion tokens / ``max_new_tokens``);
* how the advantage is estimated (``estimator``, `trainlab.rl.advantages`): ``grpo`` (group mean and
  std, Shao et al. 2024), ``dr_grpo`` (group mean, no std: Liu et al. 2025), ``rloo`` (leave-one-out
  mean, Ahmadian et al. 2024), ``reinforce_pp`` (batch-whitened returns, Hu 2025);
  ``scale_rewards`` group|batch|none as TRL's;
* the loss (`trainlab.rl.policy_loss`): clipped ratio with ``eps`` (ε_low) and ``eps_high`` (None: ε;
  DAPO's clip-higher: 0.28), ``loss_agg`` (below), ``beta`` the KL(π‖π_ref) coefficient (TRL's default
  0: no reference model is kept), ``kl_estimator`` k1|k2|k3 (Schulman 2020; TRL uses k3);
  ``updates_per_rollout`` (TRL's ``num_iterations`` μ): optimizer steps on one rollout batch.

Loss aggregation (``loss_agg``; the verl names, with TRL's ``loss_type`` names accepted as aliases):

=========================  ============================================  ================
``loss_agg``               per optimizer step                            TRL ``loss_type``
=========================  ============================================  ================
``seq_mean_token_mean``    mean over sequences of each one's token mean  ``grpo``
``token_mean``             mean over every completion token of the step  ``dapo`` (``bnpo``)
``seq_mean_token_sum_norm``  Σ tokens / (sequences × ``max_new_tokens``)  ``dr_grpo``
=========================  ============================================  ================

``None`` picks the estimator's usual mode: GRPO seq-mean-token-mean, Dr. GRPO seq-mean-token-sum-norm,
RLOO and REINFORCE++ token-mean.

`rl_config` builds a run config like `trainlab.align.config.align_config`: preset < the RL
defaults (tuned on the embedded tasks for our decoder, TRL's ``GRPOConfig`` defaults for a
transformers folder) < ``--config`` file < ``key=value``.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from trainlab.align.config import AlignRunConfig, defaults_profile, method_defaults
from trainlab.config import StrictModel, deep_merge, load_config
from trainlab.errors import UserError

Estimator = Literal["grpo", "rloo", "reinforce_pp", "dr_grpo"]
ESTIMATORS: tuple[str, ...] = ("grpo", "rloo", "reinforce_pp", "dr_grpo")
LossAgg = Literal["token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm"]
LOSS_AGGS: tuple[str, ...] = ("token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm")
#: TRL GRPOConfig.loss_type -> our aggregation (bnpo is DAPO's token mean taken per micro-batch in TRL;
#: here the loop normalises by the whole step's tokens, which equals TRL's bnpo with one micro-batch)
TRL_LOSS_TYPES: dict[str, str] = {"grpo": "seq_mean_token_mean", "dapo": "token_mean", "bnpo": "token_mean",
                                  "dr_grpo": "seq_mean_token_sum_norm"}
DEFAULT_AGG: dict[str, str] = {"grpo": "seq_mean_token_mean", "dr_grpo": "seq_mean_token_sum_norm",
                               "rloo": "token_mean", "reinforce_pp": "token_mean"}
KLEstimator = Literal["k1", "k2", "k3"]
ScaleRewards = Literal["group", "batch", "none"]


class RLConfig(StrictModel):
    """Sampling, reward, advantage and policy-loss settings of an RL run (GRPO family; PPO adds its own)."""

    estimator: Estimator = Field("grpo", description="advantage estimator: grpo, rloo, reinforce_pp or dr_grpo")
    loss_agg: LossAgg | None = Field(None, description="token_mean (DAPO), seq_mean_token_mean (GRPO), "
                                     "seq_mean_token_sum_norm (Dr. GRPO); TRL's grpo/dapo/bnpo/dr_grpo accepted; "
                                     "None: the estimator's usual one")
    scale_rewards: ScaleRewards | None = Field(None, description="GRPO: divide by the group's std (group), the "
                                               "batch's (batch) or not (none); None: group for grpo, none for "
                                               "dr_grpo (TRL's scale_rewards)")
    group_size: int = Field(8, ge=2, description="completions per prompt (TRL's num_generations)")
    prompts_per_step: int = Field(8, ge=1, description="distinct prompts sampled per optimizer step")
    updates_per_rollout: int = Field(1, ge=1, description="optimizer steps on each rollout (TRL's num_iterations μ)")
    eps: float = Field(0.2, gt=0, lt=1, description="ε_low of the clipped ratio 1-ε_low ≤ π/π_old")
    eps_high: float | None = Field(None, gt=0, description="ε_high: π/π_old ≤ 1+ε_high (DAPO 0.28); None: eps")
    beta: float = Field(0.0, ge=0, description="KL(π‖π_ref) coefficient in the loss (TRL default 0: no reference)")
    kl_estimator: KLEstimator = Field("k3", description="per-token KL estimator k1, k2 or k3 (Schulman 2020)")
    kl_in_reward: bool = Field(False, description="REINFORCE++: subtract β·KL per token from the return instead "
                               "of adding it to the loss")
    temperature: float = Field(1.0, gt=0, description="sampling temperature (TRL default 1.0)")
    top_p: float = Field(1.0, gt=0, le=1)
    top_k: int = Field(0, ge=0, description="0: off")
    max_new_tokens: int = Field(16, ge=1, description="completion tokens at most (TRL's max_completion_length)")
    reward: str = Field("oracle", description="oracle (the embedded tasks' exact check), model (a learned reward "
                        "model: rl.reward_model), or module:function called with (prompts, completions)")
    reward_model: str | None = Field(None, description="reward=model: the reward model's folder")
    eos_penalty: float = Field(0.0, ge=0, description="subtracted from the reward of a completion without EOS "
                               "(TRL's missing_eos_penalty)")
    length_penalty: float = Field(0.0, ge=0, description="subtracted × completion tokens / max_new_tokens")
    mask_truncated: bool = Field(False, description="drop completions without EOS from the loss "
                                 "(TRL's mask_truncated_completions)")
    n_eval: int = Field(0, ge=0, description="held-out prompts per task for oracle accuracy at eval (0: the "
                        "align_data.n_eval_per_task)")
    # -- reward model (trainlab rm) and PPO (trainlab ppo): trainlab.rl.reward_model, trainlab.rl.ppo --------------
    rm_margin: float = Field(0.0, description="reward model: margin m of -log σ(r_c - r_r - m) (a data margin "
                             "column wins)")
    center_rewards_coefficient: float | None = Field(None, ge=0, description="reward model: TRL's weight of "
                                                     "(r_c + r_r)² pulling rewards to mean 0; None: off")
    gamma: float = Field(1.0, gt=0, le=1, description="PPO: GAE discount γ")
    lam: float = Field(0.95, ge=0, le=1, description="PPO: GAE λ")
    ppo_epochs: int = Field(4, ge=1, description="PPO: passes over each rollout (TRL's num_ppo_epochs)")
    mini_batches: int = Field(1, ge=1, description="PPO: optimizer steps per pass over a rollout "
                              "(TRL's num_mini_batches)")
    vf_coef: float = Field(0.1, ge=0, description="PPO: weight of the value loss")
    cliprange_value: float = Field(0.2, gt=0, description="PPO: the value may move at most this far from the "
                                   "rollout's value per update (clipped value loss)")
    whiten_advantages: bool = Field(True, description="PPO: whiten advantages over the rollout's tokens")
    whiten_rewards: bool = Field(False, description="PPO: whiten the token rewards before GAE (TRL's "
                                 "whiten_rewards)")
    kl_ctl: Literal["fixed", "adaptive"] = Field("fixed", description="PPO: fixed β, or Ziegler et al.'s "
                                                 "adaptive controller toward kl_target")
    kl_target: float = Field(6.0, gt=0, description="PPO adaptive KL: the target sequence KL (nats)")
    kl_horizon: int = Field(10000, ge=1, description="PPO adaptive KL: horizon (samples) of the controller")
    value_model: Literal["separate", "shared"] = Field("separate", description="PPO: a separate value model "
                                                       "(from the reward model, else the policy) or a value "
                                                       "head on the policy (one forward for both)")

    @field_validator("loss_agg", mode="before")
    @classmethod
    def _trl_names(cls, value: Any) -> Any:
        if isinstance(value, str) and value in TRL_LOSS_TYPES:
            return TRL_LOSS_TYPES[value]
        return value

    @model_validator(mode="after")
    def _reward_source(self) -> RLConfig:
        if self.reward not in ("oracle", "model") and ":" not in self.reward:
            raise ValueError(f"reward must be oracle, model or module:function, got {self.reward!r}")
        return self

    @property
    def eps_low(self) -> float:
        return self.eps

    @property
    def eps_hi(self) -> float:
        return self.eps if self.eps_high is None else self.eps_high

    @property
    def agg(self) -> str:
        """The aggregation in effect (``loss_agg`` or the estimator's default)."""
        return self.loss_agg or DEFAULT_AGG[self.estimator]

    @property
    def scale(self) -> str:
        """``scale_rewards`` in effect: Dr. GRPO never divides by a std."""
        if self.scale_rewards is not None:
            return self.scale_rewards
        return "none" if self.estimator == "dr_grpo" else "group"

    @property
    def completions_per_step(self) -> int:
        return self.group_size * self.prompts_per_step


class RLRunConfig(AlignRunConfig):
    """A whole RL run: the alignment run's sections (data, model, train, align) plus ``rl``."""

    rl: RLConfig = RLConfig()


# Tuned on the embedded tasks from lab 1.7's quick SFT model (oracle accuracy 46.3%), quick preset, GRPO with the
# oracle reward, 16 prompts x 8 per step (under load): lr 1e-4 T 1.0 10 steps 46.7%; lr 3e-4 T 0.7 20 steps 47.0%;
# lr 5e-4 T 0.7 40 steps token-mean 41.3%; lr 1e-3 T 1.0 40 steps 7% (collapse); lr 3e-4 T 0.5 20 steps 45.3%;
# lr 2e-4 T 0.5 30 steps 54.0% (seed 0), 54.0% (seed 1). A low temperature keeps the samples near the greedy answer
# the oracle accuracy judges, so the group contrasts the correct answer with the plausible wrong one SFT taught.
_RL_COMMON: dict[str, Any] = {"train": {"weight_decay": 0.0, "warmup_steps": 2, "grad_clip": 1.0, "min_lr_ratio": 1.0,
                                        "log_every": 1, "grad_accum": 1, "lr": 2e-4, "eval_every": 0},
                              "rl": {"temperature": 0.5},
                              "align": {"disable_dropout": True}}
# preset -> (max_steps, prompts_per_step, group_size, max_new_tokens)
_RL_SCHEDULE: dict[str, tuple[int, int, int, int]] = {
    "tiny": (3, 4, 4, 8),
    "quick": (30, 16, 8, 12),
    "full": (200, 32, 8, 16),
}
# TRL 1.16 GRPOConfig defaults (trl/trainer/grpo_config.py: learning_rate 1e-6, num_generations 8, max_completion_length
# 512, temperature 1.0, beta 0.0, epsilon 0.2, loss_type "dapo", scale_rewards "group"), in trainlab's keys
_TRL_GRPO: dict[str, Any] = {
    "train": {"lr": 1e-6, "batch_size": 8, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8, "weight_decay": 0.0,
              "warmup_steps": 0, "min_lr_ratio": 0.0, "grad_clip": 1.0, "log_every": 10},
    "rl": {"group_size": 8, "prompts_per_step": 1, "temperature": 1.0, "top_p": 1.0, "top_k": 0,
           "max_new_tokens": 512, "beta": 0.0, "eps": 0.2, "kl_estimator": "k3", "loss_agg": "token_mean"},
    "align": {"disable_dropout": True},
}


def rl_defaults(preset: str = "quick") -> dict[str, Any]:
    """The RL defaults on our decoder for ``preset`` (nested config sections)."""
    if preset not in _RL_SCHEDULE:
        raise UserError(f"unknown preset {preset!r}; expected one of {', '.join(_RL_SCHEDULE)}")
    steps, prompts, group, new = _RL_SCHEDULE[preset]
    base = method_defaults("sft", preset)  # the alignment data section of the preset (tasks, eval prompts)
    base.pop("align", None)
    base = deep_merge(base, _RL_COMMON)
    base = deep_merge(base, {"train": {"max_steps": steps, "batch_size": prompts * group},
                             "rl": {"prompts_per_step": prompts, "group_size": group, "max_new_tokens": new}})
    return copy.deepcopy(base)


def rl_config(*, preset: str = "quick", config_file: str | Path | None = None, overrides: list[str] | None = None,
              extra: dict[str, Any] | None = None, model: str | Path | None = None) -> RLRunConfig:
    """preset < RL defaults (TRL's GRPOConfig for a transformers folder) < ``extra`` < file < ``overrides``."""
    base = rl_defaults(preset)
    if defaults_profile(model) == "trl":
        base = deep_merge(base, copy.deepcopy(_TRL_GRPO))
    if extra:
        base = deep_merge(base, copy.deepcopy(extra))
    cfg: RLRunConfig = load_config(config_file, preset=preset, overrides=overrides, model=RLRunConfig, base=base)
    return cfg
