"""The critic of PPO: per-token values ``V_t`` from a separate value model or a head on the policy.

``V_t`` estimates the return from the state before completion token ``t`` (the hidden state that
predicts it: position ``P + t - 1`` of prompt + completion, as TRL's PPOTrainer slices
``full_value[:, context_length - 1 : -1]``). Two shapes (``rl.value_model``):

* ``separate`` (Ouyang et al. 2022; "The N+ implementation details of RLHF with PPO", Huang et al.
  2024, §"value model initialised from the reward model"; OpenRLHF's critic): a second network, a
  `trainlab.rl.reward_model.RewardModel` whose score head is read at every position
  (`RewardModel.values`). Initialised from the reward model when there is one (it already knows what
  is rewarded), else from the policy's own folder with the head at zero (``V ≡ 0`` at the start,
  so the first advantages are the returns). One more forward (and backward) pass per update and one
  more model in memory.
* ``shared``: a linear head on the policy's final hidden states (Ziegler et al. 2019's
  lm-human-preferences: zero-initialised), so one forward pass gives both the log-probs and the
  values. Cheaper; the value loss then shapes the policy's body too (``vf_coef`` weighs it).

`PolicyValue` holds the trainable parts (the policy and the critic) as one module, so the one
`trainlab.train.Trainer` optimises, checkpoints and resumes both.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from trainlab.rl.reward_model import RewardModel
from trainlab.train.token_logprobs import token_logprobs


def _last(hidden: Tensor, c: int) -> Tensor:
    """``[N, C, D]``: the states before each of the last ``c`` tokens (the ones that predict them)."""
    t = hidden.shape[1]
    return hidden[:, t - c - 1:t - 1]


def logps_from_hidden(hidden: Tensor, weight: Tensor, input_ids: Tensor, score_mask: Tensor, *,
                      chunk_size: int = 0) -> Tensor:
    """``[N, C]`` log-probs of the last ``C`` tokens where ``score_mask`` is 1 (0 elsewhere), fp32, from
    the final hidden states (as `trainlab.rl.rollout.sequence_token_logps`, which runs the model itself)."""
    c = score_mask.shape[1]
    scored = score_mask.bool()
    h = _last(hidden, c)[scored]
    tok = token_logprobs(h, weight, input_ids[:, input_ids.shape[1] - c:][scored], chunk_size)
    out = torch.zeros(score_mask.shape, dtype=tok.dtype, device=tok.device)
    return out.masked_scatter(scored, tok)


def _head_values(head: nn.Linear, h: Tensor) -> Tensor:
    dtype = torch.promote_types(h.dtype, torch.float32)
    with torch.autocast(device_type=h.device.type, enabled=False):
        return F.linear(h.to(dtype), head.weight.to(dtype)).sum(-1)  # [.., 1] -> [..] not as a view (FSDP)


class PolicyValue(nn.Module):
    """The policy and its critic as the one trained module (module docstring).

    Exactly one of ``value_model`` (separate) and ``head`` (shared, on the policy's hidden states).
    """

    def __init__(self, policy: nn.Module, *, value_model: RewardModel | None = None,
                 head: nn.Linear | None = None) -> None:
        super().__init__()
        if (value_model is None) == (head is None):
            raise ValueError("give either a separate value_model or a shared head")
        self.policy = policy
        self.value_model = value_model
        self.head = head

    @property
    def shared(self) -> bool:
        return self.head is not None

    @property
    def config(self) -> Any:
        return getattr(self.policy, "config", None)

    def values(self, input_ids: Tensor, attention_mask: Tensor, c: int) -> Tensor:
        """``[N, C]`` values of the last ``c`` tokens' states (one forward of the critic, or of the
        policy when the head is shared)."""
        if self.value_model is not None:
            return _last(self.value_model.values(input_ids, attention_mask), c)
        assert self.head is not None
        return _head_values(self.head, _last(self.policy.hidden_states(input_ids, attention_mask=attention_mask), c))

    def logps_and_values(self, input_ids: Tensor, attention_mask: Tensor, score_mask: Tensor, *,
                         chunk_size: int = 0) -> tuple[Tensor, Tensor]:
        """``(log-probs [N, C], values [N, C])`` of the last ``C = score_mask.shape[1]`` tokens; a shared
        head reads the same forward pass as the log-probs."""
        hidden = self.policy.hidden_states(input_ids, attention_mask=attention_mask)
        logps = logps_from_hidden(hidden, self.policy.output_embedding(), input_ids, score_mask,
                                  chunk_size=chunk_size)
        c = score_mask.shape[1]
        if self.head is not None:
            return logps, _head_values(self.head, _last(hidden, c))
        assert self.value_model is not None
        return logps, _last(self.value_model.values(input_ids, attention_mask), c)


def shared_value_head(policy: nn.Module) -> nn.Linear:
    """A zero-initialised ``Linear(D, 1, bias=False)`` on the policy's hidden size."""
    weight = policy.output_embedding()
    head = nn.Linear(int(weight.shape[1]), 1, bias=False, device=weight.device, dtype=weight.dtype)
    nn.init.zeros_(head.weight)
    return head


def zero_head_(rm: RewardModel) -> RewardModel:
    """Set a value model's head to zero (``V ≡ 0`` at the start) and return it."""
    with torch.no_grad():
        rm.head.weight.zero_()
    return rm
